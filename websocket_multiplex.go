package comet

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddy-comet/comet/internal/wsframe"
)

// WebSocket sockets of several contexts, on a route with multiplex: the
// messages are the multiplexed NDJSON stream's lines (each event and
// notice names its context), the cursor of the open and reconnect messages
// names every context, and a client's cursor message gives one for all.

// webSocketOfMember wraps the NDJSON encoding of one context of a
// multiplexed stream in WebSocket messages.
func webSocketOfMember(line streamEncoding) wsEncoding {
	return wsEncoding{line: line, slot: memoMultiplexedWebSocket}
}

// serveMultiplexedWebSocket subscribes a socket to several contexts.
func (h *Handler) serveMultiplexedWebSocket(w http.ResponseWriter, r *http.Request, keys []string, tok *jwtauth.Token) error {
	if err := checkWebSocketHandshake(w, r); err != nil {
		return err
	}
	m := h.metrics[transportWebSocket]
	mx, err := h.subscribeRequested(w, r, keys, formatNDJSON, tok, m)
	if mx == nil {
		return err
	}
	for i := range mx.states {
		mx.states[i].f = webSocketOfMember(mx.states[i].f)
	}
	unsubscribe := func() {
		for _, sub := range mx.subs {
			h.unsubscribe(sub, m)
		}
	}
	composite := mx.composite(-1, Cursor{})
	w.Header().Set(HeaderCursor, composite)
	w.Header().Del("Vary")
	sess := &wsSession{h: h, key: keys[0], keys: keys, tok: tok}
	life := h.lifetime(time.Now(), tok)
	open := wsframe.AppendText(nil, formatNDJSON.openMultiplexed(nil, composite, keys))

	if sock, overTLS := h.detachableSocket(w, r); sock != nil && !isWebSocketConnect(r) {
		if s := h.newDetachedStream(w, sock, overTLS, transportWebSocket, keys[0], life); s != nil {
			s.ws = sess
			s.pending = open
			switch s.followAll(w, r, mx, sess.upgrade) {
			case takenOver:
				return nil
			case hijackFailed:
				unsubscribe()
				return nil
			}
		}
	}
	defer unsubscribe()
	var conn heldConn
	if isWebSocketConnect(r) {
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		if rc.Flush() != nil {
			return nil
		}
		sess.lastRead.Store(time.Now().UnixNano())
		conn = &streamConn{r: r, w: w, rc: rc}
	} else {
		c, err := sess.upgrade(w, r)
		if err != nil {
			return nil // the client was answered, or is gone
		}
		conn = c
	}
	defer conn.Close()
	h.holdMultiplexedWebSocket(conn, sess, mx, open, life, m)
	return nil
}

// holdMultiplexedWebSocket serves a socket of several contexts that is not
// detached: this goroutine writes what the contexts have, as followAll
// does for a stream, and another reads what the client sends.
func (h *Handler) holdMultiplexedWebSocket(conn heldConn, ss *wsSession, mx *multiplexed, open []byte, life lifetime, m *transportMetrics) {
	out := &heldSocket{conn: conn, timeout: time.Duration(h.WriteTimeout)}
	if out.write(open) != nil {
		return
	}
	ctx, cancel := life.bound(context.Background())
	defer cancel()
	var resume atomic.Pointer[[]Cursor]
	reader := h.startHeldReader(conn, ss, out, cancel, func() { mx.signal() }, func(curs []Cursor) {
		resume.Store(&curs)
		mx.signal()
	})
	defer reader.stop(conn)
	for {
		if curs := resume.Swap(nil); curs != nil {
			for i, sub := range mx.subs {
				mx.states[i] = streamState{f: mx.states[i].f, after: sub.Resume((*curs)[i])}
				mx.changed[i].Store(true)
			}
		}
		wrote, end, err := h.writeReady(mx, out, m)
		if end || err != nil {
			if end {
				out.writeLast() // the last words are out: nothing after them
			}
			return
		}
		if wrote {
			continue // a context may have more
		}
		var why error
		select {
		case <-mx.wake:
			if !reader.heartbeatDue() {
				continue // a context changed, or a cursor came
			}
			if !ss.keepAlive(out) {
				return
			}
			why = errTick
		case <-ctx.Done():
			if reader.clientLeft() {
				return
			}
			why = life.why
		}
		st := mx.states[0].step(Delivery{}, false, why)
		write := out.write
		if st.end {
			write = out.writeLast
		}
		err = write(st.notice, st.frame)
		h.countStream(m, st, err == nil)
		if st.end || err != nil {
			return
		}
	}
}
