package comet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
)

// The tests' harness, shared by every test file: a Caddy running in this
// process (testServer; over HTTPS, startTLSCaddy) or built and run as a
// subprocess (buildCaddy), a real redis-server (redisServer), clients that
// poll and stream over real HTTP or bare connections (poll, rawPoll,
// sseParser, rawStream), hubs of the tests' own (testHub), and waiting for
// a condition without fixed sleeps (waitFor).

// testServer is a Caddy running in this process on loopback ports, with the
// comet module and the standard modules. Caddy's config is global, so tests
// that use one do not run in parallel.
type testServer struct {
	t     testing.TB
	base  string // http://127.0.0.1:port, or https:// with startTLSCaddy
	admin string // http://127.0.0.1:port of the admin API

	client *http.Client // the site's client: http.DefaultClient unless over TLS
	// Over TLS: the global options and site directives of every config.
	tlsGlobals, tlsSite string
}

// startCaddy runs a Caddyfile with the given global options and site body
// and stops it when the test ends.
func startCaddy(t testing.TB, globals, site string) *testServer {
	t.Helper()
	s := newTestServer(t)
	s.load(globals, site)
	stopAtCleanup(t)
	return s
}

// stopAtCleanup stops the Caddy running in this process when the test
// ends.
func stopAtCleanup(t testing.TB) {
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
}

// newTestServer picks loopback ports for a server. A port can be one an
// earlier test's server used, so the shared client's idle connections,
// which would now lead nowhere, are dropped first: a POST, unlike a GET,
// is not retried on such a connection.
func newTestServer(t testing.TB) *testServer {
	http.DefaultClient.CloseIdleConnections()
	return &testServer{t: t, base: "http://" + freeAddr(t), admin: "http://" + freeAddr(t), client: http.DefaultClient}
}

func (s *testServer) caddyfile(globals, site string) string {
	return fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\t%s\n\t%s\n}\n%s {\n\t%s\n%s\n}\n",
		strings.TrimPrefix(s.admin, "http://"), s.tlsGlobals, globals, s.base, s.tlsSite, site)
}

// load runs a config in process, replacing the running one.
func (s *testServer) load(globals, site string) {
	s.t.Helper()
	if err := caddy.Load(adaptCaddyfile(s.t, s.caddyfile(globals, site)), true); err != nil {
		s.t.Fatalf("loading config: %v", err)
	}
}

// reload replaces the running config through the admin API, as caddy
// reload does.
func (s *testServer) reload(globals, site string) {
	s.t.Helper()
	resp, err := http.Post(s.admin+"/load", "application/json", bytes.NewReader(adaptCaddyfile(s.t, s.caddyfile(globals, site))))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("reload: %s: %s", resp.Status, body)
	}
	// The old server closes its idle keep-alive connections; a client that
	// reused one for a POST would get EOF, since POSTs are not retried.
	s.client.CloseIdleConnections()
}

func adaptCaddyfile(t testing.TB, text string) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, text)
	}
	for _, w := range warnings {
		if strings.Contains(w.Message, "not formatted") {
			continue // test configs are built by Sprintf
		}
		t.Logf("adapt warning: %s", w.String())
	}
	return cfg
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// freeTCPAndUDPAddr is freeAddr for a server that also listens on UDP
// with the same port, on every interface, as Caddy's HTTP/3 does: a port
// free for TCP may be some UDP socket's (QUIC clients of earlier tests).
func freeTCPAndUDPAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		if pc, err := net.ListenPacket("udp", ":"+port); err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

// do sends a request and returns the response with its body read.
func (s *testServer) do(method, path string, body string, header ...string) (*http.Response, string) {
	s.t.Helper()
	return sendRequest(s.t, s.client, context.Background(), method, s.base+path, body, header...)
}

func doRequest(t testing.TB, ctx context.Context, method, url, body string, header ...string) (*http.Response, string) {
	t.Helper()
	return sendRequest(t, http.DefaultClient, ctx, method, url, body, header...)
}

