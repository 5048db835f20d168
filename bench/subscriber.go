package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The simulated clients: long polls and streams that record what they
// receive, and the publisher's requests.

// subscriber is one simulated client.
type subscriber struct {
	client *http.Client
	url    string
	nchan  bool
	// cursor is comet's, or the SSE id; since and etag are what an Nchan
	// long poll sends back.
	cursor, since, etag string
	got                 []atomic.Int64
	errs                *atomic.Int64
	// sent[e] is when event e was published, in Unix nanoseconds, as its
	// payload says (so that subscribers of a run that does not publish,
	// -publish=false, can time events another process published).
	sent []atomic.Int64
	// In the sustained scenario, the subscriber's context of contexts:
	// it gets events e with e mod contexts = context, in got[e/contexts].
	context, contexts int
}

// protocolSeen is the protocol of the subscribers' answers, as the
// server chose it (HTTP/1.1 or HTTP/2.0), to report with the results.
var protocolSeen atomic.Value // string

// errorKinds keeps a count of each kind of client error, to say what went
// wrong when something did.
var errorKinds sync.Map // string → *atomic.Int64

func (s *subscriber) fail(kind string) {
	s.errs.Add(1)
	n, _ := errorKinds.LoadOrStore(kind, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
}

// subscriptionURL is what subscribers GET: -url, or with -multiplex, -url
// with its query parameter c naming each context.
func (c config) subscriptionURL() (string, error) {
	if c.multiplex <= 1 {
		return c.url, nil
	}
	u, err := url.Parse(c.url)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Del("c")
	for k := range c.multiplex {
		q.Add("c", strconv.Itoa(k))
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// record notes the arrival of an event; payloads start with its number.
// In a multiplexed SSE stream the payload is in the event's JSON line.
func (s *subscriber) record(payload string) {
	if strings.HasPrefix(payload, "{") {
		var line struct {
			Data string `json:"data"`
		}
		if json.Unmarshal([]byte(payload), &line) == nil {
			payload = line.Data
		}
	}
	e, err := strconv.Atoi(strings.SplitN(payload, " ", 2)[0])
	if s.contexts > 1 && err == nil {
		if e%s.contexts != s.context {
			s.fail(fmt.Sprintf("an event of another context: %.24q", payload))
			return
		}
		e /= s.contexts
	}
	if err != nil || e < 0 || e >= len(s.got) {
		s.fail(fmt.Sprintf("a payload that is not an event of this run: %.24q", payload))
		return
	}
	s.got[e].CompareAndSwap(0, time.Now().UnixNano())
	if s.sent != nil {
		if fields := strings.SplitN(payload, " ", 3); len(fields) == 3 {
			if at, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
				s.sent[e].CompareAndSwap(0, at)
			}
		}
	}
}

// poll long-polls with the cursor until ctx ends.
func (s *subscriber) poll(ctx context.Context, attached *sync.WaitGroup) {
	// Attached once the first request is on the wire (the server parks
	// it), or has failed: either way, connecting is over for this one.
	once := sync.OnceFunc(attached.Done)
	defer once()
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
		authorize(req)
		s.setPosition(req)
		resp, err := s.client.Do(withWroteRequest(req, once))
		if err != nil {
			once()
			if ctx.Err() == nil {
				s.fail("poll: " + err.Error())
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		protocolSeen.Store(resp.Proto)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent) {
			s.fail(fmt.Sprintf("poll answered %s (%v)", resp.Status, err))
			continue
		}
		if resp.Header.Get("Comet-Missed") != "" {
			s.fail("poll: Comet-Missed " + resp.Header.Get("Comet-Missed"))
		}
		if resp.StatusCode == http.StatusOK {
			s.record(string(body))
		}
		s.cursor = resp.Header.Get("Comet-Cursor")
		s.since, s.etag = resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")
	}
}

// setPosition puts where the subscriber is on a long poll.
func (s *subscriber) setPosition(req *http.Request) {
	if !s.nchan {
		req.Header.Set("Last-Event-ID", s.cursor)
		return
	}
	if s.since != "" {
		req.Header.Set("If-Modified-Since", s.since)
		req.Header.Set("If-None-Match", s.etag)
	}
}

// stream reads an SSE stream, reconnecting with its last id, until ctx ends.
func (s *subscriber) stream(ctx context.Context, attached *sync.WaitGroup) {
	once := sync.OnceFunc(attached.Done)
	defer once()
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
		authorize(req)
		req.Header.Set("Accept", "text/event-stream")
		if s.cursor != "" {
			req.Header.Set("Last-Event-ID", s.cursor)
		}
		resp, err := s.client.Do(req)
		once() // attached once the stream is open, or has failed to
		if err != nil {
			if ctx.Err() == nil {
				s.errs.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		protocolSeen.Store(resp.Proto)
		lines := bufio.NewScanner(resp.Body)
		lines.Buffer(make([]byte, 4096), 1<<20)
		for lines.Scan() {
			line := lines.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				s.cursor = line[4:]
			case strings.HasPrefix(line, "data: "):
				s.record(line[6:])
			case line == "event: comet-missed":
				s.errs.Add(1)
			}
		}
		resp.Body.Close()
	}
}

// withWroteRequest calls wrote once the request has been sent.
func withWroteRequest(req *http.Request, wrote func()) *http.Request {
	return req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote() },
	}))
}

// currentCursor asks the context's position, so that every subscriber
// starts from the same cursor.
func currentCursor(ctx context.Context, client *http.Client, target string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
	authorize(req)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	cur := resp.Header.Get("Comet-Cursor")
	if cur == "" {
		return "", fmt.Errorf("HEAD %s: %s, no Comet-Cursor: is this a comet route?", target, resp.Status)
	}
	return cur, nil
}

func publish(ctx context.Context, client *http.Client, target string, e, size int) error {
	// The event's number, then when it was published, for subscribers in
	// other processes (-publish=false).
	payload := fmt.Sprintf("%d %d ", e, time.Now().UnixNano())
	payload += strings.Repeat("x", size-len(payload))
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(payload))
	authorize(req)
	req.Header.Set("Content-Type", "text/plain")
	return sendPublish(client, req)
}

// sendPublish sends a publish and reads its answer, which must be a 2xx.
func sendPublish(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}
