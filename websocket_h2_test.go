package comet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/net/http2"
)

// TestWebSocketOverHTTP2 runs Caddy as Go's HTTP/2 server allows RFC 8441
// only there (GODEBUG=http2xconnect=1 in its environment) and opens a
// WebSocket on an HTTP/2 stream, as Chromium does when a server offers it.
func TestWebSocketOverHTTP2(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy as a subprocess")
	}
	bin := buildCaddy(t)
	certFile, keyFile, tlsConfig := testCertificate(t)
	admin, site := freeAddr(t), "https://"+freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "Caddyfile")
	cfg := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tservers {\n\t\tprotocols h1 h2\n\t}\n}\n%s {\n\ttls %s %s\n\theader /ctx/* >X-Subscribers {comet.subscribers}\n\tcomet /ctx/* {\n\t\theartbeat 200ms\n\t}\n}\n",
		admin, site, certFile, keyFile)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	cmd.Env = append(quietRaceEnv(), "GODEBUG=http2xconnect=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("caddy output:\n%s", output.String())
		}
	}()
	client := tlsClient(tlsConfig, 2)
	defer closeClient(client)
	waitFor(t, "caddy to serve", func() bool { return headSubscribers(client, site+"/ctx/a") == 0 })

	toServer, fromClient := io.Pipe()
	defer fromClient.Close()
	req, _ := http.NewRequest(http.MethodConnect, site+"/ctx/a", toServer)
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	// net/http's client refuses the :protocol pseudo-header; its HTTP/2
	// transport, used directly, sends it.
	h2 := &http2.Transport{TLSClientConfig: tlsConfig.Clone()}
	defer h2.CloseIdleConnections()
	resp, err := h2.RoundTrip(req)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("extended CONNECT answered %s over %s", resp.Status, resp.Proto)
	}
	c := &wsClient{t: t, conn: h2Conn{resp.Body, fromClient}, r: resp.Body, answerPings: true}
	if m := c.message(5 * time.Second); m["control"] != "open" {
		t.Fatalf("got %v, want open", m)
	}
	post := func(data string) {
		resp, body := sendRequest(t, client, context.Background(), "POST", site+"/ctx/a", data)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("publish: %s %s", resp.Status, body)
		}
	}
	post("over h2")
	c.expectEvents("over h2")
	c.sendJSON(map[string]any{"publish": map[string]any{"data": "from the stream"}})
	if _, ev := c.receiptAndEvent(); ev["data"] != "from the stream" {
		t.Errorf("got %v, want the event published over the stream", ev)
	}
	start := time.Now()
	for c.pings < 2 && time.Since(start) < 5*time.Second {
		post("tick")
		c.expectEvents("tick")
		time.Sleep(150 * time.Millisecond)
	}
	c.send(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	c.closed(5*time.Second, ws.StatusNormalClosure)
	waitFor(t, "the stream's subscriber to leave", func() bool { return headSubscribers(client, site+"/ctx/a") == 0 })
}

// h2Conn is an HTTP/2 stream as the test client's connection: it reads
// the response body and writes the request body. Deadlines are left to
// the test's timeouts.
type h2Conn struct {
	io.ReadCloser
	w io.WriteCloser
}

func (c h2Conn) Write(b []byte) (int, error)      { return c.w.Write(b) }
func (h2Conn) LocalAddr() net.Addr                { return nil }
func (h2Conn) RemoteAddr() net.Addr               { return nil }
func (h2Conn) SetDeadline(time.Time) error        { return nil }
func (h2Conn) SetReadDeadline(time.Time) error    { return nil }
func (h2Conn) SetWriteDeadline(t time.Time) error { return nil }
