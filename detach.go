package comet

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/takeover"
	"github.com/caddy-comet/comet/internal/wsframe"
)

// Detached streams.
//
// On the ordinary path, an SSE or NDJSON stream over HTTP/1.1 holds
// net/http's connection buffers (4 KiB to read, 4 KiB and 2 KiB to write),
// the request's goroutine with the stack of Caddy's whole handler chain,
// and net/http's background reader goroutine: about 39 KiB per subscriber,
// and one goroutine woken per subscriber for every event.
//
// Once the headers and the stream's first bytes are out, the handler takes
// an HTTP/1.x connection over (hijacks it) and returns, which frees all of
// that. What is left of the stream is a watcher on its context, a timer
// for its heartbeat and expiration, and its place in the process's
// hang-up watcher (see takeover.WatchHangUp), which reports the client
// leaving: no goroutine at all. Events are written by the publisher's
// goroutines, straight to the socket and without waiting (see fanOut): a
// socket whose buffer is full is handed to a goroutine started for it,
// which waits on it for at most write_timeout and ends when it is done.
// Nothing on the publish path ever waits for a slow reader. Nothing reads
// the socket: what a client sends on a stream is of no use to it.

// The body of a detached stream ends when the connection closes, as
// HTTP/1.1 allows and as the SSE specification recommends, rather than
// with chunked encoding. HTTP/2 connections stay on the ordinary path: their
// framing belongs to the server.
//
// HTTP/1.1 over TLS is taken over with its *tls.Conn, which makes and
// writes its records itself and waits for room to do so: a TLS write that
// times out breaks the connection, so there a publisher writes only a
// record the socket surely takes at once (see takesRecordAtOnce), and
// otherwise hands the write to a goroutine, which waits with
// write_timeout.

// detachedDrainTimeout bounds how long process exit waits for detached
// streams to write their last words.
const detachedDrainTimeout = 5 * time.Second

// detachedStream is a stream whose connection the handler took over.
type detachedStream struct {
	detachedSocket
	sn *subscription // the contexts the stream follows, and where it stands in each
	h  *Handler      // the route that opened the stream, for its settings

	// dirty says the context changed since the stream last caught up.
	dirty atomic.Bool
	// requestOver says Caddy is done with the request.
	requestOver atomic.Bool
	// kicked says there is work that may wait: a write that needs room,
	// last words, the client leaving. serving says a goroutine is doing
	// it, or about to.
	kicked, serving atomic.Bool
	// gone says the client hung up.
	gone atomic.Bool
	// lastWrite is when bytes last went out, in Unix nanoseconds, to
	// time heartbeats.
	lastWrite atomic.Int64

	// mu is held by whoever writes to the socket: a publisher's goroutine
	// only ever tries it, so none waits for another.
	mu      sync.Mutex
	pending []byte         // what a write that could not wait left unwritten
	last    []byte         // last words; once set, the stream ends after them
	broken  error          // a write failed: the client is gone or stopped reading
	done    bool           // the stream ended: leave the socket alone
	timer   *time.Timer    // heartbeat and expiration; nil: neither
	leaving takeover.Watch // reports the client leaving, or speaking
	// ws is the session of a WebSocket, whose client's frames are read
	// (see websocket.go); nil for a stream, whose client only leaves.
	ws *wsSession
}

// detach takes the subscription's connection (how.sock) over from
// net/http with take (hijack, or a WebSocket's upgrade) and reports how it
// went; not taken over, nothing changed. A taken-over stream has no
// goroutine of its own: publishers write its events, a timer keeps its
// heartbeat and expiration, the hang-up watcher reports its client leaving
// (or, for a WebSocket, speaking: ws), and a goroutine is started only for
// work that may wait (see kick).
func (h *Handler) detach(w http.ResponseWriter, r *http.Request, how holding, sn *subscription, ws *wsSession, take func(http.ResponseWriter, *http.Request) (net.Conn, error)) takeoverResult {
	if !passesBodyThrough(w, true) {
		return notTakenOver
	}
	raw, err := rawSocket(how.sock)
	if err != nil {
		return notTakenOver
	}
	s := &detachedStream{detachedSocket: detachedSocket{sock: how.sock, raw: raw, overTLS: how.overTLS}, sn: sn, h: h, ws: ws}
	if ws != nil {
		// A socket's opening message follows the handshake, which take writes.
		s.pending = wsframe.AppendText(nil, sn.open(formatNDJSON))
	}
	result := s.takeOver(w, r, take)
	if result == takenOver {
		sn.watchAll(s.changed)
		s.beginAfter(r)
	}
	return result
}

