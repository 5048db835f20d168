package comet

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/http"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/caddy-comet/comet/internal/takeover"
)

// Serving in place.
//
// Once a detached long poll is answered, its connection carries the
// client's next request, nearly always its next poll. Handed back to
// net/http, that request costs a new goroutine whose stack grows to the
// depth of Caddy's handler chain, net/http's buffers and background
// reader, and taking the connection over again (an epoll delete and add).
// Instead the connection stays the module's: the hang-up watcher's
// registration is re-armed to report the next request, a worker goroutine
// (takeover.Workers, whose stacks are already grown) reads it, and the
// request is served by the http.Server's own handler, Caddy's server, so
// the route's whole chain runs as for any request: matchers, the other
// handlers, placeholders, logs and metrics. A long poll that has to wait
// is detached again with the same registration, re-armed once.
//
// Only what net/http would serve exactly the same way is served in place
// (see takeover.ReadRequest): a whole GET or HEAD without a body, Expect,
// Upgrade or Connection: close. Anything else is handed back to net/http
// before a byte of it is answered, with the bytes read in front, as
// before. takeover.Writer frames answers byte for byte as net/http's
// writer.
//
// Over TLS (HTTP/1.1), the *tls.Conn is read when the socket is readable,
// with a deadline a moment away: a whole record is there at once, and a
// record still arriving (or a client sending a byte at a time) sends the
// connection back to net/http, which goes on reading it where this left
// off. What crypto/tls read ahead of the socket wakes no epoll, so the
// connection looks there first (bufferedTLS) before it waits. A request
// handed back with bytes already decrypted goes back on the *tls.Conn
// behind a PrefixedConn, which net/http takes for plaintext: Caddy then
// learns of its TLS from the request context (see rememberSocket), as it
// does for a listener wrapper's connection.

// inPlaceWorkers run the requests served in place, process-wide: one per
// core, since a request served in place rarely waits (see
// takeover.Workers for what happens when one does).
var inPlaceWorkers = takeover.NewWorkers(runtime.GOMAXPROCS(0))

// inPlaceKey is the request context key of the connection a request is
// served in place on.
type inPlaceKey struct{}

// inPlaceConn is an HTTP/1.1 connection, plaintext or over TLS, taken
// over from net/http, whose requests are served in place.
type inPlaceConn struct {
	sock  net.Conn
	raw   syscall.RawConn
	tls   *tls.Conn // sock over TLS; nil: plaintext
	state *tls.ConnectionState
	inj   *takeover.Injector // its server's: idle connections, shutdown
	watch takeover.Watch     // its registration with the hang-up watcher
	idle  *time.Timer        // closes it after the server's idle timeout; nil: none

	// Made once for the connection, as net/http makes them once for
	// its own, rather than for every request.
	base       context.Context // what every request's context starts from
	remoteAddr string
	logf       func(string, ...any)
	onHijack   func() []byte
	onHangUp   func()
	onReadable func()
	onIdleEnd  func() // the server shutting down claimed it idle
	next       func() // serveNext, for a worker

	mu sync.Mutex
	// sent is what the watch counted of the client's sending when the
	// connection was last read (see takeover.Watch.Sent).
	sent uint64
	// rest is what was read of the client's next requests.
	rest []byte
	// cancel cancels the request being served, if its client leaves.
	cancel context.CancelFunc
	// watchTaken says a detached subscriber took the watch over with the
	// connection (see takeWatch).
	watchTaken bool
}

// inPlaceOf returns the connection a request is served in place on, or
// nil.
func inPlaceOf(r *http.Request) *inPlaceConn {
	c, _ := r.Context().Value(inPlaceKey{}).(*inPlaceConn)
	return c
}

// servesInPlace reports whether the connection of an answered detached
// poll can serve its next requests in place: a TCP or Unix socket,
// plaintext or under crypto/tls, on a server whose handler is not
// net/http's default.
func servesInPlace(sock net.Conn, inj *takeover.Injector) bool {
	srv := inj.Server()
	if tc, ok := sock.(*tls.Conn); ok {
		sock = tc.NetConn()
	}
	switch sock.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return false
	}
	return srv != nil && srv.Handler != nil
}

