//go:build !linux

package comet

import (
	"errors"
	"syscall"
)

// pollsDetach says whether long polls can be detached on this platform: a
// parked detached poll learns that its client left from epoll, which only
// Linux has, so other platforms keep long polls on the ordinary path.
const pollsDetach = false

type leaveWatch struct{}

func watchLeaving(syscall.RawConn, func()) (leaveWatch, bool) { return leaveWatch{}, false }

func startLeaveWatcher() (struct{}, error) { return struct{}{}, errors.ErrUnsupported }

func (leaveWatch) stop() {}

func socketHasData(syscall.RawConn) bool { return false }
