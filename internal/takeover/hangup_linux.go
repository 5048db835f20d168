package takeover

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The hang-up watcher reports clients that close their connection while
// nothing reads it, so that what waits on the connection is freed at once.
// One goroutine waits in epoll for every watched socket, in place of one
// goroutine reading each: a watched connection then costs no goroutine,
// and data the client sends wakes nothing unless the watch asks for it
// (Await: a connection served in place waiting for its next request).
type hangUpWatcher struct {
	epfd    int
	nextID  atomic.Uint64
	watched watchMap // id → what to call when the client hangs up
}

// watchMap is the watches' state by id, in shards each under its own
// lock. A sync.Map would allocate an entry for every store, and a watch's
// function changes for every request served in place.
type watchMap struct {
	shards [64]struct {
		mu sync.Mutex
		m  map[uint64]*watchEntry
	}
}

// watchEntry is a watch's state. A watch is armed for one report (its
// registration has EPOLLONESHOT) until Await makes it edge-triggered for
// good: then the kernel reports each time the client sends something or
// closes its end, the entry counts the first, and fn is called for what
// want says.
type watchEntry struct {
	fn    func()
	armed bool   // one report: not fired since it was armed; edge: always
	edge  bool   // registered edge-triggered (see Watch.Await)
	want  uint32 // edge: the events fn is called for
	sent  uint64 // edge: how many times the client sent something
	ended bool   // edge: the client closed its end (or the connection broke)
}

func (wm *watchMap) lock(id uint64) (*sync.Mutex, map[uint64]*watchEntry) {
	s := &wm.shards[id%uint64(len(wm.shards))]
	s.mu.Lock()
	return &s.mu, s.m
}

// entry returns the watch's entry, made if it has none, with its shard
// locked; the caller unlocks mu.
func (wm *watchMap) entry(id uint64) (mu *sync.Mutex, e *watchEntry) {
	mu, m := wm.lock(id)
	if e = m[id]; e == nil {
		e = new(watchEntry)
		m[id] = e
	}
	return mu, e
}

// arm arms the watch for one report of fn.
func (wm *watchMap) arm(id uint64, fn func()) {
	mu, e := wm.entry(id)
	e.fn, e.armed, e.edge = fn, true, false
	mu.Unlock()
}

// armEdges makes the watch edge-triggered, calling fn for want.
func (wm *watchMap) armEdges(id uint64, fn func(), want uint32) {
	mu, e := wm.entry(id)
	e.fn, e.want, e.armed, e.edge = fn, want, true, true
	mu.Unlock()
}

// replace makes fn the function of an armed watch, and reports whether it
// was armed; ended says that an edge-triggered watch's client closed its
// end already, which the kernel does not report twice.
func (wm *watchMap) replace(id uint64, fn func()) (armed, ended bool) {
	mu, m := wm.lock(id)
	defer mu.Unlock()
	e := m[id]
	if e == nil || !e.armed {
		return false, false
	}
	e.fn = fn
	return true, e.edge && e.ended
}

// setWant makes an edge-triggered watch call fn for want, and reports
// whether the watch is edge-triggered, and whether its client closed its
// end already.
func (wm *watchMap) setWant(id uint64, fn func(), want uint32) (edge, ended bool) {
	mu, m := wm.lock(id)
	defer mu.Unlock()
	e := m[id]
	if e == nil || !e.edge {
		return false, false
	}
	e.fn, e.want = fn, want
	return true, e.ended
}

func (wm *watchMap) sent(id uint64) uint64 {
	mu, m := wm.lock(id)
	defer mu.Unlock()
	if e := m[id]; e != nil {
		return e.sent
	}
	return 0
}

func (wm *watchMap) delete(id uint64) {
	mu, m := wm.lock(id)
	delete(m, id)
	mu.Unlock()
}

// fired returns what to call for events the kernel reported on the watch,
// if anything: a one-report watch's function once, an edge-triggered
// watch's for what it wants.
func (wm *watchMap) fired(id uint64, events uint32) (func(), bool) {
	mu, m := wm.lock(id)
	defer mu.Unlock()
	e := m[id]
	switch {
	case e == nil || !e.armed:
		return nil, false
	case !e.edge:
		e.armed = false
		return e.fn, true
	}
	if events&syscall.EPOLLIN != 0 {
		e.sent++
	}
	if events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
		e.ended = true
	}
	return e.fn, events&(e.want|syscall.EPOLLHUP|syscall.EPOLLERR) != 0
}

var (
	watcherOnce sync.Once
	theWatcher  *hangUpWatcher
	watcherErr  error
)

