package comet

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"reflect"
	"sync"
	"syscall"
	"time"

	"github.com/caddy-comet/comet/internal/takeover"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Finding the socket under a request, and whether the response writers
// around it let a detached stream write to it directly.

// aLongTimeAgo is a deadline in the past: setting it makes a blocked read
// return at once.
var aLongTimeAgo = time.Unix(1, 0)

// socketKey is the request context key of the connection's socket, put
// there by the ConnContext hook the handler registers on its server.
type socketKey struct{}

// rememberSocket is a ConnContext hook: it keeps the accepted connection
// where the handler can find its socket after taking the connection over.
func rememberSocket(ctx context.Context, c net.Conn) context.Context {
	if ctx.Value(socketKey{}) != nil {
		return ctx // another comet handler on this server registered it too
	}
	if pc, ok := c.(*takeover.PrefixedConn); ok {
		if tc, ok := pc.Conn.(*tls.Conn); ok {
			ctx = context.WithValue(ctx, caddyTLSStateKey, tlsStateOf(tc))
		}
	}
	return context.WithValue(ctx, socketKey{}, c)
}

// caddyTLSStateKey is the request context key under which Caddy's server
// looks for the TLS state of a connection that is not a *tls.Conn, as a
// listener wrapper's (caddyhttp.Server.ServeHTTP sets r.TLS from it). A
// TLS connection served in place and handed back with bytes already
// decrypted (inplace.go) is one: net/http takes the PrefixedConn in front
// of it for plaintext. TestTLSPollsAreHandedBackAsTLS fails if Caddy
// stops reading the key.
const caddyTLSStateKey caddy.CtxKey = "tls_connection_state_func"

// tlsStateOf returns what Caddy wants under caddyTLSStateKey.
func tlsStateOf(tc *tls.Conn) func() *tls.ConnectionState {
	return sync.OnceValue(func() *tls.ConnectionState {
		state := tc.ConnectionState()
		return &state
	})
}

// watchHangUp arranges for left to be called when the client of a
// subscriber taken over closes its end (with sending, maybe also when it
// sends something): with the watch of the connection the request is
// served in place on, taken over, or with a new one.
func watchHangUp(r *http.Request, raw syscall.RawConn, left func(), sending bool) (takeover.Watch, bool) {
	if c := inPlaceOf(r); c != nil {
		return c.takeWatch(left, sending)
	}
	return takeover.WatchHangUp(raw, left)
}

// detachableSocket returns the connection under a stream the handler may
// take over once its headers are out, or nil: the request must be HTTP/1.x,
// plaintext or over TLS, on a TCP or Unix socket, and its response must
// reach net/http only through wrappers known to pass the body through
// unchanged. overTLS says that the connection is a *tls.Conn, which
// makes its records and writes them itself (see takesRecordAtOnce).
func (h *Handler) detachableSocket(w http.ResponseWriter, r *http.Request) (conn net.Conn, overTLS bool) {
	if !passesBodyThrough(w, false) || takeover.HangUpsWatched() != nil {
		return nil, false // a detached stream would not learn that its client left
	}
	if conn := h.plainSocket(r); conn != nil {
		return conn, false
	}
	return h.tlsSocket(r), true
}

// tlsSocket returns the TLS connection of an HTTP/1.x request over TLS on
// a TCP or Unix socket, if the route detaches subscribers, or nil.
func (h *Handler) tlsSocket(r *http.Request) net.Conn {
	if !h.detaches() || r.ProtoMajor != 1 || r.TLS == nil {
		return nil
	}
	var conn *tls.Conn
	switch c := r.Context().Value(socketKey{}).(type) {
	case *tls.Conn:
		conn = c
	case *takeover.PrefixedConn:
		// Handed back from serving in place: what is left of its
		// prefix is in unreadPrefix.
		conn, _ = c.Conn.(*tls.Conn)
	}
	if conn == nil {
		return nil
	}
	switch conn.NetConn().(type) {
	case *net.TCPConn, *net.UnixConn:
		return conn
	default:
		return nil // a listener wrapper's connection may change what is written
	}
}

// plainSocket returns the socket of a plaintext HTTP/1.x request on a TCP
// or Unix socket, if the route detaches subscribers and the platform can,
// or nil.
func (h *Handler) plainSocket(r *http.Request) net.Conn {
	if !h.detaches() || !takeover.Supported || r.ProtoMajor != 1 || r.TLS != nil {
		return nil
	}
	conn, _ := r.Context().Value(socketKey{}).(net.Conn)
	if pc, ok := conn.(*takeover.PrefixedConn); ok {
		// A connection a detached long poll handed back: the socket is
		// under it, and what is left of its prefix is in unreadPrefix.
		conn = pc.Conn
	}
	switch conn.(type) {
	case *net.TCPConn, *net.UnixConn:
		return conn
	default:
		return nil // a listener wrapper's connection may change what is written
	}
}

