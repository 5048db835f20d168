package hub

import "sync"

// Who is subscribed: a context counts its subscribers by the identity
// they subscribed with (on a route with tokens, the token's subject), so
// that an operator can see who is connected. Anonymous subscribers are
// counted only in the context's total. The counts are bounded by the
// subscribers themselves, and read a page at a time.

// identities counts a context's subscribers by identity.
type identities struct {
	mu     sync.Mutex // apart from the context's lock, which publishing holds
	counts map[string]int
}

func (ids *identities) add(identity string, n int) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if ids.counts == nil {
		ids.counts = make(map[string]int)
	}
	if ids.counts[identity] += n; ids.counts[identity] <= 0 {
		delete(ids.counts, identity)
	}
}

// IdentityCount is how many subscribers of a context have an identity.
type IdentityCount struct {
	Identity    string
	Subscribers int
}

// page returns up to limit identities that sort after after, in order,
// and whether there are more.
func (ids *identities) page(after string, limit int) (page []IdentityCount, more bool) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	keys, more := pageOfKeys(ids.counts, after, limit)
	page = make([]IdentityCount, 0, len(keys))
	for _, id := range keys {
		page = append(page, IdentityCount{Identity: id, Subscribers: ids.counts[id]})
	}
	return page, more
}

// SubscribeAs is Subscribe for a subscriber with an identity, which the
// context counts (see Identities) until the subscriber closes. An empty
// identity is anonymous.
func (h *Hub) SubscribeAs(key, identity string) (*Subscriber, error) {
	s, err := h.Subscribe(key)
	if err != nil || identity == "" {
		return s, err
	}
	s.identity = identity
	s.c.identities.add(identity, 1)
	return s, nil
}

// Identities returns up to limit identities of a context's subscribers
// that sort after after, in order, with how many subscribers each has,
// whether there are more, and whether the context exists.
func (h *Hub) Identities(key, after string, limit int) (page []IdentityCount, more, ok bool) {
	h.mu.RLock()
	c, ok := h.contexts[key]
	h.mu.RUnlock()
	if !ok {
		return nil, false, false
	}
	page, more = c.identities.page(after, limit)
	return page, more, true
}
