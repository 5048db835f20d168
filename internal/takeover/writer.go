package takeover

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Writer is the http.ResponseWriter of a request served in place on a
// taken-over connection (see ReadRequest): it frames the answer byte for
// byte as net/http's own response writer does for an HTTP/1.1 request
// without a body (Content-Length when the handler ends within 2 KiB and
// set none, chunked encoding past that or after a flush, sniffed
// Content-Type, Date, trailers, informational answers, HEAD), so that a
// handler cannot tell the two apart by what reaches the client. It
// supports what net/http's does for such a request: Flush, Hijack,
// ReadFrom, and http.ResponseController's deadlines and full duplex.
//
// The framing below follows net/http's server.go (Go 1.26): chunkWriter
// and response's WriteHeader, Write, ReadFrom and finishRequest, less
// what only a request with a body or HTTP/1.0 needs.
type Writer struct {
	conn net.Conn
	req  *http.Request
	// logf is the server's error log; onHijack does the server's
	// bookkeeping when a handler takes the connection, and returns what
	// it had read of the client's next requests; keepAlives says whether
	// the server keeps connections for more requests (not when it shuts
	// down).
	logf       func(format string, args ...any)
	onHijack   func() (read []byte)
	keepAlives func() bool

	handlerHeader http.Header
	header        http.Header // what WriteHeader saw, as net/http snapshots it
	trailers      []string
	status        int
	wroteHeader   bool // logically
	calledHeader  bool
	contentLength int64 // -1: none declared
	written       int64
	handlerDone   bool
	closeAfter    bool
	hijacked      bool

	// The writers net/http chains: w buffers up to 2 KiB before the
	// header is decided, the chunk writer (cw*) frames, bufw batches the
	// socket's writes.
	w             *bufio.Writer
	cwWroteHeader bool
	chunking      bool
	bufw          *bufio.Writer
	werr          error // a write to the connection failed
}

// bufferBeforeChunking is net/http's bufferBeforeChunkingSize.
const bufferBeforeChunking = 2048

var (
	chunkBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufferBeforeChunking) }}
	connBufs  = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	copyBufs  = sync.Pool{New: func() any { return new([32 << 10]byte) }}
)

// NewWriter starts the answer to req, read from conn. logf is the
// server's error log, onHijack runs when a handler hijacks the connection
// and returns what the server had read of the client's next requests, and
// keepAlives says whether the server still keeps connections alive.
func NewWriter(conn net.Conn, req *http.Request, logf func(string, ...any), onHijack func() []byte, keepAlives func() bool) *Writer {
	w := &Writer{conn: conn, req: req, logf: logf, onHijack: onHijack, keepAlives: keepAlives, handlerHeader: make(http.Header), contentLength: -1}
	w.w = chunkBufs.Get().(*bufio.Writer)
	w.w.Reset(chunkWriter{w})
	w.bufw = connBufs.Get().(*bufio.Writer)
	w.bufw.Reset(connErrorWriter{w})
	return w
}

// Header is the handler's header map; what it holds when the header is
// written is what is sent.
func (w *Writer) Header() http.Header {
	if w.header == nil && w.wroteHeader && !w.cwWroteHeader {
		w.header = w.handlerHeader.Clone()
	}
	w.calledHeader = true
	return w.handlerHeader
}

// WriteHeader sends an informational answer at once, or records the
// status of the final one, as net/http does.
func (w *Writer) WriteHeader(code int) {
	if w.hijacked {
		w.logf("http: response.WriteHeader on hijacked connection")
		return
	}
	if w.wroteHeader {
		w.logf("http: superfluous response.WriteHeader call")
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		writeStatusLine(w.bufw, code)
		_ = w.handlerHeader.WriteSubset(w.bufw, excludedNoBody)
		_, _ = w.bufw.WriteString("\r\n")
		_ = w.bufw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if w.calledHeader && w.header == nil {
		w.header = w.handlerHeader.Clone()
	}
	if cl := w.handlerHeader.Get("Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.logf("http: invalid Content-Length of %q", cl)
			w.handlerHeader.Del("Content-Length")
		}
	}
}

// Write writes body bytes, sending a 200 header first if none was sent.
func (w *Writer) Write(p []byte) (int, error) { return w.write(len(p), p, "") }

// WriteString is Write for a string, as net/http's writer has it.
func (w *Writer) WriteString(s string) (int, error) { return w.write(len(s), nil, s) }

