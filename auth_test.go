package comet

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testSecret is the HMAC secret of the tests' routes, given to Caddy
// through the environment as an operator would.
const testSecret = "a secret of more than thirty-two bytes, for tests"

// The tests mint tokens with the claims jwtauth reads.
type (
	grants      = jwtauth.Grants
	tokenClaims = jwtauth.Claims
)

// mint signs a token with key and alg, valid from a minute ago for ttl
// (no exp when ttl is zero), granting what g says to sub.
func mint(t testing.TB, key any, alg jose.SignatureAlgorithm, sub string, ttl time.Duration, g grants, edit ...func(*jwt.Claims)) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	std := jwt.Claims{Subject: sub, NotBefore: jwt.NewNumericDate(time.Now().Add(-time.Minute))}
	if ttl != 0 {
		std.Expiry = jwt.NewNumericDate(time.Now().Add(ttl))
	}
	for _, e := range edit {
		e(&std)
	}
	raw, err := jwt.Signed(signer).Claims(std).Claims(tokenClaims{Comet: g}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func bearer(token string) []string { return []string{"Authorization", "Bearer " + token} }

// noneToken is a token that says it is not signed: alg none.
func noneToken(sub string, g grants) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	body := enc.EncodeToString(fmt.Appendf(nil, `{"sub":%q,"comet":{"subscribe":%q}}`, sub, g.Subscribe))
	return header + "." + body + "."
}

