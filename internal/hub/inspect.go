package hub

// What the comet module's tests and diagnostics look at inside a hub.
// The comet package's Hub is this package's, so these methods are visible
// there too; like every method documented as for the comet module's own
// use, they are not part of its Go API and may change.

// Broker returns the hub's broker, nil for an in-process hub.
func (h *Hub) Broker() Broker { return h.broker }

// Announced counts the events the broker announced to this hub.
func (h *Hub) Announced() int64 { return h.announced.Load() }

// Retention is what the hub keeps of each context's history, as it asks
// the broker to.
func (h *Hub) Retention() Retention { return h.config().retention() }

// Reload brings the hub's mirror of the context named key up to date from
// the broker now, as it does when it sees a gap. It reports false when the
// hub holds no such context or could not reach the broker.
func (h *Hub) Reload(key string) bool {
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	return c != nil && h.sync(c)
}

// StopFollowing stops applying the broker's announcements, as if the
// subscription were lost and never came back.
func (h *Hub) StopFollowing() {
	if h.stopFollowing != nil {
		h.stopFollowing()
	}
}

// Parked counts the subscribers of the context named key that a publish
// would wake now (those waiting in Wait, and watchers), and the watchers
// among them; zeros when the hub holds no such context.
func (h *Hub) Parked(key string) (woken, watchers int) {
	h.mu.RLock()
	c := h.contexts[key]
	h.mu.RUnlock()
	if c == nil {
		return 0, 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.woken(), len(c.watchers)
}
