package comet

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

const multiplexSite = `comet /m {
		context room-{query.room}
		multiplex room 4
		heartbeat off
	}`

// multiplexedEvent is the data of an event in a multiplexed SSE stream, and
// an event line of a multiplexed NDJSON stream.
type multiplexedEvent struct {
	Context string `json:"context"`
	ID      uint64 `json:"id"`
	Cursor  string `json:"cursor"`
	Type    string `json:"type"`
	Data    string `json:"data"`
	Control string `json:"control"`
	Missed  string `json:"missed"`
}

func decodeMultiplexed(t *testing.T, data string) multiplexedEvent {
	t.Helper()
	var e multiplexedEvent
	if err := json.Unmarshal([]byte(data), &e); err != nil {
		t.Fatalf("multiplexed data %q: %v", data, err)
	}
	return e
}

// TestOneStreamFollowsSeveralContexts runs a multiplexed SSE stream taken
// over from net/http (the default over HTTP/1.1) and one left on its path.
func TestOneStreamFollowsSeveralContexts(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			testOneStreamFollowsSeveralContexts(t, detach == "on",
				strings.Replace(multiplexSite, "heartbeat off", "heartbeat off\n\t\tdetach "+detach, 1))
		})
	}
}

func testOneStreamFollowsSeveralContexts(t *testing.T, detached bool, site string) {
	s := startCaddy(t, "comet {\n\t\thistory 3\n\t}", site)
	hub := s.hub(DefaultHubName)
	resp, sse := s.openSSE("/m?room=a&room=b&room=c")
	waitFor(t, "the stream to follow three contexts", func() bool { return hub.SubscriberCount() == 3 })
	// A detached stream's body ends with the connection, not in chunks.
	if chunked := len(resp.TransferEncoding) != 0; chunked == detached {
		t.Errorf("Transfer-Encoding %q, want a detached stream: %v", resp.TransferEncoding, detached)
	}
	opened := strings.Split(resp.Header.Get(HeaderCursor), ",")
	if len(opened) != 3 {
		t.Fatalf("the stream opened at %q, want a cursor for each of three contexts", resp.Header.Get(HeaderCursor))
	}

	rb := s.publish("/m?room=b", "to b")
	ra := s.publish("/m?room=a", "to a")
	// Each context keeps its order; across contexts the stream may write
	// them in any order. Each event's id moves its own context's cursor.
	want := map[string]struct {
		data, cursor string
		place        int
	}{"room-a": {"to a", ra.Cursor, 0}, "room-b": {"to b", rb.Cursor, 1}}
	for range 2 {
		ev := nextWithin(t, sse, 5*time.Second)
		got := decodeMultiplexed(t, ev.Data)
		w, ok := want[got.Context]
		if parts := strings.Split(ev.ID, ","); !ok || got.Data != w.data || got.ID != 1 || len(parts) != 3 || parts[w.place] != w.cursor || parts[2] != opened[2] {
			t.Errorf("event %+v with id %q; want one of %v with its cursor in its place", got, ev.ID, want)
		}
		delete(want, got.Context)
	}
	if composite := strings.Join([]string{ra.Cursor, rb.Cursor, opened[2]}, ","); sse.lastID != composite {
		t.Errorf("the stream's cursor after both events is %q, want %q", sse.lastID, composite)
	}
	resume := sse.lastID
	resp.Body.Close()
	waitFor(t, "the stream to leave", func() bool { return hub.SubscriberCount() == 0 })

	// Away: two events for c, five for a (history keeps three).
	rc1, rc2 := s.publish("/m?room=c", "c1"), s.publish("/m?room=c", "c2")
	for i := range 5 {
		s.publish("/m?room=a", "a"+string(rune('1'+i)))
	}
	// The cursor resumes every context: c's two events, a's gap and the
	// three a still holds, nothing of b.
	resp, sse = s.openSSE("/m?room=a&room=b&room=c", "Last-Event-ID", resume)
	defer resp.Body.Close()
	// Contexts take turns; each keeps its own order.
	got := map[string][]string{}
	for range 6 {
		ev := nextWithin(t, sse, 5*time.Second)
		e := decodeMultiplexed(t, ev.Data)
		switch ev.Type {
		case "comet-missed":
			got[e.Context] = append(got[e.Context], "missed "+e.Missed)
		default:
			got[e.Context] = append(got[e.Context], e.Data)
		}
	}
	if a, c := strings.Join(got["room-a"], "|"), strings.Join(got["room-c"], "|"); a != "missed 2|a3|a4|a5" || c != "c1|c2" || len(got) != 2 {
		t.Errorf("after resuming: room-a %q, room-c %q, all %v; want the gap and a3 to a5, and c1, c2", a, c, got)
	}
	if last := strings.Split(sse.lastID, ","); len(last) != 3 || last[1] != rb.Cursor || last[2] != rc2.Cursor {
		t.Errorf("the stream's cursor is %q, want b at %s and c at %s", sse.lastID, rb.Cursor, rc2.Cursor)
	}
	_ = rc1

	// A context deleted ends the stream, saying which.
	s.do(http.MethodDelete, "/m?room=b", "")
	if ev := nextWithin(t, sse, 5*time.Second); ev.Type != "comet-deleted" || decodeMultiplexed(t, ev.Data).Context != "room-b" {
		t.Errorf("after deleting room-b: %+v", ev)
	}
}

