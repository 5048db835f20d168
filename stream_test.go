package comet

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSSEWritesEventsAsTheSpecParsesThem(t *testing.T) {
	s := startCaddy(t, "", `comet /c`)
	resp, p := s.openSSE("/c")
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
	}
	waitFor(t, "the stream to attach", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })

	payloads := []struct{ body, eventType, want string }{
		{"hello", "", "hello"},
		{"two\nlines", "greeting", "two\nlines"},
		{"crlf\r\nand cr\rend\n", "", "crlf\nand cr\nend\n"},
		{"", "empty", ""},
		// Line breaks cannot smuggle fields in, nor can NUL cut one short.
		{"x\nevent: evil\rid: forged\r\ndata: y\x00\nretry: 1", "", "x\nevent: evil\nid: forged\ndata: y\x00\nretry: 1"},
	}
	var cursors []string
	for _, pl := range payloads {
		resp, body := s.do(http.MethodPost, "/c", pl.body, HeaderEventType, pl.eventType)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("publish: %s %s", resp.Status, body)
		}
		cursors = append(cursors, resp.Header.Get(HeaderCursor))
	}
	for i, pl := range payloads {
		ev := nextWithin(t, p, 5*time.Second)
		wantType := pl.eventType
		if wantType == "" {
			wantType = "message"
		}
		if ev != (sseEvent{ID: cursors[i], Type: wantType, Data: pl.want}) {
			t.Errorf("event %d = %+v, want id %q type %q data %q", i, ev, cursors[i], wantType, pl.want)
		}
	}
	if p.retry != 3000 {
		t.Errorf("retry hint %d, want 3000", p.retry)
	}
}

func TestEventTypeCannotInjectFields(t *testing.T) {
	h := testHub(t, HubConfig{})
	for _, bad := range []string{"a\nb", "a\rb", "a\x00b", strings.Repeat("t", MaxEventTypeLength+1)} {
		if _, err := h.Publish("/c", Event{Type: bad}); !errors.Is(err, ErrBadEventType) {
			t.Errorf("type %q: err = %v, want ErrBadEventType", bad, err)
		}
	}
}

func TestSSEResumesWithoutGapOrDuplicate(t *testing.T) {
	s := startCaddy(t, "", `comet /c`)
	first := s.position("/c")
	for i := 1; i <= 3; i++ {
		s.publish("/c", fmt.Sprintf("e%d", i))
	}
	// Replay from history, then live.
	_, p := s.openSSE("/c", "Last-Event-ID", first)
	for i := 1; i <= 3; i++ {
		if ev := nextWithin(t, p, 5*time.Second); ev.Data != fmt.Sprintf("e%d", i) {
			t.Fatalf("replay %d: %+v", i, ev)
		}
	}
	s.publish("/c", "e4")
	if ev := nextWithin(t, p, 5*time.Second); ev.Data != "e4" {
		t.Fatalf("live: %+v", ev)
	}

	// Resume after a disconnect with the id the parser kept, through the
	// query parameter this time, as a client that cannot set headers does.
	resumeFrom := p.lastID
	s.publish("/c", "e5")
	s.publish("/c", "e6")
	_, p = s.openSSE("/c?last_event_id=" + resumeFrom)
	for i := 5; i <= 6; i++ {
		if ev := nextWithin(t, p, 5*time.Second); ev.Data != fmt.Sprintf("e%d", i) {
			t.Fatalf("after reconnect, event %d: %+v", i, ev)
		}
	}
}

func TestSSESaysWhenHistoryNoLongerReachesBack(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\thistory 3\n\t}", `comet /c`)
	var last receipt
	for i := 1; i <= 6; i++ {
		last = s.publish("/c", fmt.Sprintf("e%d", i))
	}
	epoch, _, _ := strings.Cut(last.Cursor, ":")
	_, p := s.openSSE("/c", "Last-Event-ID", epoch+":1")
	if ev := nextWithin(t, p, 5*time.Second); ev.Type != "comet-missed" || ev.Data != "2" {
		t.Fatalf("first event %+v, want comet-missed with 2", ev)
	}
	for i := 4; i <= 6; i++ {
		if ev := nextWithin(t, p, 5*time.Second); ev.Data != fmt.Sprintf("e%d", i) || ev.ID != fmt.Sprintf("%s:%d", epoch, i) {
			t.Fatalf("after the gap: %+v", ev)
		}
	}
	s.publish("/c", "live")
	if ev := nextWithin(t, p, 5*time.Second); ev.Data != "live" {
		t.Fatalf("the stream did not go on after the gap: %+v", ev)
	}
}

