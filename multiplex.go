package comet

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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

// memberEncoding is one context's part of a multiplexed stream: its events
// and notices say which context they are of, and the cursors they carry
// (SSE's id, NDJSON's control lines) name every context.
type memberEncoding struct {
	f  wireFormat
	sn *subscription
	i  int
}

func (e memberEncoding) key() string { return e.sn.keys[e.i] }

func (e memberEncoding) missed(b []byte, missed int64, resume *Cursor) []byte {
	count := missedText(missed)
	if e.f == formatSSE {
		b = appendSSEField(b, "event", "comet-missed")
		if resume != nil {
			b = appendSSEField(b, "id", e.sn.composite(e.i, *resume))
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
		b = appendSSEField(b, "id", e.sn.composite(e.i, cur))
		return e.f.reconnect(b, reason, cur)
	}
	return appendJSONLine(b, ndjsonControl{Control: "reconnect", Reason: reason, Cursor: e.sn.composite(e.i, cur)})
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
	line := d.Event.Derived(memoMultiplexed, func() any { return multiplexedLine(d.Event, e.key(), d.Cursor) }).([]byte)
	if e.f == formatNDJSON {
		return notice, line
	}
	frame = appendSSEField(nil, "id", e.sn.composite(e.i, d.Cursor))
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
