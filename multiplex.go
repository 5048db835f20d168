package comet

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Bounds of multiplexing: how many contexts one request may name.
const (
	DefaultMaxMultiplex = 256
	MaxMultiplexCeiling = 1024
)

// multiplexPlaceholder stands, in a multiplexed route's context template,
// for the query parameter that names the contexts.
const multiplexPlaceholder = "{comet.multiplex}"

// MultiplexConfig lets one stream follow several contexts of a route: a
// GET that repeats the query parameter Param (?room=a&room=b) subscribes
// to the context the route's template gives for each value, as if each
// were asked for alone; tokens are checked for each.
type MultiplexConfig struct {
	// The query parameter whose values name the contexts. The route's
	// context template must use it: {http.request.uri.query.<param>}
	// ({query.<param>} in a Caddyfile).
	Param string `json:"param,omitempty"`

	// The most contexts one request may name. Default: 256; at most 1024.
	Max int `json:"max,omitempty"`
}

// provision checks the config against the route's template and returns
// the template with the parameter's placeholder made replaceable per
// value.
func (m *MultiplexConfig) provision(template string) (string, error) {
	if m.Param == "" {
		return "", errors.New("multiplex needs a query parameter")
	}
	if m.Max == 0 {
		m.Max = DefaultMaxMultiplex
	}
	if m.Max < 2 || m.Max > MaxMultiplexCeiling {
		return "", fmt.Errorf("multiplex max must be from 2 to %d, got %d", MaxMultiplexCeiling, m.Max)
	}
	placeholder := "{http.request.uri.query." + m.Param + "}"
	if !strings.Contains(template, placeholder) {
		return "", fmt.Errorf("multiplex %s: the context template %q must use %s ({query.%s} in a Caddyfile), so that each value names a context",
			m.Param, template, placeholder, m.Param)
	}
	return strings.ReplaceAll(template, placeholder, multiplexPlaceholder), nil
}

// multiplexedKeys returns the contexts a GET names, in order, if it names
// more than one; nil if the route does not multiplex or the request names
// one (it is then served as any other).
func (h *Handler) multiplexedKeys(r *http.Request, repl *caddy.Replacer) ([]string, error) {
	if h.Multiplex == nil || r.URL.RawQuery == "" {
		return nil, nil
	}
	values := r.URL.Query()[h.Multiplex.Param]
	if len(values) < 2 {
		return nil, nil
	}
	if len(values) > h.Multiplex.Max {
		return nil, fmt.Errorf("%d contexts named; this route takes at most %d in one request", len(values), h.Multiplex.Max)
	}
	keys := make([]string, len(values))
	defer repl.Delete("comet.multiplex")
	for i, v := range values {
		repl.Set("comet.multiplex", v)
		keys[i] = repl.ReplaceKnown(h.multiplexTemplate, "")
		if keys[i] == "" {
			return nil, fmt.Errorf("%s=%.64q gives an empty context key", h.Multiplex.Param, v)
		}
		if slices.Contains(keys[:i], keys[i]) {
			return nil, fmt.Errorf("context %.64q named twice", keys[i])
		}
	}
	return keys, nil
}

// multiplexed is a stream's subscription to several contexts: a subscriber
// and a stream state each, and one channel that any of them changing
// signals, so that one goroutine follows them all. changed marks which,
// so that a publish to one context costs its followers one look at that
// context, not at all of theirs.
type multiplexed struct {
	keys    []string
	subs    []*Subscriber
	states  []streamState
	changed []atomic.Bool
	wake    chan struct{}
	// notify is what the subscribers call once they marked their change:
	// a signal on wake, or, once the stream is detached, its watcher.
	notify atomic.Pointer[watcherFunc]
}

// signal wakes the goroutine that follows the contexts.
func (mx *multiplexed) signal() (later func()) {
	select {
	case mx.wake <- struct{}{}:
	default:
	}
	return nil
}

// composite is the cursor of the whole stream, with cur in place of
// context i's: every context's cursor, in the request's order, joined by
// commas.
func (mx *multiplexed) composite(i int, cur Cursor) string {
	var b strings.Builder
	for j := range mx.states {
		if j > 0 {
			b.WriteByte(',')
		}
		if j == i {
			b.WriteString(cur.String())
		} else {
			b.WriteString(mx.states[j].after.String())
		}
	}
	return b.String()
}