func (w *Writer) write(n int, b []byte, s string) (int, error) {
	if w.hijacked {
		if n > 0 {
			w.logf("http: response.Write on hijacked connection")
		}
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if n == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(n)
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	if b != nil {
		return w.w.Write(b)
	}
	return w.w.WriteString(s)
}

// sniffLen is how much of a body net/http sniffs for its content type.
const sniffLen = 512

// ReadFrom copies src to the body as net/http's writer does: the first
// 512 bytes through Write, then straight to the connection unless chunked.
func (w *Writer) ReadFrom(src io.Reader) (n int64, err error) {
	buf := copyBufs.Get().(*[32 << 10]byte)[:]
	defer copyBufs.Put((*[32 << 10]byte)(buf))
	rf, ok := w.conn.(io.ReaderFrom)
	if !ok {
		return io.CopyBuffer(writerOnly{w}, src, buf)
	}
	if !w.cwWroteHeader {
		n0, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(src, sniffLen), buf)
		n += n0
		if err != nil || n0 < sniffLen {
			return n, err
		}
	}
	_ = w.w.Flush()
	_ = w.flushChunks()
	if !w.chunking && bodyAllowedForStatus(w.status) && w.req.Method != http.MethodHead {
		n0, err := rf.ReadFrom(src)
		n += n0
		w.written += n0
		return n, err
	}
	n0, err := io.CopyBuffer(writerOnly{w}, src, buf)
	return n + n0, err
}

type writerOnly struct{ io.Writer }

// Flush sends what is buffered, the header first.
func (w *Writer) Flush() { _ = w.FlushError() }

// FlushError is Flush, with the error, for http.ResponseController.
func (w *Writer) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.w.Flush()
	if e2 := w.flushChunks(); err == nil {
		err = e2
	}
	return err
}

// Hijack hands the connection to the handler, with what was written so
// far sent first. As with net/http, the reader it returns gives first
// what the server had read of the client's next requests.
func (w *Writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.handlerDone {
		panic("net/http: Hijack called after ServeHTTP finished")
	}
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wroteHeader {
		_ = w.flushChunks()
	}
	_ = w.bufw.Flush()
	w.hijacked = true
	w.release()
	var src io.Reader = w.conn
	if read := w.onHijack(); len(read) > 0 {
		src = &PrefixedConn{Conn: w.conn, Prefix: read}
	}
	rw := bufio.NewReadWriter(bufio.NewReaderSize(src, 16), bufio.NewWriterSize(w.conn, 16))
	return w.conn, rw, nil
}

// SetReadDeadline is for http.ResponseController.
func (w *Writer) SetReadDeadline(t time.Time) error { return w.conn.SetReadDeadline(t) }

// SetWriteDeadline is for http.ResponseController.
func (w *Writer) SetWriteDeadline(t time.Time) error { return w.conn.SetWriteDeadline(t) }

// EnableFullDuplex is for http.ResponseController: a request without a
// body has nothing to read while the answer is written.
func (w *Writer) EnableFullDuplex() error { return nil }

// Hijacked reports whether the handler took the connection.
func (w *Writer) Hijacked() bool { return w.hijacked }

// Finish ends the answer once the handler returned, as net/http's
// finishRequest does, and reports whether the connection can carry the
// client's next request.
func (w *Writer) Finish() (keepAlive bool) {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.w.Flush()
	w.closeChunks()
	_ = w.bufw.Flush()
	w.release()
	switch {
	case w.closeAfter, w.werr != nil:
		return false
	case w.req.Method != http.MethodHead && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written:
		return false // did not write what it declared: the framing is lost
	}
	return true
}

func (w *Writer) release() {
	if w.w != nil {
		w.w.Reset(nil)
		chunkBufs.Put(w.w)
		w.w = nil
	}
	if w.bufw != nil {
		w.bufw.Reset(nil)
		connBufs.Put(w.bufw)
		w.bufw = nil
	}
}

// chunkWriter is what net/http's 2 KiB buffer flushes to: it decides the
// header on its first write and frames the body.
type chunkWriter struct{ w *Writer }

func (cw chunkWriter) Write(p []byte) (n int, err error) {
	w := cw.w
	if !w.cwWroteHeader {
		w.writeHeader(p)
	}
	if w.req.Method == http.MethodHead {
		return len(p), nil // eat writes
	}
	if w.chunking {
		if _, err = fmt.Fprintf(w.bufw, "%x\r\n", len(p)); err != nil {
			return 0, err
		}
	}
	n, err = w.bufw.Write(p)
	if w.chunking && err == nil {
		_, err = w.bufw.WriteString("\r\n")
	}
	return n, err
}

func (w *Writer) flushChunks() error {
	if !w.cwWroteHeader {
		w.writeHeader(nil)
	}
	return w.bufw.Flush()
}

func (w *Writer) closeChunks() {
	if !w.cwWroteHeader {
		w.writeHeader(nil)
	}
	if w.chunking {
		_, _ = w.bufw.WriteString("0\r\n")
		if t := w.finalTrailers(); t != nil {
			_ = t.Write(w.bufw)
		}
		_, _ = w.bufw.WriteString("\r\n")
	}
}

// connErrorWriter writes to the connection and keeps its first error: a
// connection that failed a write carries no further request.
type connErrorWriter struct{ w *Writer }