func TestMultiplexedNDJSONAndRefusals(t *testing.T) {
	s := startCaddy(t, "", multiplexSite)
	hub := s.hub(DefaultHubName)
	resp := s.openStream(nil, "/m?room=x&room=y", "application/x-ndjson")
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	next := func() multiplexedEvent {
		t.Helper()
		if !scanWithin(t, lines, 5*time.Second) {
			t.Fatal("no line")
		}
		return decodeMultiplexed(t, lines.Text())
	}
	if open := next(); open.Control != "open" || len(strings.Split(open.Cursor, ",")) != 2 {
		t.Fatalf("first line %+v, want open with a cursor of two contexts", open)
	}
	waitFor(t, "the stream to follow two contexts", func() bool { return hub.SubscriberCount() == 2 })
	r := s.publish("/m?room=y", "hello")
	if e := next(); e.Context != "room-y" || e.Data != "hello" || e.Cursor != r.Cursor {
		t.Errorf("event line %+v, want room-y's hello at %s", e, r.Cursor)
	}

	for _, tc := range []struct{ name, path, accept, cursor, want string }{
		{"too many", "/m?room=1&room=2&room=3&room=4&room=5", "text/event-stream", "", "at most 4"},
		{"twice", "/m?room=1&room=1", "text/event-stream", "", "named twice"},
		{"cursor of another list", "/m?room=1&room=2", "text/event-stream", r.Cursor, "names 1 contexts and the request 2"},
		{"a publish of several", "/m?room=1&room=2", "", "", "only a GET"},
	} {
		header := []string{"Accept", tc.accept}
		if tc.cursor != "" {
			header = append(header, "Last-Event-ID", tc.cursor)
		}
		method := http.MethodGet
		if tc.accept == "" {
			method = http.MethodPost
		}
		resp, body := s.do(method, tc.path, "", header...)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s %q, want 400 (%s)", tc.name, resp.Status, body, tc.want)
		}
	}
}

