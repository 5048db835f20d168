package comet

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"
)

// The hostile-input tests send what an attacker or an unlucky client
// sends, on bare connections, to a route that takes parked long polls over
// (detach on) and to one that keeps them in net/http (detach off), and
// require the same answers from both: a taken-over connection must behave
// like net/http's own.

// hostileSite serves the same route twice: /on/* detaches, /off/* not.
const hostileSite = `comet /on/* {
		expiration 600ms
	}
	comet /off/* {
		expiration 600ms
		detach off
	}`

// hostileRun is one shape played on one route.
type hostileRun struct {
	t       *testing.T
	s       *testServer
	hub     *Hub
	addr    string
	path    string   // the context: /on/<shape> or /off/<shape>
	conn    net.Conn // TCP, or TLS over TCP
	br      *bufio.Reader
	tls     *tls.Config // nil: plaintext
	methods []string    // of the requests sent and not yet answered, in order
	// detached says that the run's parked polls must be taken over.
	detached bool
	answers  []string
}

// request returns a request for the run's path, with extra header lines,
// and expects its answer.
func (r *hostileRun) request(method, extra string) string {
	r.methods = append(r.methods, method)
	return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", method, r.path, r.addr, extra)
}

// route is /on or /off.
func (r *hostileRun) route() string {
	route, _, _ := strings.Cut(r.path[1:], "/")
	return "/" + route
}

func (r *hostileRun) write(raw string) {
	r.t.Helper()
	if _, err := io.WriteString(r.conn, raw); err != nil {
		r.t.Fatalf("%s: writing: %v", r.path, err)
	}
}

// smuggled is a request hidden in a GET's body.
func (r *hostileRun) smuggled(method string) string {
	return fmt.Sprintf("%s %s/SMUGGLED HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n", method, r.route(), r.addr)
}

// parked waits until n subscribers are attached to the run's context,
// and taken over if the run's polls must be.
func (r *hostileRun) parked(n int) {
	r.t.Helper()
	waitFor(r.t, r.path+": subscribers to attach", func() bool {
		info, ok := r.hub.Inspect(r.path)
		return ok && info.Subscribers == n && (!r.detached || watcherCount(r.hub, r.path) == n)
	})
}

func (r *hostileRun) publish(data string) { r.s.publish(r.path, data) }

// warmUp has the run's connection carry a long poll of another context
// and its answer first: on a route that detaches (detached), its next
// requests are then served in place.
func (r *hostileRun) warmUp(detached bool) {
	r.t.Helper()
	warm := &hostileRun{t: r.t, s: r.s, hub: r.hub, addr: r.addr, path: r.path + "-warm", conn: r.conn, br: r.br, detached: detached}
	warm.write(warm.request(http.MethodGet, ""))
	warm.parked(1)
	warm.publish("warm")
	warm.read()
	if len(warm.answers) != 2 || !strings.Contains(warm.answers[0], `body="warm"`) {
		r.t.Fatalf("%s: warm-up poll answered %q", r.path, warm.answers)
	}
	r.answers = append(r.answers, warm.answers[0])
}

// dial opens a connection to the server, over TLS if the run is.
func (r *hostileRun) dial() net.Conn {
	r.t.Helper()
	var conn net.Conn
	var err error
	if r.tls != nil {
		conn, err = tls.Dial("tcp", r.addr, r.tls)
	} else {
		conn, err = net.Dial("tcp", r.addr)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	return conn
}

// closeWrite closes the client's end of the connection: over TLS, it
// says close_notify first, as a TLS client that closes does.
func (r *hostileRun) closeWrite() {
	tcp := r.conn
	if tc, ok := r.conn.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		tcp = tc.NetConn()
	}
	_ = tcp.(*net.TCPConn).CloseWrite()
}

// reload loads a new config and waits until the old server is shutting
// down: Caddy's reload returns once it has asked, not once it has begun,
// and the old server closes its idle connections when it begins.
func (r *hostileRun) reload() {
	r.t.Helper()
	idle := r.dial()
	defer idle.Close()
	fmt.Fprintf(idle, "HEAD %s/idle HTTP/1.1\r\nHost: %s\r\n\r\n", r.route(), r.addr)
	br := bufio.NewReader(idle)
	if _, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead}); err != nil {
		r.t.Fatal(err)
	}
	// Caddy skips a reload to the config it runs.
	r.s.reload("", hostileSite+fmt.Sprintf("\n\trespond /reloaded/%d 204", time.Now().UnixNano()))
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		r.t.Fatalf("the old server did not close an idle connection: %v", err)
	}
}

