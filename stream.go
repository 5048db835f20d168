package comet

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// wireFormat is how a stream writes events: Server-Sent Events for
// browsers, or one JSON object per line for everything else.
type wireFormat int

const (
	formatSSE wireFormat = iota
	formatNDJSON
	wireFormatCount
)

// sseRetry is the reconnection delay a stream suggests to EventSource.
const sseRetry = 3 * time.Second

// Reasons a stream ends on its own, as sent to the client.
const (
	reasonExpired  = "expired"  // the route's expiration bounds a stream's life
	reasonShutdown = "shutdown" // the server is exiting
	reasonBehind   = "behind"   // the reader fell behind the history
	// The token that allowed the stream expired: come back with a new one.
	reasonUnauthorized = "unauthorized"
)

func (f wireFormat) transport() transport {
	if f == formatSSE {
		return transportSSE
	}
	return transportStream
}

func (f wireFormat) contentType() string {
	if f == formatSSE {
		return "text/event-stream"
	}
	return "application/x-ndjson"
}

// encode appends one event at cursor cur.
func (f wireFormat) encode(b []byte, ev *Event, cur Cursor) []byte {
	if f == formatSSE {
		b = appendSSEField(b, "id", cur.String())
		if ev.Type != "" {
			b = appendSSEField(b, "event", ev.Type)
		}
		return append(appendSSEData(b, ev.Data), '\n')
	}
	return appendJSONLine(b, ndjsonEventOf(ev, cur))
}

// ndjsonEventOf is the event's NDJSON line at cursor cur.
func ndjsonEventOf(ev *Event, cur Cursor) ndjsonEvent {
	line := ndjsonEvent{ID: ev.ID, Cursor: cur.String(), Type: ev.Type, ContentType: ev.ContentType}
	if utf8.Valid(ev.Data) {
		data := string(ev.Data)
		line.Data = &data
	} else {
		line.DataBase64 = ev.Data
	}
	return line
}

// An event's memo (see Event.derived) keeps the event's frame in each wire
// format in the slot numbered as the format, the last long-poll answer
// rendered for it in memoPollAnswer, and its line in multiplexed streams
// in memoMultiplexed.
const (
	memoPollAnswer  = memoSlot(wireFormatCount)
	memoMultiplexed = memoPollAnswer + 1
)

// The memo has room for them: a negative length would not compile.
var _ [memoSlots - 1 - memoMultiplexed]struct{}

// frame returns the event's encoding in format f, at cursor cur (the same
// for every subscriber), made once per event and shared.
func (e *Event) frame(f wireFormat, cur Cursor) []byte {
	return e.derived(memoSlot(f), func() any { return f.encode(nil, e, cur) }).([]byte)
}

// open appends what starts a stream: the cursor it starts from, so that a
// client that reconnects before any event misses nothing, and for SSE the
// reconnection delay.
func (f wireFormat) open(b []byte, cur Cursor) []byte {
	if f == formatSSE {
		b = appendSSEField(b, "retry", strconv.FormatInt(sseRetry.Milliseconds(), 10))
		return append(appendSSEField(b, "id", cur.String()), '\n')
	}
	return appendJSONLine(b, ndjsonControl{Control: "open", Cursor: cur.String()})
}

// missed appends the notice that missed events were lost to the client.
// With resume set, the notice also moves the client's cursor there.
func (f wireFormat) missed(b []byte, missed int64, resume *Cursor) []byte {
	count := missedText(missed)
	if f == formatSSE {
		b = appendSSEField(b, "event", "comet-missed")
		if resume != nil {
			b = appendSSEField(b, "id", resume.String())
		}
		return append(appendSSEField(b, "data", count), '\n')
	}
	line := ndjsonControl{Control: "missed", Missed: count}
	if resume != nil {
		line.Cursor = resume.String()
	}
	return appendJSONLine(b, line)
}

