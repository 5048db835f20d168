package comet

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/wsframe"
	"github.com/gobwas/ws"
)

// WebSocket's wire format: every message a stream writes is one text
// message whose payload is the NDJSON stream's line, without its newline,
// and the heartbeat is a ping. Frames from the server are not masked, so
// an event's frame is the same bytes for every subscriber: it is made once
// per event and shared, like the other formats' frames. The framing is
// gobwas/ws's; the close codes below say why the server ended a socket.

// Close codes the server ends a socket with; 4000–4999 are the
// application's own (RFC 6455 §7.4.2).
const (
	closeExpired      ws.StatusCode = 1000 // the route's expiration: reconnect
	closeShutdown     ws.StatusCode = 1001 // the server is exiting: reconnect later
	closeBehind       ws.StatusCode = 4000 // the reader fell behind the history: reconnect with the cursor
	closeUnauthorized ws.StatusCode = 4401 // the token expired: reconnect with a new one
	closeDeleted      ws.StatusCode = 4410 // the context was deleted: do not reconnect
	closeNoPong       ws.StatusCode = 4408 // the client answered no ping
)

// closeCodes are the codes of the reasons a stream ends on its own.
var closeCodes = map[string]ws.StatusCode{
	reasonExpired:      closeExpired,
	reasonShutdown:     closeShutdown,
	reasonBehind:       closeBehind,
	reasonUnauthorized: closeUnauthorized,
}

// Memo slots of an event's WebSocket frames: for a socket of one context,
// and for a socket of several, whose messages name their context.
const (
	memoWebSocket            = memoMultiplexed + 1
	memoMultiplexedWebSocket = memoWebSocket + 1
)

var _ [hub.MemoSlots - 1 - memoMultiplexedWebSocket]struct{}

// wsEncoding writes a stream's lines as WebSocket messages: those of line,
// the NDJSON encoding of the stream (of one context, or of one context of
// several), each framed. slot is the memo slot of the event frames.
type wsEncoding struct {
	line streamEncoding
	slot hub.MemoSlot
}

// webSocketOf is the encoding of a WebSocket stream of one context.
var webSocketOf = wsEncoding{line: formatNDJSON, slot: memoWebSocket}

// webSocketOfMember wraps the NDJSON encoding of one context of a socket
// of several in WebSocket messages: the messages are the multiplexed
// NDJSON stream's lines (each event and notice names its context), and
// the cursor of the open and reconnect messages names every context.
func webSocketOfMember(line streamEncoding) wsEncoding {
	return wsEncoding{line: line, slot: memoMultiplexedWebSocket}
}

func (e wsEncoding) missed(b []byte, missed int64, resume *Cursor) []byte {
	return wsframe.AppendText(b, e.line.missed(nil, missed, resume))
}

// reconnect is the line saying why the stream ends, then a close frame
// whose code says it too.
func (e wsEncoding) reconnect(b []byte, reason string, cur Cursor) []byte {
	b = wsframe.AppendText(b, e.line.reconnect(nil, reason, cur))
	return wsframe.AppendClose(b, closeCodes[reason], reason)
}

func (e wsEncoding) deleted(b []byte) []byte {
	b = wsframe.AppendText(b, e.line.deleted(nil))
	return wsframe.AppendClose(b, closeDeleted, "deleted")
}

func (e wsEncoding) heartbeat() []byte { return wsframe.Ping }

// delivery frames the line's event once per event, and its notice.
func (e wsEncoding) delivery(d Delivery) (notice, frame []byte) {
	notice, line := e.line.delivery(d)
	if notice != nil {
		notice = wsframe.AppendText(nil, notice)
	}
	if line != nil {
		frame = d.Event.Derived(e.slot, func() any { return wsframe.AppendText(nil, line) }).([]byte)
	}
	return notice, frame
}

// wsRequest is a message a WebSocket client sends: a cursor to go on from,
// or an event to publish on the socket's context.
type wsRequest struct {
	Cursor  *string    `json:"cursor,omitempty"`
	Publish *wsPublish `json:"publish,omitempty"`
}

// wsPublish is an event a client publishes over its socket, with what it
// wants to find in the receipt (ref) and, to make retries safe, its
// idempotency key.
type wsPublish struct {
	Ref string `json:"ref,omitempty"`
	// Context is the context to publish to, one of a socket of several's.
	Context        string  `json:"context,omitempty"`
	Type           string  `json:"type,omitempty"`
	ContentType    string  `json:"content_type,omitempty"`
	Data           *string `json:"data,omitempty"`
	DataBase64     []byte  `json:"data_base64,omitempty"`
	IdempotencyKey string  `json:"idempotency_key,omitempty"`
}

// wsReply is what the server answers a client's message with: a receipt
// for a publish, or why the message was refused.
type wsReply struct {
	Control  string `json:"control"` // receipt or error
	Ref      string `json:"ref,omitempty"`
	Context  string `json:"context,omitempty"`
	ID       uint64 `json:"id,omitempty"`
	Cursor   string `json:"cursor,omitempty"`
	Replayed bool   `json:"replayed,omitempty"`
	Status   int    `json:"status,omitempty"` // as HTTP would have answered
	Error    string `json:"error,omitempty"`
}

// parseWSRequest reads a client's message: exactly one of its requests.
func parseWSRequest(msg []byte) (wsRequest, error) {
	var req wsRequest
	if err := json.Unmarshal(msg, &req); err != nil {
		return req, fmt.Errorf("a message must be a JSON object with cursor or publish: %v", err)
	}
	if (req.Cursor == nil) == (req.Publish == nil) {
		return req, errors.New("a message must have exactly one of cursor and publish")
	}
	if p := req.Publish; p != nil && p.Data != nil && p.DataBase64 != nil {
		return req, errors.New("publish has data and data_base64: send one")
	}
	return req, nil
}

// event is the event a publish message carries.
func (p *wsPublish) event() Event {
	ev := Event{Type: p.Type, ContentType: p.ContentType, Data: p.DataBase64}
	if p.Data != nil {
		ev.Data = []byte(*p.Data)
	}
	return ev
}

func wsReplyFrame(r wsReply) []byte {
	return wsframe.AppendText(nil, appendJSONLine(nil, r))
}