func (c connErrorWriter) Write(p []byte) (int, error) {
	n, err := c.w.conn.Write(p)
	if err != nil && c.w.werr == nil {
		c.w.werr = err
	}
	return n, err
}

var (
	excludedNoBody      = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}
	suppressedNoBody    = []string{"Content-Length", "Transfer-Encoding"}
	suppressedNotModded = []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
)

func bodyAllowedForStatus(status int) bool {
	return (status < 100 || status > 199) && status != http.StatusNoContent && status != http.StatusNotModified
}

func suppressedHeaders(status int) []string {
	switch {
	case status == http.StatusNotModified:
		return suppressedNotModded
	case !bodyAllowedForStatus(status):
		return suppressedNoBody
	}
	return nil
}

// writeHeader decides the header and writes it, as net/http's
// chunkWriter.writeHeader does for an HTTP/1.1 request without a body: p
// is the body's first bytes, sniffed for a content type, and its length,
// if the handler is done, the Content-Length.
func (w *Writer) writeHeader(p []byte) {
	w.cwWroteHeader = true
	isHEAD := w.req.Method == http.MethodHead
	header := w.header
	if header == nil {
		header = w.handlerHeader
	}
	var exclude map[string]bool // made only when needed, as net/http's
	del := func(k string) {
		if exclude == nil {
			exclude = make(map[string]bool)
		}
		exclude[k] = true
	}
	var extra []string // name, value pairs net/http adds, in its order

	trailers := false
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			del(k)
			trailers = true
		}
	}
	for _, v := range w.header["Trailer"] {
		trailers = true
		foreachHeaderElement(v, w.declareTrailer)
	}
	te := header.Get("Transfer-Encoding")
	hasTE := te != ""

	var contentLength, contentType, connection, transferEncoding string
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !has(header, "Content-Length") && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		contentLength = strconv.Itoa(len(p))
	}
	hasCL := w.contentLength != -1
	keepAlives := w.keepAlives()
	if header.Get("Connection") == "close" || !keepAlives {
		w.closeAfter = true
	}
	if bodyAllowedForStatus(w.status) {
		_, haveType := header["Content-Type"]
		if header.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			contentType = http.DetectContentType(p)
		}
	} else {
		for _, k := range suppressedHeaders(w.status) {
			del(k)
		}
	}
	if hasCL && hasTE && te != "identity" {
		w.logf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, w.contentLength)
		del("Content-Length")
		hasCL = false
	}
	switch {
	case isHEAD || !bodyAllowedForStatus(w.status):
		del("Transfer-Encoding")
	case hasCL:
		del("Transfer-Encoding")
	case hasTE && te == "identity":
		w.chunking = false
		w.closeAfter = true
		del("Transfer-Encoding")
	default:
		w.chunking = true
		transferEncoding = "chunked"
		if hasTE && te == "chunked" {
			del("Transfer-Encoding")
		}
	}
	if w.chunking {
		del("Content-Length")
	}
	if w.closeAfter && (!keepAlives || !hasToken(w.header.Get("Connection"), "close")) && !isProtocolSwitch(w.status, header) {
		del("Connection")
		connection = "close"
	}

	writeStatusLine(w.bufw, w.status)
	_ = w.header.WriteSubset(w.bufw, exclude)
	if !has(header, "Date") {
		extra = append(extra, "Date", time.Now().UTC().Format(http.TimeFormat))
	}
	extra = append(extra, "Content-Length", contentLength, "Content-Type", contentType,
		"Connection", connection, "Transfer-Encoding", transferEncoding)
	for i := 0; i < len(extra); i += 2 {
		if extra[i+1] != "" {
			_, _ = w.bufw.WriteString(extra[i] + ": " + extra[i+1] + "\r\n")
		}
	}
	_, _ = w.bufw.WriteString("\r\n")
}

func has(h http.Header, key string) bool {
	_, ok := h[key]
	return ok
}

func (w *Writer) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) {
		return
	}
	w.trailers = append(w.trailers, k)
}

func (w *Writer) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

func writeStatusLine(bw *bufio.Writer, code int) {
	if text := http.StatusText(code); text != "" {
		_, _ = bw.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n")
		return
	}
	_, _ = fmt.Fprintf(bw, "HTTP/1.1 %03d status code %d\r\n", code, code)
}

func foreachHeaderElement(v string, fn func(string)) {
	v = textproto.TrimString(v)
	if v == "" {
		return
	}
	for f := range strings.SplitSeq(v, ",") {
		if f = textproto.TrimString(f); f != "" {
			fn(f)
		}
	}
}

// hasToken is net/http's: whether token appears in v, ASCII case
// insensitive, between spaces or commas.
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

func isProtocolSwitch(code int, h http.Header) bool {
	return code == http.StatusSwitchingProtocols && h.Get("Upgrade") != "" &&
		httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade")
}
