// Command bench is a load tool for a comet server on this machine: it parks
// N subscribers on one context (long polls with cursors, or SSE streams),
// publishes events, and reports connect time, server memory per subscriber,
// fan-out time per event, delivery latency and events lost.
//
//	go run ./bench -url http://127.0.0.1:8080/bench -subscribers 10000 -transport sse -pid $(pidof caddy)
//
// With -protocol nchan it loads Nchan (bench/nchan/run.sh) the same way:
// Nchan long polls resume with If-Modified-Since and If-None-Match rather
// than a cursor.
//
// With -soak it runs a soak instead (see soak.go): clients connect and
// leave on many contexts while events are published, and the server's
// goroutines and heap are compared with their baseline afterwards.
//
//	go run ./bench -soak 10m -url http://127.0.0.1:9911/soak -subscribers 1000 -interval 20ms -timeout 15m
//
// Over HTTPS (an https:// -url, trusting the certificate in -ca), it speaks
// HTTP/1.1, or with -h2 HTTP/2 and with -h3 HTTP/3 (QUIC), with one
// connection per subscriber, as separate browsers would. The publisher
// speaks HTTP/1.1 over TLS in each.
//
// It only ever targets loopback addresses, holds at most 20,000 connections,
// and stops by itself after -timeout.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go/http3"
)

const maxSubscribers = 20000

// bearerToken is -token, which every request carries.
var bearerToken string

// authorize adds the token, if there is one, to a request.
func authorize(req *http.Request) {
	if bearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+bearerToken)
	}
}

type config struct {
	url      string
	protocol string
	// server names the server in the report: the protocol unless given
	// (the floor speaks comet's).
	server      string
	subscribers int
	transport   string
	events      int
	publish     bool
	publishURL  string // where events are published, when not url
	interval    time.Duration
	payload     int
	pids        string
	timeout     time.Duration
	dialBatch   int
	ca          string // PEM certificate to trust for an https:// url
	h2          bool   // HTTP/2, one connection per subscriber
	h3          bool   // HTTP/3, one QUIC connection per subscriber
	token       string // sent in Authorization with every request, for a route with auth

	// The sustained scenario (sustained.go) instead of one fan-out.
	rate       float64 // events per second; 0: not this scenario
	duration   time.Duration
	publishers int
	batch      int // events per publish request (comet's admin API batches)
	multiplex  int // contexts each subscriber follows on its connection

	// A soak run (soak.go) instead of a fan-out measurement.
	soak     time.Duration
	admin    string
	contexts int
	stay     time.Duration
	settle   time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.url, "url", "http://127.0.0.1:8080/bench", "comet context to subscribe and publish to (loopback only)")
	flag.IntVar(&c.subscribers, "subscribers", 1000, fmt.Sprintf("subscribers to park (at most %d); 0 with -rate measures the publishes alone", maxSubscribers))
	flag.StringVar(&c.transport, "transport", "longpoll", "longpoll, sse or websocket")
	flag.StringVar(&c.protocol, "protocol", "comet", "comet or nchan")
	flag.StringVar(&c.server, "server", "", "the server's name in the report (default: the protocol; bench/floor speaks comet's)")
	flag.StringVar(&c.publishURL, "publish-url", "", "publish to this URL instead of -url: the same context on another node of a cluster, say")
	flag.IntVar(&c.events, "events", 20, "events to publish")
	flag.BoolVar(&c.publish, "publish", true, "publish the events; false: only subscribe, and wait for -events events another run publishes (to another node of a cluster, say)")
	flag.DurationVar(&c.interval, "interval", 500*time.Millisecond, "pause between events; 0 publishes back to back")
	flag.IntVar(&c.payload, "payload", 64, "payload size in bytes")
	flag.StringVar(&c.pids, "pid", "", "server process ids, comma-separated (nginx: its workers), to report memory per subscriber")
	flag.DurationVar(&c.timeout, "timeout", 3*time.Minute, "stop after this long, whatever happens")
	flag.IntVar(&c.dialBatch, "dial-batch", 500, "subscribers connecting at once")
	flag.StringVar(&c.ca, "ca", "", "https: the PEM certificate to trust (the server's own, self-signed)")
	flag.BoolVar(&c.h2, "h2", false, "https: speak HTTP/2, with one connection per subscriber (default: HTTP/1.1)")
	flag.BoolVar(&c.h3, "h3", false, "https: speak HTTP/3, with one QUIC connection per subscriber")
	flag.StringVar(&c.token, "token", "", "a token for a route with auth, sent in Authorization (caddy comet-token makes one)")
	flag.DurationVar(&c.soak, "soak", 0, "run a soak for this long instead: -subscribers clients connect and leave without pause")
	flag.StringVar(&c.admin, "admin", "http://127.0.0.1:2019", "soak: the server's admin API, to read its goroutines and heap")
	flag.IntVar(&c.contexts, "contexts", 50, "soak, and with -rate: contexts under -url to subscribe and publish to (-url/0, -url/1...)")
	flag.Float64Var(&c.rate, "rate", 0, "run the sustained scenario: publish this many events a second, round-robin over -contexts")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "with -rate: how long to publish")
	flag.IntVar(&c.publishers, "publishers", 16, "with -rate: concurrent publishers")
	flag.IntVar(&c.multiplex, "multiplex", 1, "comet: each subscriber follows this many contexts on one connection, -url's query parameter c repeated (c=0 ... c=N-1); events go to -url's")
	flag.IntVar(&c.batch, "batch", 1, "with -rate: events per publish; over 1, comet's admin API (-admin) gets them as batches")
	flag.DurationVar(&c.stay, "stay", 3*time.Second, "soak: the longest a visit lasts")
	flag.DurationVar(&c.settle, "settle", 15*time.Second, "soak: how long to wait after the soak before comparing with the baseline")
	flag.Parse()
	bearerToken = c.token
	if err := c.check(); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if c.soak > 0 {
		if c.soak+c.settle+time.Minute > c.timeout {
			log.Fatalf("-timeout %v leaves no room for a %v soak", c.timeout, c.soak)
		}
		r, err := soak(ctx, c)
		if err != nil {
			log.Fatal(err)
		}
		r.print(os.Stdout, c)
		return
	}
	if c.rate > 0 {
		r, err := sustained(ctx, c)
		if err != nil {
			log.Fatal(err)
		}
		r.print(os.Stdout, c)
		return
	}
	r, err := run(ctx, c)
	if err != nil {
		log.Fatal(err)
	}
	r.print(os.Stdout, c)
}