// parseComposite splits a multiplexed stream's cursor into one per context.
func parseComposite(text string, n int) ([]Cursor, error) {
	parts := strings.Split(text, ",")
	if len(parts) != n {
		return nil, fmt.Errorf("the cursor names %d contexts and the request %d: resume with the cursor of the same list", len(parts), n)
	}
	cursors := make([]Cursor, n)
	for i, p := range parts {
		var err error
		if cursors[i], err = ParseCursor(p); err != nil {
			return nil, fmt.Errorf("context %d of the cursor: %w", i+1, err)
		}
	}
	return cursors, nil
}

// requestCursorText returns the cursor of several contexts the client sent
// back, as text: an entity tag's whole value (its commas are the cursor's),
// unquoted.
func requestCursorText(r *http.Request) string {
	text, etag := cursorSent(r)
	if etag {
		text = strings.Trim(strings.TrimPrefix(strings.TrimSpace(text), "W/"), `"`)
	}
	return text
}

// serveMultiplexed keeps a GET open and writes every event of each of its
// contexts after the client's cursor for it, as serveStream does for one:
// the same protocol decisions (streamState), each context's own ids and
// gaps, and one cursor for them all.
func (h *Handler) serveMultiplexed(w http.ResponseWriter, r *http.Request, keys []string, f wireFormat, tok *jwtauth.Token) error {
	m := h.metrics[f.transport()]
	mx, err := h.subscribeRequested(w, r, keys, f, tok, m)
	if mx == nil {
		return err
	}
	detached := false
	defer func() {
		if detached {
			return // the detached stream unsubscribes when it ends
		}
		for _, sub := range mx.subs {
			h.unsubscribe(sub, m)
		}
	}()

	open := mx.composite(-1, Cursor{})
	hdr := w.Header()
	hdr.Set("Content-Type", f.contentType())
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Accel-Buffering", "no")
	hdr.Set("Incremental", "?1")
	hdr.Set(HeaderCursor, open)
	sock, overTLS := h.detachableSocket(w, r)
	if sock != nil {
		hdr.Set("Transfer-Encoding", "identity") // see detach.go
	}
	w.WriteHeader(http.StatusOK)
	out := streamWriter{w: w, rc: http.NewResponseController(w), timeout: time.Duration(h.WriteTimeout)}
	defer out.clearDeadline()
	if out.write(f.openMultiplexed(nil, open, keys)) != nil {
		return nil
	}
	life := h.lifetime(time.Now(), tok)
	if sock != nil && h.detachMultiplexed(w, r, sock, overTLS, mx, f, life) {
		detached = true
		return nil
	}
	return h.followAll(r, mx, out, m, life)
}

// subscribeRequested subscribes a stream to every context of a request
// of several, each authorized as if asked for alone, from the cursor the
// client sent. A nil subscription means the request was refused: the
// error, if any, is for Caddy to answer.
func (h *Handler) subscribeRequested(w http.ResponseWriter, r *http.Request, keys []string, f wireFormat, tok *jwtauth.Token, m *transportMetrics) (*multiplexed, error) {
	if refused, err := h.authorizeRest(w, r, keys); refused {
		return nil, err // answered; err is what writing the answer gave
	}
	resume, err := multiplexedResume(r, len(keys))
	if err != nil {
		return nil, err
	}
	return h.subscribeAll(w, keys, resume, f, tok, m)
}

// detachMultiplexed takes a multiplexed stream's connection over, as
// detach does for a stream of one context: its contexts' changes then go
// to the detached stream's watcher, which writes them.
func (h *Handler) detachMultiplexed(w http.ResponseWriter, r *http.Request, sock net.Conn, overTLS bool, mx *multiplexed, f wireFormat, life lifetime) bool {
	s := h.newDetachedStream(w, sock, overTLS, f.transport(), mx.keys[0], life)
	if s == nil {
		return false
	}
	return s.followAll(w, r, mx, hijack) == takenOver
}

