package comet

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
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
		act           func(s *testServer, hub *Hub)
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
		{name: "stream: events, then expired", options: "expiration 500ms\n\t\theartbeat off", header: sse, stream: true,
			act: func(s *testServer, _ *Hub) {
				s.publish("/on", "one")
				s.publish("/on", "two\nlines")
			}},
		{name: "stream: missed at opening", options: "expiration 300ms", header: append([]string{"Last-Event-ID", "zz:7"}, sse...), stream: true},
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
			if strings.Contains(tc.name, "missed") {
				publishN(t, hub, "/shared", 5) // history holds 3, 4 and 5
			}
			on, off := ask(t, addr, "/on", tc.header...), ask(t, addr, "/off", tc.header...)
			waitFor(t, "both subscribers to attach", func() bool {
				info, ok := hub.Inspect("/shared")
				return ok && info.Subscribers == 2
			})
			waitFor(t, "the /on subscriber to be taken over", func() bool {
				hub.mu.RLock()
				c := hub.contexts["/shared"]
				hub.mu.RUnlock()
				c.mu.RLock()
				defer c.mu.RUnlock()
				return len(c.watchers) == 1
			})
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
