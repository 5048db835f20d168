package comet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Headers of the comet protocol.
const (
	// HeaderCursor carries the cursor a client sends back to resume.
	HeaderCursor = "Comet-Cursor"
	// HeaderEventID carries the plain event id.
	HeaderEventID = "Comet-Event-Id"
	// HeaderEventType carries the event type a publisher chose.
	HeaderEventType = "Comet-Event-Type"
	// HeaderMissed says how many events a client will never see, or
	// "unknown" when its cursor came from an earlier epoch.
	HeaderMissed = "Comet-Missed"
)

// retryAfterSeconds is what 503 answers ask clients to wait: long enough
// for a burst to pass, short enough that a page does not look dead.
const retryAfterSeconds = "5"

// ServeHTTP serves one request on a comet context. The handler is terminal:
// it never calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	key := repl.ReplaceKnown(h.Context, "")
	if key == "" {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("context template %q gave an empty key", h.Context))
	}
	repl.Set("comet.context", key)

	switch r.Method {
	case http.MethodGet:
		w.Header().Add("Vary", "Accept")
		t := requestedTransport(r.Header.Get("Accept"))
		if h.transports&t == 0 {
			return caddyhttp.Error(http.StatusNotAcceptable, fmt.Errorf(
				"this route does not serve %s; it serves: %s (long poll: any Accept; sse: Accept: text/event-stream; stream: Accept: application/x-ndjson)",
				t, h.transports))
		}
		switch t {
		case transportSSE:
			return h.serveStream(w, r, repl, key, formatSSE)
		case transportStream:
			return h.serveStream(w, r, repl, key, formatNDJSON)
		}
		return h.serveSubscribe(w, r, repl, key)
	case http.MethodHead:
		return h.servePosition(w, repl, key)
	case http.MethodPost:
		if h.publishes() {
			return h.servePublish(w, r, repl, key)
		}
	case http.MethodDelete:
		if h.publishes() {
			return h.serveDelete(w, key)
		}
	}
	w.Header().Set("Allow", h.allow)
	return caddyhttp.Error(http.StatusMethodNotAllowed,
		fmt.Errorf("method %s is not allowed on a comet context; allowed: %s", r.Method, h.allow))
}

// serveSubscribe suspends a GET until there is an event after the client's
// cursor, the expiration delay passes, the client leaves or the hub closes.
func (h *Handler) serveSubscribe(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string) error {
	m := h.metrics[transportLongPoll]
	sub, after, err := h.subscribe(w, r, key, m)
	if sub == nil {
		return err
	}
	if sock, inj := h.detachablePoll(w, r); sock != nil {
		// Only a poll that must wait is worth taking over.
		if _, ready, err := sub.poll(after); err == nil && !ready && h.detachPoll(w, r, sock, inj, sub, after) {
			return nil
		}
	}
	defer h.unsubscribe(sub, m)
	wait, cancel := h.expiring(r.Context())
	defer cancel()
	d, err := sub.Next(wait, after)
	switch {
	case err == nil, errors.Is(err, ErrHubClosed), errors.Is(err, ErrContextDeleted):
	case r.Context().Err() != nil:
		return abandon(w)
	default:
		err = errExpired
	}
	a, _ := answerPoll(sub, d, err == nil, err)
	m.countPoll(a)
	setPollPlaceholders(repl, a)
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

// subscribe attaches a subscriber for a GET and returns the cursor to serve
// it from: the one the client sent back, or else the context's position
// now, so that it gets the next event (the seed's behaviour).
// When the subscriber is nil, the request was refused: the error, if any,
// is for Caddy to answer. The caller must detach a subscriber it gets.
func (h *Handler) subscribe(w http.ResponseWriter, r *http.Request, key string, m *transportMetrics) (*Subscriber, Cursor, error) {
	after, hasCursor, err := requestCursor(r)
	if err != nil {
		return nil, Cursor{}, caddyhttp.Error(http.StatusBadRequest, err)
	}
	sub, err := h.hub.Subscribe(key)
	if err != nil {
		if errors.Is(err, ErrTooManySubscribers) || errors.Is(err, ErrTooManyContexts) {
			countDropped(h.Hub, droppedLimit)
		}
		return nil, Cursor{}, h.refuse(w, key, err)
	}
	m.subscribers.Inc()
	if !hasCursor {
		return sub, sub.Start(), nil
	}
	return sub, sub.Resume(after), nil
}

func (h *Handler) unsubscribe(sub *Subscriber, m *transportMetrics) {
	sub.Close()
	m.subscribers.Dec()
}

// expiring bounds a subscription by the route's expiration, if it has one.
func (h *Handler) expiring(ctx context.Context) (context.Context, context.CancelFunc) {
	if h.Expiration <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, time.Duration(h.Expiration))
}

