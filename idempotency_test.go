package comet

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-jose/go-jose/v4"
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
	if id := lastID(t, hub, "/c"); id != 1 {
		t.Fatalf("/c is at id %d after a publish and a retry, want 1", id)
	}
	// The admin API is another publisher, with keys of its own (issue
	// 31): the route's key is not its, and its own retry replays.
	adminFirst, ab := post(s.admin+"/comet/publish?context=/c", "once", HeaderIdempotencyKey, "k1")
	adminAgain, ab2 := post(s.admin+"/comet/publish?context=/c", "once", HeaderIdempotencyKey, "k1")
	if adminFirst.StatusCode != http.StatusOK || adminFirst.Header.Get(HeaderReplayed) != "" || ab == body {
		t.Errorf("the admin API's first use of the route's key: %s %q replayed %q, want a publish of its own", adminFirst.Status, ab, adminFirst.Header.Get(HeaderReplayed))
	}
	if adminAgain.Header.Get(HeaderReplayed) != "true" || ab2 != ab {
		t.Errorf("the admin API's retry: %q replayed %q, want %q again", ab2, adminAgain.Header.Get(HeaderReplayed), ab)
	}
	if id := lastID(t, hub, "/c"); id != 2 {
		t.Fatalf("/c is at id %d after two publishes and their retries, want 2", id)
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
	if id := lastID(t, hub, "/c"); id != 3 {
		t.Errorf("/c is at id %d after a batch and its retry, want 3", id)
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

// TestIdempotencyKeysAreThePublishers: a key is its publisher's, the
// token's subject where the route has tokens, else the route. Another
// publisher with the same key neither has its event refused (422) nor
// replayed, and so learns nothing of the keys others used.
func TestIdempotencyKeysAreThePublishers(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `
	route /a/* {
		comet
	}
	route /b/* {
		comet {
			context /a/{path.1}
		}
	}
	route /t/* {
		comet {
			auth publish {
				hmac_secret {env.COMET_TEST_KEY}
			}
		}
	}`)
	post := func(path, data string, header ...string) *http.Response {
		resp, body := s.do(http.MethodPost, path, data, append([]string{HeaderIdempotencyKey, "k"}, header...)...)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("POST %s %q: %s %q, want 200", path, data, resp.Status, body)
		}
		return resp
	}
	// Two routes publishing to the same context.
	post("/a/x", "from a")
	if resp := post("/b/x", "from b"); resp.Header.Get(HeaderReplayed) != "" {
		t.Error("route b's key k was taken for route a's")
	}
	if resp := post("/a/x", "from a"); resp.Header.Get(HeaderReplayed) != "true" {
		t.Error("route a's retry was not replayed")
	}
	if id := lastID(t, s.hub(DefaultHubName), "/a/x"); id != 2 {
		t.Errorf("/a/x is at id %d, want 2: one event from each route", id)
	}
	// Two token subjects on one route.
	g := grants{Publish: []string{"/t/*"}}
	alice := bearer(mint(t, []byte(testSecret), jose.HS256, "alice", time.Minute, g))
	bob := bearer(mint(t, []byte(testSecret), jose.HS256, "bob", time.Minute, g))
	post("/t/x", "from alice", alice...)
	if resp := post("/t/x", "from alice", bob...); resp.Header.Get(HeaderReplayed) != "" {
		t.Error("bob's key k, with alice's data, was replayed: he learnt that she used it")
	}
	if resp := post("/t/x", "from alice", alice...); resp.Header.Get(HeaderReplayed) != "true" {
		t.Error("alice's retry was not replayed")
	}
}
