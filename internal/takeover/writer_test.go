package takeover

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// inPlaceCases are handlers whose answers Writer must frame as net/http's
// own writer does: every branch of its header decision.
var inPlaceCases = []struct {
	name   string
	method string
	write  func(w http.ResponseWriter)
}{
	{"small body, no length", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello")
	}},
	{"sniffed content type", "GET", func(w http.ResponseWriter) {
		io.WriteString(w, "<html><body>hi</body></html>")
	}},
	{"own length", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
	}},
	{"past 2 KiB: chunked", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain")
		for range 5 {
			w.Write(bytes.Repeat([]byte("x"), 1000))
		}
	}},
	{"one large write", "GET", func(w http.ResponseWriter) {
		w.Write(bytes.Repeat([]byte("y"), 9000))
	}},
	{"flushed: chunked", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, "data: 2\n\n")
	}},
	{"identity: ends with the connection", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Transfer-Encoding", "identity")
		io.WriteString(w, "stream")
	}},
	{"204 drops its length", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Length", "3")
		w.WriteHeader(http.StatusNoContent)
	}},
	{"304 drops its type", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("ETag", `"a"`)
		w.WriteHeader(http.StatusNotModified)
	}},
	{"early hints", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "done")
	}},
	{"trailers", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "1")
	}},
	{"header changed after WriteHeader", "GET", func(w http.ResponseWriter) {
		w.Header().Set("X-Before", "1")
		w.WriteHeader(http.StatusAccepted)
		w.Header().Set("X-After", "1")
		io.WriteString(w, "ok")
	}},
	{"handler says close", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	}},
	{"unknown status", "GET", func(w http.ResponseWriter) {
		w.WriteHeader(599)
	}},
	{"nothing written", "GET", func(w http.ResponseWriter) {}},
	{"HEAD with a body", "HEAD", func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "not sent")
	}},
	{"HEAD with nothing", "HEAD", func(w http.ResponseWriter) {}},
	{"copied from a reader", "GET", func(w http.ResponseWriter) {
		io.Copy(w, io.MultiReader(strings.NewReader(strings.Repeat("z", 3000)), strings.NewReader("end")))
	}},
	{"copied with its length", "GET", func(w http.ResponseWriter) {
		w.Header().Set("Content-Length", "3003")
		io.Copy(w, io.MultiReader(strings.NewReader(strings.Repeat("z", 3000)), strings.NewReader("end")))
	}},
}

// TestWriterFramesAsNetHTTP serves each case through a real net/http
// server and through Writer, and requires the same bytes on the wire but
// the Date.
func TestWriterFramesAsNetHTTP(t *testing.T) {
	for _, tc := range inPlaceCases {
		t.Run(tc.name, func(t *testing.T) {
			want := readQuiet(t, netHTTPAnswer(t, tc.method, tc.write))
			got := readQuiet(t, writerAnswer(t, tc.method, tc.write))
			if got != want {
				t.Errorf("in place:\n%q\nnet/http:\n%q", got, want)
			}
		})
	}
}

func requestLine(method string) string {
	return method + " /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
}

// netHTTPAnswer sends one request to a net/http server whose handler is
// write, and returns the client's connection.
func netHTTPAnswer(t *testing.T, method string, write func(http.ResponseWriter)) net.Conn {
	t.Helper()
	return sendToNetHTTP(t, requestLine(method), write)
}

// sendToNetHTTP sends raw to a net/http server whose handler is write,
// and returns the client's connection.
func sendToNetHTTP(t *testing.T, raw string, write func(http.ResponseWriter)) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { write(w) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, raw)
	return conn
}

// writerAnswer serves the same request with Writer on one end of a TCP
// connection, and returns the other.
func writerAnswer(t *testing.T, method string, write func(http.ResponseWriter)) net.Conn {
	t.Helper()
	server, client := tcpPair(t)
	b := []byte(requestLine(method))
	req, n := ReadRequest(b)
	if req == nil || n != len(b) {
		t.Fatalf("ReadRequest took %d of %d bytes: %v", n, len(b), req)
	}
	w := NewWriter(server, req, t.Logf, func() []byte { return nil }, func() bool { return true })
	write(w)
	w.Finish()
	return client
}

// readQuiet reads what the connection carries until it is closed or
// quiet for a while, without the Date line.
func readQuiet(t *testing.T, conn net.Conn) string {
	t.Helper()
	var all []byte
	buf := make([]byte, 64<<10)
	for {
		conn.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		n, err := conn.Read(buf)
		all = append(all, buf[:n]...)
		if err != nil {
			break
		}
	}
	return dateLine.ReplaceAllString(string(all), "")
}