func TestNDJSONStream(t *testing.T) {
	s := startCaddy(t, "", `comet /c`)
	resp := s.openStream(nil, "/c", "application/x-ndjson")
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "application/x-ndjson" {
		t.Fatalf("%s, Content-Type %q", resp.Status, ct)
	}
	lines := bufio.NewScanner(resp.Body)
	readLine := func() map[string]any {
		t.Helper()
		for lines.Scan() {
			if lines.Text() == "" {
				continue // heartbeat
			}
			var v map[string]any
			if err := json.Unmarshal(lines.Bytes(), &v); err != nil {
				t.Fatalf("line %q: %v", lines.Text(), err)
			}
			return v
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return nil
	}
	open := readLine()
	if open["control"] != "open" || open["cursor"] == "" {
		t.Fatalf("first line %v", open)
	}
	r1 := s.publish("/c", "text\nwith newline")
	resp2, _ := s.do(http.MethodPost, "/c", "\xff\xfe", "Content-Type", "application/octet-stream", HeaderEventType, "bin")
	if got := readLine(); got["id"] != 1.0 || got["cursor"] != r1.Cursor || got["data"] != "text\nwith newline" || got["content_type"] != "text/plain" {
		t.Errorf("text event %v", got)
	}
	if got := readLine(); got["id"] != 2.0 || got["cursor"] != resp2.Header.Get(HeaderCursor) || got["data_base64"] != "//4=" || got["type"] != "bin" {
		t.Errorf("binary event %v", got)
	}
}

// TestMixedSubscribersSeeTheSameEvents puts long polls, SSE streams and
// NDJSON streams on one context and checks they all get every event, in
// the same order.
func TestMixedSubscribersSeeTheSameEvents(t *testing.T) {
	const perKind, events = 4, 60
	s := startCaddy(t, "comet {\n\t\thistory 1000\n\t}", `comet /c {
		heartbeat off
	}`)
	start := s.position("/c")
	var got receivedEvents
	record := got.record
	var wg sync.WaitGroup
	for i := range perKind {
		wg.Go(func() { // long poll with cursor
			cur := start
			for n := 0; n < events; {
				resp, body := doRequest(t, t.Context(), http.MethodGet, s.base+"/c", "", "Last-Event-ID", cur)
				if resp.StatusCode == http.StatusOK {
					record(fmt.Sprintf("longpoll-%d", i), body)
					n++
				}
				cur = resp.Header.Get(HeaderCursor)
			}
		})
		_, p := s.openSSE("/c", "Last-Event-ID", start)
		wg.Go(func() {
			for range events {
				ev, err := p.next()
				if err != nil {
					t.Error(err)
					return
				}
				record(fmt.Sprintf("sse-%d", i), ev.Data)
			}
		})
		resp := s.openStream(nil, "/c", "application/x-ndjson", "Last-Event-ID", start)
		wg.Go(func() {
			dec := json.NewDecoder(resp.Body)
			for n := 0; n < events; {
				var line struct{ Data *string }
				if err := dec.Decode(&line); err != nil {
					t.Error(err)
					return
				}
				if line.Data != nil {
					record(fmt.Sprintf("stream-%d", i), *line.Data)
					n++
				}
			}
		})
	}
	waitFor(t, "every subscriber to attach", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 3*perKind })
	for i := range events {
		s.publish("/c", fmt.Sprintf("event-%d", i))
	}
	wg.Wait()
	got.checkAllInOrder(t, 3*perKind, events)
}

func TestHeartbeatKeepsAnIdleStreamAlive(t *testing.T) {
	s := startCaddy(t, "", `comet /c {
		heartbeat 100ms
		expiration off
	}`)
	_, p := s.openSSE("/c")
	start := time.Now()
	go func() {
		time.Sleep(550 * time.Millisecond)
		s.publish("/c", "after the quiet")
	}()
	ev := nextWithin(t, p, 5*time.Second)
	idle := time.Since(start)
	// One keep-alive per 100ms of quiet: five in 550ms, give or take the
	// scheduling of a busy test machine.
	if want := int(idle / (100 * time.Millisecond)); p.comments < 3 || p.comments > want {
		t.Errorf("%d keep-alives in %v of quiet, want 3 to %d", p.comments, idle, want)
	}
	if ev.Data != "after the quiet" {
		t.Errorf("event %+v", ev)
	}
}

