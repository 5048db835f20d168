package comet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddy-comet/comet/internal/takeover"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults of Handler.
const (
	DefaultContext        = "{http.request.uri.path}"
	DefaultExpiration     = 30 * time.Second
	DefaultMaxMessageSize = 64 << 10
	DefaultHeartbeat      = 15 * time.Second
	DefaultWriteTimeout   = 10 * time.Second
)

// Handler serves comet contexts over HTTP. A GET subscribes: it is
// suspended until the next event (long polling) or kept open for every
// event (SSE or NDJSON, by Accept); a POST publishes its body as an event;
// DELETE ends the context; HEAD answers at once with its current position.
type Handler struct {
	// The hub whose contexts this route serves. Default: "default".
	Hub string `json:"hub,omitempty"`

	// The context key, a template with placeholders evaluated per request.
	// Requests with the same key share events. Default:
	// "{http.request.uri.path}".
	Context string `json:"context,omitempty"`

	// How long a GET stays suspended without an event before it is answered
	// with 204 No Content (the seed's expiration delay). Negative: never.
	// Default: 30s.
	Expiration caddy.Duration `json:"expiration,omitempty"`

	// Whether POST (publish) and DELETE (end the context) are allowed on
	// this route; without them, publishing is left to the admin API or Go.
	// Default: true.
	Publish *bool `json:"publish,omitempty"`

	// The largest POST body accepted, in bytes; larger ones get 413.
	// Default: 65536.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// The largest batch POST body (Content-Type
	// application/vnd.comet.batch+ndjson, one event per line), in bytes;
	// larger ones get 413. Each event's data is bound by MaxMessageSize.
	// Default: 1048576.
	MaxBatchSize int64 `json:"max_batch_size,omitempty"`

	// The most events one batch may carry; more get 413. Default: 1000.
	MaxBatchEvents int `json:"max_batch_events,omitempty"`

	// How long a stream may stay idle before it gets a keep-alive (an SSE
	// comment, an empty NDJSON line, a WebSocket ping), so that proxies and
	// browsers keep the connection; a WebSocket client that answers no ping
	// before the next is closed. Negative: never. Default: 15s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	// The ways of subscribing the route accepts: "longpoll", "sse" (GET
	// with Accept: text/event-stream), "stream" (GET with Accept:
	// application/x-ndjson) and "websocket" (a GET that asks to upgrade,
	// or an HTTP/2 extended CONNECT). Others get 406. Default: all four.
	Transports []string `json:"transports,omitempty"`

	// How long one write to a stream may block before the stream is
	// abandoned, so that a reader that stops reading frees its place.
	// Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// Whether subscribers over HTTP/1.x are taken over from the server
	// where nothing else needs them: streams once their headers are out,
	// and long polls that must wait where nothing in the chain sees the
	// answer, plaintext or TLS. It cuts what each one holds by two thirds
	// or more, and lets publishers write to them directly. The access log then logs such a stream when it is
	// taken over rather than when it ends. Default: true.
	Detach *bool `json:"detach,omitempty"`

	// Several contexts in one stream: a GET that repeats a query parameter
	// follows the context each value names (see MultiplexConfig). Default:
	// off.
	Multiplex *MultiplexConfig `json:"multiplex,omitempty"`

	// Token authorization: who may subscribe to and publish on which
	// contexts (see AuthConfig). Default: none; anyone who reaches the
	// route may.
	Auth *AuthConfig `json:"auth,omitempty"`

	hub   *Hub
	allow string
	// routePublisher names the route's publishers where the route has no
	// tokens, to scope their idempotency keys (see publisherOf).
	routePublisher string
	// multiplexTemplate is Context with the multiplex parameter's
	// placeholder replaceable per value.
	multiplexTemplate string
	transports        transport
	metrics           map[transport]*transportMetrics
	logger            *zap.Logger
	// limitLog logs refusals at warn, a few a second at most, so that a
	// hub at its limit does not write a line per refused request.
	limitLog *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.comet",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults, finds the hub and makes sure process exit
// answers the hub's subscribers.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.routePublisher = routePublisher(h)
	h.limitLog = h.logger.WithOptions(zap.WrapCore(func(core zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(core, time.Second, 5, 0)
	}))
	if h.Hub == "" {
		h.Hub = DefaultHubName
	}
	if h.Context == "" {
		h.Context = DefaultContext
	}
	if h.Expiration == 0 {
		h.Expiration = caddy.Duration(DefaultExpiration)
	}
	if h.MaxMessageSize == 0 {
		h.MaxMessageSize = DefaultMaxMessageSize
	}
	if h.MaxBatchSize == 0 {
		h.MaxBatchSize = DefaultMaxBatchSize
	}
	if h.MaxBatchEvents == 0 {
		h.MaxBatchEvents = DefaultMaxBatchEvents
	}
	if h.Heartbeat == 0 {
		h.Heartbeat = caddy.Duration(DefaultHeartbeat)
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = caddy.Duration(DefaultWriteTimeout)
	}
	if h.Auth != nil {
		if err := h.Auth.provision(); err != nil {
			return err
		}
	}
	if h.Multiplex != nil {
		var err error
		if h.multiplexTemplate, err = h.Multiplex.provision(h.Context); err != nil {
			return err
		}
	}
	var err error
	if h.transports, err = parseTransports(h.Transports); err != nil {
		return err
	}
	h.allow = "GET, HEAD"
	if h.publishes() {
		h.allow = "GET, HEAD, POST, DELETE"
	}
	h.metrics = make(map[transport]*transportMetrics)
	for _, tn := range transportNames {
		h.metrics[tn.t] = newTransportMetrics(h.Hub, tn.t)
	}

	appIface, err := ctx.App("comet")
	if err != nil {
		return fmt.Errorf("loading comet app: %v", err)
	}
	h.hub, err = appIface.(*App).hub(h.Hub)
	if err != nil {
		return err
	}

	// On exit, the http app waits for in-flight requests before any module
	// is cleaned up, and with the default eternal grace period it would
	// wait for parked requests forever. Closing the hub when the server
	// starts shutting down answers them at once. A reload shuts the old
	// server down too, but its parked requests must stay parked.
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		hub := h.hub
		srv.RegisterOnShutdown(func() {
			if caddy.Exiting() {
				hub.Close()
			}
		})
		if h.detaches() {
			srv.RegisterConnContext(rememberSocket)
			if err := takeover.HangUpsWatched(); err != nil {
				h.logger.Warn("subscribers will stay on the ordinary path", zap.Error(err))
			}
		}
	}
	return nil
}

