package comet

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The protocol's decisions are made once (protocol.go) for every way of
// holding a subscriber. TestEveryDecisionIsTheSameOnEveryPath makes each
// decision happen to a subscriber held in net/http and to one taken over
// from it, on one context, and compares the bytes each gets.

// protocolSite serves one context, /shared, on a route that takes
// subscribers over and one that does not.
func protocolSite(options string) string {
	return fmt.Sprintf(`comet /on {
		context /shared
		%[1]s
	}
	comet /off {
		context /shared
		detach off
		%[1]s
	}`, options)
}

// wireAnswer is an answer read off a bare connection, as sent.
type wireAnswer struct {
	conn   net.Conn
	raw    bytes.Buffer // the status line and headers as written
	header []string     // header lines that must match
	body   []byte       // the body, de-chunked
}

// ask sends a GET on a new connection.
func ask(t *testing.T, addr, path string, header ...string) *wireAnswer {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n", path, addr)
	for i := 0; i+1 < len(header); i += 2 {
		req += header[i] + ": " + header[i+1] + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	return &wireAnswer{conn: conn}
}

// read reads the whole answer (a stream until it ends), keeping the
// header lines but those that say how the body is framed on this
// connection, which differ by design: Date, Connection, Transfer-Encoding.
func (a *wireAnswer) read(t *testing.T) {
	t.Helper()
	_ = a.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(io.TeeReader(a.conn, &a.raw))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.body, err = io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	head, _, _ := strings.Cut(a.raw.String(), "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n") {
		name, _, _ := strings.Cut(line, ":")
		switch strings.ToLower(name) {
		case "date", "connection", "transfer-encoding":
			continue
		}
		a.header = append(a.header, line)
	}
}

// sseRetryLine is the reconnection delay a stream ending at shutdown
// draws at random.
var sseRetryLine = regexp.MustCompile(`retry: \d+`)

func TestEveryDecisionIsTheSameOnEveryPath(t *testing.T) {
	sse := []string{"Accept", "text/event-stream"}
	for _, tc := range []struct {
		name, options string
		header        []string // the subscribe request's
		stream        bool
		// A long poll that has its answer at once is never taken over:
		// both routes answer it in net/http, with the same decision.
		answeredAtOnce bool
		published      int // events published before subscribing; history holds 3
		act            func(s *testServer, hub *Hub)
	}{
		{name: "long poll: event", header: nil, act: func(s *testServer, _ *Hub) {
			s.publish("/on", "the event")
		}},
		{name: "long poll: 204 at expiration", options: "expiration 300ms"},
		{name: "long poll: 410 when deleted", act: func(s *testServer, _ *Hub) {
			s.do(http.MethodDelete, "/on", "")
		}},
		{name: "long poll: 503 at shutdown", act: func(_ *testServer, hub *Hub) {
			hub.Close()
		}},
		{name: "long poll: missed, then an event", header: []string{"Last-Event-ID", "zz:7"}, answeredAtOnce: true, published: 5},
		{name: "long poll: missed, none held", header: []string{"Last-Event-ID", "zz:7"}, answeredAtOnce: true},
		{name: "stream: events, then expired", options: "expiration 500ms\n\t\theartbeat off", header: sse, stream: true,
			act: func(s *testServer, _ *Hub) {
				s.publish("/on", "one")
				s.publish("/on", "two\nlines")
			}},
		{name: "stream: missed at opening", options: "expiration 300ms", header: append([]string{"Last-Event-ID", "zz:7"}, sse...), stream: true, published: 5},
		{name: "stream: heartbeat", options: "expiration 500ms\n\t\theartbeat 300ms", header: sse, stream: true},
		{name: "stream: deleted", header: sse, stream: true, act: func(s *testServer, _ *Hub) {
			s.publish("/on", "last")
			s.do(http.MethodDelete, "/on", "")
		}},
		{name: "stream: shutdown", header: sse, stream: true, act: func(s *testServer, hub *Hub) {
			s.publish("/on", "last")
			hub.Close()
		}},
		{name: "NDJSON stream: shutdown", header: []string{"Accept", "application/x-ndjson"}, stream: true,
			act: func(s *testServer, hub *Hub) {
				s.publish("/on", "last")
				hub.Close()
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startCaddy(t, "comet {\n\t\thistory 3\n\t}", protocolSite(tc.options))
			hub := s.hub(DefaultHubName)
			addr := strings.TrimPrefix(s.base, "http://")
			publishN(t, hub, "/shared", tc.published)
			on, off := ask(t, addr, "/on", tc.header...), ask(t, addr, "/off", tc.header...)
			if !tc.answeredAtOnce {
				waitFor(t, "both subscribers to attach", func() bool {
					info, ok := hub.Inspect("/shared")
					return ok && info.Subscribers == 2
				})
			}
			if !tc.answeredAtOnce {
				waitFor(t, "the /on subscriber to be taken over", func() bool { return watcherCount(hub, "/shared") == 1 })
			}
			if tc.act != nil {
				tc.act(s, hub)
			}
			on.read(t)
			off.read(t)
			onBody, offBody := string(on.body), string(off.body)
			if strings.Contains(tc.name, "shutdown") {
				onBody, offBody = sseRetryLine.ReplaceAllString(onBody, "retry: …"), sseRetryLine.ReplaceAllString(offBody, "retry: …")
			}
			t.Logf("answer:\n%s\n%s", strings.Join(on.header, "\n"), on.body)
			if a, b := strings.Join(on.header, "\n"), strings.Join(off.header, "\n"); a != b {
				t.Errorf("taken over, the headers were\n%s\nin net/http\n%s", a, b)
			}
			if onBody != offBody {
				t.Errorf("taken over, the body was\n%q\nin net/http\n%q", onBody, offBody)
			}
			if len(on.body) == 0 && tc.stream {
				t.Error("the stream wrote nothing")
			}
		})
	}
}

// TestFallingBehindEndsTheSameOnEveryPath stops reading two streams, one
// in net/http and one taken over, while more is published than the history
// and the sockets hold. Where each one falls behind depends on its
// buffers, so the bytes cannot match; what both must do is the same: every
// event in order up to the gap, then comet-missed with the cursor to
// resume from and comet-reconnect behind, and a resume from that cursor
// that is told of no second gap.
func TestFallingBehindEndsTheSameOnEveryPath(t *testing.T) {
	const events, size = 150, 60_000
	s := startCaddy(t, "comet {\n\t\thistory 5\n\t}", protocolSite("expiration off\n\t\theartbeat off"))
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")
	open := func(path string) (*http.Response, net.Conn) {
		dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
		}}
		conn, err := dialer.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp, conn
	}
	on, onConn := open("/on")
	off, offConn := open("/off")
	waitFor(t, "both streams to attach, one taken over", func() bool {
		info, ok := hub.Inspect("/shared")
		return ok && info.Subscribers == 2 && watcherCount(hub, "/shared") == 1
	})
	payload := strings.Repeat("x", size)
	for i := range events {
		s.publish("/on", fmt.Sprintf("%03d%s", i, payload))
	}
	for route, resp := range map[string]*http.Response{"/on": on, "/off": off} {
		conn := map[string]net.Conn{"/on": onConn, "/off": offConn}[route]
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		p := newSSEParser(resp.Body)
		var got []sseEvent
		for {
			ev, err := p.next()
			if err != nil {
				break
			}
			got = append(got, ev)
		}
		n := len(got)
		if n < 3 || got[n-2].Type != "comet-missed" || got[n-2].ID == "" || got[n-1].Type != "comet-reconnect" || got[n-1].Data != "behind" {
			t.Fatalf("%s: the stream ended with %v, want comet-missed with an id, then comet-reconnect behind", route, lastTypes(got))
		}
		seen := 0
		for _, ev := range got[:n-2] {
			if ev.Type != "message" {
				continue
			}
			if want := fmt.Sprintf("%03d", seen); ev.Data[:3] != want {
				t.Fatalf("%s: event %s where %s was next", route, ev.Data[:3], want)
			}
			seen++
		}
		missed, _ := strconv.Atoi(got[n-2].Data)
		_, resume := s.openSSE(route, "Last-Event-ID", got[n-2].ID)
		ev := nextWithin(t, resume, 5*time.Second)
		if want := fmt.Sprintf("%03d", seen+missed); ev.Type != "message" || ev.Data[:3] != want {
			t.Errorf("%s: after %d events and %d missed, the resume got %s %.3q, want event %s and no second gap", route, seen, missed, ev.Type, ev.Data, want)
		}
		t.Logf("%s: %d events, then %d missed", route, seen, missed)
	}
}

// TestExpiryNeverSkipsAnEventPublishedAsItEnds decides an expired poll's
// answer after an event was published behind the poll's back, as happens
// when a publish lands between the end of the wait and the answer: the
// answer must give back the cursor the poll waited after, from which the
// next poll gets that event, and not the context's newer position, which
// would skip it without a word.
func TestExpiryNeverSkipsAnEventPublishedAsItEnds(t *testing.T) {
	hub := testHub(t, HubConfig{})
	sub, err := hub.Subscribe("/c")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	after := sub.Start()
	if _, err := hub.Publish("/c", Event{Data: []byte("late")}); err != nil {
		t.Fatal(err)
	}
	for _, end := range []error{errExpired, ErrHubClosed} {
		a, _ := answerPoll(sub, after, Delivery{}, false, end)
		if a.cursor != after {
			t.Errorf("%v: answered cursor %s, want the poll's own %s", end, a.cursor, after)
		}
		if d, ready, err := sub.Poll(a.cursor); err != nil || !ready || string(d.Event.Data) != "late" {
			t.Errorf("%v: the next poll from %s got %+v, ready %v, %v; want the late event", end, a.cursor, d, ready, err)
		}
	}
}
