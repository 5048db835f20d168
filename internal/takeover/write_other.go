//go:build !unix

package takeover

import (
	"errors"
	"syscall"
)

// Supported says whether connections can be written to without waiting on
// this platform: that needs Unix system calls, so other platforms keep
// every subscriber in net/http.
const Supported = false

// Write is not supported on this platform.
func Write(syscall.RawConn, []byte, bool) (int, error) {
	return 0, errors.ErrUnsupported
}

// ReadNow is not supported on this platform.
func ReadNow(syscall.RawConn, []byte) (int, error) {
	return 0, errors.ErrUnsupported
}