// reconnect appends the last words of a stream that ends on its own.
func (f wireFormat) reconnect(b []byte, reason string, cur Cursor) []byte {
	if f == formatSSE {
		if reason == reasonShutdown {
			// Spread the reconnections of every client of this server.
			retry := sseRetry + rand.N(2*sseRetry)
			b = appendSSEField(b, "retry", strconv.FormatInt(retry.Milliseconds(), 10))
		}
		b = appendSSEField(b, "event", "comet-reconnect")
		return append(appendSSEField(b, "data", reason), '\n')
	}
	return appendJSONLine(b, ndjsonControl{Control: "reconnect", Reason: reason, Cursor: cur.String()})
}

// deleted appends the last words of a stream whose context was deleted.
// It is not a reconnect notice: coming back would create the context anew.
func (f wireFormat) deleted(b []byte) []byte {
	if f == formatSSE {
		b = appendSSEField(b, "event", "comet-deleted")
		return append(appendSSEField(b, "data", ""), '\n')
	}
	return appendJSONLine(b, ndjsonControl{Control: "deleted"})
}

var (
	sseHeartbeat    = []byte(": keep-alive\n\n")
	ndjsonHeartbeat = []byte("\n")
)

// heartbeat is what an idle stream writes to keep proxies from closing it.
func (f wireFormat) heartbeat() []byte {
	if f == formatSSE {
		return sseHeartbeat
	}
	return ndjsonHeartbeat
}

func appendSSEField(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, '\n')
}

