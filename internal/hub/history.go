package hub

import (
	"sync/atomic"
	"time"
)

// Event is one published message. Events are immutable once published: every
// subscriber reads the same value, so nothing is copied per subscriber.
type Event struct {
	// ID increases by one per event within a context's epoch.
	ID uint64
	// Type is an optional event type chosen by the publisher.
	Type string
	// ContentType is the media type the payload was published with.
	ContentType string
	// Data is the payload as published.
	Data []byte
	// Published is when the hub accepted the event.
	Published time.Time

	// memo holds what the code that delivers the event derives from it
	// (its wire encodings), made once and shared by every subscriber. The
	// hub gives every event it holds one, and knows nothing of what is in
	// it.
	memo *eventMemo
}

// A MemoSlot is where one value derived from an event is kept (see
// Event.Derived).
type MemoSlot int

// MemoSlots is how many derived values an event can carry.
const MemoSlots = 6

type eventMemo [MemoSlots]atomic.Pointer[any]

// withMemo gives the event a memo if it has none.
func (e *Event) withMemo() *Event {
	if e.memo == nil {
		e.memo = new(eventMemo)
	}
	return e
}

// Derived returns the value kept in the event's slot, making it with make
// on first use. Two callers may make it at the same time; one value is
// kept. An event that no hub holds has no memo, and make runs every time.
// The comet module keeps each wire encoding of an event there, made once
// for every subscriber; not part of its Go API.
func (e *Event) Derived(slot MemoSlot, make func() any) any {
	if e.memo == nil {
		return make()
	}
	p := &e.memo[slot]
	if v := p.Load(); v != nil {
		return *v
	}
	v := make()
	p.CompareAndSwap(nil, &v)
	return *p.Load()
}

// LastDerived returns the value last kept in the slot by KeepDerived, or
// nil.
func (e *Event) LastDerived(slot MemoSlot) any {
	if e.memo == nil {
		return nil
	}
	if v := e.memo[slot].Load(); v != nil {
		return *v
	}
	return nil
}

// KeepDerived keeps v in the slot, in place of what it held.
func (e *Event) KeepDerived(slot MemoSlot, v any) {
	if e.memo != nil {
		e.memo[slot].Store(&v)
	}
}

// history holds the most recent events of one context, oldest first. Ids in
// it are consecutive, so finding the event after a cursor is an index
// computation, not a search.
type history struct {
	events []*Event
}

// push appends ev and drops the oldest events beyond limit.
func (h *history) push(ev *Event, limit int) {
	h.events = append(h.events, ev)
	if over := len(h.events) - limit; over > 0 {
		clear(h.events[:over]) // let the payloads be collected
		h.events = h.events[over:]
	}
}

// expire drops events published before cutoff.
func (h *history) expire(cutoff time.Time) {
	n := 0
	for n < len(h.events) && h.events[n].Published.Before(cutoff) {
		n++
	}
	if n > 0 {
		clear(h.events[:n])
		h.events = h.events[n:]
	}
	if len(h.events) == 0 {
		h.events = nil // release the backing array of an idle context
	}
}

func (h *history) len() int { return len(h.events) }

// oldest returns the oldest retained event, or nil.
func (h *history) oldest() *Event {
	if len(h.events) == 0 {
		return nil
	}
	return h.events[0]
}

// at returns the retained event with id, or nil.
func (h *history) at(id uint64) *Event {
	if id == 0 {
		return nil
	}
	if ev := h.after(id - 1); ev != nil && ev.ID == id {
		return ev
	}
	return nil
}

// after returns the first retained event whose id is greater than id, or nil
// if there is none.
func (h *history) after(id uint64) *Event {
	first := h.oldest()
	if first == nil {
		return nil
	}
	if id < first.ID {
		return first
	}
	i := id - first.ID + 1
	if i >= uint64(len(h.events)) {
		return nil
	}
	return h.events[i]
}
