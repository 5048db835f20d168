//go:build unix

package takeover

import (
	"io"
	"syscall"
)

// Supported says whether connections can be written to without waiting on
// this platform, which taking them over needs.
const Supported = true

// Write writes p to the socket and returns how much it wrote. Without wait
// it returns as soon as the socket would block, with no error; with wait
// it waits for room until the socket's write deadline.
func Write(raw syscall.RawConn, p []byte, wait bool) (written int, err error) {
	var werr error
	err = raw.Write(func(fd uintptr) bool {
		for written < len(p) {
			n, err := syscall.Write(int(fd), p[written:])
			if n > 0 {
				written += n
			}
			switch {
			case err == syscall.EINTR:
			case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
				return !wait // false: wait until the socket has room
			case err != nil:
				werr = err
				return true
			case n == 0:
				werr = io.ErrShortWrite
				return true
			}
		}
		return true
	})
	if werr != nil {
		return written, werr
	}
	return written, err
}

// ReadNow reads what the client sent into b without waiting: n is 0 with
// no error when nothing is there yet, and io.EOF when the client closed
// its end.
func ReadNow(raw syscall.RawConn, b []byte) (n int, err error) {
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), b)
			if rerr != syscall.EINTR {
				break
			}
		}
		return true // never wait
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK:
		return 0, nil
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
