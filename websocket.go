package comet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddy-comet/comet/internal/takeover"
	"github.com/caddy-comet/comet/internal/wsframe"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/gobwas/ws"
)

// WebSocket subscribers.
//
// A GET that asks to upgrade to WebSocket subscribes like a stream: the
// socket gets the NDJSON stream's lines, one text message each (see
// websocket_wire.go), and its client may send messages too: a cursor to go
// on from, or, where the route lets it, an event to publish. Over
// HTTP/1.1 the socket is taken over like a detached stream (see detach.go):
// publishers write its frames, a timer sends its pings, and what the client
// sends wakes the hang-up watcher, which starts a goroutine to read it and
// ends it once nothing is left to read. Without detaching (detach off, or
// a platform without epoll), a goroutine writes and another reads.

// wsReadTimeout bounds how long reading a frame the client began to send
// may take.
const wsReadTimeout = 10 * time.Second

// serveWebSocket answers the handshake of a subscription's socket and
// serves it: detached (detach.go) if how took its connection, else held
// by this goroutine and a reader (websocket_held.go).
func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request, vars *requestVars, sn *subscription, how holding) error {
	sn.setPlaceholders(vars)
	w.Header().Set(HeaderCursor, sn.composite(-1, Cursor{}))
	w.Header().Del("Vary") // the answer is the upgrade, not a representation
	ss := &wsSession{h: h, key: sn.keys[0], keys: sn.keys, tok: sn.tok}
	if how.sock != nil {
		switch h.detach(w, r, how, sn, ss, ss.upgrade) {
		case takenOver:
			return nil // the detached socket closes the subscription when it ends
		case hijackFailed:
			sn.close()
			return nil
		}
	}
	defer sn.close()
	var conn heldConn
	if how.overStream {
		// RFC 8441: the stream is the socket once a 2xx is out.
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		if rc.Flush() != nil {
			return nil
		}
		ss.lastRead.Store(time.Now().UnixNano())
		conn = &streamConn{r: r, w: w, rc: rc}
	} else {
		c, err := ss.upgrade(w, r)
		if err != nil {
			return nil // the client was answered, or is gone
		}
		conn = c
	}
	defer conn.Close()
	h.holdWebSocket(conn, ss, sn)
	return nil
}

// checkWebSocketHandshake refuses, as HTTP, an upgrade that cannot be
// accepted, before anything is subscribed (RFC 6455 §4.2.2; RFC 8441 §5
// keeps the version and drops the key).
func checkWebSocketHandshake(w http.ResponseWriter, r *http.Request) error {
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		status := http.StatusUpgradeRequired
		if r.ProtoMajor > 1 {
			status = http.StatusBadRequest // 426 is not for HTTP/2
		}
		return caddyhttp.Error(status, fmt.Errorf("WebSocket version %q: this server speaks 13", v))
	}
	if r.ProtoMajor == 1 && len(r.Header.Get("Sec-WebSocket-Key")) != 24 {
		return caddyhttp.Error(http.StatusBadRequest, errors.New("a WebSocket handshake needs a Sec-WebSocket-Key of 16 bytes in base64"))
	}
	return nil
}

// wsSession is what a WebSocket subscriber's two directions share: the
// route, the socket's context and the token that allowed it, and when the
// client last spoke. Its methods decide what the client's frames get,
// whichever way the connection is held.
type wsSession struct {
	h    *Handler
	key  string   // the first context, for logs
	keys []string // the socket's contexts: one, or several (multiplex)
	tok  *jwtauth.Token

	// prefix is what the client sent right after its handshake, read
	// from net/http's buffer: it is read before the socket.
	prefix []byte
	// lastPing and lastRead are when the last ping went out and when the
	// client last sent a frame, in Unix nanoseconds.
	lastPing, lastRead atomic.Int64
	// Of a detached socket: wantRead says the client sent something, and
	// reading that a goroutine reads it (one at a time).
	wantRead, reading atomic.Bool
}

// upgrade answers the handshake and takes the connection from net/http,
// keeping what the client sent after its request. The upgrader writes the
// response's headers as Caddy's handlers set them, with the accept key.
func (ss *wsSession) upgrade(w http.ResponseWriter, r *http.Request) (net.Conn, error) {
	u := ws.HTTPUpgrader{Header: w.Header().Clone(), Timeout: time.Duration(ss.h.WriteTimeout)}
	conn, rw, _, err := u.Upgrade(r, w)
	if err != nil {
		if conn != nil {
			_ = conn.Close()
		}
		return nil, err
	}
	if n := rw.Reader.Buffered(); n > 0 {
		ss.prefix, _ = rw.Reader.Peek(n)
		ss.prefix = append([]byte(nil), ss.prefix...)
	}
	ss.lastRead.Store(time.Now().UnixNano())
	return conn, nil
}