// read records the answers that come within a short while, and whether
// the server then closed the connection.
func (r *hostileRun) read() {
	r.t.Helper()
	for {
		_ = r.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := r.br.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				r.answers = append(r.answers, "(open)")
			} else {
				r.answers = append(r.answers, "(closed)")
			}
			return
		}
		_ = r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		method := http.MethodGet
		if len(r.methods) > 0 {
			method, r.methods = r.methods[0], r.methods[1:]
		}
		resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
		if err != nil {
			r.t.Fatalf("%s: reading an answer: %v", r.path, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			r.t.Fatalf("%s: reading a body: %v", r.path, err)
		}
		r.answers = append(r.answers, describeAnswer(method, resp, body))
	}
}

// describeAnswer is what must be the same on both paths: the status, the
// cursor headers (the event id, which counts from 1 in each context
// alike), whether the connection ends, and the body.
func describeAnswer(method string, resp *http.Response, body []byte) string {
	h := resp.Header
	cursorHeaders := h.Get(HeaderCursor) != "" && h.Get("ETag") != "" && h.Get(HeaderEventID) != ""
	return fmt.Sprintf("%s → %d id=%s cursor-headers=%v missed=%q close=%v body=%q",
		method, resp.StatusCode, h.Get(HeaderEventID), cursorHeaders, h.Get(HeaderMissed), resp.Close, body)
}

// hostileShapes are played on both routes. detached says whether the
// shape's first poll is one that the detach on route takes over.
var hostileShapes = []struct {
	name     string
	detached bool
	// tlsDiffers says that over TLS a detached poll answers this shape
	// otherwise, as README says, by closing the connection: a TLS client
	// that closes its end has left, whatever it sent first.
	tlsDiffers bool
	play       func(r *hostileRun)
}{
	{"GET with a Content-Length body holding a request", false, false, func(r *hostileRun) {
		body := r.smuggled(http.MethodHead)
		r.write(r.request(http.MethodGet, fmt.Sprintf("Content-Length: %d\r\n", len(body))) + body)
		r.parked(1)
		r.publish("e1")
		r.read()
	}},
	{"GET with a chunked body holding a POST", false, false, func(r *hostileRun) {
		body := r.smuggled(http.MethodPost)
		r.write(r.request(http.MethodGet, "Transfer-Encoding: chunked\r\n") +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body))
		r.parked(1)
		r.publish("e1")
		r.read()
		if info, ok := r.hub.Inspect(r.route() + "/SMUGGLED"); ok {
			r.t.Errorf("%s: the smuggled POST reached the hub: %+v", r.path, info)
		}
	}},
	{"GET with a body cut short, then gone", false, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, "Content-Length: 100\r\n") + "only ten b")
		r.parked(1)
		r.conn.Close()
		r.parked(0) // at expiration: nothing reads the body, as in net/http
	}},
	{"request cut short, then gone", false, false, func(r *hostileRun) {
		r.write(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n", r.path, r.addr))
		r.conn.Close()
		time.Sleep(50 * time.Millisecond)
		if _, ok := r.hub.Inspect(r.path); ok {
			r.t.Errorf("%s: a request cut short subscribed", r.path)
		}
	}},
	{"pipelined before parking", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, "") + r.request(http.MethodHead, ""))
		r.parked(1)
		r.publish("e1")
		r.read()
	}},
	{"pipelined while parked", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		r.write(r.request(http.MethodHead, ""))
		time.Sleep(50 * time.Millisecond)
		r.publish("e1")
		r.read()
	}},
	{"next request after the answer", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		r.publish("e1")
		r.read()
		r.write(r.request(http.MethodHead, ""))
		r.read()
	}},
	{"half-close while parked", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		r.closeWrite()
		r.parked(0)
		r.publish("e1")
		r.read()
	}},
	{"half-close right behind pipelined requests", false, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, "") + r.request(http.MethodHead, ""))
		r.closeWrite()
		time.Sleep(100 * time.Millisecond)
		r.publish("e1")
		r.read()
	}},
	{"half-close after a request sent while parked", true, true, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		r.write(r.request(http.MethodHead, ""))
		time.Sleep(50 * time.Millisecond)
		r.closeWrite()
		time.Sleep(50 * time.Millisecond)
		r.publish("e1")
		r.read()
	}},
	{"expiry", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		r.read() // nothing yet
		time.Sleep(400 * time.Millisecond)
		r.read()
	}},
	{"expiry racing a publish", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		time.Sleep(595 * time.Millisecond)
		r.publish("e1")
		// Whichever won, the event is not lost: it is the answer, or the
		// next poll, with the expiry's cursor, gets it at once.
		_ = r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(r.br, nil)
		if err != nil {
			r.t.Fatalf("%s: %v", r.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		r.methods = r.methods[1:]
		if resp.StatusCode == http.StatusNoContent {
			r.write(r.request(http.MethodGet, "Last-Event-ID: "+resp.Header.Get(HeaderCursor)+"\r\n"))
			resp, err = http.ReadResponse(r.br, nil)
			if err != nil {
				r.t.Fatalf("%s: %v", r.path, err)
			}
			body, _ = io.ReadAll(resp.Body)
			r.methods = r.methods[1:]
		}
		r.answers = append(r.answers, "event: "+describeAnswer(http.MethodGet, resp, body))
		r.read()
	}},
	{"reload while parked, with a request pipelined", true, false, func(r *hostileRun) {
		r.write(r.request(http.MethodGet, ""))
		r.parked(1)
		r.write(r.request(http.MethodHead, ""))
		r.reload()
		r.publish("e1")
		r.read()
	}},
}