func (h *Handler) publishes() bool { return h.Publish == nil || *h.Publish }

func (h *Handler) detaches() bool { return h.Detach == nil || *h.Detach }

// Validate rejects impossible values.
func (h *Handler) Validate() error {
	if h.MaxMessageSize < 0 {
		return errors.New("max_message_size must not be negative")
	}
	if h.MaxBatchSize < 0 || h.MaxBatchEvents < 0 {
		return errors.New("max_batch_size and max_batch_events must not be negative")
	}
	if h.WriteTimeout < 0 {
		return errors.New("write_timeout must not be negative")
	}
	return nil
}

// ServeHTTP serves one request on a comet context. The handler is terminal:
// it never calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	keys, err := h.multiplexedKeys(r, repl)
	switch {
	case err != nil:
		return caddyhttp.Error(http.StatusBadRequest, err)
	case keys != nil && r.Method != http.MethodGet && r.Method != http.MethodHead:
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("%s names one context; only GET and HEAD may name several", r.Method))
	}
	key := repl.ReplaceKnown(h.Context, "")
	if keys != nil {
		key = keys[0] // the template would join the values
	}
	if key == "" {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("context template %q gave an empty key", h.Context))
	}
	vars := newRequestVars(repl)
	vars.context = key

	// An HTTP/2 WebSocket (RFC 8441) is a CONNECT that subscribes.
	method := r.Method
	if isWebSocketConnect(r) {
		method = http.MethodGet
	}
	var tok *jwtauth.Token // the request's token, where the route requires one
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete:
		write := r.Method == http.MethodPost || r.Method == http.MethodDelete
		if !write || h.publishes() {
			var refused bool
			var err error
			if tok, refused, err = h.authorize(w, r, key, write); refused {
				return err
			}
			if tok != nil {
				vars.subscriber = tok.Subject
			}
		}
	}

	switch method {
	case http.MethodGet:
		w.Header().Add("Vary", "Accept")
		sn, err := h.subscription(w, r, key, keys, tok)
		if sn == nil {
			return err
		}
		return h.serveSubscription(w, r, vars, sn)
	case http.MethodHead:
		if keys != nil {
			return h.serveMultiplexedPosition(w, r, keys)
		}
		return h.servePosition(w, vars, key)
	case http.MethodPost:
		if h.publishes() {
			return h.servePublish(w, r, vars, key, tok)
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

// lifetime is when a subscription ends on its own, and why: at the
// route's expiration (errExpired) or when the token that allowed it
// expires (errUnauthorized), whichever comes first. A zero end is never.
type lifetime struct {
	end time.Time
	why error
}

// lifetime is the lifetime of a subscription that starts at now, allowed
// by tok (nil: no token was required).
func (h *Handler) lifetime(now time.Time, tok *jwtauth.Token) lifetime {
	life := lifetime{why: errExpired}
	if h.Expiration > 0 {
		life.end = now.Add(time.Duration(h.Expiration))
	}
	if tok != nil && !tok.Expires.IsZero() && (life.end.IsZero() || tok.Expires.Before(life.end)) {
		life = lifetime{end: tok.Expires, why: errUnauthorized}
	}
	return life
}

// bound bounds a wait by the lifetime's end, if it has one.
func (l lifetime) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if l.end.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, l.end)
}