// Response writer wrappers that leave the body as it is. Any other wrapper
// (templates, intercept, a plugin) may change or hold back the body, and
// writing past it would be wrong, so its streams stay on the ordinary path.
const (
	caddyhttpPkg = "github.com/caddyserver/caddy/v2/modules/caddyhttp"
	netHTTPResp  = "net/http.response"
	inPlaceResp  = "github.com/caddy-comet/comet/internal/takeover.Writer"
	encodeWriter = caddyhttpPkg + "/encode.responseWriter"
)

var transparentWriters = map[string]bool{
	caddyhttpPkg + ".responseRecorder":              true, // unless it buffers
	caddyhttpPkg + ".ResponseWriterWrapper":         true,
	caddyhttpPkg + ".readDeadlineWriter":            true,
	caddyhttpPkg + ".IdleTimeoutWriter":             true,
	caddyhttpPkg + "/headers.responseWriterWrapper": true,
	encodeWriter: true, // unless it compresses
}

// passesBodyThrough reports whether every wrapper between w and net/http's
// own response writer is known to leave the body unchanged. Some decide
// that only when the headers go out: a recorder whether it buffers, encode
// whether it compresses; with headersOut set, their choice is checked too.
func passesBodyThrough(w http.ResponseWriter, headersOut bool) bool {
	return onlyWrappers(w, func(name string, w http.ResponseWriter) bool {
		if !transparentWriters[name] {
			return false
		}
		if headersOut {
			if rec, ok := w.(caddyhttp.ResponseRecorder); ok && rec.Buffered() {
				return false
			}
			if name == encodeWriter && w.Header().Get("Content-Encoding") != "" {
				return false
			}
		}
		return true
	})
}

// onlyWrappers reports whether every wrapper between w and net/http's own
// response writer is one that allowed accepts, by its type's name.
func onlyWrappers(w http.ResponseWriter, allowed func(name string, w http.ResponseWriter) bool) bool {
	for {
		name := writerTypeName(w)
		if name == netHTTPResp || name == inPlaceResp {
			return true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok || !allowed(name, w) {
			return false
		}
		w = u.Unwrap()
	}
}

// writerTypeNames caches the names writerTypeName makes: it runs for
// every wrapper of every subscribing request, and the wrappers' types are
// few.
var writerTypeNames sync.Map // reflect.Type → string

func writerTypeName(w http.ResponseWriter) string {
	t := reflect.TypeOf(w)
	if name, ok := writerTypeNames.Load(t); ok {
		return name.(string)
	}
	e := t
	if e.Kind() == reflect.Pointer {
		e = e.Elem()
	}
	name := e.PkgPath() + "." + e.Name()
	writerTypeNames.Store(t, name)
	return name
}

// detachedSocket is a detached stream's connection, which publishers
// write to without waiting.
type detachedSocket struct {
	sock    net.Conn        // the accepted connection
	raw     syscall.RawConn // the socket under it
	overTLS bool            // sock is a *tls.Conn, which writes its records itself
}

// write writes p to the connection and returns how much it wrote. Without
// wait it returns as soon as the socket would block; over TLS it writes
// all of p if the socket surely takes it at once, or nothing.
func (d *detachedSocket) write(p []byte, wait bool) (int, error) {
	if !d.overTLS {
		return takeover.Write(d.raw, p, wait)
	}
	if !wait && !takesRecordAtOnce(d.raw, len(p)) {
		return 0, nil
	}
	return d.sock.Write(p)
}

// tlsWriteAtOnce is the most a publisher writes to a TLS connection at
// once.
const tlsWriteAtOnce = 2 << 10

// takesRecordAtOnce reports whether the socket under a TLS connection
// surely takes a record of n bytes without waiting. crypto/tls cannot stop
// where the socket would block (and a write of its that times out breaks
// the connection), so a publisher writes to a TLS connection only a small
// record into a socket that holds nothing unsent or unacknowledged: the
// smallest send buffer takes that at once. Anything else is written by a
// goroutine that may wait.
func takesRecordAtOnce(raw syscall.RawConn, n int) bool {
	return n <= tlsWriteAtOnce && takeover.Unsent(raw) == 0
}

// rawSocket returns the TCP or Unix socket under a connection
// detachableSocket accepted, plaintext or TLS.
func rawSocket(sock net.Conn) (syscall.RawConn, error) {
	if tc, ok := sock.(*tls.Conn); ok {
		sock = tc.NetConn()
	}
	return sock.(syscall.Conn).SyscallConn()
}
