package comet

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDetachedStreamsHoldNoGoroutine opens plaintext HTTP/1.1 streams on a
// route that detaches them and on one that does not, with an access log
// in the way as most sites have. A detached stream must be left with no
// goroutine (the ordinary path has two: the request's and net/http's
// background reader), end its body with the connection instead of
// chunking, get every event, and free everything when the client leaves.
func TestDetachedStreamsHoldNoGoroutine(t *testing.T) {
	const streams = 100
	s := startCaddy(t, "", `log {
		output discard
	}
	comet /detached {
		expiration off
		heartbeat off
	}
	comet /ordinary {
		expiration off
		heartbeat off
		detach off
	}`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")

	for _, route := range []struct {
		path                 string
		chunked              bool
		minPerSub, maxPerSub float64
	}{
		// Below zero: a goroutine of an earlier test ended meanwhile.
		{"/detached", false, -0.1, 0.1},
		{"/ordinary", true, 1.9, 2.1},
	} {
		t.Run(route.path, func(t *testing.T) {
			http.DefaultClient.CloseIdleConnections()
			runtime.GC()
			baseline := runtime.NumGoroutine()
			opened := make([]*rawStream, streams)
			for i := range opened {
				opened[i] = openRawSSE(t, addr, route.path)
			}
			waitFor(t, "every stream to attach", func() bool { return hub.SubscriberCount() == streams })
			first := opened[0].resp
			if chunked := len(first.TransferEncoding) > 0 && first.TransferEncoding[0] == "chunked"; chunked != route.chunked {
				t.Errorf("Transfer-Encoding %v, want chunked: %v", first.TransferEncoding, route.chunked)
			}
			// Let goroutines of the requests that were just answered end.
			time.Sleep(100 * time.Millisecond)
			perSub := float64(runtime.NumGoroutine()-baseline) / streams
			t.Logf("%s: %.2f goroutines per stream", route.path, perSub)
			if perSub < route.minPerSub || perSub > route.maxPerSub {
				t.Errorf("%.2f goroutines per stream, want %.1f to %.1f", perSub, route.minPerSub, route.maxPerSub)
			}

			for i := range 3 {
				data := fmt.Sprintf("event %d", i)
				r := s.publish(route.path, data)
				if !route.chunked && r.Woken != streams {
					// A detached stream is always reached; a goroutine
					// only while it waits, not while it writes.
					t.Errorf("publish reached %d streams, want %d", r.Woken, streams)
				}
				for n, st := range opened {
					if ev := nextWithin(t, st.sse, 5*time.Second); ev.Data != data {
						t.Fatalf("stream %d got %+v, want %q", n, ev, data)
					}
				}
			}

			for _, st := range opened {
				st.conn.Close()
			}
			waitFor(t, "every stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
			http.DefaultClient.CloseIdleConnections() // the publishers'
			waitFor(t, "goroutines to return to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
		})
	}
}

// TestDetachingStaysOutOfTheWayOfEncode puts streams behind encode with its
// default types, which compress SSE but not NDJSON. The compressed stream
// must stay on the ordinary path, where encode can do its work; the other
// passes through encode unchanged and is detached. Both get every byte.
func TestDetachingStaysOutOfTheWayOfEncode(t *testing.T) {
	s := startCaddy(t, "", `encode gzip
	comet /c {
		expiration off
		heartbeat off
	}`)
	addr := strings.TrimPrefix(s.base, "http://")
	sse := s.openStream(&http.Client{Transport: &http.Transport{}}, "/c", "text/event-stream")
	if !sse.Uncompressed {
		t.Fatal("SSE through encode was not compressed")
	}
	ndjson := openRaw(t, addr, "/c", "application/x-ndjson")
	if enc := ndjson.resp.Header.Get("Content-Encoding"); enc != "" {
		t.Fatalf("NDJSON through encode: Content-Encoding %q", enc)
	}
	hub := s.hub(DefaultHubName)
	// A stream counts as a subscriber before it detaches: wait for both,
	// and for the detaching, and count the detached once both delivered.
	waitFor(t, "both streams to attach and one to detach", func() bool {
		return hub.SubscriberCount() == 2 && watcherCount(hub, "/c") >= 1
	})
	lines := bufio.NewScanner(ndjson.resp.Body)
	if !scanWithin(t, lines, 5*time.Second) || !strings.Contains(lines.Text(), `"control":"open"`) {
		t.Fatalf("NDJSON opened with %q", lines.Text())
	}
	p := newSSEParser(sse.Body)
	s.publish("/c", "through encode")
	if ev := nextWithin(t, p, 5*time.Second); ev.Data != "through encode" {
		t.Errorf("SSE got %+v", ev)
	}
	if !scanWithin(t, lines, 5*time.Second) || !strings.Contains(lines.Text(), "through encode") {
		t.Errorf("NDJSON got %q", lines.Text())
	}
	if watchers := watcherCount(hub, "/c"); watchers != 1 {
		t.Fatalf("%d streams detached, want 1: the NDJSON one", watchers)
	}
}

// TestDetachedLongPollsAreAnsweredAndKeptAlive parks long polls on bare
// keep-alive connections. Where nothing in the chain sees the answer, a
// parked poll must hold no goroutine (the ordinary path: two), get the
// same answer the ordinary path writes, and have its connection served
// again by the server for the next poll, with any request the client
// pipelined meanwhile. Behind an access log, polls stay on the ordinary
// path.
func TestDetachedLongPollsAreAnsweredAndKeptAlive(t *testing.T) {
	const polls = 100
	for _, route := range []struct {
		name, site string
		perPoll    float64
	}{
		{"detached", "", 0},
		{"access log", "log {\n\t\toutput discard\n\t}", 2},
		{"detach off", "", 2},
	} {
		t.Run(route.name, func(t *testing.T) {
			detach := ""
			if route.name == "detach off" {
				detach = "detach off"
			}
			s := startCaddy(t, "", route.site+`
	header X-Site comet-test
	comet /lp {
		expiration 1s
		`+detach+`
	}`)
			hub := s.hub(DefaultHubName)
			addr := strings.TrimPrefix(s.base, "http://")
			const path = "/lp"
			http.DefaultClient.CloseIdleConnections()
			runtime.GC()
			cursor := s.position(path)
			baseline := runtime.NumGoroutine()
			clients := make([]*rawPoll, polls)
			for i := range clients {
				clients[i] = dialPoll(t, addr)
				clients[i].send(path, cursor)
			}
			waitFor(t, "every poll to park", func() bool { return hub.SubscriberCount() == polls })
			time.Sleep(100 * time.Millisecond)
			perPoll := float64(runtime.NumGoroutine()-baseline) / polls
			t.Logf("%s: %.2f goroutines per parked poll", route.name, perPoll)
			if perPoll < route.perPoll-0.1 || perPoll > route.perPoll+0.1 {
				t.Errorf("%.2f goroutines per parked poll, want %.0f", perPoll, route.perPoll)
			}

			r := s.publish(path, `{"n":1}`)
			for i, c := range clients {
				resp, body := c.answer()
				if resp.StatusCode != http.StatusOK || body != `{"n":1}` || resp.Header.Get("Comet-Cursor") != r.Cursor ||
					resp.Header.Get("ETag") != `"`+r.Cursor+`"` || resp.Header.Get("X-Site") != "comet-test" ||
					resp.Header.Get("Vary") != "Accept" || resp.Close {
					t.Fatalf("poll %d answered %s %q, headers %v; want 200 with the event, its cursor, the site's headers, kept alive",
						i, resp.Status, body, resp.Header)
				}
			}

			// The next poll on the same connection, with a HEAD pipelined
			// behind it before the answer.
			c := clients[0]
			c.send(path, r.Cursor)
			waitFor(t, "the next poll to park", func() bool { return hub.SubscriberCount() == 1 })
			io.WriteString(c.conn, fmt.Sprintf("HEAD %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr))
			r2 := s.publish(path, "second")
			if resp, body := c.answer(); resp.StatusCode != http.StatusOK || body != "second" {
				t.Fatalf("second poll on the connection: %s %q", resp.Status, body)
			}
			c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			head, err := http.ReadResponse(c.br, &http.Request{Method: http.MethodHead})
			if err != nil || head.StatusCode != http.StatusNoContent || head.Header.Get("Comet-Cursor") != r2.Cursor {
				t.Fatalf("pipelined HEAD: %v, %v", head, err)
			}

			// Expiry answers 204 with the cursor, and keeps the connection.
			c.send(path, r2.Cursor)
			resp, _ := c.answer()
			if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Comet-Cursor") != r2.Cursor || resp.Close {
				t.Fatalf("expired poll: %s, cursor %q, close %v", resp.Status, resp.Header.Get("Comet-Cursor"), resp.Close)
			}

			for _, c := range clients {
				c.conn.Close()
			}
			waitFor(t, "every poll to be freed", func() bool { return hub.SubscriberCount() == 0 })
			http.DefaultClient.CloseIdleConnections()
			waitFor(t, "goroutines to return to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
		})
	}
}

// TestBackToBackEventsReachEveryDetachedPoll publishes events back to back
// to long polls that come straight back for the next one. A poll answered
// by one event is often still being handed back when the next event's
// fan-out reaches it; that must not touch the connection once the server
// has it again (a late wake-up used to cut the next poll short with an
// empty 200). Every client must get every event, in order.
func TestBackToBackEventsReachEveryDetachedPoll(t *testing.T) {
	const clients, events = 200, 30
	s := startCaddy(t, "comet {\n\t\thistory 100\n\t}", `comet /lp {
		expiration 10s
	}`)
	hub := s.hub(DefaultHubName)
	start := s.position("/lp")
	transport := &http.Transport{MaxIdleConnsPerHost: clients}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 15 * time.Second}

	got := make([][]string, clients)
	problems := make(chan string, clients)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			cursor := start
			for len(got[c]) < events {
				req, _ := http.NewRequest(http.MethodGet, s.base+"/lp", nil)
				req.Header.Set("Last-Event-ID", cursor)
				resp, err := client.Do(req)
				if err != nil {
					problems <- fmt.Sprintf("client %d: %v", c, err)
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK || len(body) == 0 {
					problems <- fmt.Sprintf("client %d after %d events: %s %q (%v)", c, len(got[c]), resp.Status, body, err)
					return
				}
				got[c] = append(got[c], string(body))
				cursor = resp.Header.Get("Comet-Cursor")
			}
		})
	}
	waitFor(t, "every client to park", func() bool { return hub.SubscriberCount() == clients })
	for e := range events {
		if _, err := hub.Publish("/lp", Event{Data: []byte(strconv.Itoa(e))}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	for c, seen := range got {
		for e, data := range seen {
			if data != strconv.Itoa(e) {
				t.Fatalf("client %d: event %d is %q", c, e, data)
			}
		}
	}
}

// TestPollsPipelinedBehindADetachedPollStayDetached has clients send their
// next poll together with the one that parks, so that the server has read
// both when it takes the connection over. It keeps the second for when it
// hands the connection back; once served, that poll must be detached too,
// holding no goroutine: the connection handed back must not stay on the
// ordinary path for good (it once did, which doubled the CPU cost of long
// polls in the benchmark).
func TestPollsPipelinedBehindADetachedPollStayDetached(t *testing.T) {
	const polls = 50
	s := startCaddy(t, "", `comet /lp {
		expiration 5s
	}`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	cursor := s.position("/lp")
	baseline := runtime.NumGoroutine()
	clients := make([]*rawPoll, polls)
	for i := range clients {
		clients[i] = dialPoll(t, addr)
		// The second poll, without a cursor, waits for the event after
		// the one that answers the first.
		get := "GET /lp HTTP/1.1\r\nHost: " + addr + "\r\n"
		io.WriteString(clients[i].conn, get+"Last-Event-ID: "+cursor+"\r\n\r\n"+get+"\r\n")
	}
	waitFor(t, "every poll to park", func() bool { return hub.SubscriberCount() == polls })

	first := s.publish("/lp", "first")
	for i, c := range clients {
		if resp, body := c.answer(); resp.StatusCode != http.StatusOK || body != "first" || resp.Close {
			t.Fatalf("poll %d: %s %q, close %v", i, resp.Status, body, resp.Close)
		}
	}
	waitFor(t, "every pipelined poll to park", func() bool { return hub.SubscriberCount() == polls })
	time.Sleep(100 * time.Millisecond)
	perPoll := float64(runtime.NumGoroutine()-baseline) / polls
	t.Logf("%.2f goroutines per parked pipelined poll", perPoll)
	if perPoll > 0.1 {
		t.Errorf("%.2f goroutines per parked pipelined poll, want none: it was not detached", perPoll)
	}

	second := s.publish("/lp", "second")
	for i, c := range clients {
		resp, body := c.answer()
		if resp.StatusCode != http.StatusOK || body != "second" || resp.Header.Get("Comet-Cursor") != second.Cursor {
			t.Fatalf("pipelined poll %d after %s: %s %q, cursor %q", i, first.Cursor, resp.Status, body, resp.Header.Get("Comet-Cursor"))
		}
		c.conn.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "goroutines to return to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}

// TestDetachedPollsAreFreedWhenTheirClientLeaves parks detached long polls,
// which have no goroutine reading their socket, and closes half of their
// connections: those must be freed at once, not at their expiration (a
// minute here), and the others still answered.
func TestDetachedPollsAreFreedWhenTheirClientLeaves(t *testing.T) {
	const polls = 40
	s := startCaddy(t, "", `comet /lp {
		expiration 1m
	}`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")
	cursor := s.position("/lp")
	clients := make([]*rawPoll, polls)
	for i := range clients {
		clients[i] = dialPoll(t, addr)
		clients[i].send("/lp", cursor)
	}
	waitFor(t, "every poll to park", func() bool { return hub.SubscriberCount() == polls })
	for _, c := range clients[polls/2:] {
		c.conn.Close()
	}
	waitFor(t, "the polls whose client left to be freed", func() bool { return hub.SubscriberCount() == polls/2 })

	s.publish("/lp", "still here")
	for i, c := range clients[:polls/2] {
		if resp, body := c.answer(); resp.StatusCode != http.StatusOK || body != "still here" {
			t.Fatalf("poll %d: %s %q", i, resp.Status, body)
		}
	}
}
