package hub

import (
	"sync"
	"time"
)

// Contexts that only subscribers made. A context with no events is freed
// soon after its last subscriber leaves, rather than at the janitor's next
// sweep (up to a minute): subscribers alone must not keep max_contexts
// filled after they are gone. It is freed only after idleGrace, so that a
// long poll asking again at once, as each one does after its answer, finds
// its context (and its epoch) still there.

// idleGrace is how long a context without events stays after its last
// subscriber left; idleTick how often they are looked at. Freed within
// idleGrace + idleTick.
const (
	idleGrace = 3 * time.Second
	idleTick  = time.Second
)

// idleQueue holds the contexts whose last subscriber left, each once.
type idleQueue struct {
	mu       sync.Mutex
	contexts []*hubContext
}

// left notes that the context's last subscriber just left.
func (h *Hub) left(c *hubContext) {
	c.leftAt.Store(h.now().UnixNano())
	if !c.idleQueued.CompareAndSwap(false, true) {
		return
	}
	q := &h.idle
	q.mu.Lock()
	q.contexts = append(q.contexts, c)
	q.mu.Unlock()
}

// collectLeft frees the queued contexts that have been without subscribers
// for idleGrace and never had an event, and keeps the others queued that
// may still be freed. It returns how many it freed.
func (h *Hub) collectLeft() int {
	q := &h.idle
	q.mu.Lock()
	queued := q.contexts
	q.contexts = nil
	q.mu.Unlock()
	if len(queued) == 0 {
		return 0
	}
	cutoff := h.now().Add(-idleGrace).UnixNano()
	var again []*hubContext
	freed := 0
	h.mu.Lock()
	for _, c := range queued {
		switch {
		case h.contexts[c.key] != c || c.subscribers.Load() != 0 || c.published():
			c.idleQueued.Store(false) // gone, in use again, or the janitor's
		case c.leftAt.Load() > cutoff:
			again = append(again, c)
		default:
			c.idleQueued.Store(false)
			delete(h.contexts, c.key)
			h.unwatch(c.key)
			freed++
		}
	}
	h.metrics.contexts.Set(float64(len(h.contexts)))
	h.mu.Unlock()
	if len(again) > 0 {
		q.mu.Lock()
		q.contexts = append(q.contexts, again...)
		q.mu.Unlock()
	}
	return freed
}

// published reports whether the context has had an event in its epoch.
func (c *hubContext) published() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lastID != 0 || c.history.len() != 0
}