// takeoverResult is how taking a stream's connection over went.
type takeoverResult int

const (
	// notTakenOver: nothing changed, net/http still has the connection.
	notTakenOver takeoverResult = iota
	takenOver
	// hijackFailed: the connection was taken from net/http but could not
	// be used; the request is over.
	hijackFailed
)

// takeOver takes the stream's connection over from net/http with hijack,
// with what the stream will write first marked as to do. The caller then
// has its subscribers tell the stream of changes (changed).
func (s *detachedStream) takeOver(w http.ResponseWriter, r *http.Request, hijack func(http.ResponseWriter, *http.Request) (net.Conn, error)) takeoverResult {
	var leaving takeover.Watch
	var ok bool
	if s.ws != nil {
		leaving, ok = takeover.WatchReadable(s.raw, s.readable)
	} else {
		leaving, ok = watchHangUp(r, s.raw, s.left, false)
	}
	if !ok {
		return notTakenOver
	}
	// The connection hijack returns is sock, maybe wrapped by Caddy to
	// count the bytes read, and the wrapper would keep net/http's buffers
	// alive: the stream keeps sock.
	if _, err := hijack(w, r); err != nil {
		leaving.Stop()
		if s.ws != nil {
			return hijackFailed
		}
		return notTakenOver
	}
	s.leaving = leaving
	s.lastWrite.Store(time.Now().UnixNano())
	// The stream starts with what history holds after the cursor.
	s.dirty.Store(true)
	s.kicked.Store(true)
	return takenOver
}

// beginAfter starts the stream once Caddy is done with the request: until
// then, Caddy's cleanup may still set the socket's deadlines, so the
// stream's timers and waiting writes start after. The caller calls it
// once the stream's subscribers watch it, which ending the stream undoes.
func (s *detachedStream) beginAfter(r *http.Request) {
	context.AfterFunc(r.Context(), s.begin)
}

// hijack takes a stream's connection from net/http, which flushes what
// it buffered. Its buffered reader may hold bytes the client sent after
// its request; a stream has no use for them.
func hijack(w http.ResponseWriter, _ *http.Request) (net.Conn, error) {
	conn, _, err := http.NewResponseController(w).Hijack()
	return conn, err
}

// changed is the stream's watcher: it runs on a publisher's goroutine and
// writes what the stream has not had yet, if the socket takes it at once.
// What it cannot finish is left to a goroutine, started later.
func (s *detachedStream) changed() (later func()) {
	s.dirty.Store(true)
	if s.overTLS && !s.requestOver.Load() {
		// Caddy's cleanup of the request may still set the connection's
		// deadlines, and a TLS write past one breaks the connection.
		return s.kick
	}
	// Whoever holds the lock sees dirty once it is done; one that gave it
	// up before this store finds the lock free and comes back here.
	for s.dirty.Load() && s.mu.TryLock() {
		s.dirty.Store(false)
		handOver := s.catchUp(false)
		s.mu.Unlock()
		if handOver {
			return s.kick
		}
	}
	return nil
}

// begin runs once Caddy is done with the request: it starts the stream's
// timer and does the work handed over meanwhile.
func (s *detachedStream) begin() {
	s.requestOver.Store(true)
	s.mu.Lock()
	if next := s.nextTimer(); !next.IsZero() && !s.done {
		s.timer = time.AfterFunc(time.Until(next), s.onTimerFired)
	}
	s.mu.Unlock()
	s.kick()
	if s.ws != nil {
		// What the client sent with its handshake, or since, is read now.
		s.ws.wantRead.Store(true)
		s.startReading()
	}
}

