package comet

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestStreamsOverTLSAreTakenOverOnHTTP1 opens SSE and NDJSON streams over
// HTTPS: over HTTP/1.1 they are taken over with their TLS connection,
// over HTTP/2 they stay in the server, and every one gets every event,
// its heartbeat and its end.
func TestStreamsOverTLSAreTakenOverOnHTTP1(t *testing.T) {
	s, cfg := startTLSCaddy(t, `comet /s {
		expiration 1500ms
		heartbeat 300ms
	}`)
	hub := s.hub(DefaultHubName)
	for _, tc := range []struct {
		name     string
		h2       bool
		accept   string
		detached bool
	}{
		{"SSE over HTTP/1.1", false, "text/event-stream", true},
		{"NDJSON over HTTP/1.1", false, "application/x-ndjson", true},
		{"SSE over HTTP/2", true, "text/event-stream", false},
		{"NDJSON over HTTP/2", true, "application/x-ndjson", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, s.base+"/s", nil)
			req.Header.Set("Accept", tc.accept)
			resp, err := tlsClient(cfg, tc.h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if want := map[bool]int{false: 1, true: 2}[tc.h2]; resp.ProtoMajor != want {
				t.Fatalf("answered over %s", resp.Proto)
			}
			waitFor(t, "the stream to attach", func() bool { return hub.SubscriberCount() == 1 })
			if tc.detached {
				waitFor(t, "the stream to be taken over", func() bool { return watcherCount(hub, "/s") == 1 })
			}
			for i := range 3 {
				if _, err := hub.Publish("/s", Event{Data: fmt.Appendf(nil, "event %d", i)}); err != nil {
					t.Fatal(err)
				}
			}
			lines := bufio.NewScanner(resp.Body)
			var events, heartbeats int
			ended := false
			for !ended && lines.Scan() {
				line := lines.Text()
				switch {
				case strings.Contains(line, "event "):
					if want := fmt.Sprintf("event %d", events); !strings.Contains(line, want) {
						t.Fatalf("got %q where %q was next", line, want)
					}
					// A stream is taken over, if at all, before its first event.
					if events == 0 && !tc.detached && watcherCount(hub, "/s") != 0 {
						t.Fatal("a stream over HTTP/2 was taken over")
					}
					events++
				case line == ": keep-alive" || line == "" && tc.accept == "application/x-ndjson":
					heartbeats++
				case strings.Contains(line, "expired"):
					ended = true
				}
			}
			if events != 3 || heartbeats == 0 || !ended {
				t.Errorf("%d events, %d heartbeats, ended %v; want 3 events, heartbeats and an end at expiration", events, heartbeats, ended)
			}
			waitFor(t, "the stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
		})
	}
}

// TestTLSStreamsEndAtShutdown closes the hub, as Caddy's exit does, under
// streams taken over with their TLS connection: each gets its last words
// at once, from its own goroutine, and is freed.
func TestTLSStreamsEndAtShutdown(t *testing.T) {
	s, cfg := startTLSCaddy(t, `comet /s {
		expiration off
		heartbeat off
	}`)
	hub := s.hub(DefaultHubName)
	const streams = 20
	bodies := make([]*bufio.Scanner, streams)
	for i := range bodies {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/s", nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := tlsClient(cfg, false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		bodies[i] = bufio.NewScanner(resp.Body)
	}
	waitFor(t, "every stream to be taken over", func() bool { return watcherCount(hub, "/s") == streams })
	began := time.Now()
	hub.Close()
	for i, lines := range bodies {
		last := ""
		for lines.Scan() {
			if line := lines.Text(); line != "" {
				last = line
			}
		}
		if last != "data: shutdown" {
			t.Fatalf("stream %d ended with %q, want the shutdown notice", i, last)
		}
	}
	waitFor(t, "every stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("streams took %v to end", took)
	}
}
