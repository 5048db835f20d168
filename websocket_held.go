package comet

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/wsframe"
)

// A WebSocket that is not detached (detach off, or a connection that cannot
// be) is held by its request's goroutine, which writes, and a reader
// goroutine, which reads what the client sends.

// holdWebSocket serves a socket that is not detached: this goroutine
// writes what the contexts have, as holdStream does for a stream, and
// another reads what the client sends.
func (h *Handler) holdWebSocket(conn heldConn, ss *wsSession, sn *subscription) {
	out := &heldSocket{conn: conn, timeout: time.Duration(h.WriteTimeout)}
	if out.write(wsframe.AppendText(nil, sn.open(formatNDJSON))) != nil {
		return
	}
	sn.holdHere(true)
	ctx, cancel := sn.life.bound(context.Background())
	defer cancel()
	// The reader wakes the writer when the heartbeat is due, and when the
	// client sent a cursor to go on from.
	var resume atomic.Pointer[[]Cursor]
	reader := h.startHeldReader(conn, ss, out, cancel, func() { sn.signal() }, func(curs []Cursor) {
		resume.Store(&curs)
		sn.signal()
	})
	defer reader.stop(conn)
	for {
		if curs := resume.Swap(nil); curs != nil {
			sn.resumeAt(*curs)
		}
		wrote, end, err := h.writeReady(sn, out)
		if end || err != nil {
			if end {
				out.writeLast() // the last words are out: nothing after them
			}
			return
		}
		if wrote {
			continue // a context may have more
		}
		why := sn.wait(ctx, nil)
		switch {
		case why == nil:
			if !reader.heartbeatDue() {
				continue // a context changed, or a cursor came
			}
			if !ss.keepAlive(out) {
				return
			}
			why = hub.ErrTick
		case reader.clientLeft():
			return
		default:
			why = sn.life.why
		}
		st := sn.states[0].step(Delivery{}, false, why)
		write := out.write
		if st.end {
			write = out.writeLast
		}
		err = write(st.notice, st.frame)
		h.countStream(sn.m, st, err == nil)
		if err != nil {
			h.droppedIfSlow(err, sn.transport, sn.keys[0])
		}
		if st.end || err != nil {
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
