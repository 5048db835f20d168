package wsframe

import (
	"bytes"
	"io"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// clientFrame is a frame as a client sends it: masked.
func clientFrame(t *testing.T, fin bool, op ws.OpCode, payload []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	f := ws.NewFrame(op, fin, append([]byte(nil), payload...))
	if err := ws.WriteFrame(&b, ws.MaskFrameInPlace(f)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// serverFrames reads what the server wrote as a client would.
func serverFrames(t *testing.T, b []byte) []ws.Frame {
	t.Helper()
	var frames []ws.Frame
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatalf("reading the server's frames: %v", err)
		}
		if f.Header.Masked {
			t.Fatal("a server frame is masked")
		}
		frames = append(frames, f)
	}
	return frames
}

func TestAppendTextFramesEachLine(t *testing.T) {
	frames := serverFrames(t, AppendText(nil, []byte("one\ntwo\n")))
	if len(frames) != 2 || string(frames[0].Payload) != "one" || string(frames[1].Payload) != "two" {
		t.Fatalf("frames = %+v, want text frames one and two", frames)
	}
	for _, f := range frames {
		if f.Header.OpCode != ws.OpText || !f.Header.Fin {
			t.Fatalf("frame header %+v, want a final text frame", f.Header)
		}
	}
}

func TestAnswerControl(t *testing.T) {
	reply, end := AnswerControl(ws.OpPing, []byte("hi"))
	if f := serverFrames(t, reply); end || len(f) != 1 || f[0].Header.OpCode != ws.OpPong || string(f[0].Payload) != "hi" {
		t.Fatalf("ping answered %+v end %v, want a pong with its payload", f, end)
	}
	reply, end = AnswerControl(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))
	f := serverFrames(t, reply)
	if code, _ := ws.ParseCloseFrameData(f[0].Payload); !end || code != ws.StatusNormalClosure {
		t.Fatalf("close answered with %d end %v, want the client's code and the end", code, end)
	}
	reply, end = AnswerControl(ws.OpClose, ws.NewCloseFrameBody(1005, "")) // a code no endpoint may send
	f = serverFrames(t, reply)
	if code, _ := ws.ParseCloseFrameData(f[0].Payload); !end || code != ws.StatusProtocolError {
		t.Fatalf("invalid close answered with %d, want 1002", code)
	}
	if reply, end := AnswerControl(ws.OpPong, nil); reply != nil || end {
		t.Fatal("a pong got an answer")
	}
}

func TestNextReadsAFragmentedMessageAnsweringPingsBetween(t *testing.T) {
	var in []byte
	in = append(in, clientFrame(t, false, ws.OpText, []byte("hel"))...)
	in = append(in, clientFrame(t, true, ws.OpPing, []byte("p"))...)
	in = append(in, clientFrame(t, true, ws.OpContinuation, []byte("lo"))...)
	r := NewReader(bytes.NewReader(in), 1<<10)
	defer r.Release()
	heard := 0
	f := r.Next(func() { heard++ })
	if !f.IsText || string(f.Text) != "hello" || f.End {
		t.Fatalf("frame %+v, want the text hello", f)
	}
	if pong := serverFrames(t, f.Reply); len(pong) != 1 || pong[0].Header.OpCode != ws.OpPong {
		t.Fatalf("reply %+v, want the ping's pong", pong)
	}
	if heard == 0 {
		t.Fatal("heard was not called")
	}
}

func TestNextEndsWithTheCloseCodeAMalformedFrameEarns(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want ws.StatusCode
	}{
		{"binary", clientFrame(t, true, ws.OpBinary, []byte{1}), ws.StatusUnsupportedData},
		{"too large", clientFrame(t, true, ws.OpText, bytes.Repeat([]byte("x"), 20)), ws.StatusMessageTooBig},
		{"invalid UTF-8", clientFrame(t, true, ws.OpText, []byte{0xff, 0xfe}), ws.StatusInvalidFramePayloadData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.in), 16)
			defer r.Release()
			f := r.Next(func() {})
			if !f.End {
				t.Fatal("the socket goes on")
			}
			frames := serverFrames(t, f.Reply)
			if len(frames) != 1 || frames[0].Header.OpCode != ws.OpClose {
				t.Fatalf("reply %+v, want one close frame", frames)
			}
			if code, _ := ws.ParseCloseFrameData(frames[0].Payload); code != tc.want {
				t.Fatalf("close code %d, want %d", code, tc.want)
			}
		})
	}
}

func TestNextEndsSilentlyWhenTheClientLeaves(t *testing.T) {
	half := clientFrame(t, true, ws.OpText, []byte("hello"))[:4]
	r := NewReader(bytes.NewReader(half), 1<<10)
	defer r.Release()
	if f := r.Next(func() {}); !f.End || f.Reply != nil {
		t.Fatalf("frame %+v, want the end without a word", f)
	}
}

func TestCloseForLeavesOtherErrorsUnanswered(t *testing.T) {
	if _, ok := CloseFor(io.EOF); ok {
		t.Fatal("EOF got a close frame")
	}
	if _, ok := CloseFor(wsutil.ErrMessageTooLarge); !ok {
		t.Fatal("a message too large got no close frame")
	}
}
