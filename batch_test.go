package comet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/redisbroker"
	"github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"
)

// batchOf writes an NDJSON batch body, a line per value.
func batchOf(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// postBatch POSTs a batch to url and decodes the answer, if it is one.
func postBatch(t *testing.T, url, body string, header ...string) (*http.Response, batchAnswer, string) {
	t.Helper()
	resp, text := doRequest(t, t.Context(), http.MethodPost, url, body, append([]string{"Content-Type", BatchContentType}, header...)...)
	var a batchAnswer
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal([]byte(text), &a); err != nil {
			t.Fatalf("batch answer %q: %v", text, err)
		}
	}
	return resp, a, text
}

// lastID returns the id of the last event of the context, 0 if none.
func lastID(t *testing.T, h *Hub, key string) uint64 {
	t.Helper()
	info, ok := h.Inspect(key)
	if !ok {
		return 0
	}
	return info.Cursor.ID
}

func TestBatchThroughTheAdminAPIPublishesInOrder(t *testing.T) {
	s := startCaddy(t, "", "comet /*")
	hub := s.hub(DefaultHubName)
	_, sse := s.openSSE("/a")
	poll := s.startPoll("/b")
	waitFor(t, "both subscribers to wait", func() bool { return parkedCount(hub, "/a") == 1 && parkedCount(hub, "/b") == 1 })

	resp, a, text := postBatch(t, s.admin+"/comet/publish", batchOf(
		`{"context":"/a","type":"greeting","data":"hello"}`,
		`{"context":"/b","data":{"n":1}}`,
		``,
		`{"context":"/a","content_type":"application/octet-stream","data_base64":"AAEC"}`,
		`{"context":"/c","data":"third context"}`,
	))
	if resp.StatusCode != http.StatusOK || len(a.Receipts) != 4 || a.Error != "" {
		t.Fatalf("batch: %s: %s", resp.Status, text)
	}
	for i, want := range []batchReceipt{
		{Line: 1, Context: "/a", ID: 1, Woken: 1},
		{Line: 2, Context: "/b", ID: 1, Woken: 1},
		{Line: 4, Context: "/a", ID: 2},
		{Line: 5, Context: "/c", ID: 1},
	} {
		got := a.Receipts[i]
		if got.Line != want.Line || got.Context != want.Context || got.ID != want.ID || got.Cursor == "" ||
			(want.Woken > 0 && got.Woken != want.Woken) {
			t.Errorf("receipt %d: %+v, want %+v", i, got, want)
		}
	}
	if ev := nextWithin(t, sse, 5*time.Second); ev.Type != "greeting" || ev.Data != "hello" || ev.ID != a.Receipts[0].Cursor {
		t.Errorf("first event on /a: %+v", ev)
	}
	if ev := nextWithin(t, sse, 5*time.Second); ev.Data != "\x00\x01\x02" || ev.ID != a.Receipts[2].Cursor {
		t.Errorf("second event on /a: %+v", ev)
	}
	pr, body := poll.wait(t)
	if body != `{"n":1}` || pr.Header.Get("Content-Type") != "application/json" {
		t.Errorf("/b got %q as %q, want the JSON value as application/json", body, pr.Header.Get("Content-Type"))
	}

	// A bad line anywhere rejects the whole batch: nothing is published.
	for _, tc := range []struct{ name, body, want string }{
		{"malformed", batchOf(`{"context":"/a","data":"x"}`, `{"context":"/a","data":"y"}`, `{"context":`), "line 3"},
		{"unknown field", batchOf(`{"context":"/a","dat":"x"}`), "line 1"},
		{"no context", batchOf(`{"context":"/a","data":"x"}`, `{"data":"x"}`), "line 2: no context"},
		{"bad type", batchOf(`{"context":"/a","type":"a\nb","data":"x"}`), "line 1"},
		{"two payloads", batchOf(`{"context":"/a","data":"x","data_base64":"AA=="}`), "line 1: both"},
		{"two values", batchOf(`{"context":"/a"} {"context":"/b"}`), "line 1"},
		{"empty", "\n\n", "empty batch"},
	} {
		resp, _, text := postBatch(t, s.admin+"/comet/publish", tc.body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(text, tc.want) {
			t.Errorf("%s: %s: %s, want 400 naming %q", tc.name, resp.Status, text, tc.want)
		}
	}
	if id := lastID(t, hub, "/a"); id != 2 {
		t.Errorf("/a is at id %d after refused batches, want 2", id)
	}

	// The query names no context for a batch; each line does.
	if resp, _, _ := postBatch(t, s.admin+"/comet/publish?context=/a", batchOf(`{"context":"/a"}`)); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a batch with a context query: %s, want 400", resp.Status)
	}
	// An NDJSON body that is not a batch is one event, whatever it holds.
	r := s.publishAs("/a", "application/x-ndjson", "{\"a\":1}\n{\"a\":2}\n")
	if r.ID != 3 {
		t.Errorf("an NDJSON event got id %d, want 3", r.ID)
	}
}