// kick has a goroutine do the work that may wait (see serveKicked),
// starting one unless one is at it. Before the request is over, begin
// does.
func (s *detachedStream) kick() {
	s.kicked.Store(true)
	if s.requestOver.Load() && s.serving.CompareAndSwap(false, true) {
		go s.serveKicked()
	}
}

// left runs on the hang-up watcher's goroutine when the client closed its
// end of the connection: the stream ends, on a goroutine of its own.
// Whatever the client sent before is of no use to a stream.
func (s *detachedStream) left() {
	s.gone.Store(true)
	s.kick()
}

// serveKicked does the work kicks asked for until there is none, then
// ends, unless a kick came as it was ending.
func (s *detachedStream) serveKicked() {
	for {
		for s.kicked.Swap(false) {
			if !s.serve() {
				s.finish()
				return
			}
		}
		s.serving.Store(false)
		if !s.kicked.Load() || !s.serving.CompareAndSwap(false, true) {
			return
		}
	}
}

// onTimerFired runs on the timer's goroutine: it writes a heartbeat or
// ends an expired stream, if it is time, and sets the timer for the next.
func (s *detachedStream) onTimerFired() {
	if !s.onTimer(time.Now()) {
		s.finish()
		return
	}
	s.mu.Lock()
	if !s.done {
		s.timer.Reset(time.Until(s.nextTimer()))
	}
	s.mu.Unlock()
}

// nextTimer is when the stream's timer must next fire: for a heartbeat or
// the stream's expiration. Zero means never.
func (s *detachedStream) nextTimer() time.Time {
	var next time.Time
	if hb := time.Duration(s.h.Heartbeat); hb > 0 {
		next = time.Unix(0, s.lastWrite.Load()).Add(hb)
	}
	if end := s.sn.life.end; !end.IsZero() && (next.IsZero() || end.Before(next)) {
		next = end
	}
	return next
}

// onTimer writes a heartbeat or ends an expired stream, if it is time. It
// returns false when the stream is over.
func (s *detachedStream) onTimer(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	if !s.ok() {
		return s.endLocked()
	}
	if end := s.sn.life.end; !end.IsZero() && !now.Before(end) {
		s.endWith(s.sn.states[0].step(Delivery{}, false, s.sn.life.why))
		return s.endLocked()
	}
	hb := time.Duration(s.h.Heartbeat)
	switch {
	case len(s.pending) > 0:
		// An event is half written; finishing it is the heartbeat.
		s.kick()
	case hb > 0 && now.Sub(time.Unix(0, s.lastWrite.Load())) >= hb:
		if s.ws != nil && s.ws.pongOverdue() {
			s.last = wsframe.AppendClose(nil, closeNoPong, "no pong")
			return s.endLocked()
		}
		step := s.sn.states[0].step(Delivery{}, false, hub.ErrTick)
		waiting := s.waitForRoom()
		s.send(true, step.frame)
		s.stopWaiting(waiting)
		if s.ws != nil {
			s.ws.pinged()
		}
	}
	return s.ok()
}

// serve does the work handed over: writes that must wait for room, then
// last words, or the end of a stream whose client left. It returns false
// when the stream is over.
func (s *detachedStream) serve() bool {
	if s.gone.Load() {
		return false
	}
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return false
	}
	waiting := s.waitForRoom()
	for {
		s.dirty.Store(false)
		if s.catchUp(true) || !s.dirty.Load() {
			break
		}
	}
	s.stopWaiting(waiting)
	if s.last != nil || s.broken != nil {
		defer s.mu.Unlock()
		return s.endLocked()
	}
	s.mu.Unlock()
	if s.dirty.Load() {
		// Published while the lock was held here.
		if later := s.changed(); later != nil {
			later()
		}
	}
	return true
}

