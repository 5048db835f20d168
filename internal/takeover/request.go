package takeover

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// Reading a request in place.
//
// A server that serves the next request of a taken-over connection itself
// (in place) takes only requests net/http would serve exactly the same
// way with no more than it has: a whole HTTP/1.1 GET or HEAD request in
// the bytes already read, without a body, that keeps the connection
// alive, asks for nothing (Expect, Upgrade) and passes every check
// net/http's server makes on a request it read. Anything else, well formed
// or not, is net/http's: the server hands the connection back with the
// bytes in front (see PrefixedConn), and net/http reads, answers or
// refuses the request as on any connection of its own.

// requestReaders parse requests from bytes already read; one is taken
// for each request, never held.
var requestReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

// ReadRequest parses the request at the start of b, the bytes read so far
// of a connection, and returns it with how many bytes of b it took; or nil
// if it is not a request to serve in place (see above), or not all of it
// was read yet. The request has what net/http's server gives a request but
// what belongs to the connection: its context, RemoteAddr and TLS.
func ReadRequest(b []byte) (*http.Request, int) {
	if !isGetOrHead(b) {
		return nil, 0
	}
	src := bytes.NewReader(b)
	br := requestReaders.Get().(*bufio.Reader)
	br.Reset(src)
	req, err := http.ReadRequest(br)
	taken := len(b) - src.Len() - br.Buffered()
	br.Reset(nil)
	requestReaders.Put(br)
	if err != nil || !servableInPlace(req) || !oneValidHost(b[:taken]) {
		return nil, 0
	}
	return req, taken
}

func isGetOrHead(b []byte) bool {
	return bytes.HasPrefix(b, []byte("GET ")) || bytes.HasPrefix(b, []byte("HEAD "))
}

// servableInPlace reports whether net/http would serve req with nothing
// but a handler's call: no body to read or discard, no 100 Continue or
// 417, no protocol switch, no closing after the answer, and every header
// valid as its server checks them.
func servableInPlace(req *http.Request) bool {
	if req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Close || req.RequestURI == "*" {
		return false
	}
	if req.ContentLength != 0 || len(req.TransferEncoding) > 0 || req.Body != http.NoBody {
		return false
	}
	for _, name := range []string{"Expect", "Upgrade", "Http2-Settings", "Transfer-Encoding", "Content-Length"} {
		if _, ok := req.Header[name]; ok {
			return false
		}
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// oneValidHost reports whether the request's header, as read, has exactly
// one Host field, valid as net/http's server requires; http.ReadRequest
// drops the field, so it is looked for in the bytes.
func oneValidHost(header []byte) bool {
	hosts := 0
	valid := false
	for line := range strings.SplitSeq(string(header), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(name, "Host") {
			continue
		}
		hosts++
		valid = httpguts.ValidHostHeader(strings.Trim(value, " \t\r"))
	}
	return hosts == 1 && valid
}