func TestBatchOnARouteStaysInItsContext(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\tmax_contexts 2\n\t}", `comet /r/* {
		max_message_size 8
		max_batch_size 300
		max_batch_events 3
	}`)
	hub := s.hub(DefaultHubName)
	resp, a, text := postBatch(t, s.base+"/r/x", batchOf(`{"data":"one"}`, `{"context":"/r/x","data":"two"}`))
	if resp.StatusCode != http.StatusOK || len(a.Receipts) != 2 || a.Receipts[1].ID != 2 || a.Receipts[1].Context != "/r/x" {
		t.Fatalf("route batch: %s: %s", resp.Status, text)
	}
	for _, tc := range []struct {
		name, body string
		status     int
		want       string
	}{
		{"another context", batchOf(`{"data":"a"}`, `{"context":"/r/y","data":"b"}`), http.StatusBadRequest, "line 2"},
		{"too many events", batchOf(`{"data":"a"}`, `{"data":"b"}`, `{"data":"c"}`, `{"data":"d"}`), http.StatusRequestEntityTooLarge, "more than 3"},
		{"too large an event", batchOf(`{"data":"a"}`, `{"data":"123456789"}`), http.StatusRequestEntityTooLarge, "line 2"},
		{"too large a body", batchOf(`{"data":"a"}`, `{"type":"`+strings.Repeat("t", 300)+`"}`), http.StatusRequestEntityTooLarge, "limit is 300"},
	} {
		resp, _, text := postBatch(t, s.base+"/r/x", tc.body)
		if resp.StatusCode != tc.status || !strings.Contains(text, tc.want) {
			t.Errorf("%s: %s: %s, want %d naming %q", tc.name, resp.Status, text, tc.status, tc.want)
		}
	}
	if id := lastID(t, hub, "/r/x"); id != 2 {
		t.Errorf("/r/x is at id %d after refused batches, want 2", id)
	}

	// A limit reached half way stops the batch there, and the answer says
	// which events were published.
	resp, a, text = postBatch(t, s.admin+"/comet/publish", batchOf(
		`{"context":"/r/x","data":"3"}`, `{"context":"/r/new1","data":"a"}`,
		`{"context":"/r/new2","data":"b"}`, `{"context":"/r/x","data":"4"}`))
	if resp.StatusCode != http.StatusServiceUnavailable || len(a.Receipts) != 4 || !strings.Contains(a.Error, "line 3") {
		t.Fatalf("batch past max_contexts: %s: %s", resp.Status, text)
	}
	for i, published := range []bool{true, true, false, false} {
		if got := a.Receipts[i].Error == "" && a.Receipts[i].ID > 0; got != published {
			t.Errorf("receipt %d: %+v, published %v, want %v", i, a.Receipts[i], got, published)
		}
	}
	if id := lastID(t, hub, "/r/x"); id != 3 {
		t.Errorf("/r/x is at id %d, want 3: the batch stopped before its last event", id)
	}
}

// TestBatchInClusterModeIsOneRoundTrip publishes a batch of 100 events over
// 10 contexts on one node and follows them on another.
func TestBatchInClusterModeIsOneRoundTrip(t *testing.T) {
	r := startRedis(t)
	node := redisHub(t, r, HubConfig{})
	t.Cleanup(node.Close)
	other := redisHub(t, r, HubConfig{})
	t.Cleanup(other.Close)
	held, err := other.Subscribe("/k3")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	var pipelines, commands atomic.Int64
	redisbroker.Client(node.Broker()).AddHook(countingHook{&pipelines, &commands})
	batch := func() []Publication {
		var b []Publication
		for i := range 100 {
			b = append(b, Publication{Key: fmt.Sprintf("/k%d", i%10), Event: Event{Data: []byte(fmt.Sprint(i))}})
		}
		return b
	}
	receipts, err := node.PublishBatch(batch())
	if err != nil {
		t.Fatal(err)
	}
	for i, rc := range receipts {
		if rc.Cursor.ID != uint64(i/10+1) {
			t.Fatalf("event %d got id %d, want %d", i, rc.Cursor.ID, i/10+1)
		}
	}
	// The first batch may find the script unknown to Redis and send it
	// once; from then on a batch is one pipeline and nothing else.
	pipelines.Store(0)
	commands.Store(0)
	if _, err := node.PublishBatch(batch()); err != nil {
		t.Fatal(err)
	}
	if p, c := pipelines.Load(), commands.Load(); p != 1 || c != 0 {
		t.Errorf("a batch of 100 took %d pipelines and %d other commands, want one pipeline", p, c)
	}
	waitFor(t, "the other node to mirror /k3's 20 events", func() bool { return held.Position().ID == 20 })

	// A Redis that forgot the script gets it again, in order.
	if err := redisbroker.Client(node.Broker()).ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	receipts, err = node.PublishBatch(batch())
	if err != nil || receipts[99].Cursor.ID != 30 {
		t.Fatalf("after SCRIPT FLUSH: %v, last id %d, want 30", err, receipts[99].Cursor.ID)
	}
}

// countingHook counts what a go-redis client sends: pipelines, and commands
// sent one by one.
type countingHook struct{ pipelines, commands *atomic.Int64 }

func (countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.commands.Add(1)
		return next(ctx, cmd)
	}
}

func (h countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		return next(ctx, cmds)
	}
}

// TestBatchOnARouteWithTokens: a route's batch needs a token that allows
// publishing to the route's context, as a single publish does, and an
// idempotent retry of it is answered without publishing again.
func TestBatchOnARouteWithTokens(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `comet /p/* {
		auth publish {
			hmac_secret {env.COMET_TEST_KEY}
		}
	}`)
	tok := mint(t, []byte(testSecret), jose.HS256, "backend", time.Minute, grants{Publish: []string{"/p/x"}})
	body := batchOf(`{"data":"1"}`, `{"data":"2"}`)
	for _, tc := range []struct {
		path   string
		header []string
		status int
	}{
		{"/p/x", nil, http.StatusUnauthorized},
		{"/p/y", bearer(tok), http.StatusForbidden},
		{"/p/x", append(bearer(tok), HeaderIdempotencyKey, "b-1"), http.StatusOK},
		{"/p/x", append(bearer(tok), HeaderIdempotencyKey, "b-1"), http.StatusOK},
	} {
		resp, _, text := postBatch(t, s.base+tc.path, body, tc.header...)
		if resp.StatusCode != tc.status {
			t.Errorf("%s %v: %s %q, want %d", tc.path, tc.header, resp.Status, text, tc.status)
		}
	}
	if id := lastID(t, s.hub(DefaultHubName), "/p/x"); id != 2 {
		t.Errorf("/p/x is at id %d after a batch of two and its retry, want 2", id)
	}
}