// Watch is one socket's registration with the hang-up watcher.
type Watch struct {
	raw    syscall.RawConn
	id     uint64
	events uint32 // what is watched for, besides EPOLLONESHOT (with EPOLLET: for good)
	fn     func()
}

// HangUpsWatched starts the process's hang-up watcher the first time it
// is needed, and reports whether hang-ups can be watched on this platform.
// The watcher lives as long as the process: one goroutine, mostly in a
// system call, and nothing else.
func HangUpsWatched() error {
	watcherOnce.Do(func() {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			watcherErr = errors.Join(errors.New("creating an epoll instance"), err)
			return
		}
		theWatcher = &hangUpWatcher{epfd: epfd}
		for i := range theWatcher.watched.shards {
			theWatcher.watched.shards[i].m = make(map[uint64]*watchEntry)
		}
		go theWatcher.run()
	})
	return watcherErr
}

// WatchHangUp arranges for hungUp to be called, once, on the watcher's
// goroutine, when the client closes its end of the socket (a half-close
// too). It reports false if the socket cannot be watched.
func WatchHangUp(raw syscall.RawConn, hungUp func()) (Watch, bool) {
	return watch(raw, syscall.EPOLLRDHUP, hungUp)
}

// WatchReadable arranges for readable to be called, once, on the watcher's
// goroutine, when the client sent something or closed its end of the
// socket; Rearm asks for the next time. It is for a connection whose client
// speaks now and then (a WebSocket's pongs), read by a goroutine started
// only when there is something to read. It reports false if the socket
// cannot be watched.
func WatchReadable(raw syscall.RawConn, readable func()) (Watch, bool) {
	return watch(raw, syscall.EPOLLIN|syscall.EPOLLRDHUP, readable)
}

func watch(raw syscall.RawConn, events uint32, fn func()) (Watch, bool) {
	if HangUpsWatched() != nil {
		return Watch{}, false
	}
	w := theWatcher
	id := w.nextID.Add(1)
	w.watched.arm(id, fn)
	lw := Watch{raw: raw, id: id, events: events, fn: fn}
	if !lw.ctl(syscall.EPOLL_CTL_ADD, events|syscall.EPOLLONESHOT) {
		w.watched.delete(id)
		return Watch{}, false
	}
	return lw, true
}

// Rearm asks for the watch's function to be called again, once, the next
// time the socket is readable: at once if it is readable now, so nothing
// sent between the last read and Rearm goes unnoticed. It reports false if
// the socket cannot be watched any more. The caller must not rearm a watch
// after Stop: the socket may have been closed and its number reused.
func (lw Watch) Rearm() bool {
	if lw.raw == nil {
		return false
	}
	theWatcher.watched.arm(lw.id, lw.fn)
	if !lw.ctl(syscall.EPOLL_CTL_MOD, lw.events|syscall.EPOLLONESHOT) {
		theWatcher.watched.delete(lw.id)
		return false
	}
	return true
}

// Await makes the watch call fn when the client sends something (its
// next request) or closes its end of the socket. The first Await makes
// the registration edge-triggered, for good (one epoll_ctl): from then on
// the kernel reports every time the client sends something, and Await
// and Guard only say what fn is and what it is called for, with no
// system call. What the client sent while fn was not called for it (a
// request pipelined while a guarded one was served) is counted: Sent
// tells the connection's reader that there is something it has not read.
// Await reports false if the socket cannot be watched any more; the watch
// is then stopped.
func (lw *Watch) Await(fn func()) bool {
	const want = syscall.EPOLLIN | syscall.EPOLLRDHUP
	if lw.raw == nil {
		return false
	}
	lw.fn = fn
	if edge, ended := theWatcher.watched.setWant(lw.id, fn, want); edge {
		if ended {
			go fn() // as a level-triggered watch would report it again
		}
		return true
	}
	theWatcher.watched.armEdges(lw.id, fn, want)
	lw.events = want | unix.EPOLLET
	if !lw.ctl(syscall.EPOLL_CTL_MOD, lw.events) {
		lw.Stop()
		return false
	}
	return true
}

// Guard makes the watch call fn when the client closes its end of the
// socket (a half-close too), but not when it sends something: without a
// system call on an edge-triggered watch (see Await), else armed for one
// report. It reports false if the socket cannot be watched any more; the
// watch is then stopped.
func (lw *Watch) Guard(fn func()) bool {
	if lw.raw == nil {
		return false
	}
	if edge, ended := theWatcher.watched.setWant(lw.id, fn, syscall.EPOLLRDHUP); edge {
		lw.fn = fn
		if ended {
			go fn()
		}
		return true
	}
	return lw.rearmFor(syscall.EPOLLRDHUP, fn)
}

