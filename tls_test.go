package comet

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// TestStreamsOverTLSAreTakenOverOnHTTP1 opens SSE and NDJSON streams over
// HTTPS: over HTTP/1.1 they are taken over with their TLS connection,
// over HTTP/2 they stay in the server, and every one gets every event,
// its heartbeat and its end.
func TestStreamsOverTLSAreTakenOverOnHTTP1(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", `comet /s {
		expiration 1500ms
		heartbeat 300ms
	}`)
	hub := s.hub(DefaultHubName)
	for _, tc := range []struct {
		name     string
		proto    int
		accept   string
		detached bool
	}{
		{"SSE over HTTP/1.1", 1, "text/event-stream", true},
		{"NDJSON over HTTP/1.1", 1, "application/x-ndjson", true},
		{"SSE over HTTP/2", 2, "text/event-stream", false},
		{"NDJSON over HTTP/2", 2, "application/x-ndjson", false},
		{"SSE over HTTP/3", 3, "text/event-stream", false},
		{"NDJSON over HTTP/3", 3, "application/x-ndjson", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, s.base+"/s", nil)
			req.Header.Set("Accept", tc.accept)
			resp, err := tlsClient(cfg, tc.proto).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.ProtoMajor != tc.proto {
				t.Fatalf("answered over %s", resp.Proto)
			}
			// nginx, the one proxy that reads it, forwards to upstreams
			// over HTTP/1.x only.
			if accel, want := resp.Header.Get("X-Accel-Buffering"), map[int]string{1: "no"}[tc.proto]; accel != want {
				t.Errorf("X-Accel-Buffering %q, want %q", accel, want)
			}
			if resp.Header.Get("Incremental") != "?1" {
				t.Errorf("Incremental %q, want ?1", resp.Header.Get("Incremental"))
			}
			waitFor(t, "the stream to attach", func() bool { return hub.SubscriberCount() == 1 })
			if tc.detached {
				waitFor(t, "the stream to be taken over", func() bool { return watcherCount(hub, "/s") == 1 })
			}
			for i := range 3 {
				if _, err := hub.Publish("/s", Event{Data: fmt.Appendf(nil, "event %d", i)}); err != nil {
					t.Fatal(err)
				}
			}
			lines := bufio.NewScanner(resp.Body)
			var events, heartbeats int
			ended := false
			for !ended && lines.Scan() {
				line := lines.Text()
				switch {
				case strings.Contains(line, "event "):
					if want := fmt.Sprintf("event %d", events); !strings.Contains(line, want) {
						t.Fatalf("got %q where %q was next", line, want)
					}
					// A stream is taken over, if at all, before its first event.
					if events == 0 && !tc.detached && watcherCount(hub, "/s") != 0 {
						t.Fatal("a stream over HTTP/2 was taken over")
					}
					events++
				case line == ": keep-alive" || line == "" && tc.accept == "application/x-ndjson":
					heartbeats++
				case strings.Contains(line, "expired"):
					ended = true
				}
			}
			if events != 3 || heartbeats == 0 || !ended {
				t.Errorf("%d events, %d heartbeats, ended %v; want 3 events, heartbeats and an end at expiration", events, heartbeats, ended)
			}
			waitFor(t, "the stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
		})
	}
}

// TestTLSStreamsEndAtShutdown closes the hub, as Caddy's exit does, under
// streams taken over with their TLS connection: each gets its last words
// at once, from its own goroutine, and is freed.
func TestTLSStreamsEndAtShutdown(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", `comet /s {
		expiration off
		heartbeat off
	}`)
	hub := s.hub(DefaultHubName)
	const streams = 20
	bodies := make([]*bufio.Scanner, streams)
	for i := range bodies {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/s", nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := tlsClient(cfg, 1).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		bodies[i] = bufio.NewScanner(resp.Body)
	}
	waitFor(t, "every stream to be taken over", func() bool { return watcherCount(hub, "/s") == streams })
	began := time.Now()
	hub.Close()
	for i, lines := range bodies {
		last := ""
		for lines.Scan() {
			if line := lines.Text(); line != "" {
				last = line
			}
		}
		if last != "data: shutdown" {
			t.Fatalf("stream %d ended with %q, want the shutdown notice", i, last)
		}
	}
	waitFor(t, "every stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("streams took %v to end", took)
	}
}

// followed is what a subscriber got: an event, a missed notice, a
// heartbeat, or the end of its stream or poll, with its reason.
type followed struct {
	kind   string // event, missed, heartbeat or end
	data   string // the event's data, the missed count, the end's reason
	cursor string
}

// follow subscribes to a context from a cursor as a client of the given
// transport does (for long poll, poll after poll, each from the cursor of
// the last answer) and sends what it gets on the channel it returns. It
// stops at the end of a stream or at a long poll answered without an
// event, and when the test ends.
func follow(t *testing.T, s *testServer, client *http.Client, proto int, transport, key, cursor string) <-chan followed {
	t.Helper()
	got := make(chan followed, 100)
	if transport == "long poll" {
		go func() {
			defer close(got)
			for {
				p := s.startPollWith(client, key, "Last-Event-ID", cursor)
				select {
				case <-p.done:
				case <-t.Context().Done():
					p.cancel()
					return
				}
				if p.err != nil {
					got <- followed{kind: "end", data: p.err.Error()}
					return
				}
				if p.resp.ProtoMajor != proto {
					t.Errorf("answered over %s", p.resp.Proto)
				}
				if n := p.resp.Header.Get(HeaderMissed); n != "" {
					got <- followed{kind: "missed", data: n}
				}
				if p.resp.StatusCode != http.StatusOK {
					got <- followed{kind: "end", data: p.resp.Status}
					return
				}
				cursor = p.resp.Header.Get(HeaderCursor)
				got <- followed{kind: "event", data: p.body, cursor: cursor}
			}
		}()
		return got
	}
	accept := map[string]string{"SSE": "text/event-stream", "NDJSON": "application/x-ndjson"}[transport]
	resp := s.openStream(client, key, accept, "Last-Event-ID", cursor)
	t.Cleanup(func() { resp.Body.Close() }) // openStream's is the server's test's
	if resp.ProtoMajor != proto {
		t.Errorf("answered over %s", resp.Proto)
	}
	go func() {
		defer close(got)
		lines := bufio.NewScanner(resp.Body)
		var ev followed // the SSE event being read
		for lines.Scan() {
			line := lines.Text()
			if transport == "NDJSON" {
				got <- ndjsonFollowed(t, line)
				continue
			}
			name, value, _ := strings.Cut(line, ": ")
			switch {
			case line == ": keep-alive":
				got <- followed{kind: "heartbeat"}
			case line == "" && ev.kind != "":
				got <- ev
				ev = followed{}
			case name == "id":
				ev.cursor = value
			case name == "data":
				ev.data = value
				if ev.kind == "" {
					ev.kind = "event"
				}
			case name == "event":
				ev.kind = map[string]string{"comet-missed": "missed", "comet-reconnect": "end", "comet-deleted": "end"}[value]
			}
		}
		got <- followed{kind: "end", data: "closed"}
	}()
	return got
}

func ndjsonFollowed(t *testing.T, line string) followed {
	if line == "" {
		return followed{kind: "heartbeat"}
	}
	var v struct {
		Control, Missed, Reason, Cursor string
		Data                            *string
	}
	if err := json.Unmarshal([]byte(line), &v); err != nil {
		t.Errorf("NDJSON line %q: %v", line, err)
	}
	switch v.Control {
	case "":
		return followed{kind: "event", data: *v.Data, cursor: v.Cursor}
	case "missed":
		return followed{kind: "missed", data: v.Missed}
	case "open":
		return followed{kind: "open", cursor: v.Cursor}
	default:
		return followed{kind: "end", data: v.Reason}
	}
}

// expect returns the next thing got that is not a heartbeat or a stream's
// opening, failing the test if it is not want or none comes in time.
func expect(t *testing.T, got <-chan followed, want followed) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f := <-got:
			switch {
			case f.kind == "heartbeat":
				continue
			case f.kind == "open":
				continue
			case want.cursor == "" && f.kind != "event":
				f.cursor = "" // control lines may move the cursor
			}
			if f != want {
				t.Fatalf("got %+v, want %+v", f, want)
			}
			return
		case <-timeout:
			t.Fatalf("no %+v within 5s", want)
		}
	}
}

// expectHeartbeat fails the test unless a stream's next line is a
// heartbeat.
func expectHeartbeat(t *testing.T, got <-chan followed) {
	t.Helper()
	select {
	case f := <-got:
		if f.kind != "heartbeat" {
			t.Fatalf("got %+v, want a heartbeat", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat within 5s")
	}
}

// TestEveryTransportKeepsItsGuaranteesOverHTTPS follows a context with
// each transport over HTTPS, HTTP/1.1 and HTTP/2, and checks what the
// transport promises on plaintext: resuming from a cursor without a gap
// or a duplicate, a missed notice where history is gone, heartbeats on
// streams, and a reload that keeps the subscriber. Each asserts the path
// it is on: streams over HTTP/1.1 are taken over with their TLS
// connection; long polls over TLS, and everything over HTTP/2, stay in
// the server.
func TestEveryTransportKeepsItsGuaranteesOverHTTPS(t *testing.T) {
	const globals = "comet {\n\t\thistory 4\n\t}"
	site := func(version int) string {
		return fmt.Sprintf(`comet /c/* {
		heartbeat 200ms
	}
	respond /version "%d"`, version)
	}
	s, cfg := startTLSCaddy(t, globals, site(1))
	hub := s.hub(DefaultHubName)
	version := 1
	for _, transport := range []string{"long poll", "SSE", "NDJSON"} {
		for _, proto := range []int{1, 2, 3} {
			name := transport + " over " + protoNames[proto]
			t.Run(name, func(t *testing.T) {
				key := "/c/" + strings.ReplaceAll(name, " ", "-")
				waitFor(t, "the last subscribers to leave", func() bool { return hub.SubscriberCount() == 0 })
				client := tlsClient(cfg, proto)
				defer client.CloseIdleConnections()
				var r []receipt
				for i := range 3 {
					r = append(r, s.publish(key, fmt.Sprint("e", i)))
				}

				// Resuming from the first event's cursor.
				got := follow(t, s, client, proto, transport, key, r[0].Cursor)
				expect(t, got, followed{"event", "e1", r[1].Cursor})
				expect(t, got, followed{"event", "e2", r[2].Cursor})
				waitFor(t, "the subscriber to wait", func() bool { return hub.SubscriberCount() == 1 })
				expectPath(t, hub, key, proto == 1, 1)
				if transport != "long poll" {
					expectHeartbeat(t, got)
				}

				// A reload keeps it.
				version++
				s.reload(globals, site(version))
				waitFor(t, "the new config", func() bool {
					// The old config's server closes its idle connections
					// as the new one starts: a request may meet one.
					body, ok := tryGet(s.client, s.base+"/version")
					return ok && body == fmt.Sprint(version)
				})
				r = append(r, s.publish(key, "e3"))
				expect(t, got, followed{"event", "e3", r[3].Cursor})

				// A cursor whose events history no longer holds: told so.
				for i := 4; i < 8; i++ {
					r = append(r, s.publish(key, fmt.Sprint("e", i)))
				}
				late := follow(t, s, client, proto, transport, key, r[1].Cursor)
				expect(t, late, followed{"missed", "2", ""})
				expect(t, late, followed{"event", "e4", r[4].Cursor})
				for i := 4; i < 8; i++ {
					expect(t, got, followed{"event", fmt.Sprint("e", i), r[i].Cursor})
				}
			})
		}
	}
}

// TestStalledReadersAreDroppedOverHTTPS publishes large events to a
// stream whose reader stopped reading, beside one that reads, over
// HTTP/1.1 on TLS (the stopped reader's socket buffer fills) and HTTP/2
// (its flow-control window closes): the publisher never waits, the
// reader gets every event, and the stopped one is dropped after
// write_timeout.
func TestStalledReadersAreDroppedOverHTTPS(t *testing.T) {
	// More than a socket's send buffer grows to (4 MiB on Linux).
	const events, size = 100, 60_000
	s, cfg := startTLSCaddy(t, "comet {\n\t\thistory 100\n\t}", `comet /c/* {
		heartbeat off
		expiration off
		write_timeout 1s
	}`)
	hub := s.hub(DefaultHubName)
	for _, proto := range []int{1, 2, 3} {
		name := protoNames[proto]
		t.Run(name, func(t *testing.T) {
			key := "/c/" + name
			waitFor(t, "the last subscribers to leave", func() bool { return hub.SubscriberCount() == 0 })
			stalled := s.openStream(stallingClient(cfg, proto), key, "text/event-stream")
			t.Cleanup(func() { stalled.Body.Close() })
			reader := tlsClient(cfg, proto)
			defer reader.CloseIdleConnections()
			got := follow(t, s, reader, proto, "SSE", key, "")
			waitFor(t, "both streams to wait", func() bool { return hub.SubscriberCount() == 2 })
			expectPath(t, hub, key, proto == 1, 2)

			var slowest time.Duration
			for i := range events {
				start := time.Now()
				s.publish(key, fmt.Sprintf("%03d%s", i, strings.Repeat("x", size)))
				slowest = max(slowest, time.Since(start))
			}
			if slowest > 500*time.Millisecond {
				t.Errorf("a publish took %v: the stalled reader held up the publisher", slowest)
			}
			for i := range events {
				select {
				case f := <-got:
					if f.kind != "event" || f.data[:3] != fmt.Sprintf("%03d", i) {
						t.Fatalf("the reader got %s %.10q, want event %d", f.kind, f.data, i)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("the reader got %d of %d events", i, events)
				}
			}
			waitFor(t, "the stalled reader to be dropped", func() bool { return hub.SubscriberCount() == 1 })
		})
	}
}

// expectPath fails the test unless the n subscribers of a context are all
// taken over from the server, or, with detached false, none is.
func expectPath(t *testing.T, hub *Hub, key string, detached bool, n int) {
	t.Helper()
	if detached {
		waitFor(t, "the subscribers to be taken over", func() bool { return watcherCount(hub, key) == n })
	} else if watcherCount(hub, key) != 0 {
		t.Fatalf("%d subscribers taken over, want none", watcherCount(hub, key))
	}
}

var protoNames = map[int]string{1: "HTTP/1.1", 2: "HTTP/2", 3: "HTTP/3"}

// stallingClient is a client whose streams the caller stops reading: over
// HTTP/1.1 its socket's receive buffer is small, over HTTP/2 and HTTP/3
// its flow-control windows are small.
func stallingClient(cfg *tls.Config, proto int) *http.Client {
	c := tlsClient(cfg, proto)
	switch tr := c.Transport.(type) {
	case *http3.Transport:
		tr.QUICConfig = &quic.Config{
			InitialStreamReceiveWindow: 16 << 10, MaxStreamReceiveWindow: 16 << 10,
			InitialConnectionReceiveWindow: 64 << 10, MaxConnectionReceiveWindow: 64 << 10,
		}
	case *http.Transport:
		if proto == 2 {
			tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: 16 << 10, MaxReceiveBufferPerConnection: 64 << 10}
		} else {
			tr.DialContext = smallBufferClient().Transport.(*http.Transport).DialContext
		}
	}
	return c
}

// TestTLSPollsAreHandedBackAsTLS parks long polls over HTTP/1.1 on TLS on
// a bare connection: each is taken over and answered, and the next
// request on its connection is served as one over HTTPS, in place
// (inplace.go), whether it was sent after the answer, while the poll was
// parked, or in the same TLS record as the poll. A request that is not
// served in place (a POST) goes back to net/http behind the bytes already
// decrypted, and is still served as one over HTTPS (Caddy's TLS state
// key); the poll after it is taken over from net/http again. A client
// that closes its connection frees its poll.
func TestTLSPollsAreHandedBackAsTLS(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", `comet /lp
	respond /scheme "{http.request.scheme} {http.request.tls.version}"`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "https://")
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func(path string) string {
		return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nLast-Event-ID: %s\r\n\r\n", path, addr, s.position("/lp"))
	}
	answer := func(want string) {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != want || resp.Close {
			t.Fatalf("got %s %q, Connection: close %v; want %q on a kept connection", resp.Status, body, resp.Close, want)
		}
	}
	park := func() {
		t.Helper()
		waitFor(t, "the poll to be taken over", func() bool { return watcherCount(hub, "/lp") == 1 })
	}
	const https = "https tls1.3"
	served, handedBack := testutil.ToFloat64(inPlaceServed), testutil.ToFloat64(inPlaceHandedBack)

	// Parked, answered, and the next requests served in place over TLS.
	io.WriteString(conn, get("/lp"))
	park()
	s.publish("/lp", "one")
	answer("one")
	io.WriteString(conn, get("/scheme"))
	answer(https)
	io.WriteString(conn, get("/lp"))
	park()
	s.publish("/lp", "two")
	answer("two")

	// A request sent while the poll is parked waits for its answer.
	io.WriteString(conn, get("/lp"))
	park()
	io.WriteString(conn, get("/scheme"))
	time.Sleep(100 * time.Millisecond)
	s.publish("/lp", "three")
	answer("three")
	answer(https)
	if got := testutil.ToFloat64(inPlaceServed) - served; got != 4 {
		t.Errorf("%v requests served in place, want 4: all but the first", got)
	}

	// A POST goes back to net/http, over TLS still, and the poll after
	// it is taken over again.
	fmt.Fprintf(conn, "POST /scheme HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\nhi", addr)
	answer(https)
	if got := testutil.ToFloat64(inPlaceHandedBack) - handedBack; got != 1 {
		t.Errorf("%v requests handed back, want the POST", got)
	}
	io.WriteString(conn, get("/lp"))
	park()
	s.publish("/lp", "four")
	answer("four")

	// A client that leaves frees its poll.
	io.WriteString(conn, get("/lp"))
	park()
	conn.Close()
	waitFor(t, "the poll to be freed", func() bool { return hub.SubscriberCount() == 0 })

	// Sent along with the poll, in the same TLS record (the server read
	// it with the poll) or in the next one, in the same write (crypto/tls
	// read it from the socket, and no epoll reports it): served once the
	// poll is answered.
	batched := dialBatched(t, addr)
	clientCfg := cfg.Clone()
	clientCfg.ServerName, _, _ = net.SplitHostPort(addr)
	conn = tls.Client(batched, clientCfg)
	defer conn.Close()
	br = bufio.NewReader(conn)
	io.WriteString(conn, get("/lp")+get("/scheme"))
	park()
	s.publish("/lp", "five")
	answer("five")
	answer(https)
	batched.hold()
	io.WriteString(conn, get("/lp"))
	io.WriteString(conn, get("/scheme"))
	batched.release()
	park()
	s.publish("/lp", "six")
	answer("six")
	answer(https)
	batched.hold()
	io.WriteString(conn, get("/lp"))
	io.WriteString(conn, get("/lp"))
	batched.release()
	park()
	s.publish("/lp", "seven")
	answer("seven")
	answer("seven") // its cursor was the first's

	// A record that arrives in two parts, a while apart: the connection
	// goes back to net/http, which reads the rest, and answers over TLS.
	handedBack = testutil.ToFloat64(inPlaceHandedBack)
	batched.hold()
	io.WriteString(conn, get("/scheme"))
	batched.releaseFirst(10)
	waitFor(t, "the connection to go back to net/http", func() bool {
		return testutil.ToFloat64(inPlaceHandedBack) == handedBack+1
	})
	batched.release()
	answer(https)
}

// batchedConn is a client's connection whose writes can be held and sent
// at once, in one write: TLS records the client's crypto/tls writes one
// by one arrive together.
type batchedConn struct {
	net.Conn
	mu   sync.Mutex
	held []byte
	on   bool
}

func dialBatched(t *testing.T, addr string) *batchedConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return &batchedConn{Conn: c}
}

func (c *batchedConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on {
		c.held = append(c.held, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *batchedConn) hold() { c.mu.Lock(); c.on = true; c.mu.Unlock() }

// releaseFirst sends the first n bytes held, and holds the rest.
func (c *batchedConn) releaseFirst(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = c.Conn.Write(c.held[:n])
	c.held = c.held[n:]
}

func (c *batchedConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = false
	_, _ = c.Conn.Write(c.held)
	c.held = nil
}
