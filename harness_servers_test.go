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
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
)

// Redis servers and TLS certificates for the tests.

// redisServer is a real redis-server on a loopback port, with append-only
// persistence so that a restart keeps its data, as a production Redis
// would.
type redisServer struct {
	t    testing.TB
	bin  string
	addr string
	dir  string
	cmd  *exec.Cmd
	// password, if set, is required of clients (requirepass).
	password string
}

// startRedis starts a redis-server for the test. Without the binary the
// test fails where COMET_REQUIRE_REDIS is set (.ci/run sets it) and is
// skipped elsewhere.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("COMET_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server is not installed, and COMET_REQUIRE_REDIS says these tests must run")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping the cluster-mode tests")
	}
	r := &redisServer{t: t, bin: bin, addr: freeAddr(t), dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

// startRedisWithPassword starts a redis-server that requires password.
func startRedisWithPassword(t testing.TB, password string) *redisServer {
	t.Helper()
	r := &redisServer{t: t, addr: freeAddr(t), dir: t.TempDir(), password: password}
	var err error
	if r.bin, err = exec.LookPath("redis-server"); err != nil {
		startRedis(t) // fails or skips as it says
	}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisServer) url() string {
	if r.password != "" {
		return "redis://:" + r.password + "@" + r.addr + "/0"
	}
	return "redis://" + r.addr + "/0"
}

func (r *redisServer) start() {
	r.t.Helper()
	host, port, _ := net.SplitHostPort(r.addr)
	r.cmd = exec.Command(r.bin, "--bind", host, "--port", port, "--dir", r.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no")
	if r.password != "" {
		r.cmd.Args = append(r.cmd.Args, "--requirepass", r.password)
	}
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	waitFor(r.t, "redis-server to answer", r.answers)
}

// kill stops the server at once, as a crash would.
func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	r.cmd.Wait()
	r.cmd = nil
}

// restartEmpty restarts the server without its data, as a Redis without
// persistence comes back from a crash.
func (r *redisServer) restartEmpty() {
	r.t.Helper()
	r.kill()
	if err := os.RemoveAll(r.dir); err != nil {
		r.t.Fatal(err)
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		r.t.Fatal(err)
	}
	r.start()
}

// answers reports whether PING gets PONG.
func (r *redisServer) answers() bool {
	conn, err := net.DialTimeout("tcp", r.addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprint(conn, "PING\r\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// redisHub makes a hub of the default name on the server, as another node
// would have.
func redisHub(t testing.TB, r *redisServer, cfg HubConfig) *Hub {
	t.Helper()
	broker, err := NewRedisBroker(RedisConfig{URL: r.url()}, DefaultHubName, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return NewHub(DefaultHubName, cfg, broker)
}

func brokerOption(r *redisServer, extra string) string {
	return "comet {\n\t\thistory 500\n\t\tbroker redis " + r.url() + "\n" + extra + "\t}"
}

// startTLSCaddy runs a site over HTTPS, HTTP/1.1, HTTP/2 and HTTP/3, with a
// certificate made for the test, and returns a client config that trusts
// it. The server's own client (do, publish, startPoll) speaks HTTP/1.1.
func startTLSCaddy(t *testing.T, globals, site string) (*testServer, *tls.Config) {
	t.Helper()
	certFile, keyFile, cfg := testCertificate(t)
	s := newTestServer(t)
	s.base = "https://" + freeTCPAndUDPAddr(t) // HTTP/3 listens on UDP
	s.client = tlsClient(cfg, 1)
	s.tlsGlobals = "servers {\n\t\tprotocols h1 h2 h3\n\t}"
	s.tlsSite = fmt.Sprintf("tls %s %s", certFile, keyFile)
	s.load(globals, site)
	stopAtCleanup(t)
	t.Cleanup(func() { closeClient(s.client) })
	return s, cfg
}

// testCertificate makes a certificate for 127.0.0.1, writes it and its
// key to PEM files, and returns them with a client config that trusts it.
func testCertificate(t testing.TB) (certFile, keyFile string, cfg *tls.Config) {
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
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for file, block := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, &tls.Config{RootCAs: roots}
}

// tlsClient makes a client of its own, so that each subscriber has its
// own connection, speaking HTTP/1.1, HTTP/2 or HTTP/3 (over QUIC) as
// proto says.
func tlsClient(cfg *tls.Config, proto int) *http.Client {
	if proto == 3 {
		return &http.Client{Transport: &http3.Transport{TLSClientConfig: cfg.Clone(), DisableCompression: true}}
	}
	t := &http.Transport{TLSClientConfig: cfg.Clone(), DisableCompression: true}
	if proto == 2 {
		t.ForceAttemptHTTP2 = true
	} else {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: t}
}

// closeClient closes a tlsClient's connections. An HTTP/3 transport also
// has a UDP socket and goroutines of its own, which only Close ends; it
// closes that socket at once, so a server may not hear of connections
// that were still busy: call it once the client's requests are done.
func closeClient(c *http.Client) {
	if tr, ok := c.Transport.(*http3.Transport); ok {
		_ = tr.Close()
		return
	}
	c.CloseIdleConnections()
}
