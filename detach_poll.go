package comet

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/takeover"
	"go.uber.org/zap"
)

// Detached long polls.
//
// A parked long poll is a request in the middle of Caddy's handler chain:
// its goroutine (with the chain's stack), net/http's background reader and
// the connection's buffers, about 29 KiB, and waking it for an event means
// scheduling that goroutine to write through the chain. When nothing in the
// chain can see or change the answer, the handler instead takes the
// connection over (hijacks it) and returns, like a detached stream. The
// answer is written by the publisher, straight to the socket, with the same
// headers the ordinary path writes; then the connection is handed back to
// the same server, which reads the client's next request as it would on
// any kept-alive connection.
//
// While parked, a detached poll has no goroutine at all: a timer expires
// it, and on Linux one goroutine for the whole process waits in epoll for
// the hang-ups of parked polls' clients (see takeover.WatchHangUp), so a client
// that leaves frees its poll at once. Nothing reads the socket meanwhile:
// the client's next request, sent the moment the answer arrives, wakes
// nothing and waits in the socket for the server. Other platforms keep
// long polls on the ordinary path.
//
// Over TLS (HTTP/1.1), the connection is taken over as the *tls.Conn it
// is, and its next requests are served in place over TLS as well (see
// inplace.go). crypto/tls writes its records itself and waits for room,
// so a publisher writes an answer only when the socket surely takes it at
// once (see takesRecordAtOnce); otherwise a goroutine does, with
// write_timeout.
//
// "Nothing in the chain" is strict: an access log or metrics (which would
// record the request before its answer), deferred header operations
// (which would not be applied), encode and any unknown wrapper keep the
// long poll on the ordinary path.

// pollWriters are the wrappers a detached long poll may pass: ones that
// neither record the request nor touch the answer.
var pollWriters = map[string]bool{
	caddyhttpPkg + ".ResponseWriterWrapper": true,
	caddyhttpPkg + ".readDeadlineWriter":    true,
	caddyhttpPkg + ".IdleTimeoutWriter":     true,
}

// detachablePoll returns the socket of a long poll the handler may take
// over, and the injector that will hand its connection back, or nil.
//
// A request with a body stays on the ordinary path, which discards the
// body (as much of it as net/http does) before the connection is used
// again: taken over, its unread body would be handed back to the server
// and read as the client's next request.
func (h *Handler) detachablePoll(w http.ResponseWriter, r *http.Request) (net.Conn, *takeover.Injector) {
	if !r.ProtoAtLeast(1, 1) || r.Close || r.ContentLength != 0 {
		return nil, nil
	}
	if takeover.HangUpsWatched() != nil {
		return nil, nil // a parked poll would not learn that its client left
	}
	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	conn := h.plainSocket(r)
	if conn == nil {
		conn = h.tlsSocket(r)
	}
	if srv == nil || conn == nil {
		return nil, nil
	}
	if !onlyWrappers(w, func(name string, _ http.ResponseWriter) bool { return pollWriters[name] }) {
		return nil, nil
	}
	inj := takeover.InjectorFor(srv, func(err error) {
		// Then long polls close their connections after answering.
		h.logger.Warn("the server stopped taking back the connections of answered long polls", zap.Error(err))
	})
	if inj == nil {
		return nil, nil
	}
	return conn, inj
}

// detachedPoll is a parked long poll whose connection the handler took
// over. It has no goroutine while parked: publishers write its answer,
// a timer expires it, and the hang-up watcher (takeover.WatchHangUp) reports its
// client leaving. It is answered once, then its connection goes back to
// the server.
type detachedPoll struct {
	detachedSocket
	inj    *takeover.Injector // hands the connection back to its server
	sub    *Subscriber
	share  hub.Share // what the subscriber holds of its client's share, given back with it
	h      *Handler
	m      *transportMetrics
	header http.Header // what the chain set before the handler parked
	sig    string      // header, written out: polls with the same one share answers
	after  Cursor

	dirty atomic.Bool // the context changed since the poll last looked

	mu          sync.Mutex
	answer      []byte // once set, the poll is answered
	keep        bool   // whether the connection outlives the answer
	written     int
	broken      error
	early       []byte         // what the server read of the client's next request
	requestDone bool           // Caddy is done with the request: the connection is the poll's alone
	gone        bool           // the client left before the request was over
	expiry      *time.Timer    // nil: never
	leaving     takeover.Watch // reports the client leaving
	over        bool           // the connection was handed back or closed: hands off
	released    bool           // the subscriber was detached from the hub (releaseSubscriber)
	inPlace     *inPlaceConn   // the connection the poll was served in place on; nil: net/http's
	nextInPlace bool           // whether the client's next requests will be served in place
}