func TestStreamEndsAtExpiration(t *testing.T) {
	s := startCaddy(t, "", `comet /c {
		expiration 200ms
	}`)
	_, p := s.openSSE("/c")
	start := time.Now()
	ev := nextWithin(t, p, 5*time.Second)
	if ev.Type != "comet-reconnect" || ev.Data != "expired" {
		t.Fatalf("last event %+v, want comet-reconnect expired", ev)
	}
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Errorf("stream ended after %v, before the expiration", took)
	}
	if _, err := p.next(); err != io.EOF {
		t.Errorf("after the last event: %v, want EOF", err)
	}
	waitFor(t, "the subscriber to detach", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 0 })
}

func TestTransportsRestrictTheRoute(t *testing.T) {
	s := startCaddy(t, "", `comet /sse-only {
		transports sse
	}
	comet /polls-only {
		transports longpoll
		expiration 100ms
	}`)
	for _, tc := range []struct {
		path, accept string
		want         int
	}{
		{"/sse-only", "", http.StatusNotAcceptable},
		{"/sse-only", "application/x-ndjson", http.StatusNotAcceptable},
		{"/sse-only", "text/html, text/event-stream;q=0.9", http.StatusOK},
		{"/polls-only", "text/event-stream", http.StatusNotAcceptable},
		{"/polls-only", "text/event-stream;q=0, */*", http.StatusNoContent}, // refused SSE: a long poll
	} {
		if got := statusOf(t, s.base+tc.path, tc.accept); got != tc.want {
			t.Errorf("GET %s with Accept %q: %d, want %d", tc.path, tc.accept, got, tc.want)
		}
	}
}

