package hub

import (
	"errors"
	"sync"
)

// A client's share of the hub. Without one, a single client could take
// every subscriber the hub allows, or fill max_contexts with contexts that
// only its subscriptions made, and every other client would be refused.
// The comet module names the client (the subject of its token, or its
// address) and takes a share for each subscription before subscribing to
// any of its contexts, so that a refusal costs nothing.

// ErrShareExceeded: the client already holds max_client_subscribers.
var ErrShareExceeded = errors.New("this client holds its share of the hub's subscribers")

// clientShares counts what each client holds; a client holding nothing
// has no entry.
type clientShares struct {
	mu   sync.Mutex
	held map[string]int
}

// Share is what TakeShare took, given back by Release.
type Share struct {
	h      *Hub
	client string
	n      int
}

// TakeShare counts n subscribers against client's share, or refuses them
// all with ErrShareExceeded if the client would then hold more than
// max_client_subscribers. The empty client has no share to exceed, and
// neither has any client when the share is all of max_subscribers (a full
// hub is then what refuses it, with ErrTooManySubscribers).
func (h *Hub) TakeShare(client string, n int) (Share, error) {
	cfg := h.config()
	limit := cfg.MaxClientSubscribers
	if client == "" || n <= 0 || limit >= cfg.MaxSubscribers {
		return Share{}, nil
	}
	s := &h.shares
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.held[client]
	if held+n > limit {
		h.metrics.refused(limitClientSubscribers)
		return Share{}, ErrShareExceeded
	}
	if s.held == nil {
		s.held = make(map[string]int)
	}
	s.held[client] = held + n
	return Share{h: h, client: client, n: n}, nil
}

// Release gives the share back. It must be called once; the zero Share's
// does nothing.
func (sh Share) Release() {
	if sh.h == nil {
		return
	}
	s := &sh.h.shares
	s.mu.Lock()
	defer s.mu.Unlock()
	if left := s.held[sh.client] - sh.n; left > 0 {
		s.held[sh.client] = left
	} else {
		delete(s.held, sh.client)
	}
}
