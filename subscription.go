package comet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddy-comet/comet/internal/takeover"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Subscriptions.
//
// Every way of subscribing (a long poll, an SSE or NDJSON stream, a
// WebSocket; of one context or of several) reads its request into one
// value, a subscription: the contexts, the cursor of each, the token that
// allowed them and the transport. One function, serveSubscription, then
// decides how the connection is held (holdingFor: taken over from
// net/http where it can be, else by the request's goroutine), and every
// protocol decision, whichever way it is held, is protocol.go's.
//
// A request of one context is the subscription of one: it is held and
// decided exactly as one of several, and differs only in its wire form,
// which names no context and whose cursor is the context's own (see
// multiplex.go for the form of several).

// subscription is a request's subscription to its contexts: a subscriber
// and a stream state each, in the request's order.
type subscription struct {
	keys []string
	// several says the request named several contexts: its events and
	// notices say which context they are of, and its cursor names all.
	several   bool
	transport transport
	tok       *jwtauth.Token // the token that allowed it; nil where none is required
	client    string         // who holds it, for the client's share (clientOf)
	share     hub.Share      // what it holds of that share, given back by close
	life      lifetime       // when and why it ends on its own
	m         *transportMetrics

	subs   []*Subscriber
	states []streamState
	// changed marks, in a subscription of several, which contexts changed
	// since their holder last looked: a publish to one costs a look at
	// that one, not at all of them. A subscription of one looks at its
	// context on every change, and keeps no mark.
	changed []atomic.Bool
	// wake is what the contexts' changes signal while the request's
	// goroutine holds the subscription (see holdHere); nil otherwise.
	wake chan struct{}

	// one backs the slices of a subscription of one context, which is
	// then a single allocation.
	one struct {
		key   [1]string
		sub   [1]*Subscriber
		state [1]streamState
	}
}

// subscription reads a GET into its subscription and subscribes to every
// context it names (keys, or else key alone), each authorized as if asked
// for alone (key was already), from the cursor the client sent, if any. A
// nil subscription means the request was refused: the error, if any, is
// for Caddy to answer. The caller must close the subscription, or hand it
// to a holder that does.
func (h *Handler) subscription(w http.ResponseWriter, r *http.Request, key string, keys []string, tok *jwtauth.Token) (*subscription, error) {
	t := requestedTransport(r)
	if h.transports&t == 0 {
		return nil, caddyhttp.Error(http.StatusNotAcceptable, errTransportNotServed(t, h.transports))
	}
	if t == transportWebSocket {
		if err := checkWebSocketHandshake(w, r); err != nil {
			return nil, err
		}
	}
	sn := &subscription{transport: t, tok: tok, client: clientOf(r, tok), life: h.lifetime(time.Now(), tok), m: h.metrics[t]}
	var resume []Cursor
	if keys == nil {
		sn.one.key[0] = key
		sn.keys = sn.one.key[:]
		cur, ok, err := requestCursor(r)
		if err != nil {
			return nil, caddyhttp.Error(http.StatusBadRequest, err)
		}
		if ok {
			resume = []Cursor{cur}
		}
	} else {
		sn.keys, sn.several = keys, true
		if refused, err := h.authorizeRest(w, r, keys); refused {
			return nil, err // answered; err is what writing the answer gave
		}
		var err error
		if resume, err = multiplexedResume(r, len(keys)); err != nil {
			return nil, err
		}
	}
	if refused, err := h.subscribeAll(w, sn, resume); refused {
		return nil, err
	}
	return sn, nil
}