// detachPoll takes the connection of a parked long poll of one context
// (how.sock) over and returns true, or returns false, having changed
// nothing, when it cannot. The poll then owns the subscription's
// subscriber.
func (h *Handler) detachPoll(w http.ResponseWriter, r *http.Request, how holding, sn *subscription) bool {
	_, overTLS := how.sock.(*tls.Conn)
	raw, err := rawSocket(how.sock)
	if err != nil {
		return false
	}
	sub, life := sn.subs[0], sn.life
	p := &detachedPoll{
		detachedSocket: detachedSocket{sock: how.sock, raw: raw, overTLS: overTLS}, inj: how.inj, sub: sub, h: h,
		share: sn.share, m: sn.m, after: sn.states[0].after,
	}
	leaving, ok := watchHangUp(r, raw, p.left, true)
	if !ok {
		return false
	}
	p.inPlace = inPlaceOf(r)
	p.nextInPlace = p.inPlace != nil || servesInPlace(how.sock, how.inj)
	p.header = w.Header().Clone()
	_, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		leaving.Stop()
		return false
	}
	var sig bytes.Buffer
	_ = p.header.Write(&sig)
	p.sig = sig.String()
	p.mu.Lock()
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		p.early = bytes.Clone(early)
	}
	p.early = append(p.early, unreadPrefix(r)...)
	p.leaving = leaving
	if !life.end.IsZero() {
		// The poll answers as at the route's expiration either way: a
		// poll whose token expired gets its 401 when it comes back.
		p.expiry = time.AfterFunc(time.Until(life.end), p.expire)
	}
	p.mu.Unlock()
	sub.Watch(p.changed)
	// Until the request is over, Caddy's cleanup may still set the
	// socket's deadlines: the connection is handed back only after.
	context.AfterFunc(r.Context(), p.requestOver)
	sn.share = hub.Share{} // the poll's now
	return true
}

// changed runs on a publisher's goroutine: it writes the answer if there
// is one now, as far as the socket takes it without waiting, and leaves
// the hand-over for later, once every watcher has been called.
func (p *detachedPoll) changed() (later func()) {
	p.dirty.Store(true)
	for p.dirty.Load() && p.mu.TryLock() {
		p.dirty.Store(false)
		if p.over {
			p.mu.Unlock()
			return nil
		}
		answered := p.chooseAnswerLocked(false)
		if answered {
			p.writeLocked(false)
		}
		ready := answered && p.requestDone
		p.mu.Unlock()
		switch {
		case ready:
			return p.settleSoon
		case answered:
			// The subscriber is done with: let go of it once every
			// watcher was called, before the publish returns, so that no
			// later event counts it among those it woke. (Closing it now
			// would take the context's lock in the middle of the
			// fan-out.)
			return p.releaseSubscriber
		}
	}
	return nil
}

// releaseSubscriber detaches the poll's subscriber from the hub, once.
func (p *detachedPoll) releaseSubscriber() {
	p.mu.Lock()
	p.releaseSubscriberLocked()
	p.mu.Unlock()
}

// releaseSubscriberLocked is releaseSubscriber, for a caller that holds
// p.mu. The client's share goes back with the subscriber.
func (p *detachedPoll) releaseSubscriberLocked() {
	if !p.released {
		p.released = true
		p.sub.Close()
		p.share.Release()
		p.m.subscribers.Dec()
	}
}

// settleSoon ends an answered poll on the publisher's goroutine, unless
// its answer still needs room in the socket: then a goroutine waits.
func (p *detachedPoll) settleSoon() {
	p.releaseSubscriber()
	p.mu.Lock()
	wait := !p.over && p.broken == nil && p.written < len(p.answer)
	p.mu.Unlock()
	if wait {
		go p.settle()
		return
	}
	p.settle()
}