func sendRequest(t testing.TB, client *http.Client, ctx context.Context, method, url, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, string(data)
}

// publish POSTs an event and returns the receipt.
func (s *testServer) publish(path, data string) receipt {
	s.t.Helper()
	return s.publishAs(path, "text/plain", data)
}

// publishAs POSTs an event with a content type and returns the receipt.
func (s *testServer) publishAs(path, contentType, data string) receipt {
	s.t.Helper()
	resp, body := s.do(http.MethodPost, path, data, "Content-Type", contentType)
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("publish: %s: %s", resp.Status, body)
	}
	var r receipt
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		s.t.Fatalf("publish receipt %q: %v", body, err)
	}
	return r
}

// position asks for a context's current cursor with HEAD.
func (s *testServer) position(path string) string {
	s.t.Helper()
	resp, _ := s.do(http.MethodHead, path, "")
	cur := resp.Header.Get(HeaderCursor)
	if resp.StatusCode != http.StatusNoContent || cur == "" {
		s.t.Fatalf("HEAD %s: %s, cursor %q", path, resp.Status, cur)
	}
	return cur
}

// hub returns the running hub with that name.
func (s *testServer) hub(name string) *Hub {
	s.t.Helper()
	h, ok := LookupHub(name)
	if !ok {
		s.t.Fatalf("no hub %q", name)
	}
	return h
}

// poll is a long poll sent in the background.
type poll struct {
	done   chan struct{}
	resp   *http.Response
	body   string
	err    error
	cancel context.CancelFunc
}

func (s *testServer) startPoll(path string, header ...string) *poll {
	return s.startPollWith(s.client, path, header...)
}

func (s *testServer) startPollWith(client *http.Client, path string, header ...string) *poll {
	ctx, cancel := context.WithCancel(context.Background())
	p := &poll{done: make(chan struct{}), cancel: cancel}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	go func() {
		defer close(p.done)
		resp, err := client.Do(req)
		if err != nil {
			p.err = err
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		p.resp, p.body, p.err = resp, string(data), err
	}()
	return p
}

// wait returns the poll's answer, failing the test if none comes in time.
func (p *poll) wait(t testing.TB) (*http.Response, string) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cancel()
		t.Fatal("long poll was not answered")
	}
	if p.err != nil {
		t.Fatalf("long poll: %v", p.err)
	}
	return p.resp, p.body
}

func (p *poll) answered() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// quietRaceEnv is the environment for Caddy subprocesses. A race-enabled
// binary sleeps a second at exit by default, which would time the race
// detector rather than Caddy.
func quietRaceEnv() []string {
	return append(os.Environ(), "GORACE=atexit_sleep_ms=0")
}

// tryGet GETs url and returns the body, or false if the request failed,
// for conditions polled while servers come and go.
func tryGet(client *http.Client, url string) (string, bool) {
	resp, err := client.Get(url)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err == nil
}

// headSubscribers returns the subscriber count a HEAD reports through the
// X-Subscribers header, or -1 if the server does not answer.
func headSubscribers(client *http.Client, url string) int {
	resp, err := client.Head(url)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	n, err := strconv.Atoi(resp.Header.Get("X-Subscribers"))
	if err != nil {
		return -1
	}
	return n
}

// builtCaddy is ./cmd/caddy built once for the tests that run it as a
// subprocess; TestMain removes it.
var builtCaddy struct {
	once      sync.Once
	dir, path string
	err       error
}

