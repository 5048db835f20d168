package comet

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// startTLSCaddy runs a site over HTTPS, HTTP/1.1 and HTTP/2, with a
// certificate made for the test, and returns a client config that trusts
// it.
func startTLSCaddy(t *testing.T, site string) (*testServer, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)

	s := newTestServer(t)
	s.base = "https://" + strings.TrimPrefix(s.base, "http://")
	s.load("servers {\n\t\tprotocols h1 h2\n\t}", fmt.Sprintf("tls %s %s\n\t%s", certFile, keyFile, site))
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping caddy: %v", err)
		}
	})
	return s, &tls.Config{RootCAs: roots}
}

// tlsClient makes a client of its own, so that each subscriber has its
// own connection: HTTP/1.1, or HTTP/2 with h2.
func tlsClient(cfg *tls.Config, h2 bool) *http.Client {
	t := &http.Transport{TLSClientConfig: cfg.Clone(), DisableCompression: true}
	if h2 {
		t.ForceAttemptHTTP2 = true
	} else {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: t}
}

// TestStreamsOverTLSAreTakenOverOnHTTP1 opens SSE and NDJSON streams over
// HTTPS: over HTTP/1.1 they are taken over with their TLS connection,
// over HTTP/2 they stay in the server, and every one gets every event,
// its heartbeat and its end.
func TestStreamsOverTLSAreTakenOverOnHTTP1(t *testing.T) {
	s, cfg := startTLSCaddy(t, `comet /s {
		expiration 1500ms
		heartbeat 300ms
	}`)
	hub := s.hub(DefaultHubName)
	for _, tc := range []struct {
		name     string
		h2       bool
		accept   string
		detached bool
	}{
		{"SSE over HTTP/1.1", false, "text/event-stream", true},
		{"NDJSON over HTTP/1.1", false, "application/x-ndjson", true},
		{"SSE over HTTP/2", true, "text/event-stream", false},
		{"NDJSON over HTTP/2", true, "application/x-ndjson", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, s.base+"/s", nil)
			req.Header.Set("Accept", tc.accept)
			resp, err := tlsClient(cfg, tc.h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if want := map[bool]int{false: 1, true: 2}[tc.h2]; resp.ProtoMajor != want {
				t.Fatalf("answered over %s", resp.Proto)
			}
			waitFor(t, "the stream to attach", func() bool { return hub.SubscriberCount() == 1 })
			if tc.detached {
				waitFor(t, "the stream to be taken over", func() bool { return watcherCount(hub, "/s") == 1 })
			}
			for i := range 3 {
				if _, err := hub.Publish("/s", Event{Data: fmt.Appendf(nil, "event %d", i)}); err != nil {
					t.Fatal(err)
				}
			}
			lines := bufio.NewScanner(resp.Body)
			var events, heartbeats int
			ended := false
			for !ended && lines.Scan() {
				line := lines.Text()
				switch {
				case strings.Contains(line, "event "):
					if want := fmt.Sprintf("event %d", events); !strings.Contains(line, want) {
						t.Fatalf("got %q where %q was next", line, want)
					}
					// A stream is taken over, if at all, before its first event.
					if events == 0 && !tc.detached && watcherCount(hub, "/s") != 0 {
						t.Fatal("a stream over HTTP/2 was taken over")
					}
					events++
				case line == ": keep-alive" || line == "" && tc.accept == "application/x-ndjson":
					heartbeats++
				case strings.Contains(line, "expired"):
					ended = true
				}
			}
			if events != 3 || heartbeats == 0 || !ended {
				t.Errorf("%d events, %d heartbeats, ended %v; want 3 events, heartbeats and an end at expiration", events, heartbeats, ended)
			}
			waitFor(t, "the stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
		})
	}
}

// TestTLSStreamsEndAtShutdown closes the hub, as Caddy's exit does, under
// streams taken over with their TLS connection: each gets its last words
// at once, from its own goroutine, and is freed.
func TestTLSStreamsEndAtShutdown(t *testing.T) {
	s, cfg := startTLSCaddy(t, `comet /s {
		expiration off
		heartbeat off
	}`)
	hub := s.hub(DefaultHubName)
	const streams = 20
	bodies := make([]*bufio.Scanner, streams)
	for i := range bodies {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/s", nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := tlsClient(cfg, false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		bodies[i] = bufio.NewScanner(resp.Body)
	}
	waitFor(t, "every stream to be taken over", func() bool { return watcherCount(hub, "/s") == streams })
	began := time.Now()
	hub.Close()
	for i, lines := range bodies {
		last := ""
		for lines.Scan() {
			if line := lines.Text(); line != "" {
				last = line
			}
		}
		if last != "data: shutdown" {
			t.Fatalf("stream %d ended with %q, want the shutdown notice", i, last)
		}
	}
	waitFor(t, "every stream to be freed", func() bool { return hub.SubscriberCount() == 0 })
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("streams took %v to end", took)
	}
}
