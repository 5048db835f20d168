package comet

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/wsframe"
	"go.uber.org/zap"
)

// A WebSocket that is not detached (detach off, or a connection that cannot
// be) is held by its request's goroutine, which writes, and a reader
// goroutine, which reads what the client sends.

// holdWebSocket serves a socket that is not detached: this goroutine
// writes, and another reads what the client sends.
func (h *Handler) holdWebSocket(conn heldConn, hs heldWebSocket) {
	ss, sub, life, m := hs.sess, hs.sub, hs.life, hs.m
	out := &heldSocket{conn: conn, timeout: time.Duration(h.WriteTimeout)}
	if out.write(hs.open) != nil {
		return
	}
	ctx, cancel := life.bound(context.Background())
	defer cancel()
	// wake wakes the writer: the reader has a cursor for it, or the
	// heartbeat is due. One pending wake is enough.
	wake := make(chan time.Time, 1)
	poke := func() {
		select {
		case wake <- time.Time{}:
		default:
		}
	}
	var resume atomic.Pointer[Cursor]
	reader := h.startHeldReader(conn, ss, out, cancel, poke, func(curs []Cursor) {
		resume.Store(&curs[0])
		poke()
	})
	defer reader.stop(conn)
	st := streamState{f: webSocketOf, after: hs.after}
	for {
		d, err := sub.next(ctx, st.after, wake)
		if cur := resume.Swap(nil); cur != nil {
			st = streamState{f: webSocketOf, after: sub.Resume(*cur)}
			continue
		}
		switch {
		case err == nil, errors.Is(err, ErrHubClosed), errors.Is(err, ErrContextDeleted):
		case errors.Is(err, errTick):
			if !reader.heartbeatDue() {
				continue // a wake for a cursor
			}
			if !ss.keepAlive(out) {
				return
			}
		case reader.clientLeft():
			return
		default:
			err = life.why
		}
		step := st.step(d, err == nil, err)
		write := out.write
		if step.end {
			write = out.writeLast
		}
		werr := write(step.notice, step.frame)
		h.countStream(m, step, werr == nil)
		if step.end {
			return
		}
		if werr != nil {
			if writeTimedOut(werr) {
				countDropped(h.Hub, droppedSlow)
				h.limitLog.Warn("dropped a WebSocket whose reader stopped reading",
					zap.String("hub", h.Hub), zap.String("context", ss.key), zap.Duration("write_timeout", out.timeout))
			}
			return
		}
	}
}

// heldReader is what a held socket runs beside its writer: the goroutine
// that reads the client, and the heartbeat's timer.
type heldReader struct {
	left      chan struct{} // closed once the reader ended: the client left, or the socket
	hb        time.Duration
	due       atomic.Bool
	heartbeat *time.Timer
}

// startHeldReader starts reading the client of a held socket, with resume
// called for each cursor it sends; cancel ends the writer's wait once the
// reader ended. wake wakes the writer when the heartbeat is due.
func (h *Handler) startHeldReader(conn heldConn, ss *wsSession, out *heldSocket, cancel context.CancelFunc, wake func(), resume func([]Cursor)) *heldReader {
	hr := &heldReader{left: make(chan struct{}), hb: time.Duration(h.Heartbeat)}
	go func() {
		h.readHeldWebSocket(conn, ss, out, resume)
		close(hr.left) // before cancel: the writer must see that the client left
		cancel()
	}()
	if hr.hb > 0 {
		hr.heartbeat = time.AfterFunc(hr.hb, func() { hr.due.Store(true); wake() })
	}
	return hr
}

// heartbeatDue reports, once each time, that the heartbeat is due, and
// sets the next one.
func (hr *heldReader) heartbeatDue() bool {
	if !hr.due.Swap(false) {
		return false
	}
	hr.heartbeat.Reset(hr.hb)
	return true
}

// clientLeft reports whether the reader ended.
func (hr *heldReader) clientLeft() bool {
	select {
	case <-hr.left:
		return true
	default:
		return false
	}
}

// stop closes the socket, which ends the reader, and waits for it.
func (hr *heldReader) stop(conn heldConn) {
	if hr.heartbeat != nil {
		hr.heartbeat.Stop()
	}
	_ = conn.Close()
	<-hr.left
}

// keepAlive decides a due heartbeat of a held socket: false, with the
// socket closed with 4408, when the client answered nothing since the
// last ping; else the ping is on its way (the caller writes it).
func (ss *wsSession) keepAlive(out *heldSocket) bool {
	if ss.pongOverdue() {
		_ = out.writeLast(wsframe.AppendClose(nil, closeNoPong, "no pong"))
		return false
	}
	ss.pinged()
	return true
}

// readHeldWebSocket reads what the client of a socket that is not
// detached sends, until it leaves or the socket ends.
func (h *Handler) readHeldWebSocket(conn heldConn, ss *wsSession, out *heldSocket, resume func([]Cursor)) {
	r := ss.newWSReader(conn)
	defer r.Release()
	for {
		o := ss.readFrame(r)
		write := out.write
		if o.end {
			write = out.writeLast
		}
		if len(o.reply) > 0 && write(o.reply) != nil {
			return
		}
		if o.end {
			out.writeLast() // nothing more after a close, even without one
			return
		}
		if o.resume != nil {
			resume(o.resume)
		}
	}
}

// heldConn is what a socket that is not detached is held by: a hijacked
// connection, or an HTTP/2 stream.
type heldConn interface {
	io.ReadWriteCloser
	SetWriteDeadline(time.Time) error
}

// heldSocket is a socket that two goroutines write to: the writer, and
// the reader with its answers.
type heldSocket struct {
	mu      sync.Mutex
	conn    heldConn
	timeout time.Duration
	closed  bool // the last frame went out: nothing follows it
}

// errSocketEnded is what a write gets once the socket's last frame is out.
var errSocketEnded = errors.New("the socket ended")

func (s *heldSocket) write(parts ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeLocked(parts)
}

// writeLast writes the socket's last frames: a write after it fails.
func (s *heldSocket) writeLast(parts ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.writeLocked(parts)
	s.closed = true
	return err
}

func (s *heldSocket) writeLocked(parts [][]byte) error {
	if s.closed {
		return errSocketEnded
	}
	if s.timeout > 0 {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	for _, p := range parts {
		if len(p) == 0 {
			continue
		}
		if _, err := s.conn.Write(p); err != nil {
			return err
		}
	}
	return nil
}
