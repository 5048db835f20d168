package takeover

import (
	"bytes"
	"net/http"
	"strconv"
	"time"
)

// Response records what a handler writes through http.ResponseWriter, so
// that it can be written to a taken-over connection as net/http would
// have written it.
type Response struct {
	header http.Header
	status int
	body   bytes.Buffer
}

// NewResponse starts a response with a copy of header, which handlers
// earlier in the chain may have set.
func NewResponse(header http.Header) *Response {
	return &Response{header: header.Clone()}
}

func (a *Response) Header() http.Header { return a.header }

func (a *Response) WriteHeader(status int) {
	if a.status == 0 {
		a.status = status
	}
}

func (a *Response) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	return a.body.Write(b)
}

// Render writes the response as HTTP/1.1, byte for byte as net/http would
// (but the Date): the headers the handler set, sorted, then those net/http
// adds itself, a Content-Length it counts and Connection: close when the
// connection ends with the response.
func (a *Response) Render(keepAlive bool) []byte {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	h := a.header
	bodyAllowed := a.status >= 200 && a.status != http.StatusNoContent && a.status != http.StatusNotModified
	if !bodyAllowed {
		h.Del("Content-Length")
	}
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(a.status))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(a.status))
	b.WriteString("\r\n")
	_ = h.Write(&b)
	if h.Get("Date") == "" {
		b.WriteString("Date: " + time.Now().UTC().Format(http.TimeFormat) + "\r\n")
	}
	if bodyAllowed && h.Get("Content-Length") == "" {
		b.WriteString("Content-Length: " + strconv.Itoa(a.body.Len()) + "\r\n")
	}
	if !keepAlive && h.Get("Connection") == "" {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	if bodyAllowed {
		b.Write(a.body.Bytes())
	}
	return b.Bytes()
}
