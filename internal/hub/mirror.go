package hub

import (
	"bytes"
	"context"
	"sync"

	"go.uber.org/zap"
)

// With a broker, a hub's contexts are mirrors of the broker's: ids, epochs
// and history are the broker's, and each node mirrors the contexts its
// subscribers use, applying the events the broker announces in order and
// reloading a context from the broker when it sees a gap.

// applyPublished applies an event the broker just published from this
// node to the node's mirror of its context, if it has one, without waiting
// for the broker's announcement, and returns the event's receipt.
func (h *Hub) applyPublished(key string, cur Cursor, ev *Event) Receipt {
	r := Receipt{Cursor: cur}
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c != nil {
		woken, outcome := c.apply(cur.Epoch, ev, h.config())
		h.afterApply(c, outcome)
		r.Woken = woken
	}
	return r
}

// afterApply does what an announcement that could not be applied needs:
// bring the mirror up to date, after moving the context to a new epoch if
// the broker gave an id this mirror knows to another event.
func (h *Hub) afterApply(c *hubContext, outcome applyOutcome) {
	switch outcome {
	case applyDiverged:
		h.diverge(c)
	case applyStale:
		h.sync(c)
	}
}

// follower applies a broker's announcements to the hub's mirrors.
type follower struct{ h *Hub }

func (f follower) Event(key, epoch string, ev *Event) {
	h := f.h
	h.metrics.announced.Inc()
	h.announced.Add(1)
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c == nil {
		return // nobody here follows that context
	}
	_, outcome := c.apply(epoch, ev, h.config())
	h.afterApply(c, outcome)
}

func (f follower) Deleted(key string) {
	f.h.markLoss() // even if this node does not mirror it
	f.h.deleteLocal(key)
}

func (f follower) Probed(token string) { f.h.probed(token) }

// Watching brings a mirror up to date once the broker reports its events:
// what was published before is in what the broker loads.
func (f follower) Watching(key string) {
	h := f.h
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c != nil {
		h.syncSoon(c)
	}
}

// Resync brings every mirror up to date after the connection to the broker
// was lost, when announcements may have been missed.
func (f follower) Resync() {
	f.h.markLoss()
	for _, c := range f.h.contextList() {
		f.h.syncSoon(c)
	}
}

// maxSyncWorkers bounds the goroutines that bring mirrors up to date after
// a reconnection, when every mirror needs it at once.
const maxSyncWorkers = 4

// syncQueue holds the mirrors waiting to be brought up to date.
type syncQueue struct {
	mu      sync.Mutex
	pending []*hubContext
	workers int
}

// syncSoon has a worker bring a mirror up to date, unless it is waiting
// for one already: a reconnection's Resync and the Watching of each
// context it then gets ask for the same mirrors, and each is loaded once.
func (h *Hub) syncSoon(c *hubContext) {
	if !c.syncQueued.CompareAndSwap(false, true) {
		return
	}
	q := &h.syncs
	q.mu.Lock()
	q.pending = append(q.pending, c)
	start := q.workers < maxSyncWorkers
	if start {
		q.workers++
	}
	q.mu.Unlock()
	if start {
		go h.runSyncs()
	}
}

func (h *Hub) runSyncs() {
	q := &h.syncs
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.pending = nil // let a large backlog's array go
			q.workers--
			q.mu.Unlock()
			return
		}
		c := q.pending[0]
		q.pending = q.pending[1:]
		q.mu.Unlock()
		c.syncQueued.Store(false) // an announcement from now on needs another
		h.sync(c)
	}
}

// sync reloads a mirror from the broker, after a gap in the announcements
// or a reconnection.
func (h *Hub) sync(c *hubContext) (ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
	defer cancel()
	st, err := h.broker.Load(ctx, c.key, h.config().retention())
	if err != nil {
		h.logger.Warn("could not bring a context up to date", zap.String("hub", h.name), zap.String("context", c.key), zap.Error(err))
		return false
	}
	if c.replace(st) && h.brokerBehind(ctx, c) {
		h.diverge(c)
	}
	return true
}

// brokerBehind confirms that the broker lost events the mirror holds. A
// load's answer can be older than announcements the mirror applied while
// it was on its way (they come on another connection); a position asked
// for after they were applied cannot be, unless the broker lost them.
func (h *Hub) brokerBehind(ctx context.Context, c *hubContext) bool {
	held := c.position()
	pos, ok, err := h.broker.Position(ctx, c.key)
	if err != nil {
		h.logger.Warn("could not check a context against the broker", zap.String("hub", h.name), zap.String("context", c.key), zap.Error(err))
		return false
	}
	return ok && pos.Epoch == held.Epoch && pos.ID < held.ID
}