// Sent returns how many times the client sent something since an
// edge-triggered watch began (see Await): a reader that notes it before
// it reads knows, when it changed, that the client sent something since.
func (lw Watch) Sent() uint64 {
	if lw.raw == nil {
		return 0
	}
	return theWatcher.watched.sent(lw.id)
}

func (lw *Watch) rearmFor(events uint32, fn func()) bool {
	if lw.raw == nil {
		return false
	}
	lw.events, lw.fn = events, fn
	if !lw.Rearm() {
		lw.Stop()
		return false
	}
	return true
}

// Replace makes fn what an armed watch calls, without a system call, and
// reports true; or reports false, arming nothing, if the watch fired
// already (or was never armed) and its function was called.
func (lw *Watch) Replace(fn func()) bool {
	if lw.raw == nil {
		return false
	}
	// fn is set first: once swapped in, the watch may fire, and whoever
	// it wakes may use the watch.
	lw.fn = fn
	armed, ended := theWatcher.watched.replace(lw.id, fn)
	if ended {
		go fn()
	}
	return armed
}

// ctl adds the watch's socket to the watcher's epoll instance, or modifies
// its registration, for events.
func (lw Watch) ctl(op int, events uint32) bool {
	c := ctlOps.Get().(*ctlOp)
	c.op = op
	c.ev = syscall.EpollEvent{Events: events, Fd: int32(lw.id), Pad: int32(lw.id >> 32)}
	err := lw.raw.Control(c.fn)
	ok := err == nil && c.err == nil
	c.err = nil
	ctlOps.Put(c)
	return ok
}

// ctlOp is one epoll_ctl: what the function given to the RawConn works
// on, made once and pooled, as ioOp, so that re-arming a watch for every
// request allocates nothing.
type ctlOp struct {
	op  int
	ev  syscall.EpollEvent
	err error
	fn  func(fd uintptr)
}

var ctlOps = sync.Pool{New: func() any {
	c := new(ctlOp)
	c.fn = c.ctl
	return c
}}

func (c *ctlOp) ctl(fd uintptr) {
	c.err = syscall.EpollCtl(theWatcher.epfd, c.op, int(fd), &c.ev)
}

// Stop ends the watch, before the socket is closed or given to another
// owner. It is safe on a zero Watch and more than once.
func (lw Watch) Stop() {
	if lw.raw == nil {
		return
	}
	w := theWatcher
	w.watched.delete(lw.id)
	_ = lw.raw.Control(func(fd uintptr) {
		_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

func (w *hangUpWatcher) run() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(w.epfd, events, -1)
		if err != nil {
			continue // EINTR; nothing else can fail on a valid epoll instance
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			// A watch stopped after epoll reported it is gone from the
			// map: its socket may already belong to someone else.
			if fn, ok := w.watched.fired(id, ev.Events); ok {
				fn()
			}
		}
	}
}

// HasUnread reports whether the client sent bytes that nobody has read
// yet, without reading them.
func HasUnread(raw syscall.RawConn) bool {
	var buf [1]byte
	n := 0
	_ = raw.Read(func(fd uintptr) bool {
		n, _, _ = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait for data
	})
	return n > 0
}

// Pending reports, without reading and without waiting, whether the
// client sent bytes that nobody has read yet, and, when it sent none,
// whether it closed its end of the connection (or the connection broke).
func Pending(raw syscall.RawConn) (unread, closed bool) {
	var buf [1]byte
	_ = raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			unread = true
		case err == nil:
			closed = true // end of file
		case err != syscall.EAGAIN && err != syscall.EINTR:
			closed = true
		}
		return true // never wait for data
	})
	return unread, closed
}

// DiscardUnread reads and drops what the client sent that nobody read,
// without waiting, so that closing the socket sends a FIN rather than a
// reset, which could destroy the last bytes written before the client
// reads them. Bytes that arrive later are not waited for.
func DiscardUnread(raw syscall.RawConn) {
	var buf [4096]byte
	_ = raw.Read(func(fd uintptr) bool {
		for range 16 { // at most 64 KiB: a client that keeps sending gets its reset
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_DONTWAIT)
			if err != nil || n <= 0 {
				break
			}
		}
		return true // never wait for data
	})
}

// Unsent returns how many bytes written to the socket the kernel still
// holds, sent but not acknowledged or not sent yet (SIOCOUTQ). A write that
// is small next to the socket's send buffer does not wait when this is
// zero. It returns -1 when it cannot tell.
func Unsent(raw syscall.RawConn) int {
	n := -1
	_ = raw.Control(func(fd uintptr) {
		var err error
		if n, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err != nil {
			n = -1
		}
	})
	return n
}
