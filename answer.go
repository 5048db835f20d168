package comet

import (
	"io"
	"net/http"
	"strconv"
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
	// HeaderContext says which context an answer to a long poll of
	// several contexts is about.
	HeaderContext = "Comet-Context"
)

// retryAfterSeconds is what 503 answers ask clients to wait: long enough
// for a burst to pass, short enough that a page does not look dead.
const retryAfterSeconds = "5"

// setCursorHeaders writes the cursor headers every answer but 410 carries.
// The keys are written in their canonical form, as Header.Set would: every
// answer (each long-poll delivery, each publish) carries them, and
// canonicalizing the same four names each time showed in profiles.
func setCursorHeaders(hdr http.Header, cur Cursor) {
	text := cur.String()
	hdr["Cache-Control"] = []string{"no-store"}
	hdr["Etag"] = []string{`"` + text + `"`}
	hdr["Comet-Cursor"] = []string{text}
	hdr["Comet-Event-Id"] = []string{strconv.FormatUint(cur.ID, 10)}
}

// setPollPlaceholders sets the placeholders of a long poll's answer,
// before anything is written, so that a deferred header directive can use
// them.
func setPollPlaceholders(vars *requestVars, a pollAnswer) {
	if a.status == http.StatusGone {
		return
	}
	vars.setCursor(a.cursor)
	if a.status != http.StatusServiceUnavailable {
		vars.setSubscribers(a.subscribers)
	}
	vars.missed = a.missed
}

// writePollAnswer writes a long poll's answer; whatever holds the poll's
// connection writes it through this, to net/http or to a recorder.
func writePollAnswer(w http.ResponseWriter, a pollAnswer) error {
	hdr := w.Header()
	if a.context != "" {
		hdr.Set(HeaderContext, a.context)
	}
	if a.status == http.StatusGone {
		hdr.Set("Cache-Control", "no-store")
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusGone)
		_, err := io.WriteString(w, "410 Gone: the context was deleted\n")
		return err
	}
	setCursorHeaders(hdr, a.cursor)
	if a.composite != "" {
		hdr.Set("ETag", `"`+a.composite+`"`)
		hdr.Set(HeaderCursor, a.composite)
	}
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
func writeReceipt(w http.ResponseWriter, vars *requestVars, rcpt Receipt) error {
	hdr := w.Header()
	setCursorHeaders(hdr, rcpt.Cursor)
	if vars != nil {
		vars.setCursor(rcpt.Cursor)
		vars.setSubscribers(rcpt.Woken)
	}
	hdr.Set("Content-Type", "application/json")
	_, err := w.Write(appendReceipt(make([]byte, 0, 96), rcpt))
	return err
}

// appendReceipt appends the JSON of a receipt, as encoding/json would
// write the receipt type, without its reflection: a cursor is only
// lower-case letters, digits and a colon, which need no escaping.
func appendReceipt(b []byte, rcpt Receipt) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, rcpt.Cursor.ID, 10)
	b = append(b, `,"cursor":"`...)
	b = append(b, rcpt.Cursor.Epoch...)
	b = append(b, ':')
	b = strconv.AppendUint(b, rcpt.Cursor.ID, 10)
	b = append(b, `","woken":`...)
	b = strconv.AppendInt(b, int64(rcpt.Woken), 10)
	return append(b, "}\n"...)
}
