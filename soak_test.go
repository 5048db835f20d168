package comet

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestChurnLeavesNothingBehind is a short soak: for a few seconds, clients
// of every transport connect and leave on many contexts while events are
// published. Afterwards no subscriber, context or goroutine may be left.
func TestChurnLeavesNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for a few seconds")
	}
	s := startCaddy(t, "comet {\n\t\thistory 20 200ms\n\t}", `comet /churn/* {
		expiration 300ms
		heartbeat 50ms
	}`)
	hub := s.hub(DefaultHubName)
	s.position("/churn/warm-up")
	waitFor(t, "the warm-up context to be collected", func() bool { return hub.ContextCount() == 0 })
	http.DefaultClient.CloseIdleConnections()
	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var requests, published atomic.Int64
	var wg sync.WaitGroup
	const clients, contexts = 40, 8
	accepts := []string{"", "text/event-stream", "application/x-ndjson"}
	for c := range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				// Each visit reads for a random while, then hangs up.
				visit, leave := context.WithTimeout(ctx, time.Duration(rand.IntN(400))*time.Millisecond)
				req, _ := http.NewRequestWithContext(visit, http.MethodGet, fmt.Sprintf("%s/churn/%d", s.base, rand.IntN(contexts)), nil)
				req.Header.Set("Accept", accepts[c%len(accepts)])
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				leave()
				requests.Add(1)
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, err := hub.Publish(fmt.Sprintf("/churn/%d", rand.IntN(contexts)), Event{Data: []byte("tick")}); err == nil {
				published.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	wg.Wait()
	t.Logf("%d requests, %d events in 3s", requests.Load(), published.Load())
	if requests.Load() < 100 || published.Load() < 100 {
		t.Fatalf("the churn did not get going: %d requests, %d events", requests.Load(), published.Load())
	}

	waitFor(t, "every subscriber to detach", func() bool { return hub.SubscriberCount() == 0 })
	waitFor(t, "every context to be collected", func() bool { return hub.ContextCount() == 0 })
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "goroutines to return to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}
