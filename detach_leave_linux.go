package comet

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
)

// pollsDetach says whether long polls can be detached on this platform: a
// parked detached poll has no goroutine reading its socket, and learns that
// its client left from the leave watcher, which needs epoll.
const pollsDetach = true

// The leave watcher reports clients that close their connection while
// their long poll is parked, so that the poll is freed at once rather than
// at its expiration. One goroutine waits in epoll for every parked poll,
// in place of one goroutine reading each socket: a parked poll then costs
// no goroutine, and its client's next request, arriving the moment the
// answer does, wakes nothing (only a hang-up is watched, not data).
type leaveWatcher struct {
	epfd    int
	nextID  atomic.Uint64
	watched sync.Map // id → func(), what to call when the client leaves
}

var (
	leaveWatcherOnce sync.Once
	theLeaveWatcher  *leaveWatcher
	leaveWatcherErr  error
)

// leaveWatch is one socket's registration with the leave watcher.
type leaveWatch struct {
	raw syscall.RawConn
	id  uint64
}

// watchLeaving arranges for left to be called, on the leave watcher's
// goroutine, if the client closes its end of the socket. It reports false
// if the socket cannot be watched.
func watchLeaving(raw syscall.RawConn, left func()) (leaveWatch, bool) {
	w, err := startLeaveWatcher()
	if err != nil {
		return leaveWatch{}, false
	}
	id := w.nextID.Add(1)
	w.watched.Store(id, left)
	ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(id), Pad: int32(id >> 32)}
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cerr = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		w.watched.Delete(id)
		return leaveWatch{}, false
	}
	return leaveWatch{raw: raw, id: id}, true
}

// stop ends the watch, before the socket is closed or handed back.
func (lw leaveWatch) stop() {
	if lw.raw == nil {
		return
	}
	w := theLeaveWatcher
	w.watched.Delete(lw.id)
	_ = lw.raw.Control(func(fd uintptr) {
		_ = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// startLeaveWatcher starts the process's leave watcher the first time it
// is needed. It lives as long as the process: it holds one goroutine,
// mostly in a system call, and nothing else.
func startLeaveWatcher() (*leaveWatcher, error) {
	leaveWatcherOnce.Do(func() {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			leaveWatcherErr = errors.Join(errors.New("creating an epoll instance"), err)
			return
		}
		theLeaveWatcher = &leaveWatcher{epfd: epfd}
		go theLeaveWatcher.run()
	})
	return theLeaveWatcher, leaveWatcherErr
}

func (w *leaveWatcher) run() {
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
			if left, ok := w.watched.LoadAndDelete(id); ok {
				left.(func())()
			}
		}
	}
}

// socketHasData reports whether the client sent bytes the server has not
// read yet, without reading them.
func socketHasData(raw syscall.RawConn) bool {
	var buf [1]byte
	n := 0
	_ = raw.Read(func(fd uintptr) bool {
		n, _, _ = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait for data
	})
	return n > 0
}
