package wsframe

import (
	"bufio"
	"errors"
	"io"
	"sync"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Reader reads a client's frames, as a server: masked, text checked to be
// UTF-8, messages bounded. It is taken from a pool only while there is
// something to read, so that an idle socket holds no buffer.
type Reader struct {
	br *bufio.Reader
	rd wsutil.Reader
}

var readers = sync.Pool{New: func() any { return &Reader{br: bufio.NewReaderSize(nil, 4<<10)} }}

// NewReader returns a reader of src's frames, whose messages may be up to
// maxMessageSize bytes. Release gives it back.
func NewReader(src io.Reader, maxMessageSize int64) *Reader {
	r := readers.Get().(*Reader)
	r.br.Reset(src)
	r.rd = wsutil.Reader{
		Source: r.br, State: ws.StateServerSide, CheckUTF8: true,
		MaxMessageSize: maxMessageSize,
	}
	return r
}

// Release returns the reader to the pool; it must not be used again.
func (r *Reader) Release() {
	r.br.Reset(nil)
	r.rd = wsutil.Reader{}
	readers.Put(r)
}

// Frame is what one read found.
type Frame struct {
	// Text is a text message the client sent, when IsText.
	Text   []byte
	IsText bool
	// Reply is written back at once: pongs, and last words.
	Reply []byte
	// End says the socket is over once Reply is written.
	End bool
}

// errClosed ends a read at a close frame between a message's parts.
var errClosed = errors.New("the client closed the socket")

// Next reads one frame, or a whole message with the control frames between
// its parts, answering those as AnswerControl does. heard is called when
// a frame's header arrived and when a message was read in full: the
// client is there. A read that fails ends the socket, with the close frame
// CloseFor gives, if any; a message other than text ends it with 1003.
func (r *Reader) Next(heard func()) Frame {
	var replies []byte
	control := func(hdr ws.Header, body io.Reader) (end bool, err error) {
		payload := make([]byte, hdr.Length)
		if _, err := io.ReadFull(body, payload); err != nil {
			return true, err
		}
		reply, end := AnswerControl(hdr.OpCode, payload)
		replies = append(replies, reply...)
		return end, nil
	}
	r.rd.OnIntermediate = func(hdr ws.Header, body io.Reader) error {
		if end, err := control(hdr, body); err != nil || end {
			return errClosed
		}
		return nil
	}
	hdr, err := r.rd.NextFrame()
	if err != nil {
		return failed(err, replies)
	}
	heard()
	if hdr.OpCode.IsControl() {
		end, err := control(hdr, &r.rd)
		if err != nil {
			return failed(err, replies)
		}
		return Frame{Reply: replies, End: end}
	}
	msg, err := io.ReadAll(&r.rd)
	heard()
	if err != nil {
		return failed(err, replies)
	}
	if hdr.OpCode != ws.OpText {
		return Frame{Reply: AppendClose(replies, ws.StatusUnsupportedData, "send text messages"), End: true}
	}
	return Frame{Text: msg, IsText: true, Reply: replies}
}

// failed ends a socket whose frame could not be read: with the answers to
// the control frames before, if the client closed it, with a close frame
// that says what was wrong, or without a word when the client left.
func failed(err error, replies []byte) Frame {
	if errors.Is(err, errClosed) {
		return Frame{Reply: replies, End: true}
	}
	if last, ok := CloseFor(err); ok {
		return Frame{Reply: append(replies, last...), End: true}
	}
	return Frame{End: true}
}

// Buffered reports whether the reader holds bytes it read from its source
// and has not yet read frames from.
func (r *Reader) Buffered() bool { return r.br.Buffered() > 0 }

// Peek reports whether one more byte can be read from the source without
// waiting longer than its deadline allows (over TLS, whether the
// connection holds decrypted bytes already). It consumes nothing.
func (r *Reader) Peek() error {
	_, err := r.br.Peek(1)
	return err
}
