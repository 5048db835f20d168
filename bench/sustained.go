package main

// The sustained scenario (-rate): subscribers spread over many contexts
// (-contexts, subscriber s on context s mod K, at <url>/<k>), and events
// published at a steady rate for -duration by -publishers concurrent
// publishers, round-robin over the contexts (event i to context i mod K),
// each sent at its scheduled time whatever the server's pace. It reports
// deliveries per second, losses, latency p50/p99 from the scheduled
// publish to the receipt, and the server's CPU time per delivery over the
// publishing and the draining after it. With -batch N, comet gets the
// events N at a time, through the admin API's batch publishing. With
// -subscribers 0 it measures the publishes alone: the server's CPU time
// per publish, over the publishing.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
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

// publishTarget is the URL events are published to: -publish-url, or the
// run's url.
func (c config) publishTarget() string {
	if c.publishURL != "" {
		return c.publishURL
	}
	return c.url
}

// publishURLOf is the URL events of context k are published to.
func (c config) publishURLOf(k int) string { return c.publishTarget() + "/" + strconv.Itoa(k) }

// origin is the run's url without its path: what precedes a context key.
func (c config) origin() string {
	u, err := url.Parse(c.url)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

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
			// Publisher p sends batches p, p+publishers...: batch b holds
			// events b*batch to b*batch+batch-1, and leaves when its last
			// event is due, as a backend that gathers events would.
			for first := p * c.batch; first < events && ctx.Err() == nil; first += c.publishers * c.batch {
				last := min(first+c.batch, events) - 1
				time.Sleep(time.Until(scheduled(last)))
				var err error
				if c.batch == 1 {
					err = publish(ctx, client, c.publishURLOf(first%c.contexts), first, c.payload)
				} else {
					err = publishBatch(ctx, client, c, first, last)
				}
				if err != nil {
					publishErrs.Add(int64(last - first + 1))
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
	fmt.Fprintf(w, "server               %s\n", c.serverName())
	fmt.Fprintf(w, "transport            %s\n", c.transport)
	fmt.Fprintf(w, "subscribers          %d over %d contexts\n", c.subscribers, c.contexts)
	fmt.Fprintf(w, "rate asked           %.0f events/s for %v, %d publishers: %d events\n", c.rate, c.duration, c.publishers, r.events)
	if c.batch > 1 {
		fmt.Fprintf(w, "batches              %d events each, through %s/comet/publish\n", c.batch, c.admin)
	}
	if c.subscribers == 0 {
		published := int64(r.events) - r.publishErrs
		perPublish := 0.0
		if published > 0 {
			perPublish = float64(r.serverCPU.Microseconds()) / float64(published)
		}
		fmt.Fprintf(w, "publishes            %d, %d refused or failed\n", published, r.publishErrs)
		fmt.Fprintf(w, "server CPU           %v, %.1f µs per publish\n", r.serverCPU, perPublish)
		fmt.Fprintf(w, "summary-publish %s %d %.0f %d %.1f\n", c.serverName(), c.contexts, c.rate, r.publishErrs, perPublish)
		return
	}
	fmt.Fprintf(w, "deliveries           %d of %d, lost %d, %.0f/s\n", r.delivered, r.expected, r.expected-r.delivered,
		float64(r.delivered)/r.elapsed.Seconds())
	fmt.Fprintf(w, "latency              p50 %v, p99 %v\n", pct(0.5), pct(0.99))
	if r.serverCPU > 0 && r.delivered > 0 {
		fmt.Fprintf(w, "server CPU           %v, %.1f µs per delivery\n", r.serverCPU, float64(r.serverCPU.Microseconds())/float64(r.delivered))
	}
	fmt.Fprintf(w, "publish errors       %d\n", r.publishErrs)
	fmt.Fprintf(w, "client errors        %d\n", r.clientErrs)
	// One line for scripts (maxrate.sh): server, transport, contexts, rate,
	// p99 in ms, lost, deliveries/s, µs of server CPU per delivery.
	perDelivery := 0.0
	if r.delivered > 0 {
		perDelivery = float64(r.serverCPU.Microseconds()) / float64(r.delivered)
	}
	fmt.Fprintf(w, "summary %s %s %d %.0f %.1f %d %.0f %.1f\n", c.serverName(), c.transport, c.contexts, c.rate,
		float64(pct(0.99))/float64(time.Millisecond), r.expected-r.delivered+int(r.publishErrs), float64(r.delivered)/r.elapsed.Seconds(), perDelivery)
}

// publishBatch publishes events first to last in one batch through the
// admin API, each to its context as publish would.
func publishBatch(ctx context.Context, client *http.Client, c config, first, last int) error {
	var body bytes.Buffer
	for e := first; e <= last; e++ {
		payload := fmt.Sprintf("%d ", e)
		payload += strings.Repeat("x", max(c.payload-len(payload), 0))
		line, _ := json.Marshal(map[string]string{
			"context": strings.TrimPrefix(c.contextURL(e%c.contexts), c.origin()), "content_type": "text/plain", "data": payload,
		})
		body.Write(line)
		body.WriteByte('\n')
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.admin+"/comet/publish", &body)
	req.Header.Set("Content-Type", "application/vnd.comet.batch+ndjson")
	return sendPublish(client, req)
}