// subscribeAll attaches a subscriber to each context, from resume's
// cursors if the client sent them, else from the context's position now,
// so that it gets the next event (the seed's behaviour). The subscribers'
// identity is the subject of the token that allowed them, if any. It first
// takes the client's share for all of them, so that a client past its
// share is refused before anything is made. On a refusal it detaches what
// it attached.
func (h *Handler) subscribeAll(w http.ResponseWriter, sn *subscription, resume []Cursor) (refused bool, err error) {
	identity := ""
	if sn.tok != nil {
		identity = sn.tok.Subject
	}
	n := len(sn.keys)
	if sn.share, err = h.hub.TakeShare(sn.client, n); err != nil {
		countDropped(h.Hub, droppedLimit)
		return true, h.refuse(w, sn.keys[0], err)
	}
	if n == 1 {
		sn.subs, sn.states = sn.one.sub[:0], sn.one.state[:0]
	} else {
		sn.subs, sn.states = make([]*Subscriber, 0, n), make([]streamState, 0, n)
		sn.changed = make([]atomic.Bool, n)
	}
	encodings := sn.encodings()
	for i, key := range sn.keys {
		sub, err := h.hub.SubscribeAs(key, identity)
		if err != nil {
			sn.close()
			if isLimit(err) {
				countDropped(h.Hub, droppedLimit)
			}
			return true, h.refuse(w, key, err)
		}
		sn.m.subscribers.Inc()
		after := sub.Start()
		if resume != nil {
			after = sub.Resume(resume[i])
		}
		sn.subs = append(sn.subs, sub)
		sn.states = append(sn.states, streamState{f: encodings(i), after: after})
		sn.markChanged(i) // to write what it has from the client's cursor
	}
	return false, nil
}

// isLimit reports whether the hub refused a subscriber for one of its
// limits.
func isLimit(err error) bool {
	return errors.Is(err, ErrTooManySubscribers) || errors.Is(err, ErrTooManyContexts)
}

// errTransportNotServed is why a route refuses a transport it does not serve.
func errTransportNotServed(t, served transport) error {
	return fmt.Errorf("this route does not serve %s; it serves: %s (long poll: any Accept; sse: Accept: text/event-stream; stream: Accept: application/x-ndjson; websocket: an upgrade)", t, served)
}

// encodings returns what each context's stream state writes with: the
// transport's wire format, which, for a subscription of several, says
// which context each event and notice is of.
func (sn *subscription) encodings() func(i int) streamEncoding {
	f := formatNDJSON // a WebSocket's messages are NDJSON lines; a poll writes none
	if sn.transport == transportSSE {
		f = formatSSE
	}
	if !sn.several {
		if sn.transport == transportWebSocket {
			return func(int) streamEncoding { return webSocketOf }
		}
		return func(int) streamEncoding { return f }
	}
	members := make([]memberEncoding, len(sn.keys)) // one allocation, not one each
	return func(i int) streamEncoding {
		members[i] = memberEncoding{f: f, sn: sn, i: i}
		if sn.transport == transportWebSocket {
			return webSocketOfMember(&members[i])
		}
		return &members[i]
	}
}

// close detaches every subscriber.
func (sn *subscription) close() {
	for _, sub := range sn.subs {
		sub.Close()
		sn.m.subscribers.Dec()
	}
	sn.share.Release()
	sn.share = hub.Share{}
}

// watchAll makes every subscriber a watcher (see watch.go) that marks its
// context changed and calls notify. The holder calls it once, before it
// first looks at the contexts, so that no change is missed.
func (sn *subscription) watchAll(notify hub.WatcherFunc) {
	if !sn.several {
		sn.subs[0].Watch(notify)
		return
	}
	for i, sub := range sn.subs {
		sub.Watch(func() func() {
			sn.changed[i].Store(true)
			return notify()
		})
	}
}

// holdHere readies the subscription to be held by the request's
// goroutine, which then waits for its contexts with wait. A subscription
// of several has its changes signal wake; one of one waits on its
// context's own broadcast, as a goroutine in Next does, which costs a
// publish nothing per subscriber. With signaled (or several), signal
// wakes the goroutine too; without, the wait has no channel for it, one
// less thing each of thousands of parked requests holds.
func (sn *subscription) holdHere(signaled bool) {
	if signaled || sn.several {
		sn.wake = make(chan struct{}, 1)
	}
	if sn.several {
		sn.watchAll(sn.signal)
	}
}

// wait waits, in a subscription held by the request's goroutine, until
// a context may have changed since the holder last looked, or signal was
// called (nil: look again), tick fires (hub.ErrTick) or ctx ends (its error).
func (sn *subscription) wait(ctx context.Context, tick <-chan time.Time) error {
	if !sn.several {
		_, err := sn.subs[0].Wait(ctx, sn.states[0].after, tick, sn.wake)
		switch {
		case errors.Is(err, hub.ErrTick), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return err
		}
		return nil // ready, poked, or an end the holder's next look finds
	}
	select {
	case <-sn.wake:
		return nil
	case <-tick:
		return hub.ErrTick
	case <-ctx.Done():
		return ctx.Err()
	}
}