// newInPlaceConn keeps a detached poll's connection for its next
// requests.
func newInPlaceConn(sock net.Conn, raw syscall.RawConn, inj *takeover.Injector) *inPlaceConn {
	srv := inj.Server()
	c := &inPlaceConn{sock: sock, raw: raw, inj: inj, remoteAddr: sock.RemoteAddr().String(), logf: serverLogf(srv)}
	if tc, ok := sock.(*tls.Conn); ok {
		// As net/http, once per connection: every request gets the same.
		state := tc.ConnectionState()
		c.tls, c.state = tc, &state
	}
	c.base = c.connContext(srv)
	c.onHijack = func() []byte { return c.hijacked(srv) }
	c.onHangUp, c.onReadable, c.onIdleEnd, c.next = c.hungUp, c.readable, c.closeIdle, c.serveNext
	return c
}

// keep takes the connection back from the detached poll it was handed
// to, with the poll's watch and what was read of the client's next
// requests.
func (c *inPlaceConn) keep(watch takeover.Watch, rest []byte) {
	c.mu.Lock()
	c.watch, c.rest, c.watchTaken = watch, rest, false
	c.mu.Unlock()
}

// await waits, with no goroutine, for the client's next request: served
// at once if it was read already, else when the socket is readable. c.mu
// is held while the connection is set up to wait, so that whoever claims
// it (claim) sees it set up.
func (c *inPlaceConn) await() {
	c.mu.Lock()
	if len(c.rest) == 0 && c.tls != nil {
		c.rest = c.bufferedTLS() // never waits: its deadline has passed
	}
	if len(c.rest) > 0 {
		c.mu.Unlock()
		inPlaceWorkers.Go(c.next)
		return
	}
	if !c.inj.Idle(c, c.onIdleEnd) {
		c.mu.Unlock()
		c.close() // the server shut down
		return
	}
	c.startIdleTimer()
	// Edge-triggered, the watch reports only what the client sends from
	// now on: what it sent since the connection was last read, reported
	// to the guard of the request served meanwhile, is read now.
	armed := c.watch.Await(c.onReadable)
	unread := armed && c.watch.Sent() != c.sent
	c.mu.Unlock()
	switch {
	case !armed:
		if c.claim() {
			c.close()
		}
	case unread:
		c.readable()
	}
}

// claim takes the waiting connection for whoever called it first: the
// client's next request, the idle timeout, or the server shutting down.
func (c *inPlaceConn) claim() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.inj.Claim(c) {
		return false
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	return true
}

// startIdleTimer closes the connection after the server's idle timeout,
// as net/http closes its idle connections. The caller holds c.mu.
func (c *inPlaceConn) startIdleTimer() {
	srv := c.inj.Server()
	d := srv.IdleTimeout
	if d == 0 {
		d = srv.ReadTimeout
	}
	if d <= 0 {
		return
	}
	if c.idle == nil {
		c.idle = time.AfterFunc(d, c.idleTimedOut)
		return
	}
	c.idle.Reset(d)
}

// readable runs on the hang-up watcher's goroutine: the client sent its
// next request, or left.
func (c *inPlaceConn) readable() {
	if c.claim() {
		inPlaceWorkers.Go(c.next)
	}
}

func (c *inPlaceConn) idleTimedOut() {
	if c.claim() {
		c.close()
	}
}

// closeIdle runs when the server shuts down with the connection idle:
// the server's injector claimed it.
func (c *inPlaceConn) closeIdle() {
	c.mu.Lock()
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	c.close()
}

// close ends the connection without a word, as net/http closes an idle
// connection or one whose client left.
func (c *inPlaceConn) close() {
	c.watch.Stop()
	takeover.DiscardUnread(c.raw)
	_ = c.sock.Close()
	c.setState(c.inj.Server(), http.StateClosed)
}

// handBack gives the connection to net/http, with what was read of the
// client's next request in front, for net/http to read, serve or refuse.
func (c *inPlaceConn) handBack(read []byte) {
	c.watch.Stop()
	_ = c.sock.SetReadDeadline(time.Time{}) // readNow's, over TLS
	var conn net.Conn = c.sock
	if len(read) > 0 {
		conn = &takeover.PrefixedConn{Conn: c.sock, Prefix: read}
	}
	if !c.inj.Inject(conn) {
		_ = conn.Close()
	}
}