// TestHostileInputGetsTheSameAnswersOnEveryPath plays every hostile shape
// on the route that takes parked long polls over and on the one that does
// not, and requires the same answers, in the same order, from both.
func TestHostileInputGetsTheSameAnswersOnEveryPath(t *testing.T) {
	s := startCaddy(t, "", hostileSite)
	playHostileShapes(t, s, strings.TrimPrefix(s.base, "http://"), nil, false)
}

// TestHostileInputServedInPlaceGetsTheSameAnswers plays every shape on a
// connection that first carried a long poll and its answer: on the detach
// on route, the shape's requests are then read and served in place (see
// inplace.go), and must still get net/http's answers.
func TestHostileInputServedInPlaceGetsTheSameAnswers(t *testing.T) {
	s := startCaddy(t, "", hostileSite)
	playHostileShapesInPlace(t, s, strings.TrimPrefix(s.base, "http://"), nil)
}

// TestHostileInputOverTLSGetsTheSameAnswersOnEveryPath plays the shapes
// over HTTPS (HTTP/1.1), where long polls are taken over with their TLS
// connection. The shapes README names as answered otherwise over TLS must
// end with the connection closed.
func TestHostileInputOverTLSGetsTheSameAnswersOnEveryPath(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", hostileSite)
	playHostileShapes(t, s, strings.TrimPrefix(s.base, "https://"), cfg, false)
}

// TestHostileInputServedInPlaceOverTLS is the same on TLS connections
// that first carried a long poll and its answer, so that the shapes'
// requests are decrypted and served in place, or handed back to net/http
// behind what was decrypted of them.
func TestHostileInputServedInPlaceOverTLS(t *testing.T) {
	s, cfg := startTLSCaddy(t, "", hostileSite)
	playHostileShapesInPlace(t, s, strings.TrimPrefix(s.base, "https://"), cfg)
}

// playHostileShapesInPlace plays the shapes on connections that first
// carried a long poll and its answer, and checks that they reached the
// in-place path: every shape's first request came in place, a GET
// without a body was served there, one with a body or cut short handed
// back.
func playHostileShapesInPlace(t *testing.T, s *testServer, addr string, cfg *tls.Config) {
	served, handedBack := testutil.ToFloat64(inPlaceServed), testutil.ToFloat64(inPlaceHandedBack)
	playHostileShapes(t, s, addr, cfg, true)
	served, handedBack = testutil.ToFloat64(inPlaceServed)-served, testutil.ToFloat64(inPlaceHandedBack)-handedBack
	t.Logf("%v requests served in place, %v handed back", served, handedBack)
	if served < float64(len(hostileShapes)-4) || handedBack < 3 {
		t.Errorf("%v requests served in place and %v handed back: the shapes did not reach the in-place path", served, handedBack)
	}
}

