package comet

import (
	"fmt"
	"net/http"
	"strings"
)

// transport is a way of subscribing; a set of them is a bit mask.
type transport uint8

const (
	transportLongPoll transport = 1 << iota
	transportSSE
	transportStream
	transportWebSocket

	allTransports = transportLongPoll | transportSSE | transportStream | transportWebSocket
)

var transportNames = []struct {
	name string
	t    transport
}{
	{"longpoll", transportLongPoll},
	{"sse", transportSSE},
	{"stream", transportStream},
	{"websocket", transportWebSocket},
}

// String lists the transports in the set by name.
func (t transport) String() string {
	var names []string
	for _, tn := range transportNames {
		if t&tn.t != 0 {
			names = append(names, tn.name)
		}
	}
	return strings.Join(names, ", ")
}

// parseTransports turns transport names into a set; no names means all.
func parseTransports(names []string) (transport, error) {
	if len(names) == 0 {
		return allTransports, nil
	}
	var set transport
	for _, name := range names {
		t := transportNamed(name)
		if t == 0 {
			return 0, fmt.Errorf("unknown transport %q: want longpoll, sse, stream or websocket", name)
		}
		set |= t
	}
	return set, nil
}

func transportNamed(name string) transport {
	for _, tn := range transportNames {
		if tn.name == name {
			return tn.t
		}
	}
	return 0
}

// requestedTransport picks the transport a GET asks for: WebSocket when
// it asks to upgrade to it, else what its Accept header asks for.
func requestedTransport(r *http.Request) transport {
	if isWebSocketUpgrade(r) {
		return transportWebSocket
	}
	return acceptedTransport(r.Header.Get("Accept"))
}

// isWebSocketUpgrade reports whether a GET asks to upgrade its connection
// to WebSocket (RFC 6455 §4.2.1), or an HTTP/2 CONNECT asks for a
// WebSocket stream (RFC 8441); the handshake checks the rest.
func isWebSocketUpgrade(r *http.Request) bool {
	if isWebSocketConnect(r) {
		return true
	}
	return r.Method == http.MethodGet && r.ProtoMajor == 1 &&
		headerHasToken(r.Header, "Upgrade", "websocket") && headerHasToken(r.Header, "Connection", "upgrade")
}

// isWebSocketConnect reports whether the request is an HTTP/2 extended
// CONNECT for a WebSocket (RFC 8441 §4). Go's HTTP/2 server accepts those
// only when the process runs with GODEBUG=http2xconnect=1.
func isWebSocketConnect(r *http.Request) bool {
	return r.ProtoMajor == 2 && r.Method == http.MethodConnect && r.Header.Get(":protocol") == "websocket"
}

// headerHasToken reports whether a comma-separated header lists token,
// in any case.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// acceptedTransport picks the transport a GET asks for by its Accept
// header: the first of the SSE and NDJSON media types it accepts (with a
// q above 0) asks for that stream; anything else is a long poll, as in
// the seed.
func acceptedTransport(accept string) transport {
	for part := range strings.SplitSeq(accept, ",") {
		mediaType, params, _ := strings.Cut(part, ";")
		if refused(params) {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(mediaType)) {
		case "text/event-stream":
			return transportSSE
		case "application/x-ndjson":
			return transportStream
		}
	}
	return transportLongPoll
}

// refused reports whether media type parameters carry q=0.
func refused(params string) bool {
	for param := range strings.SplitSeq(params, ";") {
		name, value, _ := strings.Cut(param, "=")
		if strings.EqualFold(strings.TrimSpace(name), "q") {
			value = strings.TrimSpace(value)
			return strings.Trim(value, "0.") == "" && value != ""
		}
	}
	return false
}
