package comet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address ip, one connection per request.
func clientFrom(ip string) *http.Client {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: -1}}
}

// TestOneClientCannotFillTheHub plays issue 31's crowd with the defaults:
// one address opens 400 long polls of 256 new contexts each, which would
// make 102,400 contexts and subscribers, past max_contexts and
// max_subscribers (100,000 each). It gets its share, a tenth of
// max_subscribers, and every request past it is refused with 429 and
// Retry-After; a client at another address still subscribes to a new
// context and publishes to another; and once the crowd leaves, the
// contexts it made are freed within 5 seconds.
func TestOneClientCannotFillTheHub(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 400 connections")
	}
	const crowd, perRequest = 400, DefaultMaxMultiplex
	s := startCaddy(t, "", `comet /m {
		multiplex c
		context /m/{query.c}
		expiration 1m
	}`)
	hub := s.hub(DefaultHubName)
	share := DefaultMaxSubscribers / 10
	held := share / perRequest // requests of the crowd that fit its share

	attacker := clientFrom("127.0.0.2")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var refused, otherAnswers atomic.Int64
	var wg sync.WaitGroup
	for i := range crowd {
		q := url.Values{}
		for j := range perRequest {
			q.Add("c", fmt.Sprintf("crowd-%d-%d", i, j))
		}
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/m?"+q.Encode(), nil)
			resp, err := attacker.Do(req)
			if err != nil {
				return // held until the crowd leaves
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != "" {
				refused.Add(1)
			} else if ctx.Err() == nil {
				otherAnswers.Add(1)
				t.Errorf("a request of the crowd: %s, Retry-After %q; want it held or 429 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
			}
		})
	}
	waitFor(t, "the crowd to be held or refused", func() bool {
		return hub.SubscriberCount() == held*perRequest && refused.Load()+otherAnswers.Load() == crowd-int64(held)
	})
	t.Logf("the crowd: %d requests held (%d subscribers, %d contexts), %d refused with 429",
		held, hub.SubscriberCount(), hub.ContextCount(), refused.Load())

	// Another address subscribes to a new context, and publishes to it and
	// to another new one.
	other := clientFrom("127.0.0.3")
	poll := make(chan string, 1)
	go func() {
		resp, body := sendRequest(t, other, t.Context(), http.MethodGet, s.base+"/m?c=victim", "")
		poll <- resp.Status + " " + body
	}()
	waitFor(t, "the other client's poll to attach", func() bool {
		info, ok := hub.Inspect("/m/victim")
		return ok && info.Subscribers == 1
	})
	for _, c := range []string{"victim", "elsewhere"} {
		if resp, body := sendRequest(t, other, t.Context(), http.MethodPost, s.base+"/m?c="+c, "hello "+c); resp.StatusCode != http.StatusOK {
			t.Errorf("the other client's publish to %s: %s %q", c, resp.Status, body)
		}
	}
	select {
	case got := <-poll:
		if got != "200 OK hello victim" {
			t.Errorf("the other client's poll got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the other client's poll got nothing")
	}

	// The crowd leaves: what it made is freed within 5 seconds.
	cancel()
	wg.Wait()
	waitFor(t, "the crowd's subscribers to leave", func() bool { return hub.SubscriberCount() == 0 })
	left := time.Now()
	for hub.ContextCount() > 2 {
		if time.Since(left) > 5*time.Second {
			t.Fatalf("%d contexts 5 s after the crowd left, want the other client's 2", hub.ContextCount())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the crowd's contexts were freed %v after it left", time.Since(left).Round(time.Millisecond))
	if _, ok := hub.Inspect("/m/elsewhere"); !ok {
		t.Error("the other client's context, which has an event, was freed")
	}
}

// TestAnsweredPollsGiveTheirShareBack makes one client poll again and
// again, one poll at a time, on one connection (answered polls, served in
// place after the first) and on a new connection each (taken over from
// net/http), many more times than its share: every poll is held and
// answered, none refused, since an answered poll gives back what it held
// of the share. (Detached polls kept it, and a client was refused for
// good after max_client_subscribers polls.)
func TestAnsweredPollsGiveTheirShareBack(t *testing.T) {
	const share, polls = 3, 12
	s := startCaddy(t, "comet {\n\t\tmax_client_subscribers "+fmt.Sprint(share)+"\n\t}", `comet /lp`)
	hub := s.hub(DefaultHubName)
	addr := s.base[len("http://"):]
	for _, oneConnection := range []bool{true, false} {
		var c *rawPoll
		for i := range polls {
			if c == nil || !oneConnection {
				c = dialPoll(t, addr)
			}
			c.send("/lp", s.position("/lp"))
			waitFor(t, "the poll to be taken over", func() bool { return watcherCount(hub, "/lp") == 1 })
			s.publish("/lp", fmt.Sprint("event ", i))
			if resp, body := c.answer(); resp.StatusCode != http.StatusOK || body != fmt.Sprint("event ", i) {
				t.Fatalf("one connection %v, poll %d: %s %q", oneConnection, i, resp.Status, body)
			}
			waitFor(t, "the poll to let go of its subscriber", func() bool { return hub.SubscriberCount() == 0 })
		}
	}
}