// TestWriterKeepsTheConnectionAsNetHTTP checks the keep-alive verdict:
// an answer that says close, ends with the connection, or wrote less than
// it declared cannot carry another request.
func TestWriterKeepsTheConnectionAsNetHTTP(t *testing.T) {
	cases := []struct {
		write func(http.ResponseWriter)
		keep  bool
	}{
		{func(w http.ResponseWriter) { io.WriteString(w, "ok") }, true},
		{func(w http.ResponseWriter) { w.Header().Set("Connection", "close") }, false},
		{func(w http.ResponseWriter) { w.Header().Set("Transfer-Encoding", "identity"); io.WriteString(w, "x") }, false},
		{func(w http.ResponseWriter) { w.Header().Set("Content-Length", "10"); io.WriteString(w, "short") }, false},
	}
	for i, tc := range cases {
		server, _ := tcpPair(t)
		req, _ := ReadRequest([]byte(requestLine("GET")))
		w := NewWriter(server, req, t.Logf, func() []byte { return nil }, func() bool { return true })
		tc.write(w)
		if keep := w.Finish(); keep != tc.keep {
			t.Errorf("case %d: keep-alive %v, want %v", i, keep, tc.keep)
		}
	}
	// A server shutting down says so in the answer, as net/http does.
	server, client := tcpPair(t)
	req, _ := ReadRequest([]byte(requestLine("GET")))
	w := NewWriter(server, req, t.Logf, func() []byte { return nil }, func() bool { return false })
	io.WriteString(w, "last")
	if w.Finish() {
		t.Error("kept a connection of a server shutting down")
	}
	server.Close()
	if got := readQuiet(t, client); !strings.Contains(got, "Connection: close\r\n") {
		t.Errorf("answer of a server shutting down: %q", got)
	}
}

// TestReadRequestTakesOnlyWhatNetHTTPServesAlike checks which requests are
// served in place: anything net/http would read, answer or refuse
// differently is left to it.
func TestReadRequestTakesOnlyWhatNetHTTPServesAlike(t *testing.T) {
	inPlace := []string{
		"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
		"HEAD /a?b=c HTTP/1.1\r\nHost: x:80\r\nAccept: */*\r\n\r\n",
		"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for _, raw := range inPlace {
		req, n := ReadRequest([]byte(raw))
		if req == nil || n != len(raw) {
			t.Errorf("not in place: %q", raw)
		} else if req.Header.Get("Host") != "" || req.Host == "" {
			t.Errorf("%q: Host %q, header %q: want it in Host only, as net/http", raw, req.Host, req.Header.Get("Host"))
		}
	}
	notInPlace := []string{
		"GET /a HTTP/1.1\r\nHost: x\r\n",                                            // not all read yet
		"GET /a HTTP/1.0\r\nHost: x\r\n\r\n",                                        // HTTP/1.0
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",                // a body
		"DELETE /a HTTP/1.1\r\nHost: x\r\n\r\n",                                     // not GET or HEAD
		"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",                 // a GET with a body
		"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", // chunked
		"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",                // Expect
		"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /a HTTP/1.1\r\n\r\n",                           // no Host: net/http's 400
		"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",     // two
		"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",              // malformed Host
		"GET /a HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", // invalid field name
		"GET /a HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",   // invalid value
		"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for _, raw := range notInPlace {
		if req, _ := ReadRequest([]byte(raw)); req != nil {
			t.Errorf("in place: %q", raw)
		}
	}
	// Pipelined requests: the first is taken, the rest left for later.
	two := "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
	req, n := ReadRequest([]byte(two))
	if req == nil || req.URL.Path != "/1" || two[n:] != "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n" {
		t.Errorf("pipelined: took %d bytes: %v", n, req)
	}
}

// TestWorkersDoNotWaitBehindABlockedJob blocks every worker of a pool and
// requires the next job to run anyway, within a few stalls.
func TestWorkersDoNotWaitBehindABlockedJob(t *testing.T) {
	ws := NewWorkers(2)
	release := make(chan struct{})
	defer close(release)
	for range 2 {
		ws.Go(func() { <-release })
	}
	ran := make(chan struct{})
	start := time.Now()
	ws.Go(func() { close(ran) })
	select {
	case <-ran:
	case <-time.After(2 * time.Second):
		t.Fatal("a job waited behind blocked workers")
	}
	if waited := time.Since(start); waited > 50*Stall {
		t.Errorf("the job waited %v", waited)
	}
	if ws.Running() != 3 {
		t.Errorf("%d workers, want 3: the two blocked and one started for the queue", ws.Running())
	}
	// Jobs that say they block leave the pool at once to the others.
	const blocking = 20
	done := make(chan struct{}, blocking)
	start = time.Now()
	for range blocking {
		ws.Go(func() { defer ws.Block()(); done <- struct{}{}; <-release })
	}
	for range blocking {
		<-done
	}
	if waited := time.Since(start); waited > 10*Stall {
		t.Errorf("%d jobs that said they block took %v to start", blocking, waited)
	}
}

// TestWorkersReuseTheirGoroutines runs many short jobs one after another
// and requires them to run on no more workers than the pool's size.
func TestWorkersReuseTheirGoroutines(t *testing.T) {
	ws := NewWorkers(4)
	for i := range 1000 {
		done := make(chan struct{})
		ws.Go(func() { close(done) })
		<-done
		if ws.Running() > 4 {
			t.Fatalf("job %d: %d workers", i, ws.Running())
		}
	}
}

// TestHijackGivesWhatWasReadFirst hijacks a request served in place
// whose server had read part of the client's next request: the
// handler's reader gives those bytes first, then the connection's, as
// net/http's buffered reader does.
func TestHijackGivesWhatWasReadFirst(t *testing.T) {
	server, client := tcpPair(t)
	req, _ := ReadRequest([]byte(requestLine("GET")))
	w := NewWriter(server, req, t.Logf, func() []byte { return []byte("GET /next") }, func() bool { return true })
	conn, rw, err := w.Hijack()
	if err != nil || conn != server {
		t.Fatalf("Hijack: %v, %v", conn, err)
	}
	io.WriteString(client, " HTTP/1.1\r\n")
	line, err := rw.ReadString('\n')
	if err != nil || line != "GET /next HTTP/1.1\r\n" {
		t.Errorf("the hijacker read %q, %v", line, err)
	}
}
