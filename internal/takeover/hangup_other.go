//go:build !linux

package takeover

import (
	"errors"
	"syscall"
)

// Watch is one socket's registration with the hang-up watcher.
type Watch struct{}

// HangUpsWatched reports that hang-ups cannot be watched without a
// goroutine per connection here: the watcher needs epoll, which only Linux
// has.
func HangUpsWatched() error { return errors.ErrUnsupported }

// WatchHangUp is not supported on this platform.
func WatchHangUp(syscall.RawConn, func()) (Watch, bool) { return Watch{}, false }

// WatchReadable is not supported on this platform.
func WatchReadable(syscall.RawConn, func()) (Watch, bool) { return Watch{}, false }

// Rearm does nothing: there is no watch.
func (Watch) Rearm() bool { return false }

// Await does nothing: there is no watch.
func (*Watch) Await(func()) bool { return false }

// Guard does nothing: there is no watch.
func (*Watch) Guard(func()) bool { return false }

// Replace does nothing: there is no watch.
func (*Watch) Replace(func()) bool { return false }

// Stop does nothing.
func (Watch) Stop() {}

// HasUnread is not supported on this platform.
func HasUnread(syscall.RawConn) bool { return false }

// Pending cannot tell on this platform: nothing is unread, nothing closed.
func Pending(syscall.RawConn) (unread, closed bool) { return false, false }

// Unsent cannot tell on this platform: it returns -1.
func Unsent(syscall.RawConn) int { return -1 }

// DiscardUnread does nothing on this platform.
func DiscardUnread(syscall.RawConn) {}