// servePosition answers HEAD at once with the context's current cursor, so
// a page can show the current state before its first long poll returns. It
// does not create the context: HEAD needs no permission, and must not be a
// way to fill max_contexts.
func (h *Handler) servePosition(w http.ResponseWriter, vars *requestVars, key string) error {
	info, err := h.hub.Position(key)
	if err != nil {
		return h.refuse(w, key, err)
	}
	setCursorHeaders(w.Header(), info.Cursor)
	vars.setCursor(info.Cursor)
	vars.setSubscribers(info.Subscribers)
	w.WriteHeader(http.StatusNoContent)
	return nil
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
	text, etag := cursorSent(r)
	switch {
	case text == "":
		return Cursor{}, false, nil
	case etag:
		cur, err = parseETag(text)
	default:
		cur, err = ParseCursor(text)
	}
	return cur, true, err
}

// cursorSent returns the cursor the client sent back, as sent, from where
// requestCursor says; etag says it is If-None-Match's value.
func cursorSent(r *http.Request) (text string, etag bool) {
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		return v, false
	}
	if r.URL.RawQuery != "" {
		if v := r.URL.Query().Get("last_event_id"); v != "" {
			return v, false
		}
	}
	return r.Header.Get("If-None-Match"), true
}

// parseETag extracts a cursor from an If-None-Match value. Clients send back
// the ETag they were given, so only the first entity tag is looked at; weak
// tags are accepted because intermediaries may weaken them.
func parseETag(v string) (Cursor, error) {
	v = strings.TrimSpace(v)
	if first, _, found := strings.Cut(v, ","); found {
		v = strings.TrimSpace(first)
	}
	v = strings.TrimPrefix(v, "W/")
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return Cursor{}, hub.ErrBadCursor
	}
	return ParseCursor(v[1 : len(v)-1])
}

var errMessageTooLarge = errors.New("message too large")

// readMessage reads a publish request's body, refusing more than limit
// bytes before reading them when the client announces its length.
func readMessage(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", errMessageTooLarge, r.ContentLength, limit)
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	var data []byte
	var err error
	if r.ContentLength > 0 {
		// The message is kept in history as read: one slice of its size,
		// not ReadAll's doubling one.
		data = make([]byte, r.ContentLength)
		if _, err = io.ReadFull(body, data); errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("body shorter than its Content-Length: %w", err)
		}
	} else {
		data, err = io.ReadAll(body)
	}
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
	case errors.Is(err, ErrKeyTooLong), errors.Is(err, ErrBadKey), errors.Is(err, ErrBadEventType),
		errors.Is(err, ErrReservedEventType), errors.Is(err, ErrBadContentType), errors.Is(err, ErrBadIdempotencyKey):
		return http.StatusBadRequest
	case errors.Is(err, ErrIdempotencyKeyReused):
		return http.StatusUnprocessableEntity
	case errors.Is(err, ErrShareExceeded):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrIdempotencyPending):
		return http.StatusConflict
	case errors.Is(err, ErrTooManyContexts), errors.Is(err, ErrTooManySubscribers), errors.Is(err, ErrHubClosed),
		errors.Is(err, ErrBrokerUnavailable), errors.Is(err, hub.ErrFailedBefore):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// refuse answers a request the hub turned down. A 503 (a limit reached, or
// shutdown) or a 429 (a client past its share) is an operating condition
// rather than a handler failure: it is answered here, with Retry-After and
// a sampled warning, instead of through Caddy's error handling, which
// would log every one of them at error level.
func (h *Handler) refuse(w http.ResponseWriter, key string, err error) error {
	err = fmt.Errorf("context %.64q: %w", key, err)
	status := hubStatus(err)
	if status != http.StatusServiceUnavailable && status != http.StatusTooManyRequests {
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
