package comet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// A WebSocket client for the tests, on gobwas/ws's client side.

// wsClient is a WebSocket client for tests, made of gobwas/ws's frame
// functions so that a test can also send what a browser never would.
type wsClient struct {
	t    testing.TB
	conn net.Conn
	r    io.Reader
	// answerPings makes next answer pings with pongs, as browsers do,
	// until the client sent a close frame: a ping the server sent before
	// it read that close is left unanswered, as the server may already be
	// ending the connection (over HTTP/2, the client's half of the
	// stream is then closed).
	answerPings bool
	pings       int
	closing     bool
}

// dialWS opens a WebSocket to url (ws:// or wss://).
func dialWS(t testing.TB, url string, tlsConfig *tls.Config, header ...string) *wsClient {
	t.Helper()
	c, resp, err := tryDialWS(url, tlsConfig, header...)
	if err != nil {
		t.Fatalf("dialing %s: %v (%v)", url, err, resp)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func tryDialWS(url string, tlsConfig *tls.Config, header ...string) (*wsClient, error, error) {
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	var status error
	d := ws.Dialer{
		Header:    ws.HandshakeHeaderHTTP(h),
		TLSConfig: tlsConfig,
		Timeout:   5 * time.Second,
		OnStatusError: func(status_ int, reason []byte, resp io.Reader) {
			body, _ := io.ReadAll(io.LimitReader(resp, 1024))
			status = &handshakeStatus{status_, string(body)}
		},
	}
	conn, br, _, err := d.Dial(context.Background(), url)
	if err != nil {
		if status != nil {
			return nil, status, err
		}
		return nil, nil, err
	}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	return &wsClient{conn: conn, r: r, answerPings: true}, nil, nil
}

type handshakeStatus struct {
	status int
	body   string
}

func (h *handshakeStatus) Error() string { return http.StatusText(h.status) + ": " + h.body }

// next returns the next data or close frame within d, answering pings
// meanwhile if the client does.
func (c *wsClient) next(d time.Duration) (ws.OpCode, []byte, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return 0, nil, err
		}
		if f.Header.Masked {
			c.t.Errorf("the server sent a masked frame")
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			c.pings++
			if c.answerPings && !c.closing {
				c.send(ws.OpPong, f.Payload)
			}
			continue
		case ws.OpPong:
			continue
		}
		return f.Header.OpCode, f.Payload, nil
	}
}

// message returns the next message, decoded.
func (c *wsClient) message(d time.Duration) map[string]any {
	c.t.Helper()
	op, payload, err := c.next(d)
	if err != nil {
		c.t.Fatalf("reading a message: %v", err)
	}
	if op != ws.OpText {
		c.t.Fatalf("got a frame of opcode %v (%q), want a text message", op, payload)
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		c.t.Fatalf("a message that is not JSON: %q", payload)
	}
	return m
}

// closed expects the server's close frame with code, then the end of the
// connection.
func (c *wsClient) closed(d time.Duration, code ws.StatusCode) string {
	c.t.Helper()
	op, payload, err := c.next(d)
	if err != nil {
		c.t.Fatalf("waiting for a close frame: %v", err)
	}
	if op != ws.OpClose {
		c.t.Fatalf("got opcode %v (%q), want a close frame", op, payload)
	}
	got, reason := ws.ParseCloseFrameData(payload)
	if got != code {
		c.t.Errorf("close code %d (%q), want %d", got, reason, code)
	}
	if _, err := ws.ReadFrame(c.r); err == nil {
		c.t.Error("the server sent a frame after its close frame")
	}
	return reason
}

// send sends one masked frame, as a client must.
func (c *wsClient) send(op ws.OpCode, payload []byte) {
	c.closing = c.closing || op == ws.OpClose
	f := ws.MaskFrame(ws.NewFrame(op, true, payload))
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := ws.WriteFrame(c.conn, f); err != nil {
		c.t.Errorf("sending a frame: %v", err)
	}
}

func (c *wsClient) sendJSON(v any) {
	b, _ := json.Marshal(v)
	c.send(ws.OpText, b)
}

// expectEvents reads n event messages and returns their cursors, checking
// their data.
func (c *wsClient) expectEvents(data ...string) []string {
	c.t.Helper()
	var cursors []string
	for _, want := range data {
		m := c.message(5 * time.Second)
		if m["data"] != want || m["cursor"] == nil {
			c.t.Fatalf("got %v, want an event with data %q", m, want)
		}
		cursors = append(cursors, m["cursor"].(string))
	}
	return cursors
}

// receiptAndEvent reads the two messages a publish over the socket leads
// to, in either order: the event may be written to the socket before the
// receipt.
func (c *wsClient) receiptAndEvent() (receipt, event map[string]any) {
	c.t.Helper()
	for range 2 {
		m := c.message(5 * time.Second)
		if m["control"] == "receipt" {
			receipt = m
		} else {
			event = m
		}
	}
	if receipt == nil || event == nil {
		c.t.Fatalf("got %v and %v, want a receipt and an event", receipt, event)
	}
	return receipt, event
}

// readFor reads for d, answering pings, and fails on anything else.
func (c *wsClient) readFor(d time.Duration) {
	c.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		op, payload, err := c.next(time.Until(end))
		if err == nil {
			c.t.Fatalf("got opcode %v (%q) while idle", op, payload)
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			c.t.Fatalf("reading: %v", err)
		}
	}
}

func wsURL(s *testServer, path string) string {
	return "ws" + strings.TrimPrefix(s.base, "http") + path
}
