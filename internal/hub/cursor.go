package hub

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// Cursor is a client's position in one context: the id of the last event it
// has seen, qualified by the context's epoch. The epoch changes whenever the
// context's id sequence starts over (a server restart, or the context being
// collected and created again), so a cursor from an earlier lifetime can be
// told apart from a current one instead of silently skipping events.
//
// Its text form, used in ETag, Comet-Cursor and Last-Event-ID, is
// "<epoch>:<id>", for example "k3x9a0b1c2:17".
type Cursor struct {
	Epoch string
	ID    uint64
}

// maxEpochLen bounds the epoch part of a cursor a client sends us; ours are
// ten characters, the slack allows for other brokers.
const maxEpochLen = 32

var ErrBadCursor = errors.New("malformed cursor: want <epoch>:<id> as given in the Comet-Cursor header or ETag")

// String returns the cursor's text form.
func (c Cursor) String() string {
	return c.Epoch + ":" + strconv.FormatUint(c.ID, 10)
}

// ParseCursor parses the text form of a cursor. It accepts only what String
// produces: a non-empty epoch of lower-case letters and digits, a colon and a
// decimal id.
func ParseCursor(s string) (Cursor, error) {
	epoch, id, ok := strings.Cut(s, ":")
	if !ok || !ValidEpoch(epoch) || id == "" || (len(id) > 1 && id[0] == '0') {
		return Cursor{}, ErrBadCursor
	}
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return Cursor{}, ErrBadCursor
	}
	return Cursor{Epoch: epoch, ID: n}, nil
}

// An absent cursor is the position of a context that does not exist: the
// epoch is "0" followed by the time it was given, in base-36 milliseconds,
// and the id is 0. Epochs of contexts never start with "0" (see
// newEpoch), so the two cannot be confused. A subscriber that comes back
// with one gets every event of the context created since (see
// Subscriber.Resume), so asking where a context stands never has to
// create it.
const absentEpochPrefix = "0"

// absentCursor returns the position of a context that does not exist at
// time now.
func absentCursor(now time.Time) Cursor {
	return Cursor{Epoch: absentEpochPrefix + strconv.FormatInt(now.UnixMilli(), 36)}
}

// absentSince reports when an absent cursor was given, and false if cur
// is not one.
func absentSince(cur Cursor) (time.Time, bool) {
	if cur.ID != 0 || len(cur.Epoch) < 2 || !strings.HasPrefix(cur.Epoch, absentEpochPrefix) {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(cur.Epoch[len(absentEpochPrefix):], 36, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// ValidEpoch reports whether s can be an epoch: short, and of the
// characters NewEpoch uses, so that one read from a broker or a client
// cannot carry anything else into a cursor.
func ValidEpoch(s string) bool {
	if s == "" || len(s) > maxEpochLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}
