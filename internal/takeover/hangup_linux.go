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
// and data the client sends wakes nothing (only a hang-up is watched).
type hangUpWatcher struct {
	epfd    int
	nextID  atomic.Uint64
	watched watchMap // id → what to call when the client hangs up
}

// watchMap is the watches' functions by id, in shards each under its own
// lock. A sync.Map would allocate an entry for every store, and a watch is
// stored anew for every request served in place; a Go map reuses its
// slots.
type watchMap struct {
	shards [64]struct {
		mu sync.Mutex
		m  map[uint64]func()
	}
}

func (wm *watchMap) shard(id uint64) (*sync.Mutex, map[uint64]func()) {
	s := &wm.shards[id%uint64(len(wm.shards))]
	return &s.mu, s.m
}

func (wm *watchMap) store(id uint64, fn func()) {
	mu, m := wm.shard(id)
	mu.Lock()
	m[id] = fn
	mu.Unlock()
}

// replace makes fn the watch's function if it has one, and reports
// whether it had.
func (wm *watchMap) replace(id uint64, fn func()) bool {
	mu, m := wm.shard(id)
	mu.Lock()
	defer mu.Unlock()
	if _, ok := m[id]; !ok {
		return false
	}
	m[id] = fn
	return true
}

func (wm *watchMap) delete(id uint64) {
	mu, m := wm.shard(id)
	mu.Lock()
	delete(m, id)
	mu.Unlock()
}

func (wm *watchMap) take(id uint64) (func(), bool) {
	mu, m := wm.shard(id)
	mu.Lock()
	defer mu.Unlock()
	fn, ok := m[id]
	if ok {
		delete(m, id)
	}
	return fn, ok
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
	events uint32 // what is watched for, besides EPOLLONESHOT
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
			theWatcher.watched.shards[i].m = make(map[uint64]func())
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
	w.watched.store(id, fn)
	lw := Watch{raw: raw, id: id, events: events, fn: fn}
	if !lw.ctl(syscall.EPOLL_CTL_ADD) {
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
	theWatcher.watched.store(lw.id, lw.fn)
	if !lw.ctl(syscall.EPOLL_CTL_MOD) {
		theWatcher.watched.delete(lw.id)
		return false
	}
	return true
}

// Await re-arms the watch to call fn, once, when the client sends
// something (its next request) or closes its end of the socket: at once
// if it did already. A watch still armed for that only has its function
// replaced, without a system call. It reports false if the socket cannot
// be watched any more; the watch is then stopped.
func (lw *Watch) Await(fn func()) bool {
	const events = syscall.EPOLLIN | syscall.EPOLLRDHUP
	if lw.events == events && lw.Replace(fn) {
		return true
	}
	return lw.rearmFor(events, fn)
}

// Guard re-arms the watch to call fn, once, when the client closes its
// end of the socket (a half-close too), but not when it sends something.
// It reports false if the socket cannot be watched any more; the watch is
// then stopped.
func (lw *Watch) Guard(fn func()) bool {
	return lw.rearmFor(syscall.EPOLLRDHUP, fn)
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
	return theWatcher.watched.replace(lw.id, fn)
}

// ctl adds the watch's socket to the watcher's epoll instance, or modifies
// its registration, armed for one report.
func (lw Watch) ctl(op int) bool {
	c := ctlOps.Get().(*ctlOp)
	c.op = op
	c.ev = syscall.EpollEvent{Events: lw.events | syscall.EPOLLONESHOT, Fd: int32(lw.id), Pad: int32(lw.id >> 32)}
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
			if hungUp, ok := w.watched.take(id); ok {
				hungUp()
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