// requestOver runs once Caddy is done with the request.
func (p *detachedPoll) requestOver() {
	p.mu.Lock()
	p.requestDone = true
	p.mu.Unlock()
	p.settle()
}

// expire answers the poll whose expiration passed, on the timer's
// goroutine.
func (p *detachedPoll) expire() {
	p.mu.Lock()
	if !p.over {
		p.chooseAnswerLocked(true)
	}
	p.mu.Unlock()
	p.settle()
}

// settle ends the poll if it is answered and the connection is the
// poll's: it writes what is left of the answer, waiting for room up to
// the write timeout, then hands the connection back or closes it. It runs
// on goroutines that may wait.
func (p *detachedPoll) settle() {
	for {
		p.mu.Lock()
		p.dirty.Store(false)
		end := p.settleLocked()
		p.mu.Unlock()
		if end != nil {
			end()
			return
		}
		if !p.dirty.Load() {
			return
		}
		// A publisher found the lock taken: look again for it.
	}
}

// settleLocked finishes the answer, if there is one and the request is
// over, and returns how the poll ends, or nil. The caller holds p.mu.
func (p *detachedPoll) settleLocked() (end func()) {
	if p.over || !p.requestDone {
		return nil
	}
	if p.gone && p.hungUpLocked() {
		p.endLocked()
		return p.closeSocket
	}
	if !p.chooseAnswerLocked(false) {
		return nil
	}
	// Answered here rather than by a publisher, the subscriber is done
	// with before a byte of the answer goes out, as on the ordinary path.
	p.releaseSubscriberLocked()
	if t := time.Duration(p.h.WriteTimeout); t > 0 && p.written < len(p.answer) {
		_ = p.sock.SetWriteDeadline(time.Now().Add(t))
	}
	p.writeLocked(true)
	p.endLocked()
	if p.broken != nil || !p.keep {
		return p.closeSocket
	}
	return p.handBack
}

// left runs on the hang-up watcher's goroutine when the client closed its
// end of the connection. Until the request is over, the poll is not set
// up yet and the connection not its own: settle ends it then.
func (p *detachedPoll) left() {
	p.mu.Lock()
	if p.over {
		p.mu.Unlock()
		return
	}
	if !p.requestDone {
		p.gone = true
		p.mu.Unlock()
		return
	}
	if !p.hungUpLocked() {
		p.mu.Unlock()
		return
	}
	p.endLocked()
	p.mu.Unlock()
	p.closeSocket()
}

// hungUpLocked reports whether a client whose end of the connection
// closed has left, as net/http judges it on the ordinary path: its
// background read of a parked request's connection sees the end only when
// nothing the client sent is left unread in the socket. A client that
// sent a request while its poll was parked, then closed its end, is
// answered, and its request too; one that closed its end right after its
// request (even if that held pipelined requests) has left, and the
// connection is closed without an answer (see abandon). HTTP/1.1 cannot
// tell a half-close from a client that is gone.
//
// Over TLS, a client that closes its end has left, whatever it sent
// first: a TLS client says close_notify before it closes, so unread bytes
// are no sign of a request, and they cannot be read without consuming
// them. (net/http's background read sees the close_notify as the end of
// the connection too.) The caller holds p.mu.
func (p *detachedPoll) hungUpLocked() bool {
	return p.overTLS || !takeover.HasUnread(p.raw)
}

// endLocked marks the poll over and stops its timer; its leave watch is
// stopped with the connection, or kept for its next request (handBack).
// The caller holds p.mu.
func (p *detachedPoll) endLocked() {
	p.over = true
	if p.expiry != nil {
		p.expiry.Stop()
	}
}

// chooseAnswerLocked renders the answer if the poll has one now (with
// expired, the route's expiration passed), and reports whether it has
// one. The caller holds p.mu.
func (p *detachedPoll) chooseAnswerLocked(expired bool) bool {
	if p.answer != nil {
		return true
	}
	d, ready, err := p.sub.Poll(p.after)
	if expired && err == nil && !ready {
		err = errExpired
	}
	a, ok := answerPoll(p.sub, p.after, d, ready, err)
	if !ok {
		return false
	}
	p.m.countPoll(a)
	p.keep = a.keepsConnection() && p.inj.Open() && p.canHandBack()
	if a.event != nil {
		p.answer = p.sharedAnswer(a)
	} else {
		p.answer = p.render(a)
	}
	return true
}

