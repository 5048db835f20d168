package comet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLongPollIsAnsweredByPublish(t *testing.T) {
	s := startCaddy(t, "", `comet /lp`)
	p := s.startPoll("/lp")
	waitFor(t, "the poll to park", func() bool { return parkedCount(s.hub(DefaultHubName), "/lp") == 1 })
	if p.answered() {
		t.Fatal("GET was answered before any event")
	}
	r := s.publish("/lp", "hello")
	if r.ID != 1 || r.Woken != 1 {
		t.Errorf("receipt %+v, want id 1 and 1 woken", r)
	}
	resp, body := p.wait(t)
	if resp.StatusCode != http.StatusOK || body != "hello" {
		t.Fatalf("got %s %q, want 200 hello", resp.Status, body)
	}
	for name, want := range map[string]string{
		"Content-Type":  "text/plain",
		"Cache-Control": "no-store",
		"ETag":          `"` + r.Cursor + `"`,
		HeaderCursor:    r.Cursor,
		HeaderEventID:   "1",
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestOnlyTheSameContextIsWoken(t *testing.T) {
	s := startCaddy(t, "", `comet`)
	other := s.startPoll("/other")
	mine := s.startPoll("/mine")
	// Parked: waiting, or detached and watching, not only attached.
	hub := s.hub(DefaultHubName)
	waitFor(t, "both polls to park", func() bool { return parkedCount(hub, "/mine") == 1 && parkedCount(hub, "/other") == 1 })
	if r := s.publish("/mine", "x"); r.Woken != 1 {
		t.Errorf("woken = %d, want 1", r.Woken)
	}
	mine.wait(t)
	time.Sleep(50 * time.Millisecond)
	if other.answered() {
		t.Fatal("a poll on another context was answered")
	}
	other.cancel()
}

func TestExpiryAnswers204WithCurrentCursor(t *testing.T) {
	s := startCaddy(t, "", `comet /lp {
		expiration 200ms
	}`)
	r := s.publish("/lp", "one")
	start := time.Now()
	resp, body := s.startPoll("/lp").wait(t)
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("answered after %v, before the expiration delay", waited)
	}
	if resp.StatusCode != http.StatusNoContent || body != "" {
		t.Fatalf("got %s %q, want 204 and no body", resp.Status, body)
	}
	if got := resp.Header.Get(HeaderCursor); got != r.Cursor {
		t.Errorf("cursor %q, want the current one %q", got, r.Cursor)
	}
	if got := resp.Header.Get(HeaderEventID); got != "1" {
		t.Errorf("event id %q, want 1", got)
	}
}

func TestExpirationOffKeepsThePollParked(t *testing.T) {
	s := startCaddy(t, "", `comet /lp {
		expiration off
	}`)
	p := s.startPoll("/lp")
	waitFor(t, "the poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })
	time.Sleep(300 * time.Millisecond)
	if p.answered() {
		t.Fatal("poll answered with expiration off")
	}
	s.publish("/lp", "x")
	if resp, _ := p.wait(t); resp.StatusCode != http.StatusOK {
		t.Fatalf("got %s", resp.Status)
	}
}

func TestCursorCatchesUpFromHistory(t *testing.T) {
	s := startCaddy(t, "", `comet /lp`)
	first := s.position("/lp")
	for i := 1; i <= 3; i++ {
		s.publish("/lp", fmt.Sprintf("event-%d", i))
	}
	// Each way of sending the cursor back gets the next event at once.
	ways := []struct {
		name string
		req  func(cur string) (*http.Response, string)
	}{
		{"Last-Event-ID", func(cur string) (*http.Response, string) {
			return s.do(http.MethodGet, "/lp", "", "Last-Event-ID", cur)
		}},
		{"query", func(cur string) (*http.Response, string) {
			return s.do(http.MethodGet, "/lp?last_event_id="+cur, "")
		}},
		{"If-None-Match", func(cur string) (*http.Response, string) {
			return s.do(http.MethodGet, "/lp", "", "If-None-Match", `"`+cur+`"`)
		}},
	}
	for _, way := range ways {
		t.Run(way.name, func(t *testing.T) {
			cur := first
			for i := 1; i <= 3; i++ {
				resp, body := way.req(cur)
				if want := fmt.Sprintf("event-%d", i); resp.StatusCode != http.StatusOK || body != want {
					t.Fatalf("got %s %q, want 200 %q", resp.Status, body, want)
				}
				if m := resp.Header.Get(HeaderMissed); m != "" {
					t.Errorf("Comet-Missed %q on a complete history", m)
				}
				cur = resp.Header.Get(HeaderCursor)
			}
		})
	}
}

func TestMissedEventsAreReported(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\thistory 3\n\t}", `comet /lp`)
	var last receipt
	for i := 1; i <= 6; i++ {
		last = s.publish("/lp", fmt.Sprintf("event-%d", i))
	}
	epoch, _, _ := strings.Cut(last.Cursor, ":")

	resp, body := s.do(http.MethodGet, "/lp", "", "Last-Event-ID", epoch+":1")
	if resp.StatusCode != http.StatusOK || body != "event-4" || resp.Header.Get(HeaderMissed) != "2" {
		t.Errorf("cursor behind history: got %s %q missed %q; want event-4 with 2 missed",
			resp.Status, body, resp.Header.Get(HeaderMissed))
	}

	// A cursor from an earlier lifetime of the context: the client cannot
	// know what it missed, and is told so.
	resp, body = s.do(http.MethodGet, "/lp", "", "Last-Event-ID", "earlier:9")
	if resp.StatusCode != http.StatusOK || body != "event-4" || resp.Header.Get(HeaderMissed) != "unknown" {
		t.Errorf("earlier epoch: got %s %q missed %q; want event-4 with unknown missed",
			resp.Status, body, resp.Header.Get(HeaderMissed))
	}
}

func TestCollectedContextStartsANewEpoch(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\thistory 10 100ms\n\t}", `comet /lp`)
	old := s.publish("/lp", "gone soon")
	hub := s.hub(DefaultHubName)
	waitFor(t, "the idle context to be collected", func() bool { return hub.ContextCount() == 0 })

	p := s.startPoll("/lp", "Last-Event-ID", old.Cursor)
	resp, body := p.wait(t)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(HeaderMissed) != "unknown" || body != "" {
		t.Fatalf("got %s %q missed %q; want 204 with unknown missed", resp.Status, body, resp.Header.Get(HeaderMissed))
	}
	if cur := resp.Header.Get(HeaderCursor); cur == old.Cursor || !strings.HasSuffix(cur, ":0") {
		t.Errorf("cursor %q, want the new epoch at 0", cur)
	}
}