// serveNext runs on a worker: it reads the client's next requests and
// serves each in place, until one is detached, is net/http's, or the
// connection is over or idle.
func (c *inPlaceConn) serveNext() {
	for {
		if !c.inj.Open() {
			c.close() // the server shut down: as net/http, no new request
			return
		}
		c.mu.Lock()
		read := c.rest
		c.rest = nil
		c.mu.Unlock()
		if len(read) == 0 {
			var err error
			read, err = c.readNow()
			switch {
			case errors.Is(err, errRecordArriving):
				inPlaceHandedBack.Inc()
				c.handBack(nil)
				return
			case err != nil:
				c.close() // the client left, or the connection broke
				return
			case len(read) == 0:
				c.await() // woken for nothing
				return
			}
		}
		req, taken := takeover.ReadRequest(read)
		if req == nil {
			inPlaceHandedBack.Inc()
			c.handBack(read)
			return
		}
		if !c.inj.Open() {
			// As net/http, a request read as its server began shutting
			// down is not served: no config a reload replaced answers.
			c.close()
			return
		}
		inPlaceServed.Inc()
		c.mu.Lock()
		c.rest = read[taken:]
		c.mu.Unlock()
		if !c.serve(req) {
			return
		}
		if c.mu.Lock(); len(c.rest) == 0 {
			c.mu.Unlock()
			c.await()
			return
		}
		c.mu.Unlock()
	}
}

// readBufs hold what a worker reads of a client's next request. A TLS
// record holds up to 16 KiB; what does not fit stays in crypto/tls for
// the next read.
var readBufs = sync.Pool{New: func() any { return new([4 << 10]byte) }}

// tlsRecordWait is how long a worker waits for the rest of a TLS record
// the socket had only part of: a client's request is one record, and
// arrives whole. A record that takes longer sends the connection back to
// net/http, which waits for it on a goroutine of its own.
const tlsRecordWait = time.Millisecond

// errRecordArriving says that a TLS record has begun to arrive, and not
// all of it is there yet.
var errRecordArriving = errors.New("a TLS record is still arriving")

// readNow reads what the client sent, without waiting (see tlsRecordWait
// over TLS): nothing if it sent nothing.
func (c *inPlaceConn) readNow() ([]byte, error) {
	c.mu.Lock()
	c.sent = c.watch.Sent()
	c.mu.Unlock()
	buf := readBufs.Get().(*[4 << 10]byte)
	defer readBufs.Put(buf)
	if c.tls == nil {
		n, err := takeover.ReadNow(c.raw, buf[:])
		return append([]byte(nil), buf[:n]...), err
	}
	_ = c.tls.SetReadDeadline(time.Now().Add(tlsRecordWait))
	n, err := c.tls.Read(buf[:])
	if n == 0 && isTimeout(err) {
		return nil, errRecordArriving
	}
	return append([]byte(nil), buf[:n]...), err
}

// bufferedTLS returns what crypto/tls read of the client's next request
// along with an earlier one, if anything: no epoll reports it, since the
// socket has nothing left to read. With a deadline already past, a read
// returns only what is buffered, and a record it has only part of stays
// for the next (a timeout is not a broken connection to crypto/tls).
func (c *inPlaceConn) bufferedTLS() []byte {
	buf := readBufs.Get().(*[4 << 10]byte)
	defer readBufs.Put(buf)
	_ = c.tls.SetReadDeadline(aLongTimeAgo)
	n, _ := c.tls.Read(buf[:])
	_ = c.tls.SetReadDeadline(time.Time{})
	if n == 0 {
		return nil
	}
	return append([]byte(nil), buf[:n]...)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serve runs the server's handler for req as net/http's connection loop
// would, and reports whether the connection is still this one's to serve
// the next request on.
func (c *inPlaceConn) serve(req *http.Request) (more bool) {
	srv := c.inj.Server()
	ctx, cancel := context.WithCancel(c.base)
	defer cancel()
	req = req.WithContext(ctx)
	req.RemoteAddr = c.remoteAddr
	req.TLS = c.state
	c.setState(srv, http.StateActive)
	c.setDeadlines(srv)
	if !c.guard(cancel) {
		c.close()
		return false
	}
	w := takeover.NewWriter(c.sock, req, c.logf, c.onHijack, c.inj.Open)
	ok := c.runHandler(srv, w, req)
	cancel()
	if w.Hijacked() {
		return false // detached, or another handler's now
	}
	if !ok {
		c.close()
		return false
	}
	keep := w.Finish()
	_ = c.sock.SetWriteDeadline(time.Time{})
	if !keep || !c.inj.Open() {
		c.close()
		return false
	}
	c.setState(srv, http.StateIdle)
	return true
}

// connContext builds what net/http gives the requests of a connection it
// accepted: the server, the server's ConnContext hooks (Caddy's, and the
// module's own rememberSocket), the local address, and this connection.
func (c *inPlaceConn) connContext(srv *http.Server) context.Context {
	ctx := context.WithValue(context.Background(), http.ServerContextKey, srv)
	if srv.ConnContext != nil {
		ctx = srv.ConnContext(ctx, c.sock)
	}
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.sock.LocalAddr())
	return context.WithValue(ctx, inPlaceKey{}, c)
}

