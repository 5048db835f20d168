// Package wsframe is the RFC 6455 framing a WebSocket subscriber needs:
// the server's unmasked frames, appended to a buffer so that an event's
// frame is made once and shared by every socket, and a pooled reader of a
// client's frames that answers control frames as §5.5 asks and says which
// close code a malformed frame earns. What the messages mean is the
// caller's; the framing itself is gobwas/ws's.
package wsframe

import (
	"bytes"
	"errors"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Ping is a ping frame with no payload, made once.
var Ping = ws.MustCompileFrame(ws.NewPingFrame(nil))

// AppendText appends lines, one text message each, without their newlines.
func AppendText(b, lines []byte) []byte {
	for len(lines) > 0 {
		line := lines
		if i := bytes.IndexByte(lines, '\n'); i >= 0 {
			line, lines = lines[:i], lines[i+1:]
		} else {
			lines = nil
		}
		b = AppendFrame(b, ws.OpText, line)
	}
	return b
}

// AppendClose appends a close frame with code and reason.
func AppendClose(b []byte, code ws.StatusCode, reason string) []byte {
	return AppendFrame(b, ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// AppendFrame appends one final, unmasked frame.
func AppendFrame(b []byte, op ws.OpCode, payload []byte) []byte {
	w := byteAppender{b}
	if err := ws.WriteHeader(&w, ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))}); err != nil {
		panic("wsframe: framing a WebSocket message: " + err.Error()) // an append cannot fail
	}
	return append(w.b, payload...)
}

type byteAppender struct{ b []byte }

func (a *byteAppender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

// AnswerControl answers a client's control frame: a ping with a pong, a
// close with a close (echoing its code, or refusing a malformed one), as
// RFC 6455 §5.5 asks; end says the socket is over once reply is written.
// A pong needs no answer.
func AnswerControl(op ws.OpCode, payload []byte) (reply []byte, end bool) {
	switch op {
	case ws.OpPing:
		return AppendFrame(nil, ws.OpPong, payload), false
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(payload)
		if err := ws.CheckCloseFrameData(code, reason); err != nil {
			return AppendClose(nil, ws.StatusProtocolError, err.Error()), true
		}
		if code.Empty() {
			return AppendFrame(nil, ws.OpClose, nil), true
		}
		return AppendClose(nil, code, ""), true
	}
	return nil, false
}

// CloseFor is the close frame a socket ends with whose frame could not be
// read because of err, or false if the client left (or stopped half way
// through a frame) and there is nobody to tell.
func CloseFor(err error) ([]byte, bool) {
	var code ws.StatusCode
	var pe ws.ProtocolError
	switch {
	case errors.Is(err, wsutil.ErrMessageTooLarge), errors.Is(err, wsutil.ErrFrameTooLarge):
		code = ws.StatusMessageTooBig
	case errors.Is(err, wsutil.ErrInvalidUTF8):
		code = ws.StatusInvalidFramePayloadData
	case errors.As(err, &pe):
		code = ws.StatusProtocolError
	default:
		return nil, false
	}
	return AppendClose(nil, code, TruncateReason(err.Error())), true
}

// TruncateReason keeps a close reason within a control frame's 125 bytes.
func TruncateReason(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}