// pongOverdue reports whether the client answered nothing since the last
// ping: when the next one is due, it is gone.
func (ss *wsSession) pongOverdue() bool {
	ping := ss.lastPing.Load()
	return ping != 0 && ss.lastRead.Load() < ping
}

// pinged notes that a heartbeat went out.
func (ss *wsSession) pinged() { ss.lastPing.Store(time.Now().UnixNano()) }

// wsOutcome is what a client's frame leads to.
type wsOutcome struct {
	reply  []byte   // written back at once: a pong, a receipt, last words
	resume []Cursor // go on from these cursors, one per context
	end    bool     // the socket is over once reply is written
}

// newWSReader returns a reader of src's frames, which starts with what the
// session read before, if anything.
func (ss *wsSession) newWSReader(src io.Reader) *wsframe.Reader {
	if ss.prefix != nil {
		src = io.MultiReader(bytes.NewReader(ss.prefix), src)
		ss.prefix = nil
	}
	return wsframe.NewReader(src, ss.h.MaxMessageSize)
}

// heard notes that the client spoke.
func (ss *wsSession) heard() { ss.lastRead.Store(time.Now().UnixNano()) }

// readFrame reads one frame, or a whole message with the control frames
// between its parts, and decides what it leads to.
func (ss *wsSession) readFrame(r *wsframe.Reader) wsOutcome {
	f := r.Next(ss.heard)
	if !f.IsText || f.End {
		return wsOutcome{reply: f.Reply, end: f.End}
	}
	out := ss.message(f.Text)
	out.reply = append(f.Reply, out.reply...)
	return out
}

// message answers a client's text message: a cursor to go on from, or an
// event to publish, which gets a receipt or why it was refused.
func (ss *wsSession) message(msg []byte) wsOutcome {
	req, err := parseWSRequest(msg)
	if err != nil {
		return wsOutcome{reply: wsReplyFrame(wsReply{Control: "error", Status: http.StatusBadRequest, Error: err.Error()})}
	}
	if req.Cursor != nil {
		resume, err := ss.parseCursor(*req.Cursor)
		if err != nil {
			return wsOutcome{reply: wsReplyFrame(wsReply{Control: "error", Status: http.StatusBadRequest, Error: err.Error()})}
		}
		return wsOutcome{resume: resume}
	}
	return wsOutcome{reply: wsReplyFrame(ss.publish(req.Publish))}
}

// parseCursor reads a cursor a client sent: of its context, or, on a
// socket of several, of them all (see parseComposite).
func (ss *wsSession) parseCursor(text string) ([]Cursor, error) {
	if len(ss.keys) > 1 {
		return parseComposite(text, len(ss.keys))
	}
	cur, err := ParseCursor(text)
	return []Cursor{cur}, err
}

// publishTarget is the context a publish message goes to: the socket's,
// or, on a socket of several, the one it names.
func (ss *wsSession) publishTarget(p *wsPublish) (string, error) {
	if p.Context == "" && len(ss.keys) == 1 {
		return ss.keys[0], nil
	}
	if slices.Contains(ss.keys, p.Context) {
		return p.Context, nil
	}
	return "", fmt.Errorf("publish names context %.64q; this socket's are: %s", p.Context, strings.Join(ss.keys, ", "))
}

// publish publishes a client's event on a context of the socket, if the
// route lets clients publish and, with tokens, the socket's token allows it.
func (ss *wsSession) publish(p *wsPublish) wsReply {
	h := ss.h
	refuse := func(status int, err error) wsReply {
		return wsReply{Control: "error", Ref: p.Ref, Status: status, Error: err.Error()}
	}
	key, err := ss.publishTarget(p)
	switch {
	case !h.publishes():
		return refuse(http.StatusMethodNotAllowed, errors.New("this route does not take events from clients"))
	case err != nil:
		return refuse(http.StatusBadRequest, err)
	case h.Auth != nil && h.Auth.Publish && (ss.tok == nil || !jwtauth.Covers(ss.tok.Grants.Publish, key)):
		return refuse(http.StatusForbidden, errors.New("the token does not allow to publish to this context"))
	}
	ev := p.event()
	if int64(len(ev.Data)) > h.MaxMessageSize {
		countPublishError(h.Hub, errMessageTooLarge)
		return refuse(http.StatusRequestEntityTooLarge, errMessageTooLarge)
	}
	res := submit(h.hub, publishInput{Submission: Submission{
		Publications:   []Publication{{Key: key, Event: ev}},
		IdempotencyKey: p.IdempotencyKey,
		Publisher:      h.publisherOf(ss.tok),
	}})
	if res.err != nil {
		return refuse(hubStatus(res.err), res.err)
	}
	rcpt, replayed := res.receipt(), res.replayed
	return wsReply{Control: "receipt", Ref: p.Ref, Context: p.Context, ID: rcpt.Cursor.ID, Cursor: rcpt.Cursor.String(), Replayed: replayed}
}