// TestTokensGuardSubscribingAndPublishing runs a route that requires HMAC
// tokens for both, and checks each way a token can be missing, bad or too
// narrow, and that a good one lets a long poll park, taken over as without
// auth, and an event through.
func TestTokensGuardSubscribingAndPublishing(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `@post method POST
	header @post >X-Subscriber "{comet.subscriber}"
	comet /private/* {
		auth {
			hmac_secret {env.COMET_TEST_KEY}
			audience comet-tests
		}
	}
	comet /query/* {
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
			query_param access_token
		}
	}
	comet /issued/* {
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
			issuer https://issuer.example
		}
	}`)
	hub := s.hub(DefaultHubName)
	key := []byte(testSecret)
	aud := func(c *jwt.Claims) { c.Audience = jwt.Audience{"comet-tests"} }
	alice := mint(t, key, jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"/private/alice"}}, aud)

	for _, tc := range []struct {
		name, method, path string
		header             []string
		status             int
		challenge          string // in WWW-Authenticate
	}{
		{"no token", http.MethodGet, "/private/alice", nil, 401, `Bearer realm="comet"`},
		{"another key", http.MethodGet, "/private/alice",
			bearer(mint(t, []byte(strings.Repeat("k", 32)), jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"*"}}, aud)), 401, `error="invalid_token"`},
		{"expired", http.MethodGet, "/private/alice",
			bearer(mint(t, key, jose.HS256, "alice", -time.Second, grants{Subscribe: []string{"*"}}, aud)), 401, "expired"},
		{"not valid yet", http.MethodGet, "/private/alice",
			bearer(mint(t, key, jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"*"}}, aud, func(c *jwt.Claims) {
				c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour))
			})), 401, "not valid yet"},
		{"another audience", http.MethodGet, "/private/alice",
			bearer(mint(t, key, jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"*"}}, func(c *jwt.Claims) {
				c.Audience = jwt.Audience{"someone-else"}
			})), 401, "audience"},
		{"another issuer", http.MethodGet, "/issued/alice",
			bearer(mint(t, key, jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"*"}}, func(c *jwt.Claims) {
				c.Issuer = "https://someone-else.example"
			})), 401, "issuer"},
		{"alg none", http.MethodGet, "/private/alice", bearer(noneToken("alice", grants{Subscribe: []string{"*"}})), 401, `error="invalid_token"`},
		{"garbage", http.MethodGet, "/private/alice", bearer("not.a.token"), 401, `error="invalid_token"`},
		{"another context", http.MethodGet, "/private/bob", bearer(alice), 403, `error="insufficient_scope"`},
		{"HEAD is reading", http.MethodHead, "/private/bob", bearer(alice), 403, `error="insufficient_scope"`},
		{"publish without a token", http.MethodPost, "/private/alice", nil, 401, `Bearer realm="comet"`},
		{"publish with a token to read", http.MethodPost, "/private/alice", bearer(alice), 403, `error="insufficient_scope"`},
		{"delete with a token to read", http.MethodDelete, "/private/alice", bearer(alice), 403, `error="insufficient_scope"`},
		{"query parameter where not configured", http.MethodGet, "/private/alice?access_token=" + alice, nil, 401, `Bearer realm="comet"`},
		{"query parameter where configured, no token", http.MethodGet, "/query/alice", nil, 401, `Bearer realm="comet"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.do(tc.method, tc.path, "", tc.header...)
			if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get("WWW-Authenticate"), tc.challenge) {
				t.Errorf("%s %s: %s, WWW-Authenticate %q; want %d and %q", tc.method, tc.path, resp.Status,
					resp.Header.Get("WWW-Authenticate"), tc.status, tc.challenge)
			}
			if tc.method != http.MethodHead && !strings.HasPrefix(body, fmt.Sprint(tc.status)) {
				t.Errorf("body %q does not say why", body)
			}
		})
	}
	if n := hub.SubscriberCount(); n != 0 {
		t.Fatalf("%d subscribers attached by refused requests", n)
	}

	// A good token: the poll parks, taken over as without auth, and the
	// publisher's token lets its event through.
	pub := mint(t, key, jose.HS256, "backend", time.Hour, grants{Publish: []string{"/private/*"}}, aud)
	for _, via := range []struct {
		name, path string
		header     []string
	}{
		{"Authorization header", "/private/alice", bearer(alice)},
		{"cookie", "/private/alice", []string{"Cookie", DefaultTokenCookie + "=" + alice}},
		{"query parameter", "/query/alice?access_token=" + mint(t, key, jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"/query/*"}}), nil},
	} {
		t.Run("subscribed with a token in the "+via.name, func(t *testing.T) {
			ctx, _, _ := strings.Cut(via.path, "?")
			p := s.startPoll(via.path, via.header...)
			waitFor(t, "the poll to park, taken over", func() bool { return watcherCount(hub, ctx) == 1 })
			resp, _ := s.do(http.MethodPost, ctx, "hello", bearer(pub)...)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("publish with a token to publish: %s", resp.Status)
			}
			if ctx == "/private/alice" && resp.Header.Get("X-Subscriber") != "backend" {
				t.Errorf("{comet.subscriber} was %q, want the publisher's subject", resp.Header.Get("X-Subscriber"))
			}
			if resp, body := p.wait(t); resp.StatusCode != http.StatusOK || body != "hello" {
				t.Errorf("the poll got %s %q", resp.Status, body)
			}
		})
	}
}

// TestTokensSignedWithPublicKeys checks routes configured with RSA, ECDSA
// and Ed25519 public keys: a token signed with the private key is taken,
// and one signed with HMAC using the public key's PEM as the secret (the
// classic confusion attack) is refused.
func TestTokensSignedWithPublicKeys(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	type keyCase struct {
		name    string
		private any
		public  any
		alg     jose.SignatureAlgorithm
		file    string
	}
	cases := []keyCase{
		{name: "rsa", private: rsaKey, public: &rsaKey.PublicKey, alg: jose.RS256},
		{name: "ecdsa", private: ecKey, public: &ecKey.PublicKey, alg: jose.ES256},
		{name: "ed25519", private: edKey, public: edKey.Public(), alg: jose.EdDSA},
	}
	var site strings.Builder
	for i := range cases {
		der, err := x509.MarshalPKIXPublicKey(cases[i].public)
		if err != nil {
			t.Fatal(err)
		}
		cases[i].file = filepath.Join(dir, cases[i].name+".pem")
		if err := os.WriteFile(cases[i].file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&site, "comet /%s/* {\n\t\tauth subscribe {\n\t\t\tpublic_key_file %s\n\t\t}\n\t\texpiration 100ms\n\t}\n\t", cases[i].name, cases[i].file)
	}
	s := startCaddy(t, "", site.String())
	for _, kc := range cases {
		t.Run(kc.name, func(t *testing.T) {
			path := "/" + kc.name + "/x"
			good := mint(t, kc.private, kc.alg, "alice", time.Hour, grants{Subscribe: []string{"/" + kc.name + "/*"}})
			if resp, _ := s.do(http.MethodGet, path, "", bearer(good)...); resp.StatusCode != http.StatusNoContent {
				t.Errorf("a token signed with the key: %s, want 204 at expiration", resp.Status)
			}
			pemBytes, _ := os.ReadFile(kc.file)
			forged := mint(t, pemBytes, jose.HS256, "mallory", time.Hour, grants{Subscribe: []string{"*"}})
			if resp, _ := s.do(http.MethodGet, path, "", bearer(forged)...); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("an HMAC token keyed with the public key: %s, want 401", resp.Status)
			}
		})
	}
}

// TestAuthConfigErrors checks that a route whose auth cannot work does not
// load, with a reason.
func TestAuthConfigErrors(t *testing.T) {
	for _, tc := range []struct{ auth, want string }{
		{"auth", "hmac_secret, public_key_file or jwks_url"},
		{"auth {\n\t\tjwks_url http://example.com/keys\n\t}", "use https"},
		{"auth {\n\t\thmac_secret \"" + testSecret + "\"\n\t\tpublic_key_file /k.pem\n\t}", "one of"},
		{"auth {\n\t\thmac_secret short\n\t}", "at least 32"},
		{"auth {\n\t\thmac_secret {env.COMET_UNSET_KEY}\n\t}", "empty once its placeholders"},
		{"auth {\n\t\tpublic_key_file /nonexistent.pem\n\t}", "nonexistent"},
		{"auth read", "subscribe or publish"},
	} {
		s := newTestServer(t)
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(s.caddyfile("", "comet /c {\n\t\t"+tc.auth+"\n\t}")), nil)
		if err == nil {
			err = caddyLoadErr(cfg)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: loading gave %v, want an error about %q", tc.auth, err, tc.want)
		}
	}
}

// TestVerifiedTokensStillExpire checks that a token taken from the cache
// of verified tokens is checked against the clock again.
func TestVerifiedTokensStillExpire(t *testing.T) {
	a := &AuthConfig{Subscribe: true, HMACSecret: testSecret}
	if err := a.provision(); err != nil {
		t.Fatal(err)
	}
	raw := mint(t, []byte(testSecret), jose.HS256, "alice", time.Minute, grants{Subscribe: []string{"*"}})
	now := time.Now()
	if _, err := a.verify(raw, now); err != nil {
		t.Fatal(err)
	}
	if !a.verifier.Cached(raw) {
		t.Fatal("a verified token was not kept")
	}
	if _, err := a.verify(raw, now.Add(2*time.Minute)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("a kept token past its exp gave %v, want expired", err)
	}
}

// TestStreamsEndWhenTheirTokenExpires opens streams with a token that
// expires in a second, on a route that detaches them and one that does
// not: each is told to reconnect with reason unauthorized at the expiry,
// long before the route's expiration; a long poll is answered as at
// expiration, and polling again with the token is refused.
func TestStreamsEndWhenTheirTokenExpires(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `comet /on/* {
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
		}
		heartbeat off
	}
	comet /off/* {
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
		}
		heartbeat off
		detach off
	}`)
	hub := s.hub(DefaultHubName)
	ttl := 1500 * time.Millisecond
	for _, route := range []string{"/on", "/off"} {
		for _, accept := range []string{"text/event-stream", "application/x-ndjson"} {
			t.Run(route+" "+accept, func(t *testing.T) {
				tok := mint(t, []byte(testSecret), jose.HS256, "alice", ttl, grants{Subscribe: []string{"*"}})
				expires := time.Now().Add(ttl).Truncate(time.Second) // exp is in whole seconds
				resp := s.openStream(nil, route+"/c", accept, bearer(tok)...)
				defer resp.Body.Close()
				if route == "/on" {
					waitFor(t, "the stream to be taken over", func() bool { return watcherCount(hub, route+"/c") == 1 })
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				ended := time.Now()
				if !strings.Contains(string(body), "unauthorized") {
					t.Errorf("the stream ended with %q, want a reconnect with reason unauthorized", body)
				}
				if early, late := ended.Before(expires.Add(-100*time.Millisecond)), ended.After(expires.Add(2*time.Second)); early || late {
					t.Errorf("the stream ended at %v, the token expired at %v", ended.Format(time.StampMilli), expires.Format(time.StampMilli))
				}
			})
		}
	}

	tok := mint(t, []byte(testSecret), jose.HS256, "alice", ttl, grants{Subscribe: []string{"*"}})
	resp, _ := s.do(http.MethodGet, "/on/poll", "", bearer(tok)...)
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("a long poll whose token expired while it waited: %s, want 204", resp.Status)
	}
	if resp, _ := s.do(http.MethodGet, "/on/poll", "", append(bearer(tok), "Last-Event-ID", resp.Header.Get(HeaderCursor))...); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("polling again with the expired token: %s, want 401", resp.Status)
	}
}

// TestAuthExampleWalk runs examples/auth.Caddyfile (on test ports) and
// walks README's curl walk with tokens from the built binary's
// comet-token: refused without a token, refused for another user's
// context, and an event through with the right ones.
func TestAuthExampleWalk(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy to run comet-token")
	}
	bin := buildCaddy(t)
	t.Setenv("COMET_TOKEN_KEY", testSecret)
	token := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"comet-token", "--key", testSecret}, args...)...)
		cmd.Env = quietRaceEnv()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("comet-token %q: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	s, cfg := exampleOnTestPorts(t, "examples/auth.Caddyfile", "http://localhost:8081")
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t)

	alice := token("--sub", "alice", "--subscribe", "/private/alice", "--ttl", "10m")
	backend := token("--sub", "backend", "--publish", "/private/*")
	if resp, _ := s.do(http.MethodGet, "/private/alice", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: %s, want 401", resp.Status)
	}
	if resp, _ := s.do(http.MethodGet, "/private/bob", "", bearer(alice)...); resp.StatusCode != http.StatusForbidden {
		t.Errorf("alice's token on bob's context: %s, want 403", resp.Status)
	}
	p := s.startPoll("/private/alice", bearer(alice)...)
	waitFor(t, "alice's poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })
	if resp, _ := s.do(http.MethodPost, "/private/alice", "hello alice", bearer(backend)...); resp.StatusCode != http.StatusOK {
		t.Fatalf("the backend's publish: %s", resp.Status)
	}
	if resp, body := p.wait(t); resp.StatusCode != http.StatusOK || body != "hello alice" {
		t.Errorf("alice got %s %q", resp.Status, body)
	}
}

// TestTokensCheckedAgainstAJWKS serves a key set on loopback and rotates
// its key: a token from the new key is taken after one fetch, one naming a
// kid the set no longer has is refused, and tokens naming unknown kids do
// not make the route fetch the set for every request.
func TestTokensCheckedAgainstAJWKS(t *testing.T) {
	oldKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var mu sync.Mutex
	current := jose.JSONWebKey{Key: &oldKey.PublicKey, KeyID: "old", Algorithm: string(jose.ES256), Use: "sig"}
	var fetches atomic.Int32
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{current}})
	}))
	defer jwks.Close()
	const minRefresh = 300 * time.Millisecond
	s := startCaddy(t, "", fmt.Sprintf(`comet /c/* {
		auth subscribe {
			jwks_url %s
			jwks_min_refresh %v
		}
		expiration 50ms
	}`, jwks.URL, minRefresh))
	signed := func(key *ecdsa.PrivateKey, kid string) string {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
			(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := jwt.Signed(signer).Claims(jwt.Claims{Subject: "alice", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).
			Claims(tokenClaims{Comet: grants{Subscribe: []string{"*"}}}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	status := func(tok string) int {
		resp, _ := s.do(http.MethodGet, "/c/x", "", bearer(tok)...)
		return resp.StatusCode
	}
	if got := status(signed(oldKey, "old")); got != http.StatusNoContent {
		t.Fatalf("a token from the set's key: %d, want 204 at expiration", got)
	}
	began, before := time.Now(), fetches.Load()
	for range 20 {
		if got := status(signed(newKey, "nobody")); got != http.StatusUnauthorized {
			t.Fatalf("a token naming an unknown kid: %d, want 401", got)
		}
	}
	if n, most := fetches.Load()-before, 1+int32(time.Since(began)/minRefresh); n > most {
		t.Errorf("the set was fetched %d times for 20 unknown kids in %v, want at most %d", n, time.Since(began), most)
	}

	// The key rotates: a token from the new key is taken once the route
	// may fetch again.
	mu.Lock()
	current = jose.JSONWebKey{Key: &newKey.PublicKey, KeyID: "new", Algorithm: string(jose.ES256), Use: "sig"}
	mu.Unlock()
	time.Sleep(minRefresh)
	if got := status(signed(newKey, "new")); got != http.StatusNoContent {
		t.Errorf("a token from the rotated key: %d, want 204", got)
	}
	if got := status(signed(oldKey, "old")); got != http.StatusUnauthorized {
		t.Errorf("a new token naming the retired key: %d, want 401", got)
	}
	if got := status(signed(oldKey, "new")); got != http.StatusUnauthorized {
		t.Errorf("a token signed with another key under the new kid: %d, want 401", got)
	}
}

// TestAdminListsWhoIsSubscribed subscribes with tokens for two subjects
// and asks the admin API who is on the context, a page at a time.
func TestAdminListsWhoIsSubscribed(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "", `comet /room {
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
		}
	}`)
	hub := s.hub(DefaultHubName)
	tokenFor := func(sub string) string {
		return mint(t, []byte(testSecret), jose.HS256, sub, time.Hour, grants{Subscribe: []string{"/room"}})
	}
	p := s.startPoll("/room", bearer(tokenFor("alice"))...)
	sse := s.openStream(nil, "/room", "text/event-stream", bearer(tokenFor("alice"))...)
	ndjson := s.openStream(nil, "/room", "application/x-ndjson", bearer(tokenFor("bob"))...)
	// A subscriber counts in the hub before its context has its identity.
	waitFor(t, "three subscribers with their identities", func() bool {
		page, _, _ := hub.Identities("/room", "", 10)
		return len(page) == 2 && page[0].Subscribers == 2 && page[1].Subscribers == 1
	})

	type detail struct {
		Subscribers int
		Identities  []struct {
			Identity    string
			Subscribers int
		}
		Next string `json:"identities_next"`
	}
	ask := func(query string) detail {
		t.Helper()
		resp, body := doRequest(t, t.Context(), http.MethodGet, s.admin+"/comet/contexts?context=/room"+query, "")
		var d detail
		if err := json.Unmarshal([]byte(body), &d); resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("inspect: %s %s (%v)", resp.Status, body, err)
		}
		return d
	}
	first := ask("&limit=1")
	if first.Subscribers != 3 || len(first.Identities) != 1 || first.Identities[0].Identity != "alice" ||
		first.Identities[0].Subscribers != 2 || first.Next != "alice" {
		t.Errorf("first page: %+v; want 3 subscribers, alice with 2, more after alice", first)
	}
	second := ask("&limit=1&after=" + first.Next)
	if len(second.Identities) != 1 || second.Identities[0].Identity != "bob" || second.Identities[0].Subscribers != 1 || second.Next != "" {
		t.Errorf("second page: %+v; want bob with 1, and no more", second)
	}

	p.cancel()
	sse.Body.Close()
	ndjson.Body.Close()
	waitFor(t, "every subscriber to leave", func() bool { return hub.SubscriberCount() == 0 })
	if left := ask(""); len(left.Identities) != 0 {
		t.Errorf("after every subscriber left: %+v", left.Identities)
	}
}

// TestAccessLogKeepsTokensOut sends tokens in each place a route takes
// them, with an access log set up as README says: the log has a line for
// each request and no token in any.
func TestAccessLogKeepsTokensOut(t *testing.T) {
	t.Setenv("COMET_TEST_KEY", testSecret)
	logFile := filepath.Join(t.TempDir(), "access.log")
	s := startCaddy(t, "", fmt.Sprintf(`log {
		output file %s
		format filter {
			request>uri query {
				delete access_token
			}
		}
	}
	comet /private/* {
		auth {
			hmac_secret {env.COMET_TEST_KEY}
			query_param access_token
		}
	}`, logFile))
	tok := mint(t, []byte(testSecret), jose.HS256, "alice", time.Hour, grants{Subscribe: []string{"*"}, Publish: []string{"*"}})
	for _, req := range []struct {
		method, path string
		header       []string
	}{
		{http.MethodHead, "/private/a", bearer(tok)},
		{http.MethodHead, "/private/a", []string{"Cookie", DefaultTokenCookie + "=" + tok}},
		{http.MethodHead, "/private/a?access_token=" + tok, nil},
		{http.MethodPost, "/private/a", bearer(tok)},
	} {
		if resp, body := s.do(req.method, req.path, "x", req.header...); resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %s %s", req.method, req.path, resp.Status, body)
		}
	}
	var logged []byte
	waitFor(t, "four access log lines", func() bool {
		logged, _ = os.ReadFile(logFile)
		return strings.Count(string(logged), "\n") >= 4
	})
	if strings.Contains(string(logged), tok) {
		t.Errorf("the access log wrote a token out:\n%s", logged)
	}
	if !strings.Contains(string(logged), `"uri":"/private/a"`) {
		t.Errorf("the access log has no line for the request whose query held the token:\n%s", logged)
	}
}