// servePosition answers HEAD at once with the context's current cursor, so
// a page can show the current state before its first long poll returns. It
// does not create the context: HEAD needs no permission, and must not be a
// way to fill max_contexts.
func (h *Handler) servePosition(w http.ResponseWriter, repl *caddy.Replacer, key string) error {
	info, err := h.hub.Position(key)
	if err != nil {
		return h.refuse(w, key, err)
	}
	setCursorHeaders(w.Header(), info.Cursor)
	setCursorPlaceholders(repl, info.Cursor)
	repl.Set("comet.subscribers", info.Subscribers)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// servePublish publishes the request body as an event.
func (h *Handler) servePublish(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string) error {
	data, err := readMessage(w, r, h.MaxMessageSize)
	if err != nil {
		countPublishError(h.Hub, err)
		return caddyhttp.Error(messageStatus(err), err)
	}
	rcpt, err := h.hub.Publish(key, eventFromRequest(r, data))
	if err != nil {
		countPublishError(h.Hub, err)
		return h.refuse(w, key, err)
	}
	return writeReceipt(w, repl, rcpt)
}

// serveDelete ends the context: its long polls get 410 Gone and its streams
// a last comet-deleted event.
func (h *Handler) serveDelete(w http.ResponseWriter, key string) error {
	info, ok, err := h.hub.Delete(key)
	if err != nil {
		return h.refuse(w, key, err)
	}
	if !ok {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("no context %.64q", key))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(contextJSONFrom(info))
}

// requestCursor returns the cursor the client sent back, if any: the
// Last-Event-ID header, the last_event_id query parameter (for clients that
// cannot set headers) or the ETag in If-None-Match, in that order.
func requestCursor(r *http.Request) (cur Cursor, ok bool, err error) {
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		cur, err = ParseCursor(v)
		return cur, true, err
	}
	if r.URL.RawQuery != "" {
		if v := r.URL.Query().Get("last_event_id"); v != "" {
			cur, err = ParseCursor(v)
			return cur, true, err
		}
	}
	if v := r.Header.Get("If-None-Match"); v != "" {
		cur, err = parseETag(v)
		return cur, true, err
	}
	return Cursor{}, false, nil
}

var errMessageTooLarge = errors.New("message too large")

// readMessage reads a publish request's body, refusing more than limit
// bytes before reading them when the client announces its length.
func readMessage(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", errMessageTooLarge, r.ContentLength, limit)
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return nil, fmt.Errorf("%w: the limit is %d bytes", errMessageTooLarge, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("reading message: %w", err)
	}
	return data, nil
}

func messageStatus(err error) int {
	if errors.Is(err, errMessageTooLarge) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}

func eventFromRequest(r *http.Request, data []byte) Event {
	return Event{
		Type:        r.Header.Get(HeaderEventType),
		ContentType: r.Header.Get("Content-Type"),
		Data:        data,
	}
}