// readable runs on the hang-up watcher's goroutine when the client of a
// detached socket sent something, or left: a goroutine reads it, once
// Caddy is done with the request (begin reads then in any case).
func (s *detachedStream) readable() {
	s.ws.wantRead.Store(true)
	if s.requestOver.Load() {
		s.startReading()
	}
}

// startReading starts the goroutine that reads the client, unless one is
// at it: it reads whatever is there before it ends.
func (s *detachedStream) startReading() {
	if s.ws.wantRead.Swap(false) && s.ws.reading.CompareAndSwap(false, true) {
		go s.readClient()
	}
}

// readClient reads and answers what the client of a detached socket sent,
// until nothing is left to read, then asks the watcher to tell it of the
// next time. It reads only what is there: a wake-up whose bytes an earlier
// reader took costs a look, and no wait.
func (s *detachedStream) readClient() {
	ss := s.ws
	var r *wsframe.Reader
	defer func() {
		if r != nil {
			r.Release()
		}
	}()
	for {
		more, closed := s.clientSent(r)
		if closed {
			ss.reading.Store(false)
			s.gone.Store(true)
			s.kick()
			return
		}
		if !more {
			break
		}
		if r == nil {
			r = ss.newWSReader(s.sock)
		}
		_ = s.sock.SetReadDeadline(time.Now().Add(wsReadTimeout))
		if !s.answer(ss.readFrame(r)) {
			ss.reading.Store(false)
			return
		}
	}
	_ = s.sock.SetReadDeadline(time.Time{})
	ss.reading.Store(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done && !s.leaving.Rearm() {
		s.gone.Store(true)
		s.kick()
	}
}

// clientSent reports whether the client sent something not read yet: what
// came with its handshake, what the reader holds, what the socket holds,
// or, over TLS, what the connection decrypted already; else whether it
// closed its end.
func (s *detachedStream) clientSent(r *wsframe.Reader) (more, closed bool) {
	if s.ws.prefix != nil || r != nil && r.Buffered() {
		return true, false
	}
	if unread, closed := takeover.Pending(s.raw); unread || closed {
		return unread, closed
	}
	if !s.overTLS || r == nil {
		return false, false
	}
	// A read past its deadline returns what crypto/tls holds already and
	// otherwise fails at once, without harm to the connection.
	_ = s.sock.SetReadDeadline(aLongTimeAgo)
	return r.Peek() == nil, false
}

// answer writes what a client's frame gets, after anything half written,
// and moves the stream to the cursor the client sent, if it did. It
// returns false when the socket is over.
func (s *detachedStream) answer(o wsOutcome) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	waiting := s.waitForRoom()
	defer s.stopWaiting(waiting)
	if len(o.reply) > 0 && s.ok() {
		s.send(true, s.pending, o.reply)
	}
	if o.end && s.broken == nil {
		s.broken = errSocketEnded // nothing is written after a close
	}
	if o.end || s.broken != nil {
		s.gone.Store(true)
		s.kick()
		return false
	}
	if o.resume != nil {
		s.sn.resumeAt(o.resume)
		if s.catchUp(true) {
			s.kick()
		}
	}
	return true
}

// streamConn is an HTTP/2 stream carrying a WebSocket (RFC 8441) as a
// connection for holdWebSocket: the request body is what the client
// sends, the response body what it gets.
type streamConn struct {
	r  *http.Request
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (c *streamConn) Read(b []byte) (int, error) { return c.r.Body.Read(b) }

func (c *streamConn) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err == nil {
		err = c.rc.Flush()
	}
	return n, err
}

// Close ends what reads the stream; the stream itself ends when the
// handler returns.
func (c *streamConn) Close() error { return c.r.Body.Close() }

func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.rc.SetWriteDeadline(t) }
