package takeover

import (
	"errors"
	"net"
	"net/http"
	"sync"
)

// An Injector hands connections back to a server: it is a listener the
// server serves beside its own, whose connections come from their taker
// once it is done with them. The server closes it when it shuts down (a
// reload, or exit); connections are refused from then on, and their taker
// should have said Connection: close, as net/http says on its own
// connections then.
type Injector struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	// ready is closed at the first Accept: from then on the server tracks
	// the injector, and its shutdown closes it. dead is closed when the
	// server stops serving it.
	ready, dead chan struct{}
	readyOnce   sync.Once

	srv *http.Server
	// idle holds the connections waiting for their client's next request
	// to be served in place: like net/http's own idle connections, they
	// are closed when the server shuts down. shut says it has.
	idleMu sync.Mutex
	idle   map[any]func()
	shut   bool
}

var injectors sync.Map // *http.Server → *Injector

// InjectorFor returns the server's injector once the server serves it,
// starting it the first time, or nil if the server no longer serves new
// listeners (it is shutting down). onError hears why the server stopped
// serving it, if not because it shut down. Keep the injector a connection
// was given: it tells of the shutdown of its own server even after the
// server forgot it.
func InjectorFor(srv *http.Server, onError func(error)) *Injector {
	inj := loadInjector(srv, onError)
	select {
	case <-inj.ready:
		return inj
	case <-inj.dead:
		return nil
	}
}

func loadInjector(srv *http.Server, onError func(error)) *Injector {
	if inj, ok := injectors.Load(srv); ok {
		return inj.(*Injector)
	}
	inj := &Injector{
		conns:  make(chan net.Conn),
		closed: make(chan struct{}),
		ready:  make(chan struct{}),
		dead:   make(chan struct{}),
		srv:    srv,
		idle:   make(map[any]func()),
	}
	if actual, loaded := injectors.LoadOrStore(srv, inj); loaded {
		return actual.(*Injector)
	}
	go func() {
		// Serve returns when the server shuts down, having closed inj, or
		// at once if it already was.
		if err := srv.Serve(inj); !errors.Is(err, http.ErrServerClosed) {
			onError(err)
		}
		_ = inj.Close()
		close(inj.dead)
		injectors.CompareAndDelete(srv, inj)
	}()
	return inj
}

// Inject hands a connection to the server, and reports false if the
// server has shut down.
func (inj *Injector) Inject(c net.Conn) bool {
	select {
	case inj.conns <- c:
		return true
	case <-inj.closed:
		return false
	}
}

// Open reports whether the server still takes connections back.
func (inj *Injector) Open() bool {
	select {
	case <-inj.closed:
		return false
	default:
		return true
	}
}

// Accept is the server's: it returns the next injected connection.
func (inj *Injector) Accept() (net.Conn, error) {
	inj.readyOnce.Do(func() { close(inj.ready) })
	select {
	case c := <-inj.conns:
		return c, nil
	case <-inj.closed:
		return nil, net.ErrClosed
	}
}

// Close is the server's, when it shuts down: it also closes the idle
// connections (see Idle).
func (inj *Injector) Close() error {
	inj.closeOnce.Do(func() {
		close(inj.closed)
		inj.idleMu.Lock()
		idle := inj.idle
		inj.idle, inj.shut = nil, true
		inj.idleMu.Unlock()
		for _, closeIdle := range idle {
			closeIdle()
		}
	})
	return nil
}

// Server is the server the injector hands connections back to.
func (inj *Injector) Server() *http.Server { return inj.srv }

// Idle counts key among the server's idle connections, waiting for their
// client's next request, until Claim: when the server shuts down,
// closeIdle is called, on the shutting down goroutine. It reports false,
// counting nothing, if the server shut down already.
func (inj *Injector) Idle(key any, closeIdle func()) bool {
	inj.idleMu.Lock()
	defer inj.idleMu.Unlock()
	if inj.shut {
		return false
	}
	inj.idle[key] = closeIdle
	return true
}

// Claim takes key out of the idle connections and reports whether it was
// there: once the server shut down, or another claimed it, it is not.
func (inj *Injector) Claim(key any) bool {
	inj.idleMu.Lock()
	defer inj.idleMu.Unlock()
	_, ok := inj.idle[key]
	delete(inj.idle, key)
	return ok
}

// Addr names the injector in the server's logs.
func (inj *Injector) Addr() net.Addr { return injectorAddr{} }

type injectorAddr struct{}

func (injectorAddr) Network() string { return "takeover" }
func (injectorAddr) String() string  { return "connections handed back" }
