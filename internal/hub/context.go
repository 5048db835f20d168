package hub

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ContextInfo describes a context at one moment.
type ContextInfo struct {
	// Key names the context.
	Key string
	// Cursor is the position of the context's last event (id 0 before the
	// first).
	Cursor Cursor
	// Subscribers is how many subscribers are attached.
	Subscribers int
	// History is how many events the context holds for catching up.
	History int
}

// hubContext is one context (the seed's CometContext): an id sequence, its
// recent history and the channel that wakes its waiting subscribers.
type hubContext struct {
	key   string
	epoch string

	// subscribers counts attached subscribers; it only goes up while the
	// hub lock is held for reading, so the janitor can trust a zero.
	subscribers atomic.Int64
	// waiting counts subscribers blocked in Next, for publish receipts.
	waiting atomic.Int64
	// syncQueued says a mirror waits to be brought up to date (syncSoon).
	syncQueued atomic.Bool
	// leftAt is when the last subscriber left (Unix nanoseconds), and
	// idleQueued says the context waits in the hub's idle queue (idle.go).
	leftAt     atomic.Int64
	idleQueued atomic.Bool

	mu      sync.RWMutex
	lastID  uint64
	history history
	deleted bool
	// wake is closed and replaced by every publish: one broadcast wakes
	// every waiting subscriber, however many there are.
	wake chan struct{}
	// watchers are the subscribers told of changes by a call rather than
	// a wake-up (see watch.go).
	watchers []*Subscriber

	identities identities // who is subscribed (see identity.go)
}

// woken is how many subscribers a publish reaches now. The caller holds
// c.mu.
func (c *hubContext) woken() int {
	return int(c.waiting.Load()) + len(c.watchers)
}

func newHubContext(key string) *hubContext {
	return &hubContext{key: key, epoch: NewEpoch(), wake: make(chan struct{})}
}

// NewEpoch returns a short random name for a new id sequence. It never
// starts with "0", which marks absent cursors.
func NewEpoch() string {
	const tenBase36Digits = 3656158440062976 // 36^10
	return strconv.FormatUint(1+rand.Uint64N(tenBase36Digits-1), 36)
}

func (c *hubContext) publish(ev *Event, cfg *Config, now time.Time) Receipt {
	c.mu.Lock()
	ev.ID = c.lastID + 1
	ev.Published = now
	r := Receipt{Cursor: Cursor{Epoch: c.epoch, ID: ev.ID}, Woken: c.woken()}
	wake := c.appendLocked(ev, cfg)
	c.mu.Unlock()
	// Broadcasting after unlocking lets every subscriber read the event
	// at once instead of queueing on the lock.
	c.broadcast(wake)
	return r
}

// appendLocked adds the next event to the history and returns the wake
// channel to close once the lock is released.
func (c *hubContext) appendLocked(ev *Event, cfg *Config) chan struct{} {
	c.lastID = ev.ID
	c.history.push(ev, cfg.History)
	c.history.expire(ev.Published.Add(-time.Duration(cfg.HistoryMaxAge)))
	return c.takeWakeLocked()
}

// takeWakeLocked replaces the wake channel and returns the old one, which
// the caller closes once it has released the lock, waking every subscriber
// waiting on the context.
func (c *hubContext) takeWakeLocked() chan struct{} {
	wake := c.wake
	c.wake = make(chan struct{})
	return wake
}

func (c *hubContext) info() ContextInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.infoLocked()
}

func (c *hubContext) infoLocked() ContextInfo {
	return ContextInfo{
		Key:         c.key,
		Cursor:      Cursor{Epoch: c.epoch, ID: c.lastID},
		Subscribers: int(c.subscribers.Load()),
		History:     c.history.len(),
	}
}

// markDeleted wakes every subscriber to find the context deleted.
func (c *hubContext) markDeleted() ContextInfo {
	c.mu.Lock()
	c.deleted = true
	wake := c.takeWakeLocked()
	info := c.infoLocked()
	c.history = history{}
	c.mu.Unlock()
	c.broadcast(wake)
	return info
}

func (c *hubContext) position() Cursor {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return Cursor{Epoch: c.epoch, ID: c.lastID}
}

// expire drops events published before cutoff and reports whether the
// history is now empty.
func (c *hubContext) expire(cutoff time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.history.expire(cutoff)
	return c.history.len() == 0
}

// Delivery is what a subscriber gets from Next: the event after its cursor,
// and how many events it missed because history no longer held them.
type Delivery struct {
	// Event is nil when events were missed and history holds nothing newer.
	Event *Event
	// Cursor is the subscriber's position after this delivery.
	Cursor Cursor
	// Missed counts events the subscriber will never see; MissedUnknown if
	// its cursor came from an earlier epoch.
	Missed int64
}

// deliveryAfter finds what a subscriber at cursor after should get now. It
// returns false when the subscriber is up to date and must wait. The caller
// holds c.mu.
func (c *hubContext) deliveryAfter(after Cursor) (Delivery, bool) {
	current := Cursor{Epoch: c.epoch, ID: c.lastID}
	if after.Epoch != c.epoch || after.ID > c.lastID {
		if ev := c.history.oldest(); ev != nil {
			return Delivery{Event: ev, Cursor: Cursor{Epoch: c.epoch, ID: ev.ID}, Missed: MissedUnknown}, true
		}
		return Delivery{Cursor: current, Missed: MissedUnknown}, true
	}
	if after.ID == c.lastID {
		return Delivery{}, false
	}
	ev := c.history.after(after.ID)
	if ev == nil {
		return Delivery{Cursor: current, Missed: int64(c.lastID - after.ID)}, true
	}
	return Delivery{Event: ev, Cursor: Cursor{Epoch: c.epoch, ID: ev.ID}, Missed: int64(ev.ID - after.ID - 1)}, true
}

// knows reports whether cur is a position the context has reached.
func (c *hubContext) knows(cur Cursor) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return cur.Epoch == c.epoch && cur.ID <= c.lastID
}
