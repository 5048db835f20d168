package comet

import (
	"net/http"
)

// Long polls: a GET suspended until there is an event after the client's
// cursor (of any of its contexts), the expiration delay passes, the client
// leaves or the hub closes; then answered once (answerPoll decides what).

// servePoll serves a long poll: detached (detach_poll.go) if how took its
// connection and it must wait, else held by this goroutine.
func (h *Handler) servePoll(w http.ResponseWriter, r *http.Request, vars *requestVars, sn *subscription, how holding) error {
	if how.sock != nil {
		// Only a poll that must wait is worth taking over.
		if _, ready, err := sn.subs[0].Poll(sn.states[0].after); err == nil && !ready && h.detachPoll(w, r, how, sn) {
			return nil
		}
	}
	defer sn.close()
	sn.holdHere(false)
	defer blockingInPlace(r)()
	ctx, cancel := sn.life.bound(r.Context())
	defer cancel()
	for {
		if i, d, ready, err := sn.pick(); i >= 0 {
			return h.answerPollOf(w, vars, sn, i, d, ready, err)
		}
		if sn.wait(ctx, nil) == nil {
			continue
		}
		if r.Context().Err() != nil {
			return abandon(w)
		}
		return h.answerPollOf(w, vars, sn, 0, Delivery{}, false, errExpired)
	}
}

// pick returns the context a poll answers about now, with what its
// subscriber's poll gave, or -1 if none has anything: an end (the hub
// closing, a context deleted) or a gap at once, else the context whose
// next event is the oldest, so that a busy context cannot starve another.
func (sn *subscription) pick() (int, Delivery, bool, error) {
	best := -1
	var bestD Delivery
	for i, sub := range sn.subs {
		if !sn.takeChange(i) {
			continue
		}
		d, ready, err := sub.Poll(sn.states[i].after)
		switch {
		case err != nil:
			return i, d, false, err
		case !ready:
			continue
		case d.Event == nil:
			return i, d, true, nil
		}
		sn.markChanged(i) // unless it is answered about, it still has this
		if best < 0 || d.Event.Published.Before(bestD.Event.Published) {
			best, bestD = i, d
		}
	}
	return best, bestD, best >= 0, nil
}

// answerPollOf writes the answer about context i. A poll of several
// carries the cursor of them all, the context's own in place, and the
// others' as they came, so that the next poll gets what they have.
func (h *Handler) answerPollOf(w http.ResponseWriter, vars *requestVars, sn *subscription, i int, d Delivery, ready bool, err error) error {
	a, _ := answerPoll(sn.subs[i], sn.states[i].after, d, ready, err)
	if sn.several {
		if a.status != http.StatusGone {
			a.composite = sn.composite(i, a.cursor)
		}
		if !a.expired && a.status != http.StatusServiceUnavailable {
			a.context = sn.keys[i]
		}
	}
	sn.m.countPoll(a)
	setPollPlaceholders(vars, a)
	return writePollAnswer(w, a)
}

// abandon ends a long poll whose client left, or closed its end of the
// connection, by closing the connection without an answer: net/http would
// otherwise write an empty 200 with none of the cursor headers, and a
// client that only half-closed would take it for an event. A detached
// poll closes the connection the same way. Over HTTP/2 the client's
// stream is already gone, and nothing is written.
func abandon(w http.ResponseWriter) error {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
	}
	return nil
}
