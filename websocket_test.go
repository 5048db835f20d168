package comet

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-jose/go-jose/v4"
	"github.com/gobwas/ws"
)

func TestWebSocketDeliversAndResumes(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			s := startCaddy(t, "", `
	route /ctx/* {
		comet {
			detach `+detach+`
		}
	}`)
			c := dialWS(t, wsURL(s, "/ctx/a"), nil)
			open := c.message(5 * time.Second)
			if open["control"] != "open" || open["cursor"] == nil {
				t.Fatalf("first message %v, want open with the cursor", open)
			}
			for _, d := range []string{"one", "two", "three"} {
				s.publish("/ctx/a", d)
			}
			cursors := c.expectEvents("one", "two", "three")

			// The cursor of "one" resumes from "two", from the query string...
			c2 := dialWS(t, wsURL(s, "/ctx/a?last_event_id="+cursors[0]), nil)
			c2.message(5 * time.Second) // open
			c2.expectEvents("two", "three")
			// ...from Last-Event-ID...
			c3 := dialWS(t, wsURL(s, "/ctx/a"), nil, "Last-Event-ID", cursors[0])
			c3.message(5 * time.Second)
			c3.expectEvents("two", "three")
			// ...and from the client's message, at any time.
			c4 := dialWS(t, wsURL(s, "/ctx/a"), nil)
			c4.message(5 * time.Second)
			c4.sendJSON(map[string]any{"cursor": cursors[0]})
			c4.expectEvents("two", "three")
			s.publish("/ctx/a", "four")
			c4.expectEvents("four")
			c.expectEvents("four")

			// A bad message is answered, and the socket goes on.
			c.send(ws.OpText, []byte(`{"nonsense": 1}`))
			if m := c.message(5 * time.Second); m["control"] != "error" || m["status"] != 400.0 {
				t.Errorf("a bad message got %v, want an error", m)
			}
			s.publish("/ctx/a", "five")
			c.expectEvents("five")

			// Deleting the context ends its sockets with their own code.
			s.do("DELETE", "/ctx/a", "")
			if m := c.message(5 * time.Second); m["control"] != "deleted" {
				t.Errorf("got %v, want deleted", m)
			}
			c.closed(5*time.Second, closeDeleted)
		})
	}
}

