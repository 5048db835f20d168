//go:build !unix

package comet

import (
	"errors"
	"syscall"
)

// socketsDetach says whether streams can be detached on this platform:
// writing to a socket without waiting needs Unix system calls, so other
// platforms keep every stream on the ordinary path.
const socketsDetach = false

func writeSocket(syscall.RawConn, []byte, bool) (int, error) {
	return 0, errors.ErrUnsupported
}
