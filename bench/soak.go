package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A soak run: for -soak, -subscribers clients connect and leave without
// pause, each visit on a random context under -url, with a random transport
// (long poll, SSE or NDJSON), for a random time up to -stay, while an event
// is published to a random context every -interval. Before and after, it
// reads the server's goroutines and heap (after a collection) through the
// admin API at -admin, and says whether they came back to the baseline
// once every client has left and the contexts' history has expired.

// serverState is what the admin API tells of the server's process.
type serverState struct {
	goroutines int
	heapAlloc  uint64 // bytes live after a forced collection
	rss        int64
}

type soakResult struct {
	visits, published, clientErrs int64
	peakGoroutines                int
	before, after                 serverState
}

func (c config) checkSoak() error {
	if c.protocol != "comet" {
		return errors.New("a soak run is for comet only")
	}
	if c.admin == "" {
		return errors.New("a soak run needs -admin, the server's admin API, to read its goroutines and heap")
	}
	if err := checkLoopback(c.admin); err != nil {
		return err
	}
	if c.contexts < 1 || c.stay <= 0 || c.interval <= 0 {
		return errors.New("a soak run needs -contexts, -stay and -interval above zero")
	}
	return nil
}

// soak runs the clients and the publisher for c.soak, then waits for the
// server to settle and reads its state.
func soak(ctx context.Context, c config) (*soakResult, error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.subscribers + 10, DisableCompression: true}}
	r := &soakResult{}
	var err error
	if r.before, err = readServerState(ctx, client, c); err != nil {
		return nil, err
	}
	fmt.Printf("baseline: %d goroutines, %.1f MiB heap, %.1f MiB RSS\n",
		r.before.goroutines, mib(r.before.heapAlloc), mib(uint64(r.before.rss)))

	runCtx, stop := context.WithTimeout(ctx, c.soak)
	defer stop()
	var wg sync.WaitGroup
	var visits, published, errs atomic.Int64
	for range c.subscribers {
		wg.Go(func() {
			for runCtx.Err() == nil {
				if err := visit(runCtx, client, c); err != nil && runCtx.Err() == nil {
					errs.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
				visits.Add(1)
			}
		})
	}
	wg.Go(func() {
		for e := 0; runCtx.Err() == nil; e++ {
			target := fmt.Sprintf("%s/%d", c.url, rand.IntN(c.contexts))
			if err := publish(runCtx, client, target, e, c.payload); err == nil {
				published.Add(1)
			} else if runCtx.Err() == nil {
				errs.Add(1)
			}
			time.Sleep(c.interval)
		}
	})
	wg.Go(func() { r.peakGoroutines = reportProgress(runCtx, client, c, &visits, &published, &errs) })
	wg.Wait()
	client.CloseIdleConnections()
	r.visits, r.published, r.clientErrs = visits.Load(), published.Load(), errs.Load()

	// Give the server the time to see every client gone and to collect
	// contexts whose history expired, then compare.
	fmt.Printf("soak over; waiting %v for the server to settle\n", c.settle)
	select {
	case <-time.After(c.settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.after, err = readServerState(ctx, client, c); err != nil {
		return nil, err
	}
	return r, nil
}

// visit is one client's stay: it subscribes to a random context with a
// random transport and leaves after a random time, whatever it is doing.
func visit(ctx context.Context, client *http.Client, c config) error {
	stay, leave := context.WithTimeout(ctx, time.Duration(rand.Int64N(int64(c.stay))))
	defer leave()
	target := fmt.Sprintf("%s/%d", c.url, rand.IntN(c.contexts))
	accept := []string{"", "text/event-stream", "application/x-ndjson"}[rand.IntN(3)]
	cursor := ""
	for stay.Err() == nil {
		req, _ := http.NewRequestWithContext(stay, http.MethodGet, target, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		if cursor != "" {
			req.Header.Set("Last-Event-ID", cursor)
		}
		resp, err := client.Do(req)
		if err != nil {
			if stay.Err() != nil {
				return nil // left while connecting or waiting
			}
			return err
		}
		_, err = io.Copy(io.Discard, bufio.NewReader(resp.Body))
		resp.Body.Close()
		switch {
		case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent:
			return fmt.Errorf("GET %s: %s", target, resp.Status)
		case err != nil && stay.Err() == nil:
			return err
		}
		cursor = resp.Header.Get("Comet-Cursor")
	}
	return nil
}

// reportProgress prints a line every minute and returns the most server
// goroutines it saw.
func reportProgress(ctx context.Context, client *http.Client, c config, visits, published, errs *atomic.Int64) int {
	peak := 0
	began := time.Now()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return peak
		case <-tick.C:
		}
		g, err := serverGoroutines(ctx, client, c.admin)
		if err == nil {
			peak = max(peak, g)
		}
		if n%6 == 0 {
			fmt.Printf("%v: %d visits, %d events, %d client errors, %d server goroutines, %.1f MiB RSS\n",
				time.Since(began).Round(time.Second), visits.Load(), published.Load(), errs.Load(), g, mib(uint64(rss(c.pids))))
		}
	}
}

// readServerState forces collections through the heap profile endpoint,
// then reads the live heap and the goroutine count. It takes two: what
// sync.Pool caches (net/http's buffers among them) survives one.
func readServerState(ctx context.Context, client *http.Client, c config) (serverState, error) {
	var st serverState
	for range 2 {
		if _, err := adminGet(ctx, client, c.admin+"/debug/pprof/heap?gc=1"); err != nil {
			return st, err
		}
	}
	vars, err := adminGet(ctx, client, c.admin+"/debug/vars")
	if err != nil {
		return st, err
	}
	var v struct {
		Memstats struct{ HeapAlloc uint64 } `json:"memstats"`
	}
	if err := json.Unmarshal(vars, &v); err != nil {
		return st, fmt.Errorf("reading /debug/vars: %w", err)
	}
	st.heapAlloc = v.Memstats.HeapAlloc
	st.goroutines, err = serverGoroutines(ctx, client, c.admin)
	st.rss = rss(c.pids)
	return st, err
}

func serverGoroutines(ctx context.Context, client *http.Client, admin string) (int, error) {
	body, err := adminGet(ctx, client, admin+"/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	// The first line reads "goroutine profile: total N".
	first, _, _ := strings.Cut(string(body), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		return 0, fmt.Errorf("reading the goroutine profile: %q", first)
	}
	return n, nil
}

func adminGet(ctx context.Context, client *http.Client, target string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return body, err
}

func (r *soakResult) print(w io.Writer, c config) {
	fmt.Fprintf(w, "soak                 %v, %d clients, %d contexts, visits up to %v, an event every %v\n",
		c.soak, c.subscribers, c.contexts, c.stay, c.interval)
	fmt.Fprintf(w, "visits               %d (%d client errors)\n", r.visits, r.clientErrs)
	fmt.Fprintf(w, "events published     %d\n", r.published)
	fmt.Fprintf(w, "server goroutines    %d before, %d at most during, %d after\n", r.before.goroutines, r.peakGoroutines, r.after.goroutines)
	fmt.Fprintf(w, "server heap (live)   %.1f MiB before, %.1f MiB after\n", mib(r.before.heapAlloc), mib(r.after.heapAlloc))
	if r.before.rss > 0 {
		fmt.Fprintf(w, "server RSS           %.1f MiB before, %.1f MiB after\n", mib(uint64(r.before.rss)), mib(uint64(r.after.rss)))
	}
	// A few goroutines come and go with the admin API's own requests. The
	// Go runtime keeps the descriptors of its most goroutines ever for
	// reuse, and maps keep the size they grew to, so the heap keeps a
	// little that depends on the peak of connections, not on the number
	// of visits: a leak would grow with the visits, a few KiB each.
	grown := int64(r.after.heapAlloc) - int64(r.before.heapAlloc)
	fmt.Fprintf(w, "heap kept            %.1f MiB, %.1f bytes per visit\n", float64(grown)/(1<<20), float64(grown)/float64(max(r.visits, 1)))
	back := r.after.goroutines <= r.before.goroutines+5 && grown <= 4<<20
	fmt.Fprintf(w, "back to baseline     %v (goroutines within 5, heap within 4 MiB)\n", back)
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// checkLoopback refuses any address but this machine's.
func checkLoopback(target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	ip := net.ParseIP(u.Hostname())
	if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%s is not a loopback address: this tool only loads servers on this machine", u.Hostname())
	}
	return nil
}
