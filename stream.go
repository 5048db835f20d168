package comet

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/caddy-comet/comet/internal/hub"
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
	memoPollAnswer  = hub.MemoSlot(wireFormatCount)
	memoMultiplexed = memoPollAnswer + 1
)

// The memo has room for them: a negative length would not compile.
var _ [hub.MemoSlots - 1 - memoMultiplexed]struct{}

// eventFrame returns the event's encoding in format f, at cursor cur (the same
// for every subscriber), made once per event and shared.
func eventFrame(e *Event, f wireFormat, cur Cursor) []byte {
	return e.Derived(hub.MemoSlot(f), func() any { return f.encode(nil, e, cur) }).([]byte)
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

// serveStream keeps a GET open and writes every event of each of its
// contexts after the client's cursor for it: first what history holds,
// then each new event as it is published. Its connection is taken over
// (detach.go) once the headers and the opening are out, if how took it.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, vars *requestVars, sn *subscription, how holding) error {
	f := formatNDJSON
	if sn.transport == transportSSE {
		f = formatSSE
	}
	hdr := w.Header()
	hdr.Set("Content-Type", f.contentType())
	hdr.Set("Cache-Control", "no-store")
	if r.ProtoMajor == 1 {
		// nginx in front would hold events back. It forwards to its
		// upstreams over HTTP/1.x only, so a request over HTTP/2 or 3
		// never came through it, and there the header would cost each
		// connection a ninth entry in Go's HPACK table, which doubles
		// the table's maps: 1 KiB per HTTP/2 stream, measured.
		hdr.Set("X-Accel-Buffering", "no")
	}
	hdr.Set("Incremental", "?1") // RFC 10036: forward as it comes; Caddy's encode honours it
	hdr.Set(HeaderCursor, sn.composite(-1, Cursor{}))
	sn.setPlaceholders(vars)
	if how.sock != nil {
		// The body will end when the connection closes (see detach.go).
		hdr.Set("Transfer-Encoding", "identity")
	}
	w.WriteHeader(http.StatusOK)

	out := streamWriter{w: w, rc: http.NewResponseController(w), timeout: time.Duration(h.WriteTimeout)}
	if out.write(sn.open(f)) != nil {
		out.clearDeadline()
		sn.close()
		return nil
	}
	if how.sock != nil && h.detach(w, r, how, sn, nil, hijack) == takenOver {
		return nil // the detached stream closes the subscription when it ends
	}
	defer sn.close()
	defer out.clearDeadline()
	h.holdStream(r, sn, &out)
	return nil
}

// holdStream writes what each context has after its cursor, then waits
// for any of them to change, until one of the protocol's ends.
func (h *Handler) holdStream(r *http.Request, sn *subscription, out *streamWriter) {
	sn.holdHere(false)
	defer blockingInPlace(r)()
	ctx, cancel := sn.life.bound(r.Context())
	defer cancel()
	var heartbeat *time.Timer
	var tick <-chan time.Time
	if h.Heartbeat > 0 {
		heartbeat = time.NewTimer(time.Duration(h.Heartbeat))
		defer heartbeat.Stop()
		tick = heartbeat.C
	}
	for {
		wrote, end, err := h.writeReady(sn, out)
		if end || err != nil {
			return
		}
		if wrote {
			if heartbeat != nil {
				heartbeat.Reset(time.Duration(h.Heartbeat))
			}
			continue // a context may have more
		}
		why := sn.wait(ctx, tick)
		switch {
		case why == nil:
			continue
		case why == hub.ErrTick:
		case r.Context().Err() != nil:
			return // the client left
		default:
			why = sn.life.why
		}
		st := sn.states[0].step(Delivery{}, false, why)
		err = out.write(st.notice, st.frame)
		h.countStream(sn.m, st, err == nil)
		if err != nil {
			h.droppedIfSlow(err, sn.transport, sn.keys[0])
		}
		if st.end || err != nil {
			return
		}
		if heartbeat != nil {
			heartbeat.Reset(time.Duration(h.Heartbeat))
		}
	}
}

// writeReady writes one step of each context that changed and has
// something ready, and reports whether it wrote, and whether the stream
// ends. A context it wrote for stays marked: it may have more.
func (h *Handler) writeReady(sn *subscription, out frameWriter) (wrote, end bool, err error) {
	for i, sub := range sn.subs {
		if !sn.takeChange(i) {
			continue
		}
		d, ready, perr := sub.Poll(sn.states[i].after)
		if perr == nil && !ready {
			continue
		}
		sn.markChanged(i)
		st := sn.states[i].step(d, ready, perr)
		err = out.write(st.notice, st.frame)
		h.countStream(sn.m, st, err == nil)
		if err != nil {
			h.droppedIfSlow(err, sn.transport, sn.keys[i])
			return wrote, true, err
		}
		if st.end {
			return true, true, nil
		}
		wrote = true
	}
	return wrote, false, nil
}

// droppedIfSlow counts and logs a subscriber dropped because a write to
// it timed out: its reader stopped reading. Any other failed write is a
// client that left.
func (h *Handler) droppedIfSlow(err error, t transport, key string) {
	if !writeTimedOut(err) {
		return
	}
	countDropped(h.Hub, droppedSlow)
	h.limitLog.Warn("dropped a subscriber whose reader stopped reading",
		zap.String("hub", h.Hub), zap.String("transport", t.String()), zap.String("context", key),
		zap.Duration("write_timeout", time.Duration(h.WriteTimeout)))
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
		frame = eventFrame(d.Event, f, d.Cursor)
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