func (c config) check() error {
	if err := checkLoopback(c.url); err != nil {
		return err
	}
	if c.publishURL != "" {
		if err := checkLoopback(c.publishURL); err != nil {
			return err
		}
	}
	if c.batch > 1 {
		if err := checkLoopback(c.admin); err != nil {
			return err
		}
	}
	if c.soak > 0 {
		if c.subscribers < 1 || c.subscribers > maxSubscribers {
			return fmt.Errorf("subscribers must be from 1 to %d", maxSubscribers)
		}
		return c.checkSoak()
	}
	switch {
	case c.subscribers < 0 || c.subscribers > maxSubscribers || (c.subscribers == 0 && c.rate == 0):
		return fmt.Errorf("subscribers must be from 1 to %d (0 only with -rate: publishes alone)", maxSubscribers)
	case c.transport != "longpoll" && c.transport != "sse" && c.transport != "websocket":
		return errors.New("transport must be longpoll, sse or websocket")
	case c.transport == "websocket" && (c.h2 || c.h3):
		return errors.New("websocket is over HTTP/1.1 here")
	case c.protocol != "comet" && c.protocol != "nchan":
		return errors.New("protocol must be comet or nchan")
	case c.events < 1 || c.payload < 32:
		return errors.New("events must be at least 1 and payload at least 32 bytes")
	case c.rate > 0 && (c.contexts < 1 || c.publishers < 1 || c.duration <= 0 || c.rate*c.duration.Seconds() < 1):
		return errors.New("-rate needs -contexts, -publishers and a -duration long enough for one event")
	case c.batch < 1 || (c.batch > 1 && (c.rate == 0 || c.protocol != "comet")):
		return errors.New("-batch needs -rate and comet (Nchan has no batch publishing)")
	case c.rate > 0 && c.subscribers+c.publishers+10 > maxSubscribers:
		return fmt.Errorf("subscribers and publishers must stay under %d connections", maxSubscribers)
	case c.publishURL != "" && (!c.publish || c.batch > 1):
		return errors.New("-publish-url needs -publish, and batches go to -admin")
	case (c.h2 || c.h3) && !strings.HasPrefix(c.url, "https://"):
		return errors.New("-h2 and -h3 need an https:// url")
	case c.h2 && c.h3:
		return errors.New("-h2 or -h3, not both")
	}
	return nil
}

// httpTransport makes the HTTP transport of a client. Over HTTP/1.1 one
// transport serves every subscriber, a connection each; over HTTP/2 each
// subscriber gets its own, or all of them would share one connection.
func (c config) httpTransport(conns int) (*http.Transport, error) {
	tlsConfig, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	t := &http.Transport{
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
		TLSClientConfig:     tlsConfig,
		// HTTP/1.1 unless asked: a non-nil, empty map turns HTTP/2 off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	if c.h2 {
		t.TLSNextProto = nil
		t.ForceAttemptHTTP2 = true
	}
	return t, nil
}