// followAll takes the connection over with hijack for a stream of the
// contexts of mx, whose changes then go to the stream's watcher.
func (s *detachedStream) followAll(w http.ResponseWriter, r *http.Request, mx *multiplexed, hijack func(http.ResponseWriter, *http.Request) (net.Conn, error)) takeoverResult {
	s.members = make([]streamMember, len(mx.subs))
	for i := range mx.subs {
		s.members[i] = streamMember{sub: mx.subs[i], st: &mx.states[i], changed: &mx.changed[i]}
	}
	result := s.takeOver(w, r, hijack)
	if result == takenOver {
		watch := watcherFunc(s.changed)
		mx.notify.Store(&watch)
		s.beginAfter(r)
	}
	return result
}

// serveMultiplexedPoll suspends a GET of several contexts until one of
// them has something after the client's cursor for it, and answers as a
// long poll of that context does (answerPoll), with the cursor of them all
// and the context's name. The other contexts' cursors are given back as
// they came, so that the next poll gets what they have.
func (h *Handler) serveMultiplexedPoll(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, keys []string, tok *jwtauth.Token) error {
	m := h.metrics[transportLongPoll]
	if refused, err := h.authorizeRest(w, r, keys); refused {
		return err // answered; err is what writing the answer gave
	}
	resume, err := multiplexedResume(r, len(keys))
	if err != nil {
		return err
	}
	mx, err := h.subscribeAll(w, keys, resume, formatNDJSON, tok, m)
	if mx == nil {
		return err
	}
	defer func() {
		for _, sub := range mx.subs {
			h.unsubscribe(sub, m)
		}
	}()
	life := h.lifetime(time.Now(), tok)
	ctx, cancel := life.bound(r.Context())
	defer cancel()
	for {
		if i, d, ready, err := mx.pick(); i >= 0 {
			return h.answerMultiplexedPoll(w, repl, mx, i, d, ready, err, m)
		}
		select {
		case <-mx.wake:
			continue
		case <-ctx.Done():
		}
		if r.Context().Err() != nil {
			return abandon(w)
		}
		return h.answerMultiplexedPoll(w, repl, mx, 0, Delivery{}, false, errExpired, m)
	}
}

