package comet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
	for range 1000 {
		port := freePorts.next()
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return ln.Addr().String()
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

// freePorts hands out ports from 20000 to 29999, below Linux's ephemeral
// range (32768 and up), each once per process. A port the kernel picked
// for port 0 would be one that another test package's server, running at
// the same time, may be given next, and Caddy binds its listeners with
// SO_REUSEPORT: both would then share its connections. (A Redis Cluster
// node binds its port + 10000 too: see freeClusterAddr.)
var freePorts = portCounter{first: 20000, last: 20000 + os.Getpid()%10000, max: 29999}

// portCounter hands out the ports from first to max in turn, from last on.
type portCounter struct {
	mu               sync.Mutex
	first, last, max int
}

func (p *portCounter) next() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last++; p.last > p.max {
		p.last = p.first
	}
	return p.last
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

// parkedCount is how many subscribers of a context a publish would wake
// now: those waiting in Next, and watchers (detached polls and streams).
func parkedCount(h *Hub, key string) int {
	woken, _ := h.Parked(key)
	return woken
}

// watcherCount counts the subscribers of a context that are watchers: the
// ones taken over from net/http (and those of requests that follow
// several contexts, on any path).
func watcherCount(h *Hub, key string) int {
	_, watchers := h.Parked(key)
	return watchers
}

// waitFor polls cond until it holds, failing the test after five seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 5*time.Second, what, cond)
}

// waitWithin is waitFor with a time of its own, for what the machine's
// load delays most: processes starting.
func waitWithin(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
