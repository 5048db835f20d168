package comet

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"
)

// TestLongPollsComeBackInPlace follows clients that poll again and again
// on one connection each: after the first answer, every next poll is read
// and served in place (the route's whole chain runs: the site's header is
// there), parks with no goroutine, and is answered; a POST on the same
// connection goes back to net/http, which serves it, and the poll after it
// is detached again.
func TestLongPollsComeBackInPlace(t *testing.T) {
	const clients, rounds = 20, 5
	s := startCaddy(t, "", `header X-Site comet-test
	comet /lp {
		expiration 10s
	}`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")
	const path = "/lp"
	cursor := s.position(path)
	served := testutil.ToFloat64(inPlaceServed)
	conns := make([]*rawPoll, clients)
	for i := range conns {
		conns[i] = dialPoll(t, addr)
	}
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	baseline := runtime.NumGoroutine()
	for round := range rounds {
		for _, c := range conns {
			c.send(path, cursor)
		}
		waitFor(t, "every poll to park", func() bool { return hub.SubscriberCount() == clients })
		if round > 0 {
			// Parked polls hold no goroutine; the workers that served
			// them in place may still be there, a few for the process.
			if extra := runtime.NumGoroutine() - baseline; extra > inPlaceWorkers.Running()+2 {
				t.Errorf("round %d: %d goroutines over the baseline for %d parked polls", round, extra, clients)
			}
		}
		r := s.publish(path, fmt.Sprintf("event %d", round))
		for i, c := range conns {
			resp, body := c.answer()
			if resp.StatusCode != http.StatusOK || body != fmt.Sprintf("event %d", round) || resp.Header.Get(HeaderCursor) != r.Cursor ||
				resp.Header.Get("X-Site") != "comet-test" || resp.Close {
				t.Fatalf("round %d, client %d: %s %q, headers %v", round, i, resp.Status, body, resp.Header)
			}
		}
		cursor = r.Cursor
	}
	if got := testutil.ToFloat64(inPlaceServed) - served; got != clients*(rounds-1) {
		t.Errorf("%v polls served in place, want %d: all but each connection's first", got, clients*(rounds-1))
	}

	// A publish on the same connection is net/http's; the poll after it
	// is detached from net/http's connection again, and answered.
	c := conns[0]
	handedBack := testutil.ToFloat64(inPlaceHandedBack)
	fmt.Fprintf(c.conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 4\r\n\r\nmine", path, addr)
	if resp, body := c.answer(); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"woken":0`) {
		t.Fatalf("POST on a connection served in place: %s %q", resp.Status, body)
	}
	if got := testutil.ToFloat64(inPlaceHandedBack) - handedBack; got != 1 {
		t.Errorf("%v requests handed back, want the POST", got)
	}
	c.send(path, s.position(path))
	waitFor(t, "the poll after the POST to park", func() bool { return hub.SubscriberCount() == 1 })
	s.publish(path, "after the POST")
	if resp, body := c.answer(); resp.StatusCode != http.StatusOK || body != "after the POST" {
		t.Fatalf("poll after the POST: %s %q", resp.Status, body)
	}

	// An SSE stream asked for on a connection served in place is taken
	// over from it as from net/http: its body ends with the connection,
	// not chunked, and it gets the events.
	c = conns[1]
	fmt.Fprintf(c.conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr)
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != http.StatusOK || len(resp.TransferEncoding) > 0 || !resp.Close {
		t.Fatalf("SSE on a connection served in place: %v %v, Transfer-Encoding %v, close %v", resp, err, resp.TransferEncoding, resp.Close)
	}
	waitFor(t, "the stream to be taken over", func() bool { return watcherCount(hub, path) == 1 })
	s.publish(path, "streamed")
	if ev := nextWithin(t, newSSEParser(resp.Body), 5*time.Second); ev.Data != "streamed" {
		t.Errorf("the stream got %+v", ev)
	}

	for _, c := range conns {
		c.conn.Close()
	}
	waitFor(t, "every poll to be freed", func() bool { return hub.SubscriberCount() == 0 })
}

// TestReloadEndsServingInPlace reloads while a connection waits, in
// place, for its client's next request: the old server closes it, as it
// closes its own idle connections, so that no request is served by the
// replaced config; the client's next poll, on a new connection, is the
// new config's.
func TestReloadEndsServingInPlace(t *testing.T) {
	s := startCaddy(t, "", `header X-Config old
	comet /lp`)
	hub := s.hub(DefaultHubName)
	addr := strings.TrimPrefix(s.base, "http://")
	c := dialPoll(t, addr)
	c.send("/lp", s.position("/lp"))
	waitFor(t, "the poll to park", func() bool { return hub.SubscriberCount() == 1 })
	s.publish("/lp", "e1")
	if resp, _ := c.answer(); resp.Header.Get("X-Config") != "old" {
		t.Fatalf("answer before the reload: %v", resp.Header)
	}
	s.reload("", `header X-Config new
	comet /lp`)
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.br.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("the replaced server's connection: read %d bytes, %v; want it closed", n, err)
	}
	resp, _ := s.do(http.MethodHead, "/lp", "")
	if resp.Header.Get("X-Config") != "new" {
		t.Errorf("after the reload: %v", resp.Header)
	}
}

// TestInPlaceAnswersAsNetHTTP is the differential test of serving in
// place: the same requests on one connection, against the same site with
// its long polls detached (the connection is then served in place after
// the first answer) and with detach off (net/http serves every request).
// The site has header (with placeholders), basic_auth, a matcher that
// sends some requests to encode and respond, a second site on the same
// listener with an access log, pipelined requests, a HEAD, a POST, a
// Connection: close. Status, headers and body bytes, placeholders and the
// access log's lines must be the same, timestamps, durations and the
// client's port aside.
func TestInPlaceAnswersAsNetHTTP(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	var runs [2][]string
	var logs [2][]string
	var logFiles [2]string
	for i, detach := range []string{"on", "off"} {
		logFile := filepath.Join(t.TempDir(), "access.log")
		hubName := "inplace_" + detach
		s := newTestServer(t)
		port := s.base[strings.LastIndex(s.base, ":")+1:]
		globals := fmt.Sprintf("comet %s {\n\t\thistory 100\n\t}", hubName)
		site := fmt.Sprintf(`header X-Site comet-test
	header /lp X-Probe "{http.request.uri.path} {http.request.header.X-Probe} {http.request.scheme} {http.request.proto} {http.request.method}"
	basic_auth /private/* {
		alice %s
	}
	handle /other/* {
		encode gzip
		header X-Other yes
		respond "{http.request.uri.path} {http.request.header.X-Probe} {http.request.remote.host} %s"
	}
	handle /private/* {
		respond "secret of {http.auth.user.id}"
	}
	comet /lp {
		hub %s
		expiration 2s
		detach %s
	}
}
http://logged.localhost:%s {
	log {
		output file %s
		format json
	}
	respond /hello "logged {http.request.uri}"`, hash, strings.Repeat("padding ", 80), hubName, detach, port, logFile)
		// The Caddyfile adapter lists the unlogged site in skip_hosts with
		// its port, which Caddy compares with the request's host without
		// one: the comet site would be logged to the default access log,
		// which keeps long polls on the ordinary path. The host alone
		// says what the Caddyfile means.
		config := strings.Replace(string(adaptCaddyfile(t, s.caddyfile(globals, site))),
			`"skip_hosts":["127.0.0.1:`+port+`"]`, `"skip_hosts":["127.0.0.1"]`, 1)
		if err := caddy.Load([]byte(config), true); err != nil {
			t.Fatal(err)
		}
		stopAtCleanup(t)
		served, handedBack := testutil.ToFloat64(inPlaceServed), testutil.ToFloat64(inPlaceHandedBack)
		runs[i] = inPlaceScript(t, s, hubName)
		logFiles[i] = logFile
		// Detached, every request after the first answer is served in
		// place, but the POST and the one that asks to close.
		wantServed, wantHandedBack := 12.0, 2.0
		if detach == "off" {
			wantServed, wantHandedBack = 0, 0
		}
		if got := testutil.ToFloat64(inPlaceServed) - served; got != wantServed {
			t.Errorf("detach %s: %v requests served in place, want %v", detach, got, wantServed)
		}
		if got := testutil.ToFloat64(inPlaceHandedBack) - handedBack; got != wantHandedBack {
			t.Errorf("detach %s: %v requests handed back, want %v", detach, got, wantHandedBack)
		}
	}
	// Stopped, the servers have written and closed their logs.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	for i, file := range logFiles {
		logs[i] = accessLogLines(t, file)
	}
	if len(runs[0]) != len(runs[1]) {
		t.Fatalf("%d answers detached, %d with detach off", len(runs[0]), len(runs[1]))
	}
	for i := range runs[0] {
		if runs[0][i] != runs[1][i] {
			t.Errorf("answer %d differs:\nin place:   %q\ndetach off: %q", i, runs[0][i], runs[1][i])
		}
	}
	if strings.Join(logs[0], "\n") != strings.Join(logs[1], "\n") {
		t.Errorf("access logs differ:\nin place:\n%s\ndetach off:\n%s", strings.Join(logs[0], "\n"), strings.Join(logs[1], "\n"))
	}
	if len(logs[0]) != 4 {
		t.Errorf("%d access log lines, want 4:\n%s", len(logs[0]), strings.Join(logs[0], "\n"))
	}
}

// inPlaceScript sends its requests on one connection and returns each
// answer, written out and normalized.
func inPlaceScript(t *testing.T, s *testServer, hubName string) []string {
	addr := strings.TrimPrefix(s.base, "http://")
	port := addr[strings.LastIndex(addr, ":")+1:]
	logged := "logged.localhost:" + port
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	var answers []string
	var epoch string
	read := func(method string) *http.Response {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("answer %d: %v", len(answers), err)
		}
		body, _ := io.ReadAll(resp.Body)
		if c := resp.Header.Get(HeaderCursor); c != "" && epoch == "" {
			epoch, _, _ = strings.Cut(c, ":")
		}
		answers = append(answers, normalizeAnswer(resp, body, epoch, port))
		return resp
	}
	send := func(format string, args ...any) {
		t.Helper()
		if _, err := fmt.Fprintf(conn, format, args...); err != nil {
			t.Fatal(err)
		}
	}
	pollAndPublish := func(cursor, data string) *http.Response {
		t.Helper()
		send("GET /lp HTTP/1.1\r\nHost: %s\r\nLast-Event-ID: %s\r\nX-Probe: poll\r\n\r\n", addr, cursor)
		info := func() int { i, _ := s.hub(hubName).Inspect("/lp"); return i.Subscribers }
		waitFor(t, "the poll to park", func() bool { return info() == 1 })
		s.publish("/lp", data)
		return read("GET")
	}

	start := s.position("/lp")
	first := pollAndPublish(start, "e1") // net/http's; in place from here when detached
	c1 := first.Header.Get(HeaderCursor)
	send("GET /other/x HTTP/1.1\r\nHost: %s\r\nAccept-Encoding: gzip\r\nX-Probe: p1\r\n\r\n", addr)
	read("GET")
	send("GET /private/x HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	read("GET")
	send("GET /private/x HTTP/1.1\r\nHost: %s\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n", addr)
	read("GET")
	send("HEAD /lp HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	read("HEAD")
	send("GET /hello?x=1 HTTP/1.1\r\nHost: %s\r\nUser-Agent: differential\r\n\r\n", logged)
	read("GET")
	pollAndPublish(c1, "e2")
	// Pipelined: a poll behind (answered from history at once), a page,
	// a HEAD, and a logged request, in one write.
	send("GET /lp HTTP/1.1\r\nHost: %s\r\nLast-Event-ID: %s\r\n\r\n"+
		"GET /other/y HTTP/1.1\r\nHost: %s\r\nX-Probe: p2\r\n\r\n"+
		"HEAD /other/z HTTP/1.1\r\nHost: %s\r\n\r\n"+
		"GET /hello?x=2 HTTP/1.1\r\nHost: %s\r\nUser-Agent: differential\r\n\r\n", addr, c1, addr, addr, logged)
	read("GET")
	read("GET")
	read("HEAD")
	read("GET")
	// A POST is net/http's; then a poll, detached from net/http again.
	send("POST /lp HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\np1", addr)
	read("POST")
	third := pollAndPublish(s.position("/lp"), "e4")
	send("GET /hello?x=3 HTTP/1.1\r\nHost: %s\r\nUser-Agent: differential\r\n\r\n", logged)
	read("GET")
	// An expiring poll, then a request that asks to close.
	send("GET /lp HTTP/1.1\r\nHost: %s\r\nLast-Event-ID: %s\r\n\r\n", addr, third.Header.Get(HeaderCursor))
	read("GET")
	send("GET /hello?x=4 HTTP/1.1\r\nHost: %s\r\nUser-Agent: differential\r\nConnection: close\r\n\r\n", logged)
	if resp := read("GET"); !resp.Close {
		t.Error("an answer to Connection: close kept the connection")
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Error("the connection stayed open after Connection: close")
	}
	return answers
}

// normalizeAnswer writes an answer out as it came, less its Date, with
// the hub's epoch and the server's port (which differ between the two
// servers) replaced.
func normalizeAnswer(resp *http.Response, body []byte, epoch, port string) string {
	var b strings.Builder
	resp.Header.Del("Date")
	fmt.Fprintf(&b, "%s\r\n", resp.Status)
	resp.Header.Write(&b)
	fmt.Fprintf(&b, "close=%v length=%d te=%v\r\n\r\n", resp.Close, resp.ContentLength, resp.TransferEncoding)
	b.Write(body)
	out := b.String()
	if epoch != "" {
		out = strings.ReplaceAll(out, epoch+":", "EPOCH:")
	}
	return strings.ReplaceAll(out, port, "PORT")
}

// accessLogLines reads an access log's lines, less what differs between
// two runs: times, durations, the client's port, the server's port.
func accessLogLines(t *testing.T, file string) []string {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		delete(entry, "ts")
		delete(entry, "duration")
		if req, ok := entry["request"].(map[string]any); ok {
			delete(req, "remote_port")
			if h, ok := req["host"].(string); ok {
				req["host"] = h[:strings.LastIndex(h, ":")]
			}
		}
		if h, ok := entry["resp_headers"].(map[string]any); ok {
			delete(h, "Date")
		}
		out, _ := json.Marshal(entry)
		lines = append(lines, string(out))
	}
	return lines
}