// buildCaddy builds ./cmd/caddy, with the race detector when the tests run
// with it, and returns the binary's path.
func buildCaddy(t *testing.T) string {
	t.Helper()
	builtCaddy.once.Do(func() {
		builtCaddy.dir, builtCaddy.err = os.MkdirTemp("", "comet-test-caddy-")
		if builtCaddy.err != nil {
			return
		}
		builtCaddy.path = filepath.Join(builtCaddy.dir, "caddy")
		args := []string{"build", "-o", builtCaddy.path}
		if raceEnabled() {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "./cmd/caddy")...).CombinedOutput()
		if err != nil {
			builtCaddy.err = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if builtCaddy.err != nil {
		t.Fatalf("building caddy: %v", builtCaddy.err)
	}
	return builtCaddy.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtCaddy.dir != "" {
		os.RemoveAll(builtCaddy.dir)
	}
	os.Exit(code)
}

func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// exampleServer adapts example.Caddyfile to run on test ports, and returns
// the server it describes (not started) with its JSON config.
func exampleServer(t *testing.T) (*testServer, []byte) {
	t.Helper()
	return exampleOnTestPorts(t, "example.Caddyfile", "http://localhost:8080")
}

// exampleOnTestPorts adapts a shipped Caddyfile, whose one site is address
// bound to loopback, to run on test ports with an admin API of the test's,
// and returns the server it describes (not started) with its JSON config.
func exampleOnTestPorts(t *testing.T, file, address string) (*testServer, []byte) {
	t.Helper()
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t)
	cfg := strings.Replace(string(text), address+" {", s.base+" {", 1)
	cfg = strings.Replace(cfg, "\tbind 127.0.0.1 [::1]\n", "", 1)
	cfg = strings.Replace(cfg, "\tadmin off\n", "", 1)
	cfg = strings.Replace(cfg, "{\n", "{\n\tadmin "+strings.TrimPrefix(s.admin, "http://")+"\n\tpersist_config off\n", 1)
	if !strings.Contains(cfg, s.base+" {") || strings.Contains(cfg, "bind ") {
		t.Fatalf("%s no longer has the address this test rewrites", file)
	}
	return s, adaptCaddyfile(t, cfg)
}

// startExample runs example.Caddyfile on test ports until the test ends,
// and returns the server with its JSON config.
func startExample(t *testing.T) (*testServer, []byte) {
	t.Helper()
	s, cfg := exampleServer(t)
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { caddy.Stop() })
	return s, cfg
}

func testHub(t testing.TB, cfg HubConfig) *Hub {
	t.Helper()
	h := NewHub("test", cfg, nil)
	t.Cleanup(h.Close)
	return h
}