// TestNoEventIsLost publishes 200 events back to back while 50 clients
// long-poll with cursors: each client must see every event, in order,
// exactly once.
func TestNoEventIsLost(t *testing.T) {
	const clients, events = 50, 200
	s := startCaddy(t, "comet {\n\t\thistory 1000\n\t}", `comet /lp`)
	start := s.position("/lp")

	received := make([][]string, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cur := start
			for len(received[c]) < events && ctx.Err() == nil {
				resp, body := doRequest(t, ctx, http.MethodGet, s.base+"/lp", "", "Last-Event-ID", cur)
				if m := resp.Header.Get(HeaderMissed); m != "" {
					t.Errorf("client %d: missed %s events", c, m)
					return
				}
				if resp.StatusCode == http.StatusOK {
					received[c] = append(received[c], body)
				}
				cur = resp.Header.Get(HeaderCursor)
			}
		})
	}
	waitFor(t, "clients to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == clients })
	for i := 1; i <= events; i++ {
		s.publish("/lp", fmt.Sprintf("event-%d", i))
	}
	wg.Wait()
	for c, got := range received {
		if len(got) != events {
			t.Errorf("client %d got %d events, want %d", c, len(got), events)
			continue
		}
		for i, body := range got {
			if want := fmt.Sprintf("event-%d", i+1); body != want {
				t.Errorf("client %d: event %d is %q, want %q", c, i+1, body, want)
				break
			}
		}
	}
}