// playHostileShapes plays every shape on both routes of a server running
// hostileSite, over TLS if cfg is set, and compares the answers. With
// warm, each connection first carries a long poll on the route, answered.
func playHostileShapes(t *testing.T, s *testServer, addr string, cfg *tls.Config, warm bool) {
	hub := s.hub(DefaultHubName)
	for i, shape := range hostileShapes {
		t.Run(shape.name, func(t *testing.T) {
			got := map[string][]string{}
			for _, route := range []string{"/on", "/off"} {
				r := &hostileRun{
					t: t, s: s, hub: hub, addr: addr, tls: cfg,
					path:     fmt.Sprintf("%s/shape%d", route, i),
					detached: route == "/on" && shape.detached,
				}
				r.conn = r.dial()
				defer r.conn.Close()
				r.br = bufio.NewReader(r.conn)
				if warm {
					r.warmUp(route == "/on")
				}
				shape.play(r)
				got[route] = r.answers
				t.Logf("%s: %q", route, r.answers)
			}
			on, off := strings.Join(got["/on"], "\n"), strings.Join(got["/off"], "\n")
			switch {
			case cfg != nil && shape.tlsDiffers:
				if !strings.HasSuffix(on, "(closed)") {
					t.Errorf("over TLS, detach on answered:\n%s\nwant the connection closed at the end", on)
				}
			case on != off:
				t.Errorf("detach on answered:\n%s\ndetach off answered:\n%s", on, off)
			}
		})
	}
	waitFor(t, "every subscriber to be freed", func() bool { return hub.SubscriberCount() == 0 })
}

// TestAuthOnWritesKeepsSubscribersDetached pins the way README's Security
// section gives to restrict publishing on a route: an auth handler with a
// method matcher. Writes without credentials are refused, and subscribers,
// which the auth handler does not touch, are still taken over.
func TestAuthOnWritesKeepsSubscribersDetached(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	s := startCaddy(t, "", `@writes method POST DELETE
	basic_auth @writes {
		publisher `+string(hash)+`
	}
	comet /c`)
	addr := strings.TrimPrefix(s.base, "http://")
	r := &hostileRun{t: t, s: s, hub: s.hub(DefaultHubName), addr: addr, path: "/c", detached: true}
	poll := dialPoll(t, addr)
	poll.send("/c", "")
	r.parked(1)

	if resp, _ := s.do(http.MethodPost, "/c", "forged"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST without credentials: %s, want 401", resp.Status)
	}
	if resp, _ := s.do(http.MethodDelete, "/c", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("DELETE without credentials: %s, want 401", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodPost, s.base+"/c", strings.NewReader("signed"))
	req.SetBasicAuth("publisher", "secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST with credentials: %s", resp.Status)
	}
	if resp, body := poll.answer(); resp.StatusCode != http.StatusOK || body != "signed" {
		t.Errorf("the detached poll got %s %q, want the signed event", resp.Status, body)
	}
}

// TestBodiesAreNotSmuggledThroughAProxy sends GETs whose bodies hold
// requests through a reverse proxy, which forwards them on its kept-alive
// connections to the comet backend: the backend must never read a body as
// a request, and so never put an answer on the proxy's connection that
// the next client through the proxy would get.
func TestBodiesAreNotSmuggledThroughAProxy(t *testing.T) {
	backend := freeAddr(t)
	s := startCaddy(t, "", "reverse_proxy "+backend+"\n}\nhttp://"+backend+" {\n\tcomet /ev/*")
	addr := strings.TrimPrefix(s.base, "http://")
	for _, framing := range []string{"length", "chunked"} {
		t.Run(framing, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			victimPath := "/ev/victim-" + framing
			smuggled := fmt.Sprintf("DELETE %s HTTP/1.1\r\nHost: %s\r\n\r\n", victimPath, backend)
			path := "/ev/" + framing
			req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n", path, addr)
			if framing == "length" {
				req += fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(smuggled), smuggled)
			} else {
				req += fmt.Sprintf("Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
			}
			victim := s.publish(victimPath, "kept")
			io.WriteString(conn, req)
			waitFor(t, "the poll to park", func() bool {
				info, ok := s.hub(DefaultHubName).Inspect(path)
				return ok && info.Subscribers == 1
			})
			s.publish(path, "e1")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || string(body) != "e1" {
				t.Fatalf("the poll got %s %q", resp.Status, body)
			}
			// Other clients through the proxy get their own answers, and
			// the smuggled DELETE never ran.
			for range 5 {
				resp, body := s.do(http.MethodGet, victimPath, "", "Last-Event-ID", strings.Split(victim.Cursor, ":")[0]+":0")
				if resp.StatusCode != http.StatusOK || body != "kept" || resp.Header.Get(HeaderCursor) != victim.Cursor {
					t.Fatalf("a later client through the proxy got %s %q at %s; want its own answer", resp.Status, body, resp.Header.Get(HeaderCursor))
				}
			}
		})
	}
}