// setDeadlines sets the socket's deadlines as net/http does once it has
// read a request: the read timeout's from the start of the request, the
// write timeout's for the answer.
func (c *inPlaceConn) setDeadlines(srv *http.Server) {
	var readBy time.Time
	if d := srv.ReadTimeout; d > 0 {
		readBy = time.Now().Add(d)
	}
	_ = c.sock.SetReadDeadline(readBy)
	if d := srv.WriteTimeout; d > 0 {
		_ = c.sock.SetWriteDeadline(time.Now().Add(d))
	}
}

// guard arms the watch to cancel the request if its client leaves, as
// net/http's background read does. On a plaintext connection it reports
// the client's next request too: a long poll detached meanwhile keeps it
// armed (takeWatch), so that it is ready for the request after its
// answer. Over TLS, where a client's close_notify cannot be told from a
// request without decrypting it, only the end of the connection is
// watched, and waiting for the next request re-arms it (await).
func (c *inPlaceConn) guard(cancel context.CancelFunc) bool {
	if c.tls != nil {
		return c.watch.Guard(cancel)
	}
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	return c.watch.Await(c.onHangUp)
}

// hungUp runs on the hang-up watcher's goroutine when the client closes
// its end while its request is served: as net/http's background read, it
// cancels the request, unless the client sent more first (a pipelined
// request, which net/http's reader would have taken instead of the end).
func (c *inPlaceConn) hungUp() {
	c.mu.Lock()
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil && !takeover.HasUnread(c.raw) {
		cancel()
	}
}

// hijacked runs when a handler takes the connection, and returns what
// was read of the client's next requests, for the handler's reader. A
// detached subscriber took the watch with the connection (takeWatch) and
// takes those bytes itself (unreadPrefix); any other handler gets them,
// and the connection unwatched.
func (c *inPlaceConn) hijacked(srv *http.Server) (read []byte) {
	c.mu.Lock()
	taken := c.watchTaken
	if !taken {
		read, c.rest = c.rest, nil
	}
	c.mu.Unlock()
	if !taken {
		c.watch.Stop()
	}
	c.setState(srv, http.StateHijacked)
	return read
}

// takeWatch hands the connection's watch to a subscriber detaching the
// request served on it, to call fn when the client hangs up. A long poll
// (sending) may be told of the client sending something too, and tells
// the two apart (see detachedPoll.hungUpLocked): it keeps the watch as
// serve armed it, without a system call. A stream's watch reports only
// hang-ups.
func (c *inPlaceConn) takeWatch(fn func(), sending bool) (takeover.Watch, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	armed := sending && c.watch.Replace(fn)
	if !armed && !c.watch.Guard(fn) {
		return takeover.Watch{}, false
	}
	c.watchTaken = true
	return c.watch, true
}

// blockingInPlace says that the request, if served in place, now waits
// on its worker (a subscriber held on the ordinary path), so that the
// workers go on without it; the caller calls what it returns when the
// wait is over.
func blockingInPlace(r *http.Request) (done func()) {
	if inPlaceOf(r) == nil {
		return func() {}
	}
	return inPlaceWorkers.Block()
}

// takeRest gives what was read of the client's next requests to a
// subscriber detaching the request served on it.
func (c *inPlaceConn) takeRest() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	rest := c.rest
	c.rest = nil
	return rest
}

// runHandler calls the server's handler as net/http's serverHandler does,
// and reports false if it panicked: net/http logs the panic (but
// http.ErrAbortHandler) and closes the connection.
func (c *inPlaceConn) runHandler(srv *http.Server, w http.ResponseWriter, req *http.Request) (ok bool) {
	defer func() {
		if err := recover(); err != nil {
			if err != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				serverLogf(srv)("http: panic serving %v: %v\n%s", req.RemoteAddr, err, buf)
			}
			ok = false
		}
	}()
	srv.Handler.ServeHTTP(w, req)
	return true
}

func (c *inPlaceConn) setState(srv *http.Server, state http.ConnState) {
	if srv.ConnState != nil {
		srv.ConnState(c.sock, state)
	}
}

// serverLogf is the server's error log, as net/http's logf.
func serverLogf(srv *http.Server) func(string, ...any) {
	if srv.ErrorLog != nil {
		return srv.ErrorLog.Printf
	}
	return log.Printf
}