// statusOf sends a GET with that Accept and returns the status as soon as
// the response header arrives.
func statusOf(t *testing.T, url, accept string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestStreamsThroughEncodeOverHTTP1AndHTTP2 checks that Caddy's encode
// directive compresses a stream without holding events back, on HTTP/1.1
// and on HTTP/2 (cleartext, so the test needs no certificates).
func TestStreamsThroughEncodeOverHTTP1AndHTTP2(t *testing.T) {
	// encode leaves application/x-ndjson alone by default; match it too.
	s := startCaddy(t, "servers {\n\t\tprotocols h1 h2c\n\t}", `encode gzip {
		match {
			header Content-Type text/event-stream*
			header Content-Type application/x-ndjson*
		}
	}
	comet /c {
		expiration off
		heartbeat off
	}`)
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	defer h2c.CloseIdleConnections()
	for _, proto := range []struct {
		name   string
		client *http.Client
		major  int
	}{
		{"HTTP/1.1", &http.Client{Transport: &http.Transport{}}, 1},
		{"HTTP/2", &http.Client{Transport: h2c}, 2},
	} {
		t.Run(proto.name, func(t *testing.T) {
			sse := s.openStream(proto.client, "/c", "text/event-stream")
			ndjson := s.openStream(proto.client, "/c", "application/x-ndjson")
			for _, resp := range []*http.Response{sse, ndjson} {
				if resp.ProtoMajor != proto.major || !resp.Uncompressed {
					t.Fatalf("%s: protocol %s, decompressed %v; want HTTP/%d through gzip",
						resp.Header.Get("Content-Type"), resp.Proto, resp.Uncompressed, proto.major)
				}
			}
			p := newSSEParser(sse.Body)
			lines := bufio.NewScanner(ndjson.Body)
			lines.Scan() // the open line
			for i := range 3 {
				data := fmt.Sprintf("%s event %d", proto.name, i)
				s.publish("/c", data)
				if ev := nextWithin(t, p, 5*time.Second); ev.Data != data {
					t.Fatalf("SSE got %+v, want %q", ev, data)
				}
				if !scanWithin(t, lines, 5*time.Second) || !strings.Contains(lines.Text(), data) {
					t.Fatalf("NDJSON got %q, want a line with %q", lines.Text(), data)
				}
			}
		})
	}
}

// TestSlowReadersDoNotHoldUpOthers runs fast SSE readers beside one that
// stops reading and one that pauses, while large events are published
// back to back. The publisher must never wait; the stopped reader is
// abandoned when a write blocks past write_timeout; the paused one, having
// fallen behind the history, is told so and cut off, and can resume from
// the id it was given without being told of the same gap again; the fast
// readers get every event in order.
func TestSlowReadersDoNotHoldUpOthers(t *testing.T) {
	const events, size, fastReaders = 150, 60_000, 3
	s := startCaddy(t, "comet {\n\t\thistory 30\n\t}", `comet /c {
		expiration off
		heartbeat off
		write_timeout 4s
	}`)
	hub := s.hub(DefaultHubName)
	payload := func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat("x", size) }

	var wg sync.WaitGroup
	fastGot := make([][]string, fastReaders)
	for r := range fastReaders {
		_, p := s.openSSE("/c")
		wg.Go(func() {
			for len(fastGot[r]) < events {
				ev, err := p.next()
				if err != nil {
					t.Errorf("fast reader %d: %v after %d events", r, err, len(fastGot[r]))
					return
				}
				if ev.Type != "message" {
					t.Errorf("fast reader %d got %s %q", r, ev.Type, ev.Data)
					return
				}
				fastGot[r] = append(fastGot[r], ev.Data[:5])
			}
		})
	}

	stopped := s.openStream(smallBufferClient(), "/c", "text/event-stream")
	_ = stopped // never read: its writes must time out

	paused := s.openStream(smallBufferClient(), "/c", "text/event-stream")
	pausedEvents := make(chan []sseEvent, 1)
	// The paused reader reads on once every event is published, so that
	// the gap it is told of is the last: one it resumes past at once.
	publishedAll := make(chan struct{})
	pp := newSSEParser(paused.Body)
	go func() {
		var got []sseEvent
		for {
			ev, err := pp.next()
			if err != nil {
				pausedEvents <- got
				return
			}
			got = append(got, ev)
			if len(got) == 5 {
				<-publishedAll
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	waitFor(t, "every stream to attach", func() bool { return hub.SubscriberCount() == fastReaders+2 })

	var slowest time.Duration
	for i := range events {
		start := time.Now()
		s.publish("/c", payload(i))
		slowest = max(slowest, time.Since(start))
		time.Sleep(2 * time.Millisecond)
	}
	close(publishedAll)
	if slowest > 500*time.Millisecond {
		t.Errorf("a publish took %v: slow readers held up the publisher", slowest)
	}

	wg.Wait()
	for r, got := range fastGot {
		for i, prefix := range got {
			if want := fmt.Sprintf("%05d", i); prefix != want {
				t.Fatalf("fast reader %d: event %d is %s, want %s", r, i, prefix, want)
			}
		}
	}

	var got []sseEvent
	select {
	case got = <-pausedEvents:
	case <-time.After(10 * time.Second):
		t.Fatal("the paused reader's stream did not end")
	}
	n := len(got)
	if n < 2 || got[n-2].Type != "comet-missed" || got[n-1].Type != "comet-reconnect" || got[n-1].Data != "behind" {
		t.Fatalf("paused reader's stream ended with %v, want comet-missed then comet-reconnect behind", lastTypes(got))
	}
	missed, _ := strconv.Atoi(got[n-2].Data)
	lastSeen, _ := strconv.Atoi(got[n-3].Data[:5])
	_, resume := s.openSSE("/c", "Last-Event-ID", got[n-1].ID)
	ev := nextWithin(t, resume, 5*time.Second)
	if ev.Type != "message" || ev.Data[:5] != fmt.Sprintf("%05d", lastSeen+missed+1) {
		t.Errorf("resuming after %d missed from event %d got %s %q, want event %d without a second gap notice",
			missed, lastSeen, ev.Type, ev.Data[:5], lastSeen+missed+1)
	}

	waitFor(t, "the stopped reader to be abandoned", func() bool { return hub.SubscriberCount() == fastReaders+1 })
}

func lastTypes(events []sseEvent) []string {
	var types []string
	for _, ev := range events[max(0, len(events)-3):] {
		types = append(types, ev.Type)
	}
	return types
}