func publishN(t testing.TB, h *Hub, key string, n int) Cursor {
	t.Helper()
	var last Cursor
	for i := 1; i <= n; i++ {
		r, err := h.Publish(key, Event{Data: fmt.Appendf(nil, "event-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		last = r.Cursor
	}
	return last
}

// followContext attaches n subscribers to the context, each reading every
// event in a loop as a streaming client would and calling each delivery's
// onDelivery (which may be nil), and returns a function that detaches them
// and waits for them to finish.
func followContext(t testing.TB, h *Hub, key string, n int, onDelivery func()) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		sub, err := h.Subscribe(key)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer sub.Close()
			cur := sub.Start()
			for {
				d, err := sub.Next(ctx, cur)
				if err != nil {
					return
				}
				cur = d.Cursor
				if onDelivery != nil {
					onDelivery()
				}
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// watcherCount counts the subscribers of a context that are watchers: the
// ones taken over from net/http (and those of requests that follow
// several contexts, on any path).
// parkedCount is how many subscribers of a context a publish would wake
// now: those waiting in Next, and watchers (detached polls and streams).
func parkedCount(h *Hub, key string) int {
	return countIn(h, key, (*hubContext).woken)
}

func watcherCount(h *Hub, key string) int {
	return countIn(h, key, func(c *hubContext) int { return len(c.watchers) })
}

// countIn reads a count of a context under its lock; 0 without it.
func countIn(h *Hub, key string, count func(*hubContext) int) int {
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return count(c)
}

// waitFor polls cond until it holds, failing the test after five seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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

// redisServer is a real redis-server on a loopback port, with append-only
// persistence so that a restart keeps its data, as a production Redis
// would.
type redisServer struct {
	t    testing.TB
	bin  string
	addr string
	dir  string
	cmd  *exec.Cmd
}

// startRedis starts a redis-server for the test. Without the binary the
// test fails where COMET_REQUIRE_REDIS is set (.ci/run sets it) and is
// skipped elsewhere.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("COMET_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server is not installed, and COMET_REQUIRE_REDIS says these tests must run")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping the cluster-mode tests")
	}
	r := &redisServer{t: t, bin: bin, addr: freeAddr(t), dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisServer) url() string { return "redis://" + r.addr + "/0" }

func (r *redisServer) start() {
	r.t.Helper()
	host, port, _ := net.SplitHostPort(r.addr)
	r.cmd = exec.Command(r.bin, "--bind", host, "--port", port, "--dir", r.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	waitFor(r.t, "redis-server to answer", r.answers)
}

// kill stops the server at once, as a crash would.
func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	r.cmd.Wait()
	r.cmd = nil
}

// restartEmpty restarts the server without its data, as a Redis without
// persistence comes back from a crash.
func (r *redisServer) restartEmpty() {
	r.t.Helper()
	r.kill()
	if err := os.RemoveAll(r.dir); err != nil {
		r.t.Fatal(err)
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		r.t.Fatal(err)
	}
	r.start()
}

// answers reports whether PING gets PONG.
func (r *redisServer) answers() bool {
	conn, err := net.DialTimeout("tcp", r.addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprint(conn, "PING\r\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// redisHub makes a hub of the default name on the server, as another node
// would have.
func redisHub(t testing.TB, r *redisServer, cfg HubConfig) *Hub {
	t.Helper()
	broker, err := NewRedisBroker(RedisConfig{URL: r.url()}, DefaultHubName, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return NewHub(DefaultHubName, cfg, broker)
}

func brokerOption(r *redisServer, extra string) string {
	return "comet {\n\t\thistory 500\n\t\tbroker redis " + r.url() + "\n" + extra + "\t}"
}

// startTLSCaddy runs a site over HTTPS, HTTP/1.1, HTTP/2 and HTTP/3, with a
// certificate made for the test, and returns a client config that trusts
// it. The server's own client (do, publish, startPoll) speaks HTTP/1.1.
func startTLSCaddy(t *testing.T, globals, site string) (*testServer, *tls.Config) {
	t.Helper()
	certFile, keyFile, cfg := testCertificate(t)
	s := newTestServer(t)
	s.base = "https://" + freeTCPAndUDPAddr(t) // HTTP/3 listens on UDP
	s.client = tlsClient(cfg, 1)
	s.tlsGlobals = "servers {\n\t\tprotocols h1 h2 h3\n\t}"
	s.tlsSite = fmt.Sprintf("tls %s %s", certFile, keyFile)
	s.load(globals, site)
	stopAtCleanup(t)
	t.Cleanup(func() { closeClient(s.client) })
	return s, cfg
}

// testCertificate makes a certificate for 127.0.0.1, writes it and its
// key to PEM files, and returns them with a client config that trusts it.
func testCertificate(t testing.TB) (certFile, keyFile string, cfg *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for file, block := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, &tls.Config{RootCAs: roots}
}

// tlsClient makes a client of its own, so that each subscriber has its
// own connection, speaking HTTP/1.1, HTTP/2 or HTTP/3 (over QUIC) as
// proto says.
func tlsClient(cfg *tls.Config, proto int) *http.Client {
	if proto == 3 {
		return &http.Client{Transport: &http3.Transport{TLSClientConfig: cfg.Clone(), DisableCompression: true}}
	}
	t := &http.Transport{TLSClientConfig: cfg.Clone(), DisableCompression: true}
	if proto == 2 {
		t.ForceAttemptHTTP2 = true
	} else {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: t}
}

// closeClient closes a tlsClient's connections. An HTTP/3 transport also
// has a UDP socket and goroutines of its own, which only Close ends; it
// closes that socket at once, so a server may not hear of connections
// that were still busy: call it once the client's requests are done.
func closeClient(c *http.Client) {
	if tr, ok := c.Transport.(*http3.Transport); ok {
		_ = tr.Close()
		return
	}
	c.CloseIdleConnections()
}
