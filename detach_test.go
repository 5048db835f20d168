package comet

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// rawStream is an SSE stream read over a bare connection, so that the test
// process runs no client goroutine for it and the server's goroutines can
// be counted.
type rawStream struct {
	conn net.Conn
	resp *http.Response
	sse  *sseParser
}

func openRawSSE(t *testing.T, addr, path string) *rawStream {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr)
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

// TestDetachedStreamsHoldOneGoroutineEach opens plaintext HTTP/1.1 streams
// on a route that detaches them and on one that does not, with an access
// log in the way as most sites have. A detached stream must be left with
// one goroutine (the ordinary path has two: the request's and net/http's
// background reader), end its body with the connection instead of
// chunking, get every event, and free everything when the client leaves.
func TestDetachedStreamsHoldOneGoroutineEach(t *testing.T) {
	const streams = 100
	s := startCaddy(t, "", `log {
		output discard
	}
	comet /detached {
		expiration off
		heartbeat off
	}
	comet /ordinary {
		expiration off
		heartbeat off
		detach off
	}`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")

	for _, route := range []struct {
		path                 string
		chunked              bool
		minPerSub, maxPerSub float64
	}{
		{"/detached", false, 0.9, 1.1},
		{"/ordinary", true, 1.9, 2.1},
	} {
		t.Run(route.path, func(t *testing.T) {
			http.DefaultClient.CloseIdleConnections()
			runtime.GC()
			baseline := runtime.NumGoroutine()
			opened := make([]*rawStream, streams)
			for i := range opened {
				opened[i] = openRawSSE(t, addr, route.path)
			}
			waitFor(t, "every stream to attach", func() bool { return hub.SubscriberCount() == streams })
			first := opened[0].resp
			if chunked := len(first.TransferEncoding) > 0 && first.TransferEncoding[0] == "chunked"; chunked != route.chunked {
				t.Errorf("Transfer-Encoding %v, want chunked: %v", first.TransferEncoding, route.chunked)
			}
			// Let goroutines of the requests that were just answered end.
			time.Sleep(100 * time.Millisecond)
			perSub := float64(runtime.NumGoroutine()-baseline) / streams
			t.Logf("%s: %.2f goroutines per stream", route.path, perSub)
			if perSub < route.minPerSub || perSub > route.maxPerSub {
				t.Errorf("%.2f goroutines per stream, want %.1f to %.1f", perSub, route.minPerSub, route.maxPerSub)
			}

			for i := range 3 {
				data := fmt.Sprintf("event %d", i)
				r := s.publish(route.path, data)
				if !route.chunked && r.Woken != streams {
					// A detached stream is always reached; a goroutine
					// only while it waits, not while it writes.
					t.Errorf("publish reached %d streams, want %d", r.Woken, streams)
				}
				for n, st := range opened {
					if ev := nextWithin(t, st.sse, 5*time.Second); ev.Data != data {
						t.Fatalf("stream %d got %+v, want %q", n, ev, data)
					}
				}
			}

			for _, st := range opened {
				st.conn.Close()
			}
			waitFor(t, "every stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
			http.DefaultClient.CloseIdleConnections() // the publishers'
			waitFor(t, "goroutines to return to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
		})
	}
}
