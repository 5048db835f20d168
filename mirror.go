package comet

import (
	"context"

	"go.uber.org/zap"
)

// With a broker, a hub's contexts are mirrors of the broker's: ids, epochs
// and history are the broker's, and each node mirrors the contexts its
// subscribers use, applying the events the broker announces in order and
// reloading a context from the broker when it sees a gap.

// publishShared publishes through the broker, then applies the event to
// this node's mirror at once rather than waiting for the broker's
// announcement, which then finds it already applied.
func (h *Hub) publishShared(key string, ev *Event) (Receipt, error) {
	ev.Published = h.now()
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
	cur, err := h.broker.Publish(ctx, key, ev, h.config().retention())
	cancel()
	if err != nil {
		return Receipt{}, err
	}
	h.metrics.published.Inc()
	return h.applyPublished(key, cur, ev), nil
}

// applyPublished applies an event the broker just published from this
// node to the node's mirror of its context, if it has one, without waiting
// for the broker's announcement, and returns the event's receipt.
func (h *Hub) applyPublished(key string, cur Cursor, ev *Event) Receipt {
	r := Receipt{Cursor: cur}
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c != nil {
		woken, applied := c.apply(cur.Epoch, ev, h.config())
		if !applied {
			h.sync(c)
		}
		r.Woken = woken
	}
	return r
}

// follower applies a broker's announcements to the hub's mirrors.
type follower struct{ h *Hub }

func (f follower) Event(key, epoch string, ev *Event) {
	h := f.h
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c == nil {
		return // nobody here follows that context
	}
	if _, applied := c.apply(epoch, ev, h.config()); !applied {
		h.sync(c)
	}
}

func (f follower) Deleted(key string) {
	f.h.markLoss() // even if this node does not mirror it
	f.h.deleteLocal(key)
}

func (f follower) Probed(token string) { f.h.probed(token) }

// Resync brings every mirror up to date after the connection to the broker
// was lost, when announcements may have been missed.
func (f follower) Resync() {
	f.h.markLoss()
	for _, c := range f.h.contextList() {
		f.h.sync(c)
	}
}

// sync reloads a mirror from the broker, after a gap in the announcements
// or a reconnection.
func (h *Hub) sync(c *hubContext) {
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
	defer cancel()
	st, err := h.broker.Load(ctx, c.key, h.config().retention())
	if err != nil {
		h.logger.Warn("could not bring a context up to date", zap.String("hub", h.name), zap.String("context", c.key), zap.Error(err))
		return
	}
	c.replace(st)
}

// withSharedContext is withContext for a context this node does not mirror
// yet: it loads the context from the broker, without holding the hub lock
// over the network, then brings it up to date once more in case an event
// was announced between the load and the mirror's creation.
func (h *Hub) withSharedContext(key string, fn func(*hubContext) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
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
		h.sync(c)
	}
	return err
}

// apply adds an event the broker assigned to this mirror. It reports false
// when the event does not follow the mirror's last one (a gap, or a new
// epoch), and the mirror must be brought up to date from the broker
// instead; an event the mirror already has is ignored.
func (c *hubContext) apply(epoch string, ev *Event, cfg *HubConfig) (woken int, applied bool) {
	c.mu.Lock()
	if epoch != c.epoch || ev.ID > c.lastID+1 {
		c.mu.Unlock()
		return 0, false
	}
	if ev.ID <= c.lastID {
		c.mu.Unlock()
		return 0, true
	}
	woken = c.woken()
	wake := c.appendLocked(ev.withMemo(), cfg)
	c.mu.Unlock()
	c.broadcast(wake)
	return woken, true
}

// replace makes the mirror the broker's state, if that is newer: a later
// last id, or another epoch. Ids only ever move forward, and the history
// stays a run of consecutive ids.
func (c *hubContext) replace(st BrokerState) {
	c.mu.Lock()
	if st.Epoch == c.epoch && st.LastID <= c.lastID {
		c.mu.Unlock()
		return
	}
	c.epoch, c.lastID = st.Epoch, st.LastID
	for _, ev := range st.History {
		ev.withMemo()
	}
	c.history = history{events: st.History}
	wake := c.takeWakeLocked()
	c.mu.Unlock()
	c.broadcast(wake)
}