// serveMultiplexedPosition answers a HEAD of several contexts with the
// cursor of them all now, from which a client misses nothing of any.
func (h *Handler) serveMultiplexedPosition(w http.ResponseWriter, r *http.Request, keys []string) error {
	if refused, err := h.authorizeRest(w, r, keys); refused {
		return err
	}
	parts := make([]string, len(keys))
	for i, key := range keys {
		info, err := h.hub.Position(key)
		if err != nil {
			return h.refuse(w, key, err)
		}
		parts[i] = info.Cursor.String()
	}
	composite := strings.Join(parts, ",")
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("ETag", `"`+composite+`"`)
	hdr.Set(HeaderCursor, composite)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// pick returns the context a poll of several answers about now, with what
// its subscriber's poll gave, or -1 if none has anything: an end (the hub
// closing, a context deleted) or a gap at once, else the context whose
// next event is the oldest, so that a busy context cannot starve another.
func (mx *multiplexed) pick() (int, Delivery, bool, error) {
	best := -1
	var bestD Delivery
	for i, sub := range mx.subs {
		d, ready, err := sub.poll(mx.states[i].after)
		switch {
		case err != nil:
			return i, d, false, err
		case !ready:
			continue
		case d.Event == nil:
			return i, d, true, nil
		case best < 0 || d.Event.Published.Before(bestD.Event.Published):
			best, bestD = i, d
		}
	}
	return best, bestD, best >= 0, nil
}

// answerMultiplexedPoll writes the answer about context i.
func (h *Handler) answerMultiplexedPoll(w http.ResponseWriter, repl *caddy.Replacer, mx *multiplexed, i int, d Delivery, ready bool, err error, m *transportMetrics) error {
	a, _ := answerPoll(mx.subs[i], mx.states[i].after, d, ready, err)
	if a.status != http.StatusGone {
		a.composite = mx.composite(i, a.cursor)
	}
	if !a.expired && a.status != http.StatusServiceUnavailable {
		a.context = mx.keys[i]
	}
	m.countPoll(a)
	setPollPlaceholders(repl, a)
	return writePollAnswer(w, a)
}

// multiplexedResume parses the client's cursor of n contexts, if it sent
// one: nil if it did not, a 400 for Caddy if it is not one of n contexts.
func multiplexedResume(r *http.Request, n int) ([]Cursor, error) {
	text := requestCursorText(r)
	if text == "" {
		return nil, nil
	}
	resume, err := parseComposite(text, n)
	if err != nil {
		return nil, caddyhttp.Error(http.StatusBadRequest, err)
	}
	return resume, nil
}

// authorizeRest checks the token for every context but the first, which
// the request was checked for, as if each were asked for alone.
func (h *Handler) authorizeRest(w http.ResponseWriter, r *http.Request, keys []string) (refused bool, err error) {
	for _, key := range keys[1:] {
		if _, refused, err := h.authorize(w, r, key, false); refused {
			return true, err
		}
	}
	return false, nil
}

// subscribeAll subscribes to every context, from the client's cursors if
// it sent them, and makes each subscriber signal mx.wake when its context
// changes; f is the stream's format (a poll writes none). On a refusal it
// detaches what it attached and returns nil.
func (h *Handler) subscribeAll(w http.ResponseWriter, keys []string, resume []Cursor, f wireFormat, tok *jwtauth.Token, m *transportMetrics) (*multiplexed, error) {
	identity := ""
	if tok != nil {
		identity = tok.Subject
	}
	mx := &multiplexed{keys: keys, wake: make(chan struct{}, 1), changed: make([]atomic.Bool, len(keys)),
		subs: make([]*Subscriber, 0, len(keys)), states: make([]streamState, 0, len(keys))}
	signal := watcherFunc(mx.signal)
	mx.notify.Store(&signal)
	// One allocation for every context's encoding, not one each.
	encodings := make([]memberEncoding, len(keys))
	for i, key := range keys {
		sub, err := h.hub.SubscribeAs(key, identity)
		if err != nil {
			for _, s := range mx.subs {
				h.unsubscribe(s, m)
			}
			if errors.Is(err, ErrTooManySubscribers) || errors.Is(err, ErrTooManyContexts) {
				countDropped(h.Hub, droppedLimit)
			}
			return nil, h.refuse(w, key, err)
		}
		m.subscribers.Inc()
		mx.changed[i].Store(true) // to write what it has from the client's cursor
		sub.watch(func() func() {
			mx.changed[i].Store(true)
			return (*mx.notify.Load())()
		})
		after := sub.Start()
		if resume != nil {
			after = sub.Resume(resume[i])
		}
		mx.subs = append(mx.subs, sub)
		encodings[i] = memberEncoding{f: f, mx: mx, i: i}
		mx.states = append(mx.states, streamState{f: &encodings[i], after: after})
	}
	return mx, nil
}

// followAll writes what each context has after its cursor, then waits for
// any of them to change, until one of the protocol's ends.
func (h *Handler) followAll(r *http.Request, mx *multiplexed, out streamWriter, m *transportMetrics, life lifetime) error {
	ctx, cancel := life.bound(r.Context())
	defer cancel()
	var tick <-chan time.Time
	if h.Heartbeat > 0 {
		heartbeat := time.NewTicker(time.Duration(h.Heartbeat))
		defer heartbeat.Stop()
		tick = heartbeat.C
	}
	for {
		wrote, end, err := h.writeReady(mx, &out, m)
		if end || err != nil {
			return nil
		}
		if wrote {
			continue // a context may have more
		}
		var why error
		select {
		case <-mx.wake:
			continue
		case <-tick:
			why = errTick
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return nil // the client left
			}
			why = life.why
		}
		st := mx.states[0].step(Delivery{}, false, why)
		err = out.write(st.notice, st.frame)
		h.countStream(m, st, err == nil)
		if st.end || err != nil {
			return nil
		}
	}
}

// writeReady writes one step of each context that changed and has
// something ready, and reports whether it wrote, and whether the stream
// ends. A context it wrote for stays marked: it may have more.
func (h *Handler) writeReady(mx *multiplexed, out frameWriter, m *transportMetrics) (wrote, end bool, err error) {
	for i, sub := range mx.subs {
		if !mx.changed[i].Swap(false) {
			continue
		}
		d, ready, perr := sub.poll(mx.states[i].after)
		if perr == nil && !ready {
			continue
		}
		mx.changed[i].Store(true)
		st := mx.states[i].step(d, ready, perr)
		err = out.write(st.notice, st.frame)
		h.countStream(m, st, err == nil)
		if err != nil {
			if writeTimedOut(err) {
				countDropped(h.Hub, droppedSlow)
				h.limitLog.Warn("dropped a stream whose reader stopped reading",
					zap.String("hub", h.Hub), zap.String("context", mx.keys[i]), zap.Duration("write_timeout", time.Duration(h.WriteTimeout)))
			}
			return wrote, true, err
		}
		if st.end {
			return true, true, nil
		}
		wrote = true
	}
	return wrote, false, nil
}

