package comet

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