// appendSSEData writes the payload as data fields, one per line. SSE ends a
// line at CRLF, LF or CR, so each of them ends a field here and none can
// start another field. The client rebuilds the payload with LF line breaks.
func appendSSEData(b, data []byte) []byte {
	for {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			b = append(b, "data: "...)
			b = append(b, data...)
			return append(b, '\n')
		}
		b = append(b, "data: "...)
		b = append(b, data[:i]...)
		b = append(b, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
}

// ndjsonEvent is one event line of an NDJSON stream.
type ndjsonEvent struct {
	Context     string  `json:"context,omitempty"` // in a multiplexed stream
	ID          uint64  `json:"id"`
	Cursor      string  `json:"cursor"`
	Type        string  `json:"type,omitempty"`
	ContentType string  `json:"content_type,omitempty"`
	Data        *string `json:"data,omitempty"`        // a UTF-8 payload
	DataBase64  []byte  `json:"data_base64,omitempty"` // any other payload
}

// ndjsonControl is a line of an NDJSON stream that is not an event.
type ndjsonControl struct {
	Control string `json:"control"`           // open, missed, reconnect or deleted
	Context string `json:"context,omitempty"` // in a multiplexed stream
	Missed  string `json:"missed,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Cursor  string `json:"cursor,omitempty"`
	// Contexts are those of a multiplexed stream, in its cursor's order,
	// on its open line.
	Contexts []string `json:"contexts,omitempty"`
}

func appendJSONLine(b []byte, v any) []byte {
	line, err := json.Marshal(v)
	if err != nil {
		panic("comet: marshaling a stream line: " + err.Error()) // only strings, numbers and bytes
	}
	return append(append(b, line...), '\n')
}

// serveStream keeps a GET open and writes every event after the client's
// cursor: first what history holds, then each new event as it is published.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string, f wireFormat, tok *jwtauth.Token) error {
	m := h.metrics[f.transport()]
	life := h.lifetime(time.Now(), tok)
	sub, after, err := h.subscribe(w, r, key, tok, m)
	if sub == nil {
		return err
	}
	detached := false
	defer func() {
		if !detached {
			h.unsubscribe(sub, m)
		}
	}()

	hdr := w.Header()
	hdr.Set("Content-Type", f.contentType())
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Accel-Buffering", "no") // a buffering proxy in front would hold events back
	hdr.Set("Incremental", "?1")       // RFC 10036: forward as it comes; Caddy's encode honours it
	hdr.Set(HeaderCursor, after.String())
	repl.Set("comet.cursor", after.String())
	repl.Set("comet.event.id", after.ID)
	repl.Set("comet.subscribers", sub.ContextSubscribers())
	sock, overTLS := h.detachableSocket(w, r)
	if sock != nil {
		// The body will end when the connection closes (see detach.go).
		hdr.Set("Transfer-Encoding", "identity")
	}
	w.WriteHeader(http.StatusOK)

	out := streamWriter{w: w, rc: http.NewResponseController(w), timeout: time.Duration(h.WriteTimeout)}
	if out.write(f.open(nil, after)) != nil {
		out.clearDeadline()
		return nil
	}
	if sock != nil && h.detach(w, r, sock, overTLS, sub, after, f, key, life) {
		detached = true
		return nil
	}
	defer out.clearDeadline()

	ctx, cancel := life.bound(r.Context())
	defer cancel()
	var heartbeat *time.Timer
	var tick <-chan time.Time
	if h.Heartbeat > 0 {
		heartbeat = time.NewTimer(time.Duration(h.Heartbeat))
		defer heartbeat.Stop()
		tick = heartbeat.C
	}

	st := streamState{f: f, after: after}
	for {
		d, err := sub.next(ctx, st.after, tick)
		switch {
		case err == nil, errors.Is(err, ErrHubClosed), errors.Is(err, ErrContextDeleted), errors.Is(err, errTick):
		case r.Context().Err() != nil:
			return nil // the client left
		default:
			err = life.why
		}
		step := st.step(d, err == nil, err)
		err = out.write(step.notice, step.frame)
		h.countStream(m, step, err == nil)
		if step.end {
			return nil
		}
		if err != nil {
			// The reader is gone, or stopped reading and let a write time out.
			if writeTimedOut(err) {
				countDropped(h.Hub, droppedSlow)
				h.limitLog.Warn("dropped a stream whose reader stopped reading",
					zap.String("hub", h.Hub), zap.String("context", key), zap.Duration("write_timeout", out.timeout))
			}
			return nil
		}
		if heartbeat != nil {
			heartbeat.Reset(time.Duration(h.Heartbeat))
		}
	}
}

// resumeBefore is the cursor from which a client that missed events gets
// the oldest event still held, without being told of the same gap again.
func resumeBefore(d Delivery) Cursor {
	if d.Event == nil {
		return d.Cursor
	}
	return Cursor{Epoch: d.Cursor.Epoch, ID: d.Event.ID - 1}
}

// streamWriter writes to a stream, giving each write a deadline so that a
// reader that stops reading cannot hold the request forever.
type streamWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

// frameWriter writes a stream's frames: a streamWriter, or a WebSocket
// held by goroutines (heldSocket).
type frameWriter interface {
	write(parts ...[]byte) error
}

// streamEncoding is what a stream's state writes with: a wire format, for
// a stream of one context, or one context's part of a multiplexed stream
// (see multiplex.go), whose cursors name every context.
type streamEncoding interface {
	missed(b []byte, missed int64, resume *Cursor) []byte
	reconnect(b []byte, reason string, cur Cursor) []byte
	deleted(b []byte) []byte
	heartbeat() []byte
	delivery(d Delivery) (notice, frame []byte)
}

// delivery returns what a stream writes for a delivery: the notice of
// missed events, if any, then the event's frame, which is shared by every
// subscriber and must not be modified.
func (f wireFormat) delivery(d Delivery) (notice, frame []byte) {
	if d.Event != nil {
		frame = d.Event.frame(f, d.Cursor)
	}
	return missedNotice(f, d), frame
}

// missedNotice is the notice a delivery with missed events starts with,
// or nil. It moves the client's cursor only when no event follows to move
// it, so that the client never skips the event.
func missedNotice(e streamEncoding, d Delivery) []byte {
	if d.Missed == 0 {
		return nil
	}
	var resume *Cursor
	if d.Event == nil {
		resume = &d.Cursor
	}
	return e.missed(nil, d.Missed, resume)
}

func (s *streamWriter) write(parts ...[]byte) error {
	if s.timeout > 0 {
		// Not every ResponseWriter supports deadlines; Caddy's do.
		_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	for _, p := range parts {
		if len(p) == 0 {
			continue
		}
		if _, err := s.w.Write(p); err != nil {
			return err
		}
	}
	return s.rc.Flush()
}

// clearDeadline keeps the last write's deadline from applying to the next
// response on a kept-alive connection.
func (s *streamWriter) clearDeadline() {
	if s.timeout > 0 {
		_ = s.rc.SetWriteDeadline(time.Time{})
	}
}
