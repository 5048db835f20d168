package main

// The sustained scenario (-rate): subscribers spread over many contexts
// (-contexts, subscriber s on context s mod K, at <url>/<k>), and events
// published at a steady rate for -duration by -publishers concurrent
// publishers, round-robin over the contexts (event i to context i mod K),
// each sent at its scheduled time whatever the server's pace. It reports
// deliveries per second, losses, latency p50/p99 from the scheduled
// publish to the receipt, and the server's CPU time per delivery over the
// publishing and the draining after it.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// sustainedResult is what a sustained run measured.
type sustainedResult struct {
	events, expected, delivered int
	elapsed                     time.Duration // from the first publish to the last delivery
	latencies                   []time.Duration
	publishErrs                 int64
	clientErrs                  int64
	serverCPU                   time.Duration
}

// contextURL is the URL of context k under the run's url.
func (c config) contextURL(k int) string { return c.url + "/" + strconv.Itoa(k) }

func sustained(ctx context.Context, c config) (*sustainedResult, error) {
	transport, err := c.httpTransport(c.subscribers + c.publishers + 10)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: transport}
	events := int(c.rate * c.duration.Seconds())
	perContext := (events + c.contexts - 1) / c.contexts

	// The cursor of each context now, so that long polls miss nothing
	// published from the start.
	cursors := make([]string, c.contexts)
	if c.protocol == "comet" && c.transport == "longpoll" {
		for k := range cursors {
			if cursors[k], err = currentCursor(ctx, client, c.contextURL(k)); err != nil {
				return nil, err
			}
		}
	}

	received := make([][]atomic.Int64, c.subscribers)
	var errs atomic.Int64
	var attached, done sync.WaitGroup
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	for batch := 0; batch < c.subscribers; batch += c.dialBatch {
		for s := batch; s < min(batch+c.dialBatch, c.subscribers); s++ {
			k := s % c.contexts
			received[s] = make([]atomic.Int64, perContext)
			sub := subscriber{
				client: client, url: c.contextURL(k), nchan: c.protocol == "nchan", cursor: cursors[k],
				got: received[s], errs: &errs, context: k, contexts: c.contexts,
			}
			attached.Add(1)
			done.Go(func() {
				if c.transport == "sse" {
					sub.stream(subCtx, &attached)
				} else {
					sub.poll(subCtx, &attached)
				}
			})
		}
		attached.Wait()
	}
	time.Sleep(time.Second) // let the server settle

	r := &sustainedResult{events: events}
	cpuBefore := cpuTime(c.pids)
	start := time.Now().Add(100 * time.Millisecond)
	scheduled := func(i int) time.Time { return start.Add(time.Duration(float64(i) / c.rate * float64(time.Second))) }
	var publishErrs atomic.Int64
	var publishers sync.WaitGroup
	for p := range c.publishers {
		publishers.Go(func() {
			for i := p; i < events && ctx.Err() == nil; i += c.publishers {
				time.Sleep(time.Until(scheduled(i)))
				if err := publish(ctx, client, c.contextURL(i%c.contexts), i, c.payload); err != nil {
					publishErrs.Add(1)
				}
			}
		})
	}
	publishers.Wait()
	waitForAll(ctx, received)
	r.serverCPU = cpuTime(c.pids) - cpuBefore
	stopSubs()
	done.Wait()

	var last time.Time
	for s := range received {
		k := s % c.contexts
		for j := range received[s] {
			i := j*c.contexts + k
			if i >= events {
				break
			}
			r.expected++
			ns := received[s][j].Load()
			if ns == 0 {
				continue
			}
			at := time.Unix(0, ns)
			r.delivered++
			r.latencies = append(r.latencies, at.Sub(scheduled(i)))
			if at.After(last) {
				last = at
			}
		}
	}
	r.elapsed = last.Sub(start)
	r.publishErrs, r.clientErrs = publishErrs.Load(), errs.Load()
	return r, nil
}

func (r *sustainedResult) print(w io.Writer, c config) {
	slices.Sort(r.latencies)
	pct := func(p float64) time.Duration {
		if len(r.latencies) == 0 {
			return 0
		}
		return r.latencies[min(len(r.latencies)-1, int(float64(len(r.latencies))*p))].Round(100 * time.Microsecond)
	}
	fmt.Fprintf(w, "server               %s\n", c.protocol)
	fmt.Fprintf(w, "transport            %s\n", c.transport)
	fmt.Fprintf(w, "subscribers          %d over %d contexts\n", c.subscribers, c.contexts)
	fmt.Fprintf(w, "rate asked           %.0f events/s for %v, %d publishers: %d events\n", c.rate, c.duration, c.publishers, r.events)
	fmt.Fprintf(w, "deliveries           %d of %d, lost %d, %.0f/s\n", r.delivered, r.expected, r.expected-r.delivered,
		float64(r.delivered)/r.elapsed.Seconds())
	fmt.Fprintf(w, "latency              p50 %v, p99 %v\n", pct(0.5), pct(0.99))
	if r.serverCPU > 0 && r.delivered > 0 {
		fmt.Fprintf(w, "server CPU           %v, %.1f µs per delivery\n", r.serverCPU, float64(r.serverCPU.Microseconds())/float64(r.delivered))
	}
	fmt.Fprintf(w, "publish errors       %d\n", r.publishErrs)
	fmt.Fprintf(w, "client errors        %d\n", r.clientErrs)
}
