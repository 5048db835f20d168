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
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// testServer is a Caddy running in this process on loopback ports, with the
// comet module and the standard modules. Caddy's config is global, so tests
// that use one do not run in parallel.
type testServer struct {
	t     testing.TB
	base  string // http://127.0.0.1:port
	admin string // http://127.0.0.1:port of the admin API
}

// startCaddy runs a Caddyfile with the given global options and site body
// and stops it when the test ends.
func startCaddy(t testing.TB, globals, site string) *testServer {
	t.Helper()
	s := newTestServer(t)
	s.load(globals, site)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	return s
}

// newTestServer picks loopback ports for a server. A port can be one an
// earlier test's server used, so the shared client's idle connections,
// which would now lead nowhere, are dropped first: a POST, unlike a GET,
// is not retried on such a connection.
func newTestServer(t testing.TB) *testServer {
	http.DefaultClient.CloseIdleConnections()
	return &testServer{t: t, base: "http://" + freeAddr(t), admin: "http://" + freeAddr(t)}
}

func (s *testServer) caddyfile(globals, site string) string {
	return fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\t%s\n}\n%s {\n%s\n}\n",
		strings.TrimPrefix(s.admin, "http://"), globals, s.base, site)
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
	http.DefaultClient.CloseIdleConnections()
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

// do sends a request and returns the response with its body read.
func (s *testServer) do(method, path string, body string, header ...string) (*http.Response, string) {
	s.t.Helper()
	return doRequest(s.t, context.Background(), method, s.base+path, body, header...)
}

func doRequest(t testing.TB, ctx context.Context, method, url, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
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
	resp, body := s.do(http.MethodPost, path, data, "Content-Type", "text/plain")
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
		resp, err := http.DefaultClient.Do(req)
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

func TestReloadKeepsParkedClientsAndHistory(t *testing.T) {
	s := startCaddy(t, "", `comet /lp`)
	hub := s.hub(DefaultHubName)
	first := s.publish("/lp", "before reload")

	const n = 5
	polls := make([]*poll, n)
	for i := range polls {
		polls[i] = s.startPoll("/lp", "Last-Event-ID", first.Cursor)
	}
	_, stream := s.openSSE("/lp", "Last-Event-ID", first.Cursor)
	waitFor(t, "polls and the stream to attach", func() bool { return hub.SubscriberCount() == n+1 })

	s.reload("comet {\n\t\thistory 50\n\t}", "comet /lp\n\trespond /new \"new config\"")
	// The old server may still take a connection or two while it stops
	// accepting on the listener it shares with the new one.
	waitFor(t, "the new config to answer /new", func() bool {
		_, body := s.do(http.MethodGet, "/new", "")
		return body == "new config"
	})
	if s.hub(DefaultHubName) != hub {
		t.Fatal("reload replaced the hub")
	}
	time.Sleep(200 * time.Millisecond)
	for i, p := range polls {
		if p.answered() {
			t.Fatalf("poll %d was answered by the reload", i)
		}
	}

	r := s.publish("/lp", "after reload")
	firstEpoch, _, _ := strings.Cut(first.Cursor, ":")
	if r.ID != 2 || !strings.HasPrefix(r.Cursor, firstEpoch+":") || r.Woken != n+1 {
		t.Errorf("receipt after reload %+v; want id 2 in epoch %s, %d woken", r, firstEpoch, n+1)
	}
	if ev := nextWithin(t, stream, 5*time.Second); ev.Data != "after reload" || ev.ID != r.Cursor {
		t.Errorf("the stream got %+v after the reload", ev)
	}
	for i, p := range polls {
		if resp, body := p.wait(t); body != "after reload" || resp.Header.Get(HeaderCursor) != r.Cursor {
			t.Errorf("poll %d got %q at %q", i, body, resp.Header.Get(HeaderCursor))
		}
	}
	if _, body := s.do(http.MethodGet, "/lp", "", "Last-Event-ID", firstEpoch+":0"); body != "before reload" {
		t.Errorf("history after reload starts with %q", body)
	}
}

// TestStopAnswersEveryParkedClient runs the built Caddy as a subprocess with
// Caddy's default, eternal grace period, parks clients, stops it, and
// checks that it exits within two seconds having answered every client.
func TestStopAnswersEveryParkedClient(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy as a subprocess")
	}
	bin := buildCaddy(t)
	for _, tc := range []struct {
		name           string
		clients, polls int // polls of the clients are long polls, the rest SSE streams
		stop           func(cmd *exec.Cmd, admin string) error
	}{
		{"SIGTERM", 1000, 800, func(cmd *exec.Cmd, _ string) error { return cmd.Process.Signal(syscall.SIGTERM) }},
		{"caddy stop", 100, 50, func(_ *exec.Cmd, admin string) error {
			stop := exec.Command(bin, "stop", "--address", admin)
			stop.Env = quietRaceEnv()
			return stop.Run()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin, site := freeAddr(t), freeAddr(t)
			cfgPath := filepath.Join(t.TempDir(), "Caddyfile")
			cfg := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n}\nhttp://%s {\n\theader /lp >X-Subscribers {comet.subscribers}\n\tcomet /lp\n}\n", admin, site)
			if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			var output bytes.Buffer
			cmd := exec.Command(bin, "run", "--config", cfgPath)
			cmd.Stdout, cmd.Stderr = &output, &output
			cmd.Env = quietRaceEnv()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() {
				if t.Failed() {
					t.Logf("caddy output:\n%s", output.String())
				}
			}()
			defer cmd.Process.Kill()

			url := "http://" + site + "/lp"
			waitFor(t, "caddy to serve", func() bool { return headSubscribers(url) == 0 })

			transport := &http.Transport{MaxIdleConnsPerHost: -1}
			defer transport.CloseIdleConnections()
			client := &http.Client{Transport: transport}
			// Each client reports what it got: a long poll its status, a
			// stream the type and data of its last event.
			results := make(chan string, tc.clients)
			for i := range tc.clients {
				if i < tc.polls {
					go func() { results <- pollStatus(client, url) }()
				} else {
					go func() { results <- streamEnding(client, url) }()
				}
			}
			waitFor(t, "clients to park", func() bool { return headSubscribers(url) == tc.clients })

			start := time.Now()
			if err := tc.stop(cmd, admin); err != nil {
				t.Fatalf("stopping: %v", err)
			}
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Fatal("caddy did not exit within 10s")
			}
			took := time.Since(start)
			t.Logf("caddy exited %v after the stop with %d clients parked", took, tc.clients)
			if took > 2*time.Second {
				t.Errorf("caddy took %v to exit, want under 2s", took)
			}
			for i := range tc.clients {
				select {
				case got := <-results:
					if got != "503" && got != "comet-reconnect shutdown" {
						t.Fatalf("a client ended with %q, want a 503 long poll or a stream told to reconnect", got)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("only %d of %d clients were answered", i, tc.clients)
				}
			}
		})
	}
}

