package comet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// dialSmallBufferWS opens a WebSocket whose socket holds little, so that a
// client that stops reading fills it soon.
func dialSmallBufferWS(t testing.TB, url string) *wsClient {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var sockErr error
			err := c.Control(func(fd uintptr) {
				sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			return errors.Join(err, sockErr)
		}}
		return nd.DialContext(ctx, network, addr)
	}}
	conn, br, _, err := d.Dial(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	return &wsClient{t: t, conn: conn, r: r, answerPings: true}
}

// TestWebSocketSlowReadersDoNotHoldUpOthers: a socket whose client stops
// reading is dropped at write_timeout, and one that falls behind the
// history is told so and closed with the cursor to resume from, while the
// others get every event and the publisher never waits.
func TestWebSocketSlowReadersDoNotHoldUpOthers(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			const events, size = 120, 60_000
			s := startCaddy(t, "comet {\n\t\thistory 30\n\t}", `comet /c {
		detach `+detach+`
		expiration off
		heartbeat off
		write_timeout 2s
	}`)
			hub := s.hub(DefaultHubName)
			payload := func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat("x", size) }

			fast := dialWS(t, wsURL(s, "/c"), nil)
			fast.message(5 * time.Second)
			var fastGot []string
			fastDone := make(chan struct{})
			go func() {
				defer close(fastDone)
				for len(fastGot) < events {
					op, p, err := fast.next(10 * time.Second)
					if err != nil || op != ws.OpText {
						return
					}
					var m map[string]any
					json.Unmarshal(p, &m)
					if d, _ := m["data"].(string); len(d) >= 5 {
						fastGot = append(fastGot, d[:5])
					}
				}
			}()
			stopped := dialSmallBufferWS(t, wsURL(s, "/c")) // never read
			_ = stopped
			paused := dialSmallBufferWS(t, wsURL(s, "/c"))
			waitFor(t, "every socket to attach", func() bool { return hub.SubscriberCount() == 3 })

			var slowest time.Duration
			for i := range events {
				start := time.Now()
				s.publish("/c", payload(i))
				slowest = max(slowest, time.Since(start))
				time.Sleep(2 * time.Millisecond)
			}
			if slowest > 500*time.Millisecond {
				t.Errorf("a publish took %v: slow readers held up the publisher", slowest)
			}
			<-fastDone
			for i, prefix := range fastGot {
				if want := fmt.Sprintf("%05d", i); prefix != want {
					t.Fatalf("the fast reader's event %d is %s, want %s", i, prefix, want)
				}
			}
			if len(fastGot) != events {
				t.Fatalf("the fast reader got %d events of %d", len(fastGot), events)
			}

			// The paused reader reads on: it fell behind, and its socket
			// ends saying so, with where to resume.
			var last []map[string]any
			var code ws.StatusCode
			for {
				op, p, err := paused.next(10 * time.Second)
				if err != nil {
					t.Fatalf("the paused reader: %v after %d messages", err, len(last))
				}
				if op == ws.OpClose {
					code, _ = ws.ParseCloseFrameData(p)
					break
				}
				var m map[string]any
				json.Unmarshal(p, &m)
				last = append(last, m)
			}
			n := len(last)
			if code != closeBehind || n < 2 || last[n-2]["control"] != "missed" || last[n-1]["reason"] != "behind" {
				t.Fatalf("the paused reader's socket ended with %v and code %d, want missed, reconnect behind, 4000", last[max(0, n-2):], code)
			}
			resume := dialWS(t, wsURL(s, "/c?last_event_id="+last[n-1]["cursor"].(string)), nil)
			resume.message(5 * time.Second)
			if m := resume.message(5 * time.Second); m["data"] == nil {
				t.Errorf("resuming got %v, want an event without a second gap notice", m)
			}
			waitFor(t, "the stopped reader to be dropped", func() bool { return hub.SubscriberCount() == 2 })
		})
	}
}
