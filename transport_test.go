package comet

import "testing"

func TestRequestedTransport(t *testing.T) {
	for accept, want := range map[string]transport{
		"":                                   transportLongPoll,
		"*/*":                                transportLongPoll,
		"text/event-stream":                  transportSSE,
		"Text/Event-Stream; charset=utf-8":   transportSSE,
		"application/x-ndjson":               transportStream,
		"text/html, text/event-stream;q=0.9": transportSSE,
		"application/x-ndjson, text/event-stream": transportStream,
		"text/event-stream;q=0, */*":              transportLongPoll,
		"text/event-stream; q=0.000":              transportLongPoll,
		"text/event-stream;q=0.001":               transportSSE,
		"text/event-streams":                      transportLongPoll,
	} {
		if got := acceptedTransport(accept); got != want {
			t.Errorf("Accept %q: %s, want %s", accept, got, want)
		}
	}
}

func TestParseTransports(t *testing.T) {
	if set, err := parseTransports(nil); err != nil || set != allTransports {
		t.Errorf("no names: %s, %v; want all", set, err)
	}
	if set, err := parseTransports([]string{"sse", "longpoll"}); err != nil || set.String() != "longpoll, sse" {
		t.Errorf("sse longpoll: %q, %v", set, err)
	}
	if set, err := parseTransports([]string{"websocket", "stream"}); err != nil || set.String() != "stream, websocket" {
		t.Errorf("websocket stream: %q, %v", set, err)
	}
	if _, err := parseTransports([]string{"websockets"}); err == nil {
		t.Error("an unknown transport accepted")
	}
}
