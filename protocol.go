package comet

import (
	"errors"
	"net/http"

	"github.com/caddy-comet/comet/internal/hub"
)

// The protocol's decisions: what a subscriber is answered, and when. Every
// way of holding a subscriber's connection (in net/http, or taken over
// from it) calls these functions and differs only in how the bytes reach
// the socket, so that a rule is written once.

// errExpired is what a subscriber's wait ends with when the route's
// expiration passed, whichever way the transport keeps time.
var errExpired = errors.New("expired")

// errUnauthorized is what a stream's wait ends with when the token that
// allowed it expired.
var errUnauthorized = errors.New("the token expired")

// pollAnswer is a long poll's answer.
type pollAnswer struct {
	status      int    // 200 event, 204 expired or missed, 410 deleted, 503 shutdown
	cursor      Cursor // for the cursor headers, which a 410 does not carry
	missed      int64
	event       *Event // 200 only
	subscribers int
	expired     bool // answered because the expiration passed

	// For a poll of several contexts: the cursor of them all, which the
	// cursor headers carry, and the context the answer is about, if one.
	composite, context string
}

// answerPoll decides what a long poll answers when its wait for an event
// after the cursor after ended with d, ready and err: those of
// Subscriber.poll, or of Next (ready when err is nil), with err errExpired
// once the route's expiration passed. It reports false when the poll must
// go on waiting.
//
// An answer without an event gives the client back the cursor it waited
// after, never the context's position now: an event published between
// the end of the wait and this answer would otherwise be skipped without
// a word. The next poll gets it at once.
func answerPoll(sub *Subscriber, after Cursor, d Delivery, ready bool, err error) (pollAnswer, bool) {
	switch {
	case errors.Is(err, ErrHubClosed):
		return pollAnswer{status: http.StatusServiceUnavailable, cursor: after}, true
	case errors.Is(err, ErrContextDeleted):
		return pollAnswer{status: http.StatusGone}, true
	case ready && d.Event != nil:
		return pollAnswer{status: http.StatusOK, cursor: d.Cursor, missed: d.Missed, event: d.Event, subscribers: sub.ContextSubscribers()}, true
	case ready: // events were missed and history holds nothing newer
		return pollAnswer{status: http.StatusNoContent, cursor: d.Cursor, missed: d.Missed, subscribers: sub.ContextSubscribers()}, true
	case errors.Is(err, errExpired):
		return pollAnswer{status: http.StatusNoContent, cursor: after, subscribers: sub.ContextSubscribers(), expired: true}, true
	}
	return pollAnswer{}, false
}

// keepsConnection reports whether the connection may carry the client's
// next request after the answer: not when the server is exiting.
func (a pollAnswer) keepsConnection() bool { return a.status != http.StatusServiceUnavailable }

// countPoll adds the answer to the route's series.
func (m *transportMetrics) countPoll(a pollAnswer) {
	if a.event != nil {
		m.deliveries.Inc()
	}
	if a.expired {
		m.expiries.Inc()
	}
}

// streamState is where a stream stands.
type streamState struct {
	f     streamEncoding
	after Cursor // the cursor of the last thing written
	// delivered says something was written after the opening: a gap
	// before it is the client's own (its cursor was old) and is reported
	// on the way; a gap after it means this reader fell behind while
	// streaming.
	delivered bool
}

// streamStep is what a stream writes next.
type streamStep struct {
	notice, frame []byte // written in this order; frame is shared, never modify it
	end           bool   // the stream ends once they are written
	delivery      bool   // frame is an event
	expired       bool   // the stream ends at its expiration
	behind        bool   // the reader fell behind the history and is cut off
}

// step decides what the stream writes when its wait for an event after
// s.after ended with d, ready and err: those of Subscriber.poll, or of
// next (ready when err is nil), with err errExpired once the route's
// expiration passed or hub.ErrTick when a heartbeat is due. It moves s past
// what it decides to write; nothing to write and no end means wait on.
func (s *streamState) step(d Delivery, ready bool, err error) streamStep {
	f := s.f
	switch {
	case errors.Is(err, ErrHubClosed):
		return streamStep{frame: f.reconnect(nil, reasonShutdown, s.after), end: true}
	case errors.Is(err, ErrContextDeleted):
		return streamStep{frame: f.deleted(nil), end: true}
	case errors.Is(err, errExpired):
		return streamStep{frame: f.reconnect(nil, reasonExpired, s.after), end: true, expired: true}
	case errors.Is(err, errUnauthorized):
		return streamStep{frame: f.reconnect(nil, reasonUnauthorized, s.after), end: true}
	case errors.Is(err, hub.ErrTick):
		return streamStep{frame: f.heartbeat()}
	case !ready:
		return streamStep{}
	case d.Missed != 0 && s.delivered:
		// The reader fell behind the history while the stream ran: it
		// will not catch up, so tell it where to resume and end.
		resume := resumeBefore(d)
		return streamStep{
			notice: f.missed(nil, d.Missed, &resume),
			frame:  f.reconnect(nil, reasonBehind, resume),
			end:    true, behind: true,
		}
	}
	notice, frame := f.delivery(d)
	s.after, s.delivered = d.Cursor, true
	return streamStep{notice: notice, frame: frame, delivery: d.Event != nil}
}

// countStream adds a step to the route's and the hub's series; an event
// counts once it is written.
func (h *Handler) countStream(m *transportMetrics, st streamStep, written bool) {
	switch {
	case st.delivery && written:
		m.deliveries.Inc()
	case st.expired:
		m.expiries.Inc()
	case st.behind:
		countDropped(h.Hub, droppedBehind)
	}
}