// ownTransport is the transport of a subscriber that has a connection of
// its own: over HTTP/2, or over HTTP/3 (a QUIC connection, on a UDP
// socket of its own).
func (c config) ownTransport() (http.RoundTripper, error) {
	if !c.h3 {
		return c.httpTransport(1)
	}
	tlsConfig, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &http3.Transport{TLSClientConfig: tlsConfig, DisableCompression: true}, nil
}

// tlsConfig trusts the certificate in -ca, if given.
func (c config) tlsConfig() (*tls.Config, error) {
	if c.ca == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.ca)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.ca)
	}
	return &tls.Config{RootCAs: roots}, nil
}

// result is what one run measured.
type result struct {
	connect     time.Duration
	rssBefore   int64 // bytes; 0 without -pid
	rssParked   int64
	serverCPU   time.Duration   // from the first publish to the last delivery; 0 without -pid
	fanOut      []time.Duration // per event: publish to the last delivery
	publishTime []time.Duration // per event: until the publish was answered
	latencies   []time.Duration // per delivery: publish to receipt
	lost        int
	clientErrs  int64
	deliveredOK int64
}

// run connects the subscribers, publishes, and waits for the deliveries.
func run(ctx context.Context, c config) (*result, error) {
	shared, err := c.httpTransport(c.subscribers + 10)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: shared}
	tlsConfig := shared.TLSClientConfig
	subURL, err := c.subscriptionURL()
	if err != nil {
		return nil, err
	}
	var start string
	if c.protocol == "comet" {
		if start, err = currentCursor(ctx, client, subURL); err != nil {
			return nil, err
		}
	}
	r := &result{rssBefore: rss(c.pids)}

	// received[s][e] is when subscriber s got event e, in Unix
	// nanoseconds (zero: not yet); subscribers write it as the run reads it.
	received := make([][]atomic.Int64, c.subscribers)
	for i := range received {
		received[i] = make([]atomic.Int64, c.events)
	}
	sent := make([]atomic.Int64, c.events)
	var errs atomic.Int64
	var attached sync.WaitGroup
	var done sync.WaitGroup
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()

	began := time.Now()
	for batch := 0; batch < c.subscribers; batch += c.dialBatch {
		for s := batch; s < min(batch+c.dialBatch, c.subscribers); s++ {
			subClient := client
			if c.h2 || c.h3 {
				own, err := c.ownTransport()
				if err != nil {
					return nil, err
				}
				subClient = &http.Client{Transport: own}
			}
			attached.Add(1)
			done.Go(func() {
				sub := subscriber{client: subClient, url: subURL, nchan: c.protocol == "nchan", cursor: start, got: received[s], errs: &errs, sent: sent}
				switch c.transport {
				case "sse":
					sub.stream(subCtx, &attached)
				case "websocket":
					sub.websocket(subCtx, &attached, tlsConfig)
				default:
					sub.poll(subCtx, &attached)
				}
			})
		}
		attached.Wait()
	}
	r.connect = time.Since(began)
	time.Sleep(time.Second) // let the server settle before reading its memory
	r.rssParked = rss(c.pids)

	cpuBefore := cpuTime(c.pids)
	published := make([]time.Time, c.events)
	if c.publish {
		for e := range c.events {
			published[e] = time.Now()
			if err := publish(ctx, client, c.publishTarget(), e, c.payload); err != nil {
				return nil, fmt.Errorf("publishing event %d: %w", e, err)
			}
			r.publishTime = append(r.publishTime, time.Since(published[e]))
			if c.interval > 0 {
				time.Sleep(c.interval)
			}
		}
	} else {
		fmt.Fprintln(os.Stderr, "attached; waiting for events published elsewhere")
		waitForFirst(ctx, received)
	}
	waitForAll(ctx, received)
	if !c.publish {
		// Each event's publish time is the one its payload carries.
		for e := range c.events {
			published[e] = time.Unix(0, sent[e].Load())
		}
	}
	r.serverCPU = cpuTime(c.pids) - cpuBefore
	stopSubs()
	done.Wait()

	r.clientErrs = errs.Load()
	for e := range c.events {
		var last time.Time
		for s := range received {
			ns := received[s][e].Load()
			if ns == 0 {
				r.lost++
				continue
			}
			at := time.Unix(0, ns)
			r.deliveredOK++
			r.latencies = append(r.latencies, at.Sub(published[e]))
			if at.After(last) {
				last = at
			}
		}
		if !last.IsZero() {
			r.fanOut = append(r.fanOut, last.Sub(published[e]))
		}
	}
	return r, nil
}

