package comet

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkCaddyChainPerRequest measures what Caddy's server costs one
// request, with no network: caddyhttp.Server.ServeHTTP, as net/http or
// the in-place server calls it, on a site shaped as bench/bench.Caddyfile
// (a site's subroute, a route with a path matcher), ending in a trivial
// handler (respond), and in comet's handler answering a long poll from
// history at once. This is the part of every long poll's delivery that
// the decision to run the route's whole chain for every request keeps
// (README, Performance).
func BenchmarkCaddyChainPerRequest(b *testing.B) {
	s := startCaddy(b, "", `respond /floor "x"
	comet /bench {
		expiration off
		heartbeat off
	}`)
	app, err := caddy.ActiveContext().AppIfConfigured("http")
	if err != nil {
		b.Fatal(err)
	}
	srv := app.(*caddyhttp.App).Servers["srv0"]
	if srv == nil {
		b.Fatal("no srv0")
	}
	s.publish("/bench", "e1")
	s.publish("/bench", "e2")
	behind := s.position("/bench")
	s.publish("/bench", "e3")
	host := strings.TrimPrefix(s.base, "http://")
	ctx := context.WithValue(context.Background(), http.ServerContextKey, &http.Server{})
	for _, bc := range []struct{ name, path, cursor string }{
		{"respond", "/floor", ""},
		{"comet poll answered from history", "/bench", behind},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+bc.path, nil)
			if bc.cursor != "" {
				req.Header.Set("Last-Event-ID", bc.cursor)
			}
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.status = 0
				srv.ServeHTTP(w, req)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

// discardWriter is a ResponseWriter that keeps the status and drops the
// body.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }

func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

// BenchmarkInPlaceRequest measures a request served in place, end to end
// on loopback, client and server in this process (so allocations count
// both): a connection that carried a long poll and its answer sends GETs
// to a trivial handler, one at a time.
func BenchmarkInPlaceRequest(b *testing.B) {
	s := startCaddy(b, "", `respond /floor "x"
	comet /lp`)
	addr := strings.TrimPrefix(s.base, "http://")
	conn, br, _ := pollOnce(b, s)
	served := testutil.ToFloat64(inPlaceServed)
	req := []byte(fmt.Sprintf("GET /floor HTTP/1.1\r\nHost: %s\r\n\r\n", addr))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		readAnswer(b, br)
	}
	b.StopTimer()
	if n := testutil.ToFloat64(inPlaceServed) - served; n < float64(b.N) {
		b.Fatalf("%v of %d requests served in place", n, b.N)
	}
}

// BenchmarkInPlaceLongPoll measures one long poll's delivery on a
// connection served in place, end to end, client, server and publisher
// in this process (so allocations count all three): the poll is read in
// place, parks (detached), a publish answers it, and the client reads the
// answer and polls again with its cursor.
func BenchmarkInPlaceLongPoll(b *testing.B) {
	s := startCaddy(b, "", `comet /lp {
		expiration off
		heartbeat off
	}`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")
	conn, br, cursor := pollOnce(b, s)
	data := []byte("event")
	deliver := func() {
		fmt.Fprintf(conn, "GET /lp HTTP/1.1\r\nHost: %s\r\nLast-Event-ID: %s\r\n\r\n", addr, cursor)
		for start := time.Now(); watcherCount(hub, "/lp") != 1; {
			if time.Since(start) > 5*time.Second {
				conn.SetReadDeadline(time.Now().Add(time.Second))
				resp, err := http.ReadResponse(br, nil)
				b.Fatalf("the poll did not park: %d subscribers; the connection gave %v %v", hub.SubscriberCount(), resp, err)
			}
			runtime.Gosched()
		}
		if _, err := hub.Publish("/lp", Event{Data: data}); err != nil {
			b.Fatal(err)
		}
		cursor = readAnswer(b, br).Header.Get(HeaderCursor)
	}
	served := testutil.ToFloat64(inPlaceServed)
	b.ReportAllocs()
	for b.Loop() {
		deliver()
	}
	b.StopTimer()
	if n := testutil.ToFloat64(inPlaceServed) - served; n < float64(b.N) {
		b.Fatalf("%v of %d polls served in place", n, b.N)
	}
}

// pollOnce opens a connection to s and sends a long poll on /lp, which a
// publish answers: the connection's next requests are served in place.
// It returns the connection, its reader and the answer's cursor.
func pollOnce(b *testing.B, s *testServer) (net.Conn, *bufio.Reader, string) {
	addr := strings.TrimPrefix(s.base, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	br := bufio.NewReader(conn)
	fmt.Fprintf(conn, "GET /lp HTTP/1.1\r\nHost: %s\r\nLast-Event-ID: %s\r\n\r\n", addr, s.position("/lp"))
	for s.hub(DefaultHubName).SubscriberCount() != 1 {
		time.Sleep(time.Millisecond)
	}
	s.publish("/lp", "e1")
	return conn, br, readAnswer(b, br).Header.Get(HeaderCursor)
}

// readAnswer reads an answer, and its body to the end.
func readAnswer(b *testing.B, br *bufio.Reader) *http.Response {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}
