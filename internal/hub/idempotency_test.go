package hub

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestIdempotencyWindowEnds drives an in-process hub's clock past the
// window, and past its count of keys.
func TestIdempotencyWindowEnds(t *testing.T) {
	h := testHub(t, Config{IdempotencyWindow: caddy10s, IdempotencyKeys: 3})
	now := time.Now()
	h.now = func() time.Time { return now }
	once := func(key, data string) (Receipt, bool) {
		t.Helper()
		rs, replayed, err := h.PublishOnce(key, []Publication{{Key: "/c", Event: Event{Data: []byte(data)}}})
		if err != nil {
			t.Fatal(err)
		}
		return rs[0], replayed
	}
	first, _ := once("k", "x")
	now = now.Add(9 * time.Second)
	if r, replayed := once("k", "x"); !replayed || r != first {
		t.Fatalf("within the window: %+v, replayed %v; want %+v", r, replayed, first)
	}
	now = now.Add(2 * time.Second)
	if r, replayed := once("k", "x"); replayed || r.Cursor.ID != 2 {
		t.Fatalf("past the window: %+v, replayed %v; want a new event", r, replayed)
	}

	// Past idempotency_keys, the oldest key is forgotten early, and counted.
	forgotten := counterValue(t, collectors.forgotten.WithLabelValues("test"))
	for _, k := range []string{"a", "b", "c"} {
		once(k, k)
	}
	if got := counterValue(t, collectors.forgotten.WithLabelValues("test")) - forgotten; got != 1 {
		t.Errorf("%v keys counted as forgotten, want 1", got)
	}
	if _, replayed := once("k", "x"); replayed {
		t.Error("the oldest of four keys is still remembered with room for three")
	}
	if _, replayed := once("c", "c"); !replayed {
		t.Error("a recent key was forgotten")
	}
}

// TestIdempotencyAfterAFailure: a publish that published nothing frees its
// key; one that stopped half way is answered the same again.
func TestIdempotencyAfterAFailure(t *testing.T) {
	h := testHub(t, Config{MaxContexts: 1})
	batch := []Publication{{Key: "/a", Event: Event{Data: []byte("1")}}, {Key: "/b", Event: Event{Data: []byte("2")}}}
	rs, _, err := h.PublishOnce("half", batch)
	if be, ok := errors.AsType[*BatchError](err); !ok || be.Index != 1 || !errors.Is(err, ErrTooManyContexts) || !rs[0].Published() {
		t.Fatalf("a batch past max_contexts: %+v, %v", rs, err)
	}
	again, replayed, err := h.PublishOnce("half", batch)
	if be, ok := errors.AsType[*BatchError](err); !ok || be.Index != 1 || !replayed || again[0] != rs[0] || again[1].Published() {
		t.Fatalf("its retry: %+v, replayed %v, %v; want the same receipts and failure", again, replayed, err)
	}
	if id := lastID(t, h, "/a"); id != 1 {
		t.Errorf("/a at %d, want 1", id)
	}

	// A batch refused before publishing (a bad event type) frees its key.
	bad := []Publication{{Key: "/a", Event: Event{Data: []byte("1")}}, {Key: "/a", Event: Event{Type: "a\nb"}}}
	if _, _, err := h.PublishOnce("bad", bad); !errors.Is(err, ErrBadEventType) {
		t.Fatalf("a batch with a bad type: %v", err)
	}
	if rs, replayed, err := h.PublishOnce("bad", batch[:1]); err != nil || replayed || rs[0].Cursor.ID != 2 {
		t.Errorf("the key of a refused batch, used again: %+v, replayed %v, %v; want a publish", rs, replayed, err)
	}

	one := []Publication{{Key: "/b", Event: Event{Data: []byte("x")}}}
	if _, _, err := h.PublishOnce("none", one); !errors.Is(err, ErrTooManyContexts) {
		t.Fatalf("publishing to a new context past the limit: %v", err)
	}
	h.Configure(Config{MaxContexts: 2})
	if rs, replayed, err := h.PublishOnce("none", one); err != nil || replayed || rs[0].Cursor.ID != 1 {
		t.Errorf("retry after nothing was published: %+v, replayed %v, %v; want it published", rs, replayed, err)
	}
}

// A window of the tests above.
const caddy10s = caddy.Duration(10 * time.Second)

// TestRefusedKeyedPublishesCostNothing: a keyed publish refused before it
// published anything frees all its key took, even behind a key that is
// still held, so that a publisher sending refused publishes with fresh keys
// grows the hub no more than one sending them without keys.
func TestRefusedKeyedPublishesCostNothing(t *testing.T) {
	const refused = 200_000
	h := testHub(t, Config{MaxContexts: 1, IdempotencyKeys: 1000})
	if _, _, err := h.PublishOnce("held", []Publication{{Key: "/held", Event: Event{Data: []byte("x")}}}); err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("k", 230)
	growth := func(keyed bool) int64 {
		before := heapInUse()
		for i := range refused {
			s := Submission{Publications: []Publication{{Key: "/full", Event: Event{Data: []byte("x")}}}}
			if keyed {
				s.IdempotencyKey = fmt.Sprint(pad, i)
			}
			if _, _, err := h.Submit(s); !errors.Is(err, ErrTooManyContexts) {
				t.Fatalf("publish %d past max_contexts: %v", i, err)
			}
		}
		return heapInUse() - before
	}
	without, with := growth(false), growth(true)
	t.Logf("heap growth after %d refused publishes: %d bytes without keys, %d with", refused, without, with)
	if with-without > 1<<20 {
		t.Errorf("refused keyed publishes grew the heap by %d bytes more than unkeyed ones, want under 1 MiB (%d bytes each)",
			with-without, (with-without)/refused)
	}
	h.idempotency.mu.Lock()
	held, queued := len(h.idempotency.entries), len(h.idempotency.order)
	h.idempotency.mu.Unlock()
	if held != 1 || queued > 1+64 {
		t.Errorf("%d keys held and %d queued after the refusals, want the one live key", held, queued)
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestKeysArePublishers: the same key from two publishers is two keys.
func TestKeysArePublishers(t *testing.T) {
	h := testHub(t, Config{})
	pub := func(publisher, data string) ([]Receipt, bool, error) {
		return h.Submit(Submission{Publications: []Publication{{Key: "/c", Event: Event{Data: []byte(data)}}}, IdempotencyKey: "k", Publisher: publisher})
	}
	first, _, _ := pub("alice", "a")
	if _, replayed, err := pub("bob", "b"); err != nil || replayed {
		t.Errorf("bob's key k, which alice used for other events: replayed %v, %v; want a publish of its own", replayed, err)
	}
	if rs, replayed, err := pub("carol", "a"); err != nil || replayed || rs[0].Cursor == first[0].Cursor {
		t.Errorf("carol's key k for alice's events: %v, replayed %v, %v; want a publish of its own", rs, replayed, err)
	}
	if rs, replayed, err := pub("alice", "a"); err != nil || !replayed || rs[0].Cursor != first[0].Cursor {
		t.Errorf("alice's retry: %v, replayed %v, %v; want her first receipt", rs, replayed, err)
	}
}