// pollStatus long-polls url and returns the answer's status code.
func pollStatus(client *http.Client, url string) string {
	resp, err := client.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return strconv.Itoa(resp.StatusCode)
}

// streamEnding reads an SSE stream from url to its end and returns the
// type and data of its last event.
func streamEnding(client *http.Client, url string) string {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	p := newSSEParser(resp.Body)
	last := "no event"
	for {
		ev, err := p.next()
		if err != nil {
			return last
		}
		last = ev.Type + " " + ev.Data
	}
}

// quietRaceEnv is the environment for Caddy subprocesses. A race-enabled
// binary sleeps a second at exit by default, which would time the race
// detector rather than Caddy.
func quietRaceEnv() []string {
	return append(os.Environ(), "GORACE=atexit_sleep_ms=0")
}

// headSubscribers returns the subscriber count a HEAD reports through the
// X-Subscribers header, or -1 if the server does not answer.
func headSubscribers(url string) int {
	resp, err := http.Head(url)
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
	text, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t)
	cfg := strings.Replace(string(text), "http://localhost:8080 {", s.base+" {", 1)
	cfg = strings.Replace(cfg, "\tbind 127.0.0.1 [::1]\n", "", 1)
	cfg = strings.Replace(cfg, "{\n", "{\n\tadmin "+strings.TrimPrefix(s.admin, "http://")+"\n\tpersist_config off\n", 1)
	if !strings.Contains(cfg, s.base+" {") || strings.Contains(cfg, "bind ") {
		t.Fatal("example.Caddyfile no longer has the address this test rewrites")
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

// TestExampleCaddyfile runs example.Caddyfile (on test ports) and drives it
// the way the seed's Prototype client does: GET long_polling without a
// cursor, POST long_polling to click, and read the counter from X-JSON.
func TestExampleCaddyfile(t *testing.T) {
	s, _ := startExample(t)

	for path, want := range map[string]string{"/": "Comet counter", "/counter.js": "long_polling"} {
		if resp, body := s.do(http.MethodGet, path, ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s: %s, body without %q", path, resp.Status, want)
		}
	}

	seedHeaders := []string{"X-Requested-With", "XMLHttpRequest", "Content-Type", "application/x-www-form-urlencoded; charset=UTF-8"}
	for click := 1; click <= 3; click++ {
		p := s.startPoll("/long_polling", "X-Requested-With", "XMLHttpRequest")
		waitFor(t, "the seed's poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })
		if resp, _ := s.do(http.MethodPost, "/long_polling", "", seedHeaders...); resp.StatusCode != http.StatusOK {
			t.Fatalf("click: %s", resp.Status)
		}
		resp, _ := p.wait(t)
		var xJSON struct{ Counter int }
		err := json.Unmarshal([]byte(resp.Header.Get("X-JSON")), &xJSON)
		if err != nil || resp.StatusCode/100 != 2 || xJSON.Counter != click {
			t.Fatalf("after click %d: %s, X-JSON %q (%v)", click, resp.Status, resp.Header.Get("X-JSON"), err)
		}
	}
}