// hubStatus maps a hub error to an HTTP status.
func hubStatus(err error) int {
	switch {
	case errors.Is(err, ErrKeyTooLong), errors.Is(err, ErrBadEventType):
		return http.StatusBadRequest
	case errors.Is(err, ErrTooManyContexts), errors.Is(err, ErrTooManySubscribers), errors.Is(err, ErrHubClosed),
		errors.Is(err, ErrBrokerUnavailable):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// refuse answers a request the hub turned down. A 503 (a limit reached, or
// shutdown) is an operating condition rather than a handler failure: it is
// answered here, with a sampled warning, instead of through Caddy's error
// handling, which would log every one of them at error level.
func (h *Handler) refuse(w http.ResponseWriter, key string, err error) error {
	err = fmt.Errorf("context %.64q: %w", key, err)
	status := hubStatus(err)
	if status != http.StatusServiceUnavailable {
		return caddyhttp.Error(status, err)
	}
	h.limitLog.Warn("request refused", zap.String("hub", h.Hub), zap.String("context", key), zap.Error(err))
	hdr := w.Header()
	hdr.Set("Retry-After", retryAfterSeconds)
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, werr := fmt.Fprintf(w, "%d %s: %v\n", status, http.StatusText(status), err)
	return werr
}

// setCursorHeaders writes the cursor headers every answer but 410 carries.
func setCursorHeaders(hdr http.Header, cur Cursor) {
	text := cur.String()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("ETag", `"`+text+`"`)
	hdr.Set(HeaderCursor, text)
	hdr.Set(HeaderEventID, strconv.FormatUint(cur.ID, 10))
}

// setCursorPlaceholders sets the placeholders of the cursor an answer
// carries, before anything is written, so that a deferred header directive
// can use them.
func setCursorPlaceholders(repl *caddy.Replacer, cur Cursor) {
	repl.Set("comet.cursor", cur.String())
	repl.Set("comet.event.id", cur.ID)
}

// setPollPlaceholders sets the placeholders of a long poll's answer.
func setPollPlaceholders(repl *caddy.Replacer, a pollAnswer) {
	if a.status == http.StatusGone {
		return
	}
	setCursorPlaceholders(repl, a.cursor)
	if a.status != http.StatusServiceUnavailable {
		repl.Set("comet.subscribers", a.subscribers)
	}
	if a.missed != 0 {
		repl.Set("comet.missed", missedText(a.missed))
	}
}

// writePollAnswer writes a long poll's answer; whatever holds the poll's
// connection writes it through this, to net/http or to a recorder.
func writePollAnswer(w http.ResponseWriter, a pollAnswer) error {
	hdr := w.Header()
	if a.status == http.StatusGone {
		hdr.Set("Cache-Control", "no-store")
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusGone)
		_, err := io.WriteString(w, "410 Gone: the context was deleted\n")
		return err
	}
	setCursorHeaders(hdr, a.cursor)
	if a.missed != 0 {
		hdr.Set(HeaderMissed, missedText(a.missed))
	}
	switch a.status {
	case http.StatusServiceUnavailable:
		// The server is exiting: the client comes back with its cursor.
		hdr.Set("Retry-After", retryAfterSeconds)
		w.WriteHeader(a.status)
		return nil
	case http.StatusNoContent:
		w.WriteHeader(a.status)
		return nil
	}
	ev := a.event
	if ev.Type != "" {
		hdr.Set(HeaderEventType, ev.Type)
	}
	switch {
	case ev.ContentType != "":
		hdr.Set("Content-Type", ev.ContentType)
	case len(ev.Data) > 0:
		hdr.Set("Content-Type", "application/octet-stream")
	}
	// Anyone allowed to publish chooses the payload and its type; keep a
	// browser that opens the URL directly from running it on this origin.
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Content-Security-Policy", "sandbox")
	hdr.Set("Content-Length", strconv.Itoa(len(ev.Data)))
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(ev.Data)
	return err
}

// missedText is how the protocol says how many events were missed: a count,
// or "unknown" for a cursor from an earlier epoch.
func missedText(missed int64) string {
	if missed == MissedUnknown {
		return "unknown"
	}
	return strconv.FormatInt(missed, 10)
}

// contextJSON describes a context in admin and DELETE answers.
type contextJSON struct {
	Context     string `json:"context"`
	Cursor      string `json:"cursor"`
	LastEventID uint64 `json:"last_event_id"`
	Subscribers int    `json:"subscribers"`
	History     int    `json:"history"`
}

func contextJSONFrom(info ContextInfo) contextJSON {
	return contextJSON{
		Context:     info.Key,
		Cursor:      info.Cursor.String(),
		LastEventID: info.Cursor.ID,
		Subscribers: info.Subscribers,
		History:     info.History,
	}
}

// receipt is the JSON body of a publish answer.
type receipt struct {
	ID     uint64 `json:"id"`
	Cursor string `json:"cursor"`
	Woken  int    `json:"woken"`
}

// writeReceipt answers a publish with the new event's id and the number of
// subscribers it woke.
func writeReceipt(w http.ResponseWriter, repl *caddy.Replacer, rcpt Receipt) error {
	hdr := w.Header()
	setCursorHeaders(hdr, rcpt.Cursor)
	if repl != nil {
		setCursorPlaceholders(repl, rcpt.Cursor)
		repl.Set("comet.subscribers", rcpt.Woken)
	}
	hdr.Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(receipt{ID: rcpt.Cursor.ID, Cursor: rcpt.Cursor.String(), Woken: rcpt.Woken})
}