func TestWebSocketHandshakeRefusals(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\tmax_subscribers 1\n\t}", `
	route /ctx/* {
		comet {
			transports longpoll sse
		}
	}
	route /all/* {
		comet
	}`)
	_, status, _ := tryDialWS(wsURL(s, "/ctx/a"), nil)
	if hs, ok := status.(*handshakeStatus); !ok || hs.status != http.StatusNotAcceptable {
		t.Errorf("a route without websocket answered %v, want 406", status)
	}
	_, status, _ = tryDialWS(wsURL(s, "/all/a?last_event_id=bogus"), nil)
	if hs, ok := status.(*handshakeStatus); !ok || hs.status != http.StatusBadRequest {
		t.Errorf("a bad cursor answered %v, want 400", status)
	}
	// A wrong version gets 426 and the version this server speaks.
	req, _ := http.NewRequest("GET", s.base+"/all/a", nil)
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Version", "8")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired || resp.Header.Get("Sec-WebSocket-Version") != "13" {
		t.Errorf("version 8 answered %d with %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Version"))
	}
	// The subscriber of a refused handshake is not left behind.
	if n := s.hub("default").SubscriberCount(); n != 0 {
		t.Errorf("%d subscribers after refused handshakes", n)
	}
	// At the hub's limit, a handshake is refused like any subscriber.
	c := dialWS(t, wsURL(s, "/all/a"), nil)
	c.message(5 * time.Second)
	_, status, _ = tryDialWS(wsURL(s, "/all/b"), nil)
	if hs, ok := status.(*handshakeStatus); !ok || hs.status != http.StatusServiceUnavailable {
		t.Errorf("a handshake past max_subscribers answered %v, want 503", status)
	}
}

func TestWebSocketRefusesBadFrames(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			s := startCaddy(t, "", `
	route /ctx/* {
		comet {
			detach `+detach+`
			max_message_size 1KiB
		}
	}`)
			open := func() *wsClient {
				c := dialWS(t, wsURL(s, "/ctx/a"), nil)
				c.message(5 * time.Second)
				return c
			}
			c := open()
			ws.WriteFrame(c.conn, ws.NewTextFrame([]byte(`{"cursor":""}`))) // unmasked
			c.closed(5*time.Second, ws.StatusProtocolError)

			c = open()
			c.send(ws.OpBinary, []byte{1, 2, 3})
			c.closed(5*time.Second, ws.StatusUnsupportedData)

			c = open()
			c.send(ws.OpText, []byte(strings.Repeat("x", 2048)))
			c.closed(5*time.Second, ws.StatusMessageTooBig)

			c = open()
			c.send(ws.OpText, []byte{'"', 0xff, 0xfe, '"'})
			c.closed(5*time.Second, ws.StatusInvalidFramePayloadData)

			c = open()
			c.send(ws.OpPing, []byte(strings.Repeat("p", 126))) // control frames hold at most 125 bytes
			c.closed(5*time.Second, ws.StatusProtocolError)

			// A close handshake: the server echoes the code and closes.
			c = open()
			c.send(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))
			c.closed(5*time.Second, ws.StatusNormalClosure)

			// A ping is answered with its payload.
			c = open()
			c.answerPings = false
			c.send(ws.OpPing, []byte("hello"))
			c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := ws.ReadFrame(c.r)
			if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "hello" {
				t.Errorf("a ping got %v %q %v, want its pong", f.Header.OpCode, f.Payload, err)
			}

			// A message in parts, with a ping between them, is one message.
			c = open()
			c.send(ws.OpPing, nil)
			cont := func(op ws.OpCode, fin bool, p string) {
				ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewFrame(op, fin, []byte(p))))
			}
			cont(ws.OpText, false, `{"publish":`)
			cont(ws.OpPing, true, "")
			cont(ws.OpContinuation, true, `{"data":"in parts","ref":"r1"}}`)
			receipt, event := c.receiptAndEvent()
			if receipt["ref"] != "r1" || event["data"] != "in parts" {
				t.Errorf("a message in parts got %v and %v, want its receipt and its event", receipt, event)
			}
			// The sockets closed are gone; the last two are open.
			waitFor(t, "every socket closed", func() bool { return s.hub("default").SubscriberCount() == 2 })
		})
	}
}

func TestWebSocketHeartbeatAndPingTimeout(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			s := startCaddy(t, "", `
	route /ctx/* {
		comet {
			detach `+detach+`
			heartbeat 150ms
		}
	}`)
			alive := dialWS(t, wsURL(s, "/ctx/a"), nil)
			alive.message(5 * time.Second)
			alive.readFor(700 * time.Millisecond)
			if alive.pings < 3 {
				t.Errorf("%d pings in 700ms of heartbeat 150ms", alive.pings)
			}
			// The client that answered is still there.
			s.publish("/ctx/a", "still here")
			alive.expectEvents("still here")
			alive.conn.Close()
			silent := dialWS(t, wsURL(s, "/ctx/a"), nil)
			silent.message(5 * time.Second)
			silent.answerPings = false
			start := time.Now()
			silent.closed(5*time.Second, closeNoPong)
			if waited := time.Since(start); waited < 150*time.Millisecond {
				t.Errorf("a silent client was closed after %v, before a ping was due", waited)
			}
			if silent.pings == 0 {
				t.Error("the silent client was closed without a ping")
			}
		})
	}
}

func TestWebSocketEndsAtExpiration(t *testing.T) {
	s := startCaddy(t, "", `
	route /ctx/* {
		comet {
			expiration 300ms
		}
	}`)
	c := dialWS(t, wsURL(s, "/ctx/a"), nil)
	c.message(5 * time.Second)
	m := c.message(5 * time.Second)
	if m["control"] != "reconnect" || m["reason"] != "expired" || m["cursor"] == nil {
		t.Errorf("got %v, want reconnect, expired, with the cursor", m)
	}
	c.closed(5*time.Second, closeExpired)
}

func TestWebSocketPublishes(t *testing.T) {
	s := startCaddy(t, "", `
	route /open/* {
		comet
	}
	route /closed/* {
		comet {
			publish off
		}
	}`)
	reader := dialWS(t, wsURL(s, "/open/a"), nil)
	reader.message(5 * time.Second)
	c := dialWS(t, wsURL(s, "/open/a"), nil)
	c.message(5 * time.Second)
	c.sendJSON(map[string]any{"publish": map[string]any{"ref": "1", "type": "chat", "data": "hello", "idempotency_key": "k1"}})
	rcpt, ev := c.receiptAndEvent()
	if rcpt["ref"] != "1" || rcpt["cursor"] == nil || rcpt["id"] != 1.0 {
		t.Fatalf("publish got %v, want its receipt", rcpt)
	}
	if ev["data"] != "hello" || ev["type"] != "chat" || ev["cursor"] != rcpt["cursor"] {
		t.Errorf("the publisher got %v, want the published event", ev)
	}
	// The same key again publishes nothing and gets the same receipt.
	c.sendJSON(map[string]any{"publish": map[string]any{"ref": "2", "type": "chat", "data": "hello", "idempotency_key": "k1"}})
	again := c.message(5 * time.Second)
	if again["cursor"] != rcpt["cursor"] || again["replayed"] != true {
		t.Errorf("a retry got %v, want %v replayed", again, rcpt)
	}
	if m := reader.message(5 * time.Second); m["data"] != "hello" || m["type"] != "chat" || m["cursor"] != rcpt["cursor"] {
		t.Errorf("got %v, want the published event", m)
	}
	s.publish("/open/a", "after")
	reader.expectEvents("after") // published once: the retry is not there

	closed := dialWS(t, wsURL(s, "/closed/a"), nil)
	closed.message(5 * time.Second)
	closed.sendJSON(map[string]any{"publish": map[string]any{"ref": "x", "data": "no"}})
	if m := closed.message(5 * time.Second); m["control"] != "error" || m["status"] != 405.0 || m["ref"] != "x" {
		t.Errorf("publish off answered %v, want an error 405", m)
	}
}

func TestWebSocketOverTLS(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", `
	route /ctx/* {
		comet {
			heartbeat 200ms
		}
	}`)
	url := "wss" + strings.TrimPrefix(s.base, "https") + "/ctx/a"
	c := dialWS(t, url, cfg)
	c.message(5 * time.Second)
	for i := range 50 {
		s.publish("/ctx/a", strings.Repeat("x", i*100))
	}
	for i := range 50 {
		c.expectEvents(strings.Repeat("x", i*100))
	}
	// What the client sends over TLS is read too: a publish, and pongs.
	c.sendJSON(map[string]any{"publish": map[string]any{"data": "from the socket"}})
	if _, ev := c.receiptAndEvent(); ev["data"] != "from the socket" {
		t.Errorf("got %v, want the event published", ev)
	}
	c.readFor(700 * time.Millisecond) // pings, answered
	s.publish("/ctx/a", "after pings")
	c.expectEvents("after pings")
	if c.pings < 2 {
		t.Errorf("%d pings", c.pings)
	}
}

// The handshake's response carries the headers Caddy's handlers set.
func TestWebSocketHandshakeKeepsHeaders(t *testing.T) {
	s := startCaddy(t, "", `
	header X-Site yes
	route /ctx/* {
		comet
	}`)
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A ping sent right behind the handshake, in the same packet, is
	// answered: bytes net/http read ahead are not lost.
	var early bytes.Buffer
	ws.WriteFrame(&early, ws.MaskFrame(ws.NewPingFrame([]byte("early"))))
	io.WriteString(conn, "GET /ctx/a HTTP/1.1\r\nHost: "+strings.TrimPrefix(s.base, "http://")+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"+early.String())
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ops []ws.OpCode
	for range 2 {
		f, err := ws.ReadFrame(br)
		if err != nil {
			t.Fatalf("after the handshake: %v", err)
		}
		ops = append(ops, f.Header.OpCode)
		if f.Header.OpCode == ws.OpPong && string(f.Payload) != "early" {
			t.Errorf("pong %q, want early", f.Payload)
		}
	}
	if !(ops[0] == ws.OpText && ops[1] == ws.OpPong || ops[0] == ws.OpPong && ops[1] == ws.OpText) {
		t.Errorf("frames %v after the handshake, want the open message and the pong", ops)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" ||
		resp.Header.Get("X-Site") != "yes" || resp.Header.Get(HeaderCursor) == "" {
		t.Errorf("handshake answered %d %v", resp.StatusCode, resp.Header)
	}
}

// TestWebSocketsOutliveReloadsAndEndAtStop: a reload keeps every socket,
// and a stop ends each with the shutdown notice and code 1001.
func TestWebSocketsOutliveReloadsAndEndAtStop(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			site := `comet /c/* {
		detach ` + detach + `
	}`
			s := newTestServer(t)
			s.load("", site)
			var clients []*wsClient
			for range 5 {
				c := dialWS(t, wsURL(s, "/c/a"), nil)
				c.message(5 * time.Second)
				clients = append(clients, c)
			}
			s.reload("", site+"\n\theader X-Reloaded yes")
			s.publish("/c/a", "after the reload")
			for _, c := range clients {
				c.expectEvents("after the reload")
			}
			start := time.Now()
			if err := caddy.Stop(); err != nil {
				t.Fatal(err)
			}
			for _, c := range clients {
				if m := c.message(5 * time.Second); m["control"] != "reconnect" || m["reason"] != "shutdown" || m["cursor"] == nil {
					t.Errorf("at stop: %v, want reconnect, shutdown, with the cursor", m)
				}
				c.closed(5*time.Second, closeShutdown)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("the sockets were closed %v after the stop", d)
			}
		})
	}
}

// TestWebSocketTokens: a socket is opened with a token like any subscriber
// (401 without one, 403 for another context), and publishes over it only
// what its token grants.
func TestWebSocketTokens(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `comet /private/* {
		auth {
			hmac_secret {env.COMET_TEST_KEY}
		}
	}`)
	key := []byte(testSecret)
	reader := mint(t, key, jose.HS256, "ada", time.Hour, grants{Subscribe: []string{"/private/room"}})
	writer := mint(t, key, jose.HS256, "bob", time.Hour, grants{Subscribe: []string{"/private/room"}, Publish: []string{"/private/room"}})

	for _, tc := range []struct {
		name, path string
		header     []string
		status     int
	}{
		{"no token", "/private/room", nil, http.StatusUnauthorized},
		{"another context", "/private/other", []string{"Authorization", "Bearer " + reader}, http.StatusForbidden},
	} {
		_, status, _ := tryDialWS(wsURL(s, tc.path), nil, tc.header...)
		if hs, ok := status.(*handshakeStatus); !ok || hs.status != tc.status {
			t.Errorf("%s: the handshake answered %v, want %d", tc.name, status, tc.status)
		}
	}

	r := dialWS(t, wsURL(s, "/private/room"), nil, "Authorization", "Bearer "+reader)
	r.message(5 * time.Second)
	r.sendJSON(map[string]any{"publish": map[string]any{"ref": "r", "data": "not allowed"}})
	if m := r.message(5 * time.Second); m["control"] != "error" || m["status"] != 403.0 {
		t.Errorf("a reader's publish got %v, want an error 403", m)
	}
	w := dialWS(t, wsURL(s, "/private/room"), nil, "Authorization", "Bearer "+writer)
	w.message(5 * time.Second)
	w.sendJSON(map[string]any{"publish": map[string]any{"ref": "w", "data": "allowed"}})
	if rcpt, ev := w.receiptAndEvent(); rcpt["ref"] != "w" || ev["data"] != "allowed" {
		t.Errorf("a writer's publish got %v and %v", rcpt, ev)
	}
	r.expectEvents("allowed") // and nothing from the refused publish before it
}

// TestWebSocketOfSeveralContexts: on a multiplex route, one socket follows
// several contexts: each message names its context, the open message's
// cursor names them all and resumes them all, from the query or from a
// message, and the socket publishes to the context a message names.
func TestWebSocketOfSeveralContexts(t *testing.T) {
	for _, detach := range []string{"on", "off"} {
		t.Run("detach "+detach, func(t *testing.T) {
			s := startCaddy(t, "", `comet /m {
		context room-{query.room}
		multiplex room 4
		detach `+detach+`
		heartbeat 200ms
	}`)
			c := dialWS(t, wsURL(s, "/m?room=a&room=b"), nil)
			open := c.message(5 * time.Second)
			composite, _ := open["cursor"].(string)
			if open["control"] != "open" || strings.Count(composite, ",") != 1 {
				t.Fatalf("first message %v, want open with the cursor of both contexts", open)
			}
			s.publish("/m?room=a", "to a")
			s.publish("/m?room=b", "to b")
			for _, want := range []string{"room-a", "room-b"} {
				m := c.message(5 * time.Second)
				if m["context"] != want || m["data"] != "to "+want[len(want)-1:] {
					t.Fatalf("got %v, want the event of %s", m, want)
				}
			}

			// The open cursor resumes both contexts, from the query...
			again := dialWS(t, wsURL(s, "/m?room=a&room=b&last_event_id="+url.QueryEscape(composite)), nil)
			again.message(5 * time.Second)
			got := map[string]any{}
			for range 2 {
				m := again.message(5 * time.Second)
				got[m["context"].(string)] = m["data"]
			}
			if got["room-a"] != "to a" || got["room-b"] != "to b" {
				t.Errorf("resuming from the open cursor got %v", got)
			}
			// ...and from a message.
			c.sendJSON(map[string]any{"cursor": composite})
			got = map[string]any{}
			for range 2 {
				m := c.message(5 * time.Second)
				got[m["context"].(string)] = m["data"]
			}
			if got["room-a"] != "to a" || got["room-b"] != "to b" {
				t.Errorf("a cursor message got %v", got)
			}

			// Publishing names one of the socket's contexts.
			c.sendJSON(map[string]any{"publish": map[string]any{"ref": "p", "context": "room-b", "data": "from the socket"}})
			rcpt, ev := c.receiptAndEvent()
			if rcpt["context"] != "room-b" || ev["context"] != "room-b" || ev["data"] != "from the socket" {
				t.Errorf("a publish to room-b got %v and %v", rcpt, ev)
			}
			c.sendJSON(map[string]any{"publish": map[string]any{"ref": "q", "context": "room-z", "data": "no"}})
			if m := c.message(5 * time.Second); m["control"] != "error" || m["status"] != 400.0 {
				t.Errorf("a publish to another context got %v, want an error 400", m)
			}

			// Pings keep it; deleting one context ends it, saying which.
			c.readFor(500 * time.Millisecond)
			if c.pings == 0 {
				t.Error("no ping in 500ms of heartbeat 200ms")
			}
			s.do("DELETE", "/m?room=a", "")
			if m := c.message(5 * time.Second); m["control"] != "deleted" || m["context"] != "room-a" {
				t.Errorf("got %v, want room-a deleted", m)
			}
			c.closed(5*time.Second, closeDeleted)
		})
	}
}