// waitForRoom lets the writes that follow wait for room for at most the
// route's write timeout, until stopWaiting, and reports whether it set a
// deadline. The caller holds s.mu.
func (s *detachedStream) waitForRoom() bool {
	t := time.Duration(s.h.WriteTimeout)
	if t > 0 {
		_ = s.sock.SetWriteDeadline(time.Now().Add(t))
	}
	return t > 0
}

// stopWaiting clears the deadline waitForRoom set: writes that must not
// wait fail at once past a deadline.
func (s *detachedStream) stopWaiting(waiting bool) {
	if waiting {
		_ = s.sock.SetWriteDeadline(time.Time{})
	}
}

// endLocked writes the last words, if the client still reads, and says
// why a stream that broke ended. It returns false: the stream is over. The
// caller holds s.mu.
func (s *detachedStream) endLocked() bool {
	if s.broken == nil && s.last != nil {
		waiting := s.waitForRoom()
		s.send(true, s.pending, s.last)
		s.stopWaiting(waiting)
	}
	s.h.droppedIfSlow(s.broken, s.sn.transport, s.sn.keys[0])
	return false
}

func (s *detachedStream) ok() bool { return s.last == nil && s.broken == nil }

// catchUp writes every delivery the stream has not had yet. Without wait,
// it stops at a socket that would block and keeps what is left in
// pending. It returns true when a goroutine must take over (see kick): to
// finish a write, or to end the stream. The caller holds s.mu.
func (s *detachedStream) catchUp(wait bool) (handOver bool) {
	if s.done {
		return false
	}
	if !s.ok() {
		return true
	}
	if len(s.pending) > 0 && !s.send(wait, s.pending) {
		return true
	}
	for i := range s.sn.subs {
		if !s.sn.takeChange(i) {
			continue
		}
		if handOver := s.catchUpWith(i, wait); handOver {
			s.sn.markChanged(i) // it may have more
			return true
		}
	}
	return false
}

// catchUpWith writes every delivery of context i the stream has not had
// yet, as catchUp does. The caller holds s.mu.
func (s *detachedStream) catchUpWith(i int, wait bool) (handOver bool) {
	sub, st := s.sn.subs[i], &s.sn.states[i]
	for {
		d, ready, err := sub.Poll(st.after)
		step := st.step(d, ready, err)
		switch {
		case step.end:
			s.endWith(step)
			return true
		case step.frame == nil && step.notice == nil:
			return false // up to date
		}
		sent := s.send(wait, step.notice, step.frame)
		s.h.countStream(s.sn.m, step, s.broken == nil)
		if !sent {
			return true
		}
	}
}

// endWith makes a step that ends the stream its last words. The caller
// holds s.mu.
func (s *detachedStream) endWith(step streamStep) {
	s.h.countStream(s.sn.m, step, false)
	s.last = append(append([]byte(nil), step.notice...), step.frame...)
}

// send writes parts to the socket. Without wait, it stops where the socket
// would block and keeps the rest in pending, to be written by a goroutine
// that may wait. It returns true when everything was written. The caller
// holds s.mu.
func (s *detachedStream) send(wait bool, parts ...[]byte) bool {
	var rest []byte
	for i, p := range parts {
		if len(p) == 0 {
			continue
		}
		n, err := s.write(p, wait)
		if n > 0 {
			s.lastWrite.Store(time.Now().UnixNano())
		}
		if !wait && writeTimedOut(err) {
			// A deadline left on the socket: the goroutine sets its own.
			err = nil
		}
		if err != nil {
			s.broken = err
			return false
		}
		if n < len(p) {
			rest = append(rest, p[n:]...)
			for _, q := range parts[i+1:] {
				rest = append(rest, q...)
			}
			break
		}
	}
	s.pending = rest
	return rest == nil
}

// finish ends the stream, once: publishers that still come leave the
// socket alone, the subscriber is detached from the hub, and the socket
// closed last.
func (s *detachedStream) finish() {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return // the timer and a kicked goroutine may both end the stream
	}
	s.done = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.sn.close()
	s.leaving.Stop()
	takeover.DiscardUnread(s.raw) // nothing read the socket: see DiscardUnread
	_ = s.sock.Close()
}