// waitForFirst waits until some subscriber has some event, or ctx ends.
func waitForFirst(ctx context.Context, received [][]atomic.Int64) {
	for ctx.Err() == nil {
		for s := range received {
			for j := range received[s] {
				if received[s][j].Load() != 0 {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitForAll waits until every subscriber has every event meant for it
// (every slot of received is set), or no new one arrived for five seconds.
func waitForAll(ctx context.Context, received [][]atomic.Int64) {
	lastCount, quietSince := -1, time.Now()
	for ctx.Err() == nil {
		count, total := 0, 0
		for s := range received {
			for j := range received[s] {
				total++
				if received[s][j].Load() != 0 {
					count++
				}
			}
		}
		if count == total {
			return
		}
		if count != lastCount {
			lastCount, quietSince = count, time.Now()
		} else if time.Since(quietSince) > 5*time.Second {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rss returns the resident memory of the processes, in bytes, from /proc.
func rss(pids string) int64 {
	var total int64
	for pid := range strings.SplitSeq(pids, ",") {
		if pid == "" {
			continue
		}
		data, err := os.ReadFile("/proc/" + strings.TrimSpace(pid) + "/status")
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(data)) {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				total += kb * 1024
			}
		}
	}
	return total
}

// clockTick is the unit of /proc/<pid>/stat's times: USER_HZ, 100 on
// Linux.
const clockTick = 10 * time.Millisecond

// cpuTime returns the CPU time, user and system, the processes have used.
func cpuTime(pids string) time.Duration {
	var total time.Duration
	for pid := range strings.SplitSeq(pids, ",") {
		if pid == "" {
			continue
		}
		data, err := os.ReadFile("/proc/" + strings.TrimSpace(pid) + "/stat")
		if err != nil {
			continue
		}
		// The command name, in parentheses, may hold spaces: fields are
		// counted after it. utime and stime are fields 14 and 15.
		_, rest, _ := strings.Cut(string(data), ") ")
		fields := strings.Fields(rest)
		if len(fields) < 13 {
			continue
		}
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		total += time.Duration(utime+stime) * clockTick
	}
	return total
}

func (r *result) print(w io.Writer, c config) {
	slices.Sort(r.latencies)
	slices.Sort(r.fanOut)
	slices.Sort(r.publishTime)
	pct := func(d []time.Duration, p float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, int(float64(len(d))*p))]
	}
	fmt.Fprintf(w, "server               %s\n", c.serverName())
	fmt.Fprintf(w, "transport            %s\n", c.transport)
	if proto, ok := protocolSeen.Load().(string); ok {
		fmt.Fprintf(w, "protocol             %s over %s\n", proto, strings.SplitN(c.url, ":", 2)[0])
	}
	fmt.Fprintf(w, "subscribers          %d\n", c.subscribers)
	fmt.Fprintf(w, "connect time         %v\n", r.connect.Round(time.Millisecond))
	if r.rssParked > 0 {
		fmt.Fprintf(w, "server RSS           %.1f MiB before, %.1f MiB parked: %.1f KiB per subscriber\n",
			float64(r.rssBefore)/(1<<20), float64(r.rssParked)/(1<<20), float64(r.rssParked-r.rssBefore)/1024/float64(c.subscribers))
	}
	fmt.Fprintf(w, "fan-out per event    median %v, max %v (%d events)\n",
		roundLatency(pct(r.fanOut, 0.5)), roundLatency(pct(r.fanOut, 1)), len(r.fanOut))
	fmt.Fprintf(w, "publish answered in  median %v, max %v\n",
		pct(r.publishTime, 0.5).Round(100*time.Microsecond), pct(r.publishTime, 1).Round(100*time.Microsecond))
	fmt.Fprintf(w, "delivery latency     p50 %v, p99 %v, max %v\n",
		roundLatency(pct(r.latencies, 0.5)), roundLatency(pct(r.latencies, 0.99)), roundLatency(pct(r.latencies, 1)))
	fmt.Fprintf(w, "deliveries           %d of %d, lost %d\n", r.deliveredOK, int64(c.subscribers)*int64(c.events), r.lost)
	if r.serverCPU > 0 && r.deliveredOK > 0 {
		fmt.Fprintf(w, "server CPU           %v, %.1f µs per delivery\n",
			r.serverCPU, float64(r.serverCPU.Microseconds())/float64(r.deliveredOK))
	}
	fmt.Fprintf(w, "client errors        %d\n", r.clientErrs)
	kinds := 0
	errorKinds.Range(func(kind, n any) bool {
		// Error texts name ports and addresses: show a few, not every one.
		if kinds++; kinds <= 5 {
			fmt.Fprintf(w, "  %6d × %s\n", n.(*atomic.Int64).Load(), kind)
		}
		return true
	})
}

// roundLatency keeps a tenth of a millisecond below 10 ms, where a whole
// millisecond would hide what a hop (Redis, say) adds.
// serverName is how the report names the server.
func (c config) serverName() string {
	if c.server != "" {
		return c.server
	}
	return c.protocol
}

func roundLatency(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
