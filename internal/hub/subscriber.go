package hub

import (
	"context"
	"errors"
	"time"
)

// Subscriber is one client attached to a context (the seed's suspended
// CometHandler). It is used by one goroutine.
type Subscriber struct {
	hub      *Hub
	c        *hubContext
	start    Cursor
	closed   bool
	identity string // counted in c.identities while attached; "" anonymous

	changed    WatcherFunc // set while the subscriber is a watcher
	watchIndex int         // its place in c.watchers
}

// Start returns the context's cursor when the subscriber attached: a
// client without a cursor waits for the first event after it.
func (s *Subscriber) Start() Cursor { return s.start }

// Resume returns the cursor to serve the subscriber from when its client
// sent cursor after back: after itself, or, for an absent cursor that
// still holds (see Position), the start of the context's current epoch.
//
// With a broker, a cursor that this node's mirror does not know yet (of
// another epoch, or past its last id) is first checked against the broker:
// another node may have told the client of an epoch or events this node
// has not heard of yet, and judging the cursor by a stale mirror would move
// the client back to where it already was. A cursor past even the broker's
// last id means the broker lost events the client saw: the context moves
// to a new epoch, and the client is told it may have missed events.
func (s *Subscriber) Resume(after Cursor) Cursor {
	h, c := s.hub, s.c
	if h.broker != nil && !c.knows(after) && h.sync(c) {
		// Still past the broker's last id once up to date: the client
		// saw events the broker lost (a failover), whose ids it would
		// give again.
		if pos := c.position(); after.Epoch == pos.Epoch && after.ID > pos.ID {
			h.diverge(c)
		}
	}
	if since, ok := absentSince(after); ok && h.absentHolds(since) {
		return Cursor{Epoch: c.position().Epoch}
	}
	return after
}

// Context returns the key of the subscriber's context.
func (s *Subscriber) Context() string { return s.c.key }

// Position returns the context's current cursor.
func (s *Subscriber) Position() Cursor { return s.c.position() }

// ContextSubscribers returns how many subscribers the context has,
// this one included.
func (s *Subscriber) ContextSubscribers() int { return int(s.c.subscribers.Load()) }

// Next returns the first event after cursor after, waiting until one is
// published, ctx is done (ctx.Err() is returned), the hub closes
// (ErrHubClosed) or the context is deleted (ErrContextDeleted). It returns at once if the event is already in history, or
// if events after the cursor were lost, with Delivery.Missed saying so.
func (s *Subscriber) Next(ctx context.Context, after Cursor) (Delivery, error) {
	return s.Wait(ctx, after, nil, nil)
}

// ErrTick is what Wait returns when its tick channel fires first, and
// ErrPoked when its poke channel does.
var (
	ErrTick  = errors.New("tick")
	ErrPoked = errors.New("poked")
)

// Wait is Next that also returns ErrTick when tick fires, so that a stream
// can write heartbeats from its own goroutine without another one, and
// ErrPoked when poke does, so that another goroutine can wake it. For the
// comet module's use; not part of its Go API.
func (s *Subscriber) Wait(ctx context.Context, after Cursor, tick <-chan time.Time, poke <-chan struct{}) (Delivery, error) {
	c := s.c
	for {
		c.mu.RLock()
		if c.deleted {
			c.mu.RUnlock()
			return Delivery{}, ErrContextDeleted
		}
		d, ready := c.deliveryAfter(after)
		wake := c.wake
		if !ready {
			c.waiting.Add(1)
		}
		c.mu.RUnlock()
		if ready {
			return d, nil
		}
		var err error
		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.hub.closed:
			err = ErrHubClosed
		case <-tick:
			err = ErrTick
		case <-poke:
			err = ErrPoked
		}
		c.waiting.Add(-1)
		if err != nil {
			return Delivery{}, err
		}
	}
}

// Close detaches the subscriber. It is safe to call more than once.
func (s *Subscriber) Close() {
	if s.closed {
		return
	}
	s.closed = true
	if s.changed != nil {
		s.c.mu.Lock()
		s.c.unwatchLocked(s)
		s.c.mu.Unlock()
	}
	if s.identity != "" {
		s.c.identities.add(s.identity, -1)
	}
	if s.c.subscribers.Add(-1) == 0 {
		s.hub.left(s.c)
	}
	s.hub.subscribers.Add(-1)
}