// signal wakes the goroutine that holds the subscription. One pending
// wake is enough.
func (sn *subscription) signal() (later func()) {
	select {
	case sn.wake <- struct{}{}:
	default:
	}
	return nil
}

// takeChange reports whether context i may have changed since its holder
// last looked, and clears its mark.
func (sn *subscription) takeChange(i int) bool {
	return !sn.several || sn.changed[i].Swap(false)
}

// markChanged marks context i as to be looked at again: it may have more.
func (sn *subscription) markChanged(i int) {
	if sn.several {
		sn.changed[i].Store(true)
	}
}

// resumeAt moves every context to the cursor a client sent (a WebSocket
// client may), as if it had subscribed from there.
func (sn *subscription) resumeAt(curs []Cursor) {
	for i, sub := range sn.subs {
		sn.states[i] = streamState{f: sn.states[i].f, after: sub.Resume(curs[i])}
		sn.markChanged(i)
	}
}

// composite is the cursor of the whole subscription, with cur in place of
// context i's (none for i < 0): every context's cursor, in the request's
// order, joined by commas. Of one context, it is that context's cursor.
func (sn *subscription) composite(i int, cur Cursor) string {
	if !sn.several {
		if i == 0 {
			return cur.String()
		}
		return sn.states[0].after.String()
	}
	var b strings.Builder
	for j := range sn.states {
		if j > 0 {
			b.WriteByte(',')
		}
		if j == i {
			b.WriteString(cur.String())
		} else {
			b.WriteString(sn.states[j].after.String())
		}
	}
	return b.String()
}

// open is what a stream of the subscription starts with, in format f:
// its cursor, and, for several contexts over NDJSON, their names.
func (sn *subscription) open(f wireFormat) []byte {
	if sn.several {
		return f.openMultiplexed(nil, sn.composite(-1, Cursor{}), sn.keys)
	}
	return f.open(nil, sn.states[0].after)
}

// setPlaceholders sets what the subscription's answer can be logged with:
// for one context, its cursor and subscribers.
func (sn *subscription) setPlaceholders(vars *requestVars) {
	if sn.several {
		return
	}
	after := sn.states[0].after
	vars.setCursor(after)
	vars.setSubscribers(sn.subs[0].ContextSubscribers())
}

// holding is how a subscription's connection is held: taken over from
// net/http (sock is set), or by the request's goroutine.
type holding struct {
	sock    net.Conn
	overTLS bool
	// inj hands a detached long poll's connection back to its server once
	// the poll is answered.
	inj *takeover.Injector
	// overStream says the subscription is an HTTP/2 WebSocket (RFC 8441):
	// the request's stream is the socket, held by the request's goroutine.
	overStream bool
}

// holdingFor decides, before anything is answered, how the subscription's
// connection is held. Only HTTP/1.x connections are taken over, where the
// route detaches, the platform can, and nothing in the chain would see
// the difference (detach_socket.go, detach_poll.go). A long poll of
// several contexts stays in its request: its answer depends on which
// context changes first, and a detached poll answers one.
func (h *Handler) holdingFor(w http.ResponseWriter, r *http.Request, sn *subscription) holding {
	switch {
	case sn.transport == transportLongPoll:
		if sn.several {
			return holding{}
		}
		sock, inj := h.detachablePoll(w, r)
		return holding{sock: sock, inj: inj}
	case isWebSocketConnect(r):
		return holding{overStream: true}
	}
	sock, overTLS := h.detachableSocket(w, r)
	return holding{sock: sock, overTLS: overTLS}
}

// serveSubscription serves a subscription until one of the protocol's
// ends, held as holdingFor decides; it closes the subscription, or hands
// it to the detached stream or poll that will.
func (h *Handler) serveSubscription(w http.ResponseWriter, r *http.Request, vars *requestVars, sn *subscription) error {
	how := h.holdingFor(w, r, sn)
	switch sn.transport {
	case transportLongPoll:
		return h.servePoll(w, r, vars, sn, how)
	case transportWebSocket:
		return h.serveWebSocket(w, r, vars, sn, how)
	}
	return h.serveStream(w, r, vars, sn, how)
}
