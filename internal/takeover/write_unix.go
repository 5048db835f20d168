//go:build unix

package takeover

import (
	"io"
	"sync"
	"syscall"
)

// Supported says whether connections can be written to without waiting on
// this platform, which taking them over needs.
const Supported = true

// Write writes p to the socket and returns how much it wrote. Without wait
// it returns as soon as the socket would block, with no error; with wait
// it waits for room until the socket's write deadline.
func Write(raw syscall.RawConn, p []byte, wait bool) (written int, err error) {
	op := ioOps.Get().(*ioOp)
	defer op.done()
	op.p, op.wait = p, wait
	if err = raw.Write(op.write); op.err != nil {
		err = op.err
	}
	return op.n, err
}

// ioOp is one Write or ReadNow: what the function given to the RawConn
// works on. The function is made once for the op, and ops are pooled, so
// that the system calls of every answer and request allocate nothing (a
// closure capturing its results would be one allocation each, thousands
// of times per event).
type ioOp struct {
	p     []byte
	wait  bool
	n     int
	err   error
	write func(fd uintptr) bool
	read  func(fd uintptr) bool
}

var ioOps = sync.Pool{New: func() any {
	op := new(ioOp)
	op.write, op.read = op.writeTo, op.readFrom
	return op
}}

func (op *ioOp) done() {
	op.p, op.n, op.err = nil, 0, nil
	ioOps.Put(op)
}

func (op *ioOp) writeTo(fd uintptr) bool {
	for op.n < len(op.p) {
		n, err := syscall.Write(int(fd), op.p[op.n:])
		if n > 0 {
			op.n += n
		}
		switch {
		case err == syscall.EINTR:
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
			return !op.wait // false: wait until the socket has room
		case err != nil:
			op.err = err
			return true
		case n == 0:
			op.err = io.ErrShortWrite
			return true
		}
	}
	return true
}

// ReadNow reads what the client sent into b without waiting: n is 0 with
// no error when nothing is there yet, and io.EOF when the client closed
// its end.
func ReadNow(raw syscall.RawConn, b []byte) (n int, err error) {
	op := ioOps.Get().(*ioOp)
	defer op.done()
	op.p = b
	err = raw.Read(op.read)
	n, rerr := op.n, op.err
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

func (op *ioOp) readFrom(fd uintptr) bool {
	for {
		op.n, op.err = syscall.Read(int(fd), op.p)
		if op.err != syscall.EINTR {
			break
		}
	}
	return true // never wait
}
