package comet

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestIdempotencyKeyMakesARetryAnswerTheFirstReceipt(t *testing.T) {
	s := startCaddy(t, "", "comet /*")
	hub := s.hub(DefaultHubName)
	post := func(url, body string, header ...string) (*http.Response, string) {
		return doRequest(t, t.Context(), http.MethodPost, url, body, header...)
	}

	first, body := post(s.base+"/c", "once", HeaderIdempotencyKey, "k1")
	again, bodyAgain := post(s.base+"/c", "once", HeaderIdempotencyKey, "k1")
	if first.StatusCode != http.StatusOK || again.StatusCode != http.StatusOK || body != bodyAgain {
		t.Fatalf("retry answered %s %q, first %s %q; want the same receipt", again.Status, bodyAgain, first.Status, body)
	}
	if again.Header.Get(HeaderReplayed) != "true" || first.Header.Get(HeaderReplayed) != "" {
		t.Errorf("%s: first %q, retry %q", HeaderReplayed, first.Header.Get(HeaderReplayed), again.Header.Get(HeaderReplayed))
	}
	if again.Header.Get(HeaderCursor) != first.Header.Get(HeaderCursor) {
		t.Errorf("retry's cursor %q, first's %q", again.Header.Get(HeaderCursor), first.Header.Get(HeaderCursor))
	}
	// Through the admin API too: the keys are the hub's.
	if resp, b := post(s.admin+"/comet/publish?context=/c", "once", HeaderIdempotencyKey, "k1"); resp.StatusCode != http.StatusOK || b != body {
		t.Errorf("the admin API answered the retry %s %q, want %q", resp.Status, b, body)
	}
	if id := lastID(t, hub, "/c"); id != 1 {
		t.Fatalf("/c is at id %d after a publish and two retries, want 1", id)
	}

	// The same key for other events is a client's mistake, not a retry.
	for _, tc := range []struct{ url, body string }{
		{s.base + "/c", "other data"},
		{s.base + "/d", "once"},
	} {
		if resp, _ := post(tc.url, tc.body, HeaderIdempotencyKey, "k1"); resp.StatusCode != http.StatusUnprocessableEntity {
			t.Errorf("key reused for %s %q: %s, want 422", tc.url, tc.body, resp.Status)
		}
	}
	for _, key := range []string{"caf\u00e9", "a\tb", strings.Repeat("k", MaxIdempotencyKeyLength+1)} {
		if resp, _ := post(s.base+"/c", "x", HeaderIdempotencyKey, key); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("key %.20q: %s, want 400", key, resp.Status)
		}
	}

	// A batch is replayed whole.
	body = batchOf(`{"context":"/c","data":"b1"}`, `{"context":"/e","data":"b2"}`)
	_, a1, text1 := postBatch(t, s.admin+"/comet/publish", body, HeaderIdempotencyKey, "batch-1")
	resp, _, text2 := postBatch(t, s.admin+"/comet/publish", body, HeaderIdempotencyKey, "batch-1")
	if text1 != text2 || resp.Header.Get(HeaderReplayed) != "true" || len(a1.Receipts) != 2 {
		t.Errorf("batch retry answered %q, first %q", text2, text1)
	}
	if id := lastID(t, hub, "/c"); id != 2 {
		t.Errorf("/c is at id %d after a batch and its retry, want 2", id)
	}
}

func TestConcurrentDuplicatesPublishOnce(t *testing.T) {
	s := startCaddy(t, "", "comet /*")
	const clients = 20
	var wg sync.WaitGroup
	bodies := make([]string, clients)
	for i := range clients {
		wg.Go(func() {
			resp, body := doRequest(t, t.Context(), http.MethodPost, s.base+"/c", "same", HeaderIdempotencyKey, "dup")
			if resp.StatusCode != http.StatusOK {
				t.Errorf("client %d: %s %q", i, resp.Status, body)
			}
			bodies[i] = body
		})
	}
	wg.Wait()
	for i := range bodies {
		if bodies[i] != bodies[0] {
			t.Errorf("client %d got %q, client 0 %q", i, bodies[i], bodies[0])
		}
	}
	if id := lastID(t, s.hub(DefaultHubName), "/c"); id != 1 {
		t.Errorf("%d concurrent duplicates published %d events, want 1", clients, id)
	}
}

// TestIdempotencyAcrossNodes shares keys through Redis: a retry on another
// node, and duplicates on both at once, publish once.
func TestIdempotencyAcrossNodes(t *testing.T) {
	r := startRedis(t)
	cfg := HubConfig{IdempotencyWindow: caddy300ms}
	a, b := redisHub(t, r, cfg), redisHub(t, r, cfg)
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	pub := func(data string) []Publication { return []Publication{{Key: "/c", Event: Event{Data: []byte(data)}}} }

	first, _, err := a.PublishOnce("k", pub("x"))
	if err != nil {
		t.Fatal(err)
	}
	again, replayed, err := b.PublishOnce("k", pub("x"))
	if err != nil || !replayed || again[0].Cursor != first[0].Cursor {
		t.Fatalf("retry on the other node: %+v, replayed %v, %v; want %+v", again, replayed, err, first)
	}
	if _, _, err := b.PublishOnce("k", pub("y")); !errors.Is(err, ErrIdempotencyKeyReused) {
		t.Errorf("key reused for other data on the other node: %v", err)
	}

	var wg sync.WaitGroup
	cursors := make([]Cursor, 20)
	for i := range cursors {
		node := []*Hub{a, b}[i%2]
		wg.Go(func() {
			rs, _, err := node.PublishOnce("dup", pub("d"))
			if err != nil {
				t.Errorf("duplicate %d: %v", i, err)
				return
			}
			cursors[i] = rs[0].Cursor
		})
	}
	wg.Wait()
	for i := range cursors {
		if cursors[i] != cursors[0] {
			t.Errorf("duplicate %d got %s, duplicate 0 %s", i, cursors[i], cursors[0])
		}
	}
	if cursors[0].ID != 2 {
		t.Errorf("the duplicates' event has id %d, want 2: published once after the first", cursors[0].ID)
	}

	// Redis forgets the key when the window ends.
	time.Sleep(time.Duration(caddy300ms) + 100*time.Millisecond)
	if rs, replayed, err := b.PublishOnce("k", pub("x")); err != nil || replayed || rs[0].Cursor.ID != 3 {
		t.Errorf("past the window: %+v, replayed %v, %v; want a new event", rs, replayed, err)
	}
}

// Windows of the tests above.
const (
	caddy10s   = caddy.Duration(10 * time.Second)
	caddy300ms = caddy.Duration(300 * time.Millisecond)
)