// canHandBack reports whether the connection can serve the client's next
// requests. Served in place, it can, with whatever was read of them. A
// TLS connection handed back to a server that is not Caddy's goes back as
// the *tls.Conn it is, so that the server knows its requests came over
// TLS, and cannot carry bytes the server had read of the client's next
// request in front of it: then the answer says Connection: close and the
// client sends that request again on a new connection (RFC 9112, section
// 9.3.2). Browsers do not pipeline.
func (p *detachedPoll) canHandBack() bool {
	return p.nextInPlace || !p.overTLS || len(p.early) == 0
}

// render writes the answer out as net/http would.
func (p *detachedPoll) render(a pollAnswer) []byte {
	rec := takeover.NewResponse(p.header)
	_ = writePollAnswer(rec, a)
	return rec.Render(p.keep)
}

// cachedAnswer is a rendered answer to a long poll, and what it depends on.
type cachedAnswer struct {
	sig    string
	cursor Cursor
	missed int64
	keep   bool
	bytes  []byte
}

func (c *cachedAnswer) fits(sig string, a pollAnswer, keep bool) bool {
	return c.sig == sig && c.cursor == a.cursor && c.missed == a.missed && c.keep == keep
}

// sharedAnswer renders the answer delivering an event, or takes the one
// made for the poll before if it is the same: with thousands of polls at
// the same cursor with the same headers, the event is rendered once. Its
// Date header is then the first poll's, within the fan-out's time.
func (p *detachedPoll) sharedAnswer(a pollAnswer) []byte {
	if c, ok := a.event.LastDerived(memoPollAnswer).(*cachedAnswer); ok && c.fits(p.sig, a, p.keep) {
		return c.bytes
	}
	c := &cachedAnswer{sig: p.sig, cursor: a.cursor, missed: a.missed, keep: p.keep, bytes: p.render(a)}
	a.event.KeepDerived(memoPollAnswer, c)
	return c.bytes
}

// writeLocked writes what is left of the answer. Without wait, it
// writes only what the socket takes at once. Over TLS it never writes
// before the request is over, since Caddy's cleanup may still set the
// connection's deadlines, and a TLS write past one breaks the connection.
// The caller holds p.mu.
func (p *detachedPoll) writeLocked(wait bool) {
	if p.broken != nil || p.written == len(p.answer) || p.overTLS && !p.requestDone {
		return
	}
	n, err := p.write(p.answer[p.written:], wait)
	p.written += n
	if !(!wait && writeTimedOut(err)) {
		p.broken = err
	}
}

// handBack serves the client's next requests in place (see inplace.go),
// or gives the connection back to the server, with what the server had
// read of the client's next request in front of it.
func (p *detachedPoll) handBack() {
	p.releaseSubscriber()
	_ = p.sock.SetDeadline(time.Time{})
	if c := p.inPlace; c != nil || p.nextInPlace {
		if c == nil {
			c = newInPlaceConn(p.sock, p.raw, p.inj)
		}
		c.keep(p.leaving, p.early)
		c.await()
		return
	}
	p.leaving.Stop()
	var conn net.Conn = p.sock
	if len(p.early) > 0 {
		conn = &takeover.PrefixedConn{Conn: p.sock, Prefix: p.early}
	}
	if !p.inj.Inject(conn) {
		_ = conn.Close()
	}
}

// closeSocket ends the poll without handing the connection back.
func (p *detachedPoll) closeSocket() {
	p.releaseSubscriber()
	p.leaving.Stop()
	takeover.DiscardUnread(p.raw) // nothing read the socket: see DiscardUnread
	_ = p.sock.Close()
}

// unreadPrefix returns what the server has not read yet of the prefix of
// the request's connection, if a detached long poll handed it back with
// one. Once the connection is hijacked, nothing else reads it.
func unreadPrefix(r *http.Request) []byte {
	if c := inPlaceOf(r); c != nil {
		return c.takeRest()
	}
	if pc, ok := r.Context().Value(socketKey{}).(*takeover.PrefixedConn); ok {
		return pc.Prefix
	}
	return nil
}
