package comet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Readers of streams and raw connections for the tests.

// sseEvent is an event as an EventSource dispatches it.
type sseEvent struct {
	ID, Type, Data string
}

// sseParser reads a text/event-stream body by the rules of the HTML
// standard's "Interpreting an event stream": lines end at CRLF, LF or CR;
// a line starting with a colon is a comment; "field: value" loses one
// leading space; an id with NUL is ignored; retry takes only digits; a
// blank line dispatches the event unless its data is empty.
type sseParser struct {
	r        *bufio.Reader
	pending  []string // lines read but not yet returned
	lastID   string
	retry    int
	comments int
}

func newSSEParser(r io.Reader) *sseParser { return &sseParser{r: bufio.NewReaderSize(r, 64<<10)} }

// next returns the next dispatched event, or the read error.
func (p *sseParser) next() (sseEvent, error) {
	var data strings.Builder
	eventType := ""
	for {
		line, err := p.readLine()
		if err != nil {
			return sseEvent{}, err // an event cut off by the end of the stream is not dispatched
		}
		if line == "" {
			if data.Len() == 0 {
				eventType = ""
				continue
			}
			if eventType == "" {
				eventType = "message"
			}
			return sseEvent{ID: p.lastID, Type: eventType, Data: strings.TrimSuffix(data.String(), "\n")}, nil
		}
		if line[0] == ':' {
			p.comments++
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			eventType = value
		case "data":
			data.WriteString(value)
			data.WriteByte('\n')
		case "id":
			if !strings.Contains(value, "\x00") {
				p.lastID = value
			}
		case "retry":
			if n, err := strconv.Atoi(value); err == nil && strings.Trim(value, "0123456789") == "" {
				p.retry = n
			}
		}
	}
}

// readLine returns the next line. It reads up to LF and splits what it read
// at lone CRs, so CRLF, LF and CR all end a line; a CR-ended line is only
// seen once the next LF arrives, which the server under test always sends.
func (p *sseParser) readLine() (string, error) {
	if len(p.pending) == 0 {
		raw, err := p.r.ReadString('\n')
		if err != nil {
			return "", err // a line cut off by the end of the stream is not a line
		}
		raw = strings.TrimSuffix(strings.TrimSuffix(raw, "\n"), "\r")
		p.pending = strings.Split(raw, "\r")
	}
	line := p.pending[0]
	p.pending = p.pending[1:]
	return line, nil
}

// openStream sends a GET with the given Accept and returns the response,
// whose body the caller reads; it is closed when the test ends.
func (s *testServer) openStream(client *http.Client, path, accept string, header ...string) *http.Response {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if client == nil {
		client = s.client
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		cancel()
		resp.Body.Close()
	})
	return resp
}

func (s *testServer) openSSE(path string, header ...string) (*http.Response, *sseParser) {
	s.t.Helper()
	resp := s.openStream(nil, path, "text/event-stream", header...)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		s.t.Fatalf("SSE: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	return resp, newSSEParser(resp.Body)
}

// nextWithin returns the next SSE event, failing the test if none comes
// within d.
func nextWithin(t testing.TB, p *sseParser, d time.Duration) sseEvent {
	t.Helper()
	type result struct {
		ev  sseEvent
		err error
	}
	got := make(chan result, 1)
	go func() {
		ev, err := p.next()
		got <- result{ev, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("reading SSE: %v", r.err)
		}
		return r.ev
	case <-time.After(d):
		t.Fatalf("no SSE event within %v", d)
		return sseEvent{}
	}
}

// receivedEvents collects, per client, the payloads it received.
type receivedEvents struct {
	mu  sync.Mutex
	got map[string][]string
}

func (r *receivedEvents) record(who, data string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = make(map[string][]string)
	}
	r.got[who] = append(r.got[who], data)
}

// checkAllInOrder fails the test unless each of the clients received
// event-0 to event-<events-1>, each once, in order.
func (r *receivedEvents) checkAllInOrder(t *testing.T, clients, events int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) != clients {
		t.Fatalf("%d clients reported, want %d", len(r.got), clients)
	}
	for who, seq := range r.got {
		if len(seq) != events {
			t.Errorf("%s got %d events, want %d", who, len(seq), events)
			continue
		}
		for i, data := range seq {
			if want := fmt.Sprintf("event-%d", i); data != want {
				t.Errorf("%s: event %d is %q, want %q", who, i, data, want)
				break
			}
		}
	}
}

// scanWithin advances the scanner, failing the test if no line comes
// within d.
func scanWithin(t testing.TB, sc *bufio.Scanner, d time.Duration) bool {
	t.Helper()
	done := make(chan bool, 1)
	go func() { done <- sc.Scan() }()
	select {
	case ok := <-done:
		return ok
	case <-time.After(d):
		t.Fatalf("no line within %v", d)
		return false
	}
}

// smallBufferClient makes connections with a small receive buffer, so that
// a reader that stops reading blocks the server's writes quickly.
func smallBufferClient() *http.Client {
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		err := c.Control(func(fd uintptr) {
			sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, sockErr)
	}}
	return &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
}

// rawStream is an SSE stream read over a bare connection, so that the test
// process runs no client goroutine for it and the server's goroutines can
// be counted.
type rawStream struct {
	conn net.Conn
	resp *http.Response
	sse  *sseParser
}

func openRawSSE(t *testing.T, addr, path string) *rawStream {
	return openRaw(t, addr, path, "text/event-stream")
}

func openRaw(t *testing.T, addr, path, accept string) *rawStream {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n\r\n", path, addr, accept)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	return &rawStream{conn: conn, resp: resp, sse: newSSEParser(resp.Body)}
}

// rawPoll is a long-polling client on one bare keep-alive connection.
type rawPoll struct {
	t    *testing.T
	addr string
	conn net.Conn
	br   *bufio.Reader
}

func dialPoll(t *testing.T, addr string) *rawPoll {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawPoll{t: t, addr: addr, conn: conn, br: bufio.NewReader(conn)}
}

// send writes a GET for path, with the cursor if there is one.
func (p *rawPoll) send(path, cursor string) {
	p.t.Helper()
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n", path, p.addr)
	if cursor != "" {
		req += "Last-Event-ID: " + cursor + "\r\n"
	}
	if _, err := io.WriteString(p.conn, req+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
}

// answer reads the next answer on the connection, with its body.
func (p *rawPoll) answer() (*http.Response, string) {
	p.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		p.t.Fatalf("reading an answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp, string(body)
}
