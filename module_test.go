package comet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
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
	s := &testServer{t: t, base: "http://" + freeAddr(t), admin: "http://" + freeAddr(t)}
	s.load(globals, site)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	return s
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
}

func adaptCaddyfile(t testing.TB, text string) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, text)
	}
	for _, w := range warnings {
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
	h, ok := lookupHub(name)
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