// diverge moves a context whose events the broker lost to a new epoch, so
// that no id this node's clients saw is given to another event, then
// brings the mirror up to date: clients with a cursor of the old epoch are
// told that they may have missed events, instead of missing them silently.
// Redis loses events a master acknowledged but had not replicated when it
// failed over, and the new master gives their ids out again.
func (h *Hub) diverge(c *hubContext) {
	epoch := c.position().Epoch
	h.logger.Warn("the broker lost events this node had; moving the context to a new epoch",
		zap.String("hub", h.name), zap.String("context", c.key), zap.String("epoch", epoch))
	ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
	defer cancel()
	if err := h.broker.Diverged(ctx, c.key, epoch, h.config().retention()); err != nil {
		h.logger.Warn("could not move a context to a new epoch", zap.String("hub", h.name), zap.String("context", c.key), zap.Error(err))
		return
	}
	h.markLoss()
	st, err := h.broker.Load(ctx, c.key, h.config().retention())
	if err != nil {
		h.logger.Warn("could not bring a context up to date", zap.String("hub", h.name), zap.String("context", c.key), zap.Error(err))
		return
	}
	c.replace(st) // another epoch now: never diverged
}

// withSharedContext is withContext for a context this node does not mirror
// yet: it loads the context from the broker, without holding the hub lock
// over the network, and watches the context's announcements from then on.
func (h *Hub) withSharedContext(key string, fn func(*hubContext) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
	st, err := h.broker.Load(ctx, key, h.config().retention())
	cancel()
	if err != nil {
		return err
	}
	h.mu.Lock()
	c, ok := h.contexts[key]
	if !ok {
		if len(h.contexts) >= h.config().MaxContexts {
			h.mu.Unlock()
			h.metrics.refused(limitContexts)
			return ErrTooManyContexts
		}
		c = &hubContext{key: key, wake: make(chan struct{})}
		h.contexts[key] = c
		h.metrics.contexts.Set(float64(len(h.contexts)))
	}
	c.replace(st)
	err = fn(c)
	h.mu.Unlock()
	if !ok {
		// Once the broker reports the context's events, the mirror is
		// brought up to date (follower.Watching): whatever was announced
		// between the load above and then is in what it loads.
		h.broker.Watch(key)
	}
	return err
}

// applyOutcome is what applying an announced event to a mirror came to.
type applyOutcome int

const (
	applied applyOutcome = iota // applied, or already there
	// applyStale: the event does not follow the mirror's last (a gap, or
	// a new epoch): bring the mirror up to date from the broker.
	applyStale
	// applyDiverged: the broker gave an id the mirror holds to another
	// event: it lost events (see Hub.diverge).
	applyDiverged
)

// apply adds an event the broker assigned to this mirror. An event the
// mirror already has is ignored; one whose id the mirror holds for another
// event means that the broker diverged.
func (c *hubContext) apply(epoch string, ev *Event, cfg *Config) (woken int, outcome applyOutcome) {
	c.mu.Lock()
	if epoch != c.epoch || ev.ID > c.lastID+1 {
		c.mu.Unlock()
		return 0, applyStale
	}
	if ev.ID <= c.lastID {
		held := c.history.at(ev.ID)
		c.mu.Unlock()
		if held != nil && !sameEvent(held, ev) {
			return 0, applyDiverged
		}
		return 0, applied
	}
	woken = c.woken()
	wake := c.appendLocked(ev.withMemo(), cfg)
	c.mu.Unlock()
	c.broadcast(wake)
	return woken, applied
}

// sameEvent reports whether two events with one id are one event, as far
// as the broker keeps it (publish times to the millisecond).
func sameEvent(a, b *Event) bool {
	return a.Type == b.Type && a.ContentType == b.ContentType &&
		a.Published.UnixMilli() == b.Published.UnixMilli() && bytes.Equal(a.Data, b.Data)
}

// replace makes the mirror the broker's state, if that is newer: a later
// last id, or another epoch. Ids only ever move forward, and the history
// stays a run of consecutive ids. It reports a broker that lost events the
// mirror holds (an earlier last id in the same epoch), and then changes
// nothing: see Hub.diverge.
func (c *hubContext) replace(st BrokerState) (diverged bool) {
	c.mu.Lock()
	if st.Epoch == c.epoch && st.LastID <= c.lastID {
		diverged = st.LastID < c.lastID
		c.mu.Unlock()
		return diverged
	}
	c.epoch, c.lastID = st.Epoch, st.LastID
	for _, ev := range st.History {
		ev.withMemo()
	}
	c.history = history{events: st.History}
	wake := c.takeWakeLocked()
	c.mu.Unlock()
	c.broadcast(wake)
	return false
}