// TestDisconnectFreesTheSubscriber checks that a client that goes away
// leaves nothing behind: no subscriber, no goroutine, no context.
func TestDisconnectFreesTheSubscriber(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\thistory 10 50ms\n\t}", `comet`)
	hub := s.hub(DefaultHubName)
	s.position("/warm-up") // start the server's and client's connection machinery
	waitFor(t, "the warm-up context to be collected", func() bool { return hub.ContextCount() == 0 })
	http.DefaultClient.CloseIdleConnections()
	baseline := runtime.NumGoroutine()

	const n = 20
	polls := make([]*poll, n)
	for i := range polls {
		polls[i] = s.startPoll(fmt.Sprintf("/ctx-%d", i))
	}
	waitFor(t, "polls to park", func() bool { return hub.SubscriberCount() == n })
	for _, p := range polls {
		p.cancel()
		<-p.done
	}
	waitFor(t, "subscribers to detach", func() bool { return hub.SubscriberCount() == 0 })
	waitFor(t, "contexts to be collected", func() bool { return hub.ContextCount() == 0 })
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "goroutines to return to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}

func TestPlaceholdersReachTheHeaderDirective(t *testing.T) {
	s := startCaddy(t, "", "header /lp >X-JSON `\\{\"counter\":{comet.event.id}\\}`\n"+
		"header /lp >X-Comet \"{comet.context} {comet.subscribers}\"\ncomet /lp {\n\texpiration 100ms\n}")
	p := s.startPoll("/lp")
	waitFor(t, "the poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })

	resp, _ := s.do(http.MethodPost, "/lp", "")
	if got := resp.Header.Get("X-JSON"); got != `{"counter":1}` {
		t.Errorf("POST X-JSON = %q", got)
	}
	if got := resp.Header.Get("X-Comet"); got != "/lp 1" {
		t.Errorf("POST X-Comet = %q, want the context and 1 woken", got)
	}
	resp, _ = p.wait(t)
	if got := resp.Header.Get("X-JSON"); got != `{"counter":1}` {
		t.Errorf("long poll X-JSON = %q", got)
	}
	// Expiry answers the seed's onInterrupt: the counter is there too.
	resp, _ = s.startPoll("/lp").wait(t)
	if got := resp.Header.Get("X-JSON"); resp.StatusCode != http.StatusNoContent || got != `{"counter":1}` {
		t.Errorf("expiry: %s X-JSON = %q", resp.Status, got)
	}
	resp, _ = s.do(http.MethodHead, "/lp", "")
	if got := resp.Header.Get("X-JSON"); got != `{"counter":1}` {
		t.Errorf("HEAD X-JSON = %q", got)
	}
}

func TestContextTemplate(t *testing.T) {
	s := startCaddy(t, "", `comet /chat {
		context room-{query.room}
	}`)
	p := s.startPoll("/chat?room=a")
	waitFor(t, "the poll to park", func() bool { return parkedCount(s.hub(DefaultHubName), "room-a") == 1 })
	if r := s.publish("/chat?room=b", "for b"); r.Woken != 0 {
		t.Errorf("publish to room b woke %d", r.Woken)
	}
	if r := s.publish("/chat?room=a", "for a"); r.Woken != 1 {
		t.Errorf("publish to room a woke %d", r.Woken)
	}
	if _, body := p.wait(t); body != "for a" {
		t.Errorf("got %q", body)
	}
}

func TestBadRequests(t *testing.T) {
	s := startCaddy(t, "", `comet /lp {
		max_message_size 16
	}
	comet /readonly {
		publish off
	}
	comet /long/*`)
	for _, tc := range []struct {
		name       string
		method     string
		path       string
		body       string
		header     []string
		wantStatus int
		wantAllow  string
	}{
		{"bad Last-Event-ID", http.MethodGet, "/lp", "", []string{"Last-Event-ID", "17"}, 400, ""},
		{"bad query cursor", http.MethodGet, "/lp?last_event_id=x:y", "", nil, 400, ""},
		{"bad If-None-Match", http.MethodGet, "/lp", "", []string{"If-None-Match", "*"}, 400, ""},
		{"too large", http.MethodPost, "/lp", strings.Repeat("x", 17), nil, 413, ""},
		{"largest allowed", http.MethodPost, "/lp", strings.Repeat("x", 16), nil, 200, ""},
		{"PUT", http.MethodPut, "/lp", "", nil, 405, "GET, HEAD, POST, DELETE"},
		{"POST with publish off", http.MethodPost, "/readonly", "x", nil, 405, "GET, HEAD"},
		{"DELETE with publish off", http.MethodDelete, "/readonly", "", nil, 405, "GET, HEAD"},
		{"DELETE of no context", http.MethodDelete, "/long/never-used", "", nil, 404, ""},
		{"longest context key", http.MethodHead, "/long/" + strings.Repeat("k", MaxKeyLength-6), "", nil, 204, ""},
		{"context key too long", http.MethodGet, "/long/" + strings.Repeat("k", MaxKeyLength-5), "", nil, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := s.do(tc.method, tc.path, tc.body, tc.header...)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %s, want %d", resp.Status, tc.wantStatus)
			}
			if got := resp.Header.Get("Allow"); got != tc.wantAllow {
				t.Errorf("Allow %q, want %q", got, tc.wantAllow)
			}
		})
	}

	t.Run("too large without Content-Length", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, s.base+"/lp", io.NopCloser(strings.NewReader(strings.Repeat("x", 100))))
		req.ContentLength = -1 // chunked: the limit must hold while reading
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status %s, want 413", resp.Status)
		}
	})
}

