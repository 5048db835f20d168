package takeover

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"
)

var dateLine = regexp.MustCompile(`(?m)^Date: .*\r\n`)

// TestResponseRendersAsNetHTTPWrites writes the same responses through a
// real net/http server and through Response, and requires the same bytes
// (but the Date), kept alive or not.
func TestResponseRendersAsNetHTTPWrites(t *testing.T) {
	cases := []struct {
		name  string
		write func(w http.ResponseWriter)
	}{
		{"200 with its own Content-Length", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", "5")
			w.Header().Set("ETag", `"a:1"`)
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "hello")
		}},
		{"410 with a body and no length", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusGone)
			io.WriteString(w, "gone\n")
		}},
		{"204", func(w http.ResponseWriter) {
			w.Header().Set("Comet-Cursor", "a:1")
			w.WriteHeader(http.StatusNoContent)
		}},
		{"503 with nothing", func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
		}},
	}
	for _, tc := range cases {
		for _, keepAlive := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, keep-alive %v", tc.name, keepAlive), func(t *testing.T) {
				want := netHTTPWrites(t, tc.write, keepAlive)
				r := NewResponse(http.Header{})
				tc.write(r)
				got := dateLine.ReplaceAllString(string(r.Render(keepAlive)), "")
				if got != want {
					t.Errorf("rendered\n%q\nnet/http wrote\n%q", got, want)
				}
			})
		}
	}
}

// netHTTPWrites returns what a net/http server writes for a response made
// by write, without its Date.
func netHTTPWrites(t *testing.T, write func(http.ResponseWriter), keepAlive bool) string {
	t.Helper()
	req := "GET / HTTP/1.1\r\nHost: x\r\n"
	if !keepAlive {
		req += "Connection: close\r\n"
	}
	conn := sendToNetHTTP(t, req+"\r\n", write)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var raw rawRecorder
	resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(conn, &raw)), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	return dateLine.ReplaceAllString(string(raw), "")
}

type rawRecorder []byte

func (r *rawRecorder) Write(b []byte) (int, error) {
	*r = append(*r, b...)
	return len(b), nil
}