func TestMultiplexNeedsItsParameterInTheTemplate(t *testing.T) {
	for _, tc := range []struct{ cfg, want string }{
		{`{"handler":"comet","multiplex":{"param":"room"}}`, "must use {http.request.uri.query.room}"},
		{`{"handler":"comet","context":"{http.request.uri.query.room}","multiplex":{"param":"room","max":2000}}`, "from 2 to 1024"},
	} {
		cfg := `{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[` + tc.cfg + `]}]}}}}}`
		if err := caddyLoadErr([]byte(cfg)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
}

// TestMultiplexedContextsAreEachAuthorized: a token that allows one of the
// contexts a stream names does not open the others.
func TestMultiplexedContextsAreEachAuthorized(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `comet /m {
		context room-{query.room}
		multiplex room
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
		}
	}`)
	tok := mint(t, []byte(testSecret), jose.HS256, "ada", time.Minute, grants{Subscribe: []string{"room-a", "room-b"}})
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/m?room=a&room=b", http.StatusOK},
		{"/m?room=a&room=c", http.StatusForbidden},
		{"/m?room=c&room=a", http.StatusForbidden},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+tc.path, nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		cancel()
		if resp.StatusCode != tc.status {
			t.Errorf("%s with a token for a and b: %s, want %d", tc.path, resp.Status, tc.status)
		}
		// A refused request subscribes to nothing, and holds nothing.
		waitFor(t, "the request's subscribers to leave", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 0 })
		if _, ok := s.hub(DefaultHubName).Inspect("room-c"); ok {
			t.Errorf("%s: the refused context room-c was created", tc.path)
		}
	}
}