// memberEncoding is one context's part of a multiplexed stream: its events
// and notices say which context they are of, and the cursors they carry
// (SSE's id, NDJSON's control lines) name every context.
type memberEncoding struct {
	f  wireFormat
	mx *multiplexed
	i  int
}

func (e memberEncoding) key() string { return e.mx.keys[e.i] }

func (e memberEncoding) missed(b []byte, missed int64, resume *Cursor) []byte {
	count := missedText(missed)
	if e.f == formatSSE {
		b = appendSSEField(b, "event", "comet-missed")
		if resume != nil {
			b = appendSSEField(b, "id", e.mx.composite(e.i, *resume))
		}
		return append(appendSSEData(b, jsonLine(multiplexNotice{Context: e.key(), Missed: count})), '\n')
	}
	line := ndjsonControl{Control: "missed", Context: e.key(), Missed: count}
	if resume != nil {
		line.Cursor = resume.String()
	}
	return appendJSONLine(b, line)
}

func (e memberEncoding) reconnect(b []byte, reason string, cur Cursor) []byte {
	if e.f == formatSSE {
		b = appendSSEField(b, "id", e.mx.composite(e.i, cur))
		return e.f.reconnect(b, reason, cur)
	}
	return appendJSONLine(b, ndjsonControl{Control: "reconnect", Reason: reason, Cursor: e.mx.composite(e.i, cur)})
}

func (e memberEncoding) deleted(b []byte) []byte {
	if e.f == formatSSE {
		b = appendSSEField(b, "event", "comet-deleted")
		return append(appendSSEData(b, jsonLine(multiplexNotice{Context: e.key()})), '\n')
	}
	return appendJSONLine(b, ndjsonControl{Control: "deleted", Context: e.key()})
}

func (e memberEncoding) heartbeat() []byte { return e.f.heartbeat() }

// delivery writes the event as its NDJSON line with its context (made
// once per event and shared); over SSE that line is the data, under an id
// that is the whole stream's cursor, made for this stream.
func (e memberEncoding) delivery(d Delivery) (notice, frame []byte) {
	notice = missedNotice(e, d)
	if d.Event == nil {
		return notice, nil
	}
	line := d.Event.derived(memoMultiplexed, func() any { return multiplexedLine(d.Event, e.key(), d.Cursor) }).([]byte)
	if e.f == formatNDJSON {
		return notice, line
	}
	frame = appendSSEField(nil, "id", e.mx.composite(e.i, d.Cursor))
	if d.Event.Type != "" {
		frame = appendSSEField(frame, "event", d.Event.Type)
	}
	frame = append(frame, "data: "...)
	frame = append(frame, line...) // ends with the line's newline
	return notice, append(frame, '\n')
}

// multiplexedLine is an event's NDJSON line with its context.
func multiplexedLine(ev *Event, key string, cur Cursor) []byte {
	line := ndjsonEventOf(ev, cur)
	line.Context = key
	return appendJSONLine(nil, line)
}

// multiplexNotice is the data of an SSE notice of a multiplexed stream:
// which context it is about.
type multiplexNotice struct {
	Context string `json:"context"`
	Missed  string `json:"missed,omitempty"`
}

// jsonLine is v as JSON, without the newline.
func jsonLine(v any) []byte {
	b := appendJSONLine(nil, v)
	return b[:len(b)-1]
}

// openMultiplexed starts a multiplexed stream with its cursor. An NDJSON
// line also names the contexts in the cursor's order, so that a client
// can keep the cursor up to date from each event's own.
func (f wireFormat) openMultiplexed(b []byte, composite string, keys []string) []byte {
	if f == formatSSE {
		b = appendSSEField(b, "retry", strconv.FormatInt(sseRetry.Milliseconds(), 10))
		return append(appendSSEField(b, "id", composite), '\n')
	}
	return appendJSONLine(b, ndjsonControl{Control: "open", Cursor: composite, Contexts: keys})
}