// TestHeadDoesNotCreateContexts asks where many contexts that do not
// exist stand, on a hub that holds three: HEAD needs no permission, so it
// must not create them (a way to fill max_contexts for free), and the
// cursor it gives must still bring its client every event published after
// it, without a gap notice, once the context exists.
func TestHeadDoesNotCreateContexts(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\tmax_contexts 3\n\t}", `comet`)
	hub := s.hub(DefaultHubName)
	for i := range 50 {
		s.position(fmt.Sprintf("/nobody/%d", i))
	}
	if n := hub.ContextCount(); n != 0 {
		t.Fatalf("HEAD created %d contexts", n)
	}

	cursor := s.position("/later")
	first, second := s.publish("/later", "first"), s.publish("/later", "second")
	resp, body := s.do(http.MethodGet, "/later", "", "Last-Event-ID", cursor)
	if resp.StatusCode != http.StatusOK || body != "first" || resp.Header.Get(HeaderMissed) != "" ||
		resp.Header.Get(HeaderCursor) != first.Cursor {
		t.Fatalf("poll from HEAD's cursor %s: %s %q at %s, missed %q; want %q at %s with nothing missed",
			cursor, resp.Status, body, resp.Header.Get(HeaderCursor), resp.Header.Get(HeaderMissed), "first", first.Cursor)
	}
	resp, body = s.do(http.MethodGet, "/later", "", "Last-Event-ID", resp.Header.Get(HeaderCursor))
	if body != "second" || resp.Header.Get(HeaderCursor) != second.Cursor {
		t.Errorf("next poll: %q at %s", body, resp.Header.Get(HeaderCursor))
	}

	// A stream opened from HEAD's cursor before the context exists waits
	// for its first event.
	cursor = s.position("/stream")
	_, stream := s.openSSE("/stream", "Last-Event-ID", cursor)
	waitFor(t, "the stream to attach", func() bool { return hub.SubscriberCount() == 1 })
	s.publish("/stream", "one")
	if ev := nextWithin(t, stream, 5*time.Second); ev.Type != "message" || ev.Data != "one" {
		t.Errorf("stream from HEAD's cursor got %s %q", ev.Type, ev.Data)
	}

	// Once the hub loses events, an absent cursor given before no longer
	// proves that nothing was missed.
	cursor = s.position("/deleted")
	s.publish("/deleted", "gone")
	s.do(http.MethodDelete, "/deleted", "")
	s.publish("/deleted", "anew")
	resp, body = s.do(http.MethodGet, "/deleted", "", "Last-Event-ID", cursor)
	if resp.Header.Get(HeaderMissed) != "unknown" {
		t.Errorf("poll from before a deletion: %s %q, missed %q; want missed unknown", resp.Status, body, resp.Header.Get(HeaderMissed))
	}
}

func TestLimitsAnswer503WithRetryAfter(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\tmax_subscribers 2\n\t\tmax_contexts 3\n\t}", `comet`)
	a, b := s.startPoll("/a"), s.startPoll("/a")
	waitFor(t, "polls to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 2 })

	resp, _ := s.do(http.MethodGet, "/a", "")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("subscriber over the limit: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
	s.publish("/b", "x")
	s.publish("/c", "x")
	resp, _ = s.do(http.MethodPost, "/d", "x")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("context over the limit: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
	a.cancel()
	b.cancel()
}