// TestOneLongPollWaitsOnSeveralContexts: a poll of several contexts
// answers the first event of any, oldest first, and the cursor it gives
// back keeps every other context where it was, so that nothing is lost.
func TestOneLongPollWaitsOnSeveralContexts(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\thistory 3\n\t}", `comet /m {
		context room-{query.room}
		multiplex room
		expiration 300ms
	}`)
	hub := s.hub(DefaultHubName)
	const path = "/m?room=a&room=b"
	p := s.startPoll(path)
	waitFor(t, "the poll to wait on two contexts", func() bool { return hub.SubscriberCount() == 2 })
	rb := s.publish("/m?room=b", "b1")
	resp, body := p.wait(t)
	cursor := resp.Header.Get(HeaderCursor)
	parts := strings.Split(cursor, ",")
	if resp.StatusCode != http.StatusOK || body != "b1" || resp.Header.Get(HeaderContext) != "room-b" || len(parts) != 2 || parts[1] != rb.Cursor {
		t.Fatalf("first answer: %s %q from %q at %q; want b1 from room-b, b at %s", resp.Status, body, resp.Header.Get(HeaderContext), cursor, rb.Cursor)
	}
	if resp.Header.Get("ETag") != `"`+cursor+`"` {
		t.Errorf("ETag %q, want the cursor of both", resp.Header.Get("ETag"))
	}

	// Three events while away, over both contexts: each poll answers the
	// oldest left, whichever context it is in.
	for _, e := range []string{"a", "b", "a"} {
		s.publish("/m?room="+e, e+"2")
	}
	var got []string
	for i := range 3 {
		header := []string{"Last-Event-ID", cursor}
		if i == 1 {
			header = []string{"If-None-Match", `"` + cursor + `"`} // as a browser's cache sends it
		}
		resp, body := s.do(http.MethodGet, path, "", header...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("poll %d: %s", i, resp.Status)
		}
		got = append(got, resp.Header.Get(HeaderContext)+" "+body)
		cursor = resp.Header.Get(HeaderCursor)
	}
	if strings.Join(got, "|") != "room-a a2|room-b b2|room-a a2" {
		t.Errorf("answers %q, want room-a a2, room-b b2, room-a a2 in publish order", got)
	}

	// Nothing left: the poll expires with the same cursor.
	resp, _ = s.do(http.MethodGet, path, "", "Last-Event-ID", cursor)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(HeaderCursor) != cursor || resp.Header.Get(HeaderContext) != "" {
		t.Errorf("expired poll: %s at %q (context %q), want 204 at %q", resp.Status, resp.Header.Get(HeaderCursor), resp.Header.Get(HeaderContext), cursor)
	}

	// A gap in one context is told with that context's name.
	for i := range 5 {
		s.publish("/m?room=a", "late"+string(rune('0'+i)))
	}
	resp, body = s.do(http.MethodGet, path, "", "Last-Event-ID", cursor)
	if resp.Header.Get(HeaderMissed) != "2" || resp.Header.Get(HeaderContext) != "room-a" || body != "late2" {
		t.Errorf("after a gap: %s %q, missed %q in %q; want late2 from room-a with 2 missed",
			resp.Status, body, resp.Header.Get(HeaderMissed), resp.Header.Get(HeaderContext))
	}
}

// TestMultiplexedStreamsOverHTTPS follows two contexts on one stream over
// HTTP/1.1 (taken over with its TLS connection), HTTP/2 and HTTP/3.
func TestMultiplexedStreamsOverHTTPS(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", multiplexSite)
	hub := s.hub(DefaultHubName)
	for _, proto := range []int{1, 2, 3} {
		t.Run(protoNames[proto], func(t *testing.T) {
			waitFor(t, "the last subscribers to leave", func() bool { return hub.SubscriberCount() == 0 })
			a, b := fmt.Sprintf("a%d", proto), fmt.Sprintf("b%d", proto)
			client := tlsClient(cfg, proto)
			defer client.CloseIdleConnections()
			resp := s.openStream(client, "/m?room="+a+"&room="+b, "text/event-stream")
			defer resp.Body.Close()
			if resp.ProtoMajor != proto {
				t.Fatalf("answered over %s", resp.Proto)
			}
			sse := newSSEParser(resp.Body)
			waitFor(t, "the stream to follow two contexts", func() bool { return hub.SubscriberCount() == 2 })
			s.publish("/m?room="+b, "to b")
			s.publish("/m?room="+a, "to a")
			want := map[string]bool{"room-" + b + " to b": true, "room-" + a + " to a": true}
			for range 2 { // in either order: each context keeps its own
				e := decodeMultiplexed(t, nextWithin(t, sse, 5*time.Second).Data)
				if got := e.Context + " " + e.Data; !want[got] {
					t.Errorf("got %q, want one of %v", got, want)
				}
				delete(want, e.Context+" "+e.Data)
			}
		})
	}
}

// TestMultiplexedStreamInClusterMode follows two contexts on one node
// while another node, sharing Redis, publishes to them; the stream's
// cursor then resumes on the first node from where it stood.
func TestMultiplexedStreamInClusterMode(t *testing.T) {
	r := startRedis(t)
	s := startCaddy(t, brokerOption(r, ""), multiplexSite)
	other := redisHub(t, r, HubConfig{History: 500})
	defer other.Close()
	hub := s.hub(DefaultHubName)

	resp, sse := s.openSSE("/m?room=a&room=b")
	waitFor(t, "the stream to follow two contexts", func() bool { return hub.SubscriberCount() == 2 })
	ra, err := other.Publish("room-a", Event{Data: []byte("from the other node")})
	if err != nil {
		t.Fatal(err)
	}
	ev := nextWithin(t, sse, 5*time.Second)
	if e := decodeMultiplexed(t, ev.Data); e.Context != "room-a" || e.Data != "from the other node" || !strings.HasPrefix(ev.ID, ra.Cursor.String()+",") {
		t.Fatalf("got %+v at %q, want room-a's event at %s first", e, ev.ID, ra.Cursor)
	}
	resume := sse.lastID
	resp.Body.Close()
	waitFor(t, "the stream to leave", func() bool { return hub.SubscriberCount() == 0 })

	rb, err := other.Publish("room-b", Event{Data: []byte("while away")})
	if err != nil {
		t.Fatal(err)
	}
	resp, sse = s.openSSE("/m?room=a&room=b", "Last-Event-ID", resume)
	defer resp.Body.Close()
	ev = nextWithin(t, sse, 5*time.Second)
	if e := decodeMultiplexed(t, ev.Data); e.Context != "room-b" || e.Data != "while away" || ev.ID != ra.Cursor.String()+","+rb.Cursor.String() {
		t.Errorf("after resuming: %+v at %q, want room-b's event, the stream at %s,%s", e, ev.ID, ra.Cursor, rb.Cursor)
	}
}
