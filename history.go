package comet

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

	// frames holds the event's wire encodings, made once and shared by
	// every subscriber that writes it. Publish sets it.
	frames *frameCache
}

// frameCache holds an event's encoding in each wire format. Two
// subscribers may encode at the same time; both make the same bytes and
// one copy is kept.
type frameCache struct {
	streams [wireFormatCount]atomic.Pointer[[]byte]
	// answer is the last detached long-poll answer made for the event,
	// shared by every poll whose answer is the same (see detach_poll.go).
	answer atomic.Pointer[cachedAnswer]
}

// frame returns the event's encoding in format f, at cursor cur (the same
// for every subscriber), making it on first use. An event that did not
// come through Publish has no cache and is encoded each time.
func (e *Event) frame(f wireFormat, cur Cursor) []byte {
	if e.frames == nil {
		return f.encode(nil, e, cur)
	}
	p := &e.frames.streams[f]
	if b := p.Load(); b != nil {
		return *b
	}
	b := f.encode(nil, e, cur)
	p.CompareAndSwap(nil, &b)
	return *p.Load()
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
