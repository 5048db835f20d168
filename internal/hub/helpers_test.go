package hub

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The comet package's tests have the same helpers, for hubs behind Caddy.

func testHub(t testing.TB, cfg Config) *Hub {
	t.Helper()
	h := New("test", cfg, nil)
	t.Cleanup(h.Close)
	return h
}

func publishN(t testing.TB, h *Hub, key string, n int) Cursor {
	t.Helper()
	var last Cursor
	for i := 1; i <= n; i++ {
		r, err := h.Publish(key, Event{Data: fmt.Appendf(nil, "event-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		last = r.Cursor
	}
	return last
}

func lastID(t *testing.T, h *Hub, key string) uint64 {
	t.Helper()
	info, ok := h.Inspect(key)
	if !ok {
		return 0
	}
	return info.Cursor.ID
}

// followContext attaches n subscribers to the context, each reading every
// event in a loop as a streaming client would and calling each delivery's
// onDelivery (which may be nil), and returns a function that detaches them
// and waits for them to finish.
func followContext(t testing.TB, h *Hub, key string, n int, onDelivery func()) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		sub, err := h.Subscribe(key)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer sub.Close()
			cur := sub.Start()
			for {
				d, err := sub.Next(ctx, cur)
				if err != nil {
					return
				}
				cur = d.Cursor
				if onDelivery != nil {
					onDelivery()
				}
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// waitFor polls cond until it holds, failing the test after five seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counterValue reads a counter's value.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}
