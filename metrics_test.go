package comet

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// scrape reads the admin /metrics endpoint into series → value, keeping
// only comet's series.
func scrape(t *testing.T, s *testServer) map[string]float64 {
	t.Helper()
	resp, body := doRequest(t, t.Context(), http.MethodGet, s.admin+"/metrics", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	series := map[string]float64{}
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, "caddy_comet_") {
			continue
		}
		name, value, _ := strings.Cut(strings.TrimSpace(line), " ")
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		series[name] = v
	}
	return series
}

// TestMetricsCountAndSurviveAReload checks the series at the admin
// /metrics endpoint, then reloads and checks that the counts carried over
// into the new config's registry and still go up.
func TestMetricsCountAndSurviveAReload(t *testing.T) {
	s := startCaddy(t, "", `comet /c {
		max_message_size 8
	}`)
	before := scrape(t, s)
	// A counter goes up once the server has written the event, which can
	// be a moment after the client has read it: wait for the expected
	// value rather than read it once.
	waitDelta := func(series string, want float64) {
		t.Helper()
		var got float64
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if got = scrape(t, s)[series] - before[series]; got == want {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("%s went up by %v, want %v", series, got, want)
	}

	poll := s.startPoll("/c")
	_, sse := s.openSSE("/c")
	waitFor(t, "two subscribers", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 2 })
	s.publish("/c", "one")
	poll.wait(t)
	nextWithin(t, sse, 5*time.Second)
	s.publish("/c", "two")
	nextWithin(t, sse, 5*time.Second)
	s.do(http.MethodPost, "/c", "far too large")

	for series, want := range map[string]float64{
		`caddy_comet_events_published_total{hub="default"}`:                  2,
		`caddy_comet_deliveries_total{hub="default",transport="longpoll"}`:   1,
		`caddy_comet_deliveries_total{hub="default",transport="sse"}`:        2,
		`caddy_comet_subscribers{hub="default",transport="sse"}`:             1,
		`caddy_comet_publish_errors_total{hub="default",reason="too_large"}`: 1,
	} {
		waitDelta(series, want)
	}
	now := scrape(t, s)
	if got := now[`caddy_comet_contexts{hub="default"}`]; got != 1 {
		t.Errorf("contexts = %v, want 1", got)
	}
	for series := range now {
		if strings.Contains(series, `context=`) {
			t.Errorf("per-context series %s", series)
		}
	}

	s.reload("", "comet /c {\n\t\tmax_message_size 8\n\t\texpiration 20s\n\t}")
	s.publish("/c", "three")
	nextWithin(t, sse, 5*time.Second) // the stream carried on across the reload
	waitDelta(`caddy_comet_events_published_total{hub="default"}`, 3)
	waitDelta(`caddy_comet_deliveries_total{hub="default",transport="sse"}`, 3)
}

// TestEveryRefusalAtALimitIsCounted reaches both limits by every way a
// request can create a context or a subscriber, and checks that each
// refusal is counted, whatever the method.
func TestEveryRefusalAtALimitIsCounted(t *testing.T) {
	s := startCaddy(t, "comet {\n\t\tmax_subscribers 1\n\t\tmax_contexts 1\n\t}", `comet`)
	before := scrape(t, s)
	p := s.startPoll("/a")
	waitFor(t, "the poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })
	for _, req := range []struct{ method, path string }{
		{http.MethodGet, "/a"},  // max_subscribers
		{http.MethodGet, "/b"},  // max_subscribers first
		{http.MethodPost, "/b"}, // max_contexts
	} {
		if resp, _ := s.do(req.method, req.path, "x"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s %s: %s, want 503", req.method, req.path, resp.Status)
		}
	}
	if _, _, err := s.hub(DefaultHubName).Delete("/nothing"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.hub(DefaultHubName).Publish("/c", Event{}); err == nil {
		t.Error("publishing from Go past max_contexts succeeded")
	}
	after := scrape(t, s)
	for limit, want := range map[string]float64{"max_subscribers": 2, "max_contexts": 2} {
		series := `caddy_comet_limit_refusals_total{hub="default",limit="` + limit + `"}`
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s went up by %v, want %v", series, got, want)
		}
	}
	p.cancel()
}

// TestLogsStayQuiet runs a busy hub with comet's log at info and checks
// that requests write nothing, and that a flood of refusals at a limit is
// logged at warn with its context, a few lines a second at most.
func TestLogsStayQuiet(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "comet.log")
	s := startCaddy(t, "log {\n\t\toutput file "+logPath+"\n\t\tformat json\n\t\tlevel INFO\n\t\tinclude http.handlers.comet\n\t}\n\tcomet {\n\t\tmax_subscribers 20\n\t}",
		`comet /c {
		expiration 300ms
	}`)
	polls := make([]*poll, 20)
	for i := range polls {
		polls[i] = s.startPoll("/c")
	}
	waitFor(t, "the hub to be full", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 20 })
	refused := 0
	for range 200 {
		if resp, _ := s.do(http.MethodGet, "/c", ""); resp.StatusCode == http.StatusServiceUnavailable {
			refused++
		}
	}
	for _, p := range polls {
		p.wait(t) // expired: 20 more requests answered
	}
	for range 20 {
		s.publish("/c", "x")
	}
	if refused != 200 {
		t.Fatalf("%d of 200 requests over the limit were refused", refused)
	}

	// Stop Caddy so that the log file is complete; the test's cleanup then
	// finds nothing running.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var warns int
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		var entry struct {
			Level, Logger, Msg, Context string
		}
		if err := json.Unmarshal(lines.Bytes(), &entry); err != nil {
			t.Fatalf("log line %q: %v", lines.Text(), err)
		}
		switch {
		case entry.Level == "warn" && entry.Context == "/c":
			warns++
		default:
			t.Errorf("unexpected log line: %s", lines.Text())
		}
	}
	// Sampling allows five a second; the burst takes a second or two.
	if warns < 1 || warns > 15 {
		t.Errorf("%d warnings for 200 refusals, want a few", warns)
	}
}
