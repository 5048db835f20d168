package comet

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/zap"
)

// Token authorization.
//
// A route with auth requires a JSON Web Token to subscribe (GET, and HEAD,
// which reads the position), to write (POST and DELETE), or both. The
// token's "comet" claim lists the contexts it may read and write; the
// module checks the token itself, on every request, with go-jose, so a
// parked subscriber costs no backend round trip and stays detached. The
// algorithms a token may use come from the key the route is configured
// with, never from the token: "none", and an HMAC token checked against a
// public key, are refused.

// DefaultTokenCookie is the cookie a token is read from when the route
// names none: EventSource cannot set headers, but it sends cookies.
const DefaultTokenCookie = "cometAuthorization"

// AuthConfig is a route's token authorization.
type AuthConfig struct {
	// Whether subscribing (GET, HEAD) needs a token that grants the
	// context for reading.
	Subscribe bool `json:"subscribe,omitempty"`

	// Whether publishing and deleting (POST, DELETE) need a token that
	// grants the context for writing.
	Publish bool `json:"publish,omitempty"`

	// The HMAC secret tokens are signed with (HS256, HS384, HS512).
	// Placeholders such as {env.COMET_TOKEN_KEY} are replaced at
	// provisioning. At least 32 bytes.
	HMACSecret string `json:"hmac_secret,omitempty"`

	// A PEM file holding the public key tokens are signed for: RSA (RS*
	// and PS*), ECDSA (ES256, ES384 or ES512 by its curve) or Ed25519
	// (EdDSA).
	PublicKeyFile string `json:"public_key_file,omitempty"`

	// The URL of a JSON Web Key Set holding the public keys tokens are
	// signed for, picked by the token's kid: fetched when the config
	// loads, kept, and fetched again when a token names a kid the set
	// does not have, at most once every jwks_min_refresh. https, or http
	// on a loopback address. Exactly one of hmac_secret, public_key_file
	// and jwks_url.
	JWKSURL string `json:"jwks_url,omitempty"`

	// The least time between two fetches of the key set, however many
	// tokens name a kid it does not have. Default: 10s.
	JWKSMinRefresh caddy.Duration `json:"jwks_min_refresh,omitempty"`

	// If set, the token's "iss" claim must be this.
	Issuer string `json:"issuer,omitempty"`

	// If set, the token's "aud" claim must include this.
	Audience string `json:"audience,omitempty"`

	// The cookie a token may come in, when no Authorization header
	// carries one. Default: cometAuthorization.
	Cookie string `json:"cookie,omitempty"`

	// A query parameter a token may come in, as a last resort: URLs are
	// logged and kept in browser history. Default: none.
	QueryParam string `json:"query_param,omitempty"`

	// How far clocks may disagree when checking exp and nbf. Default: 0.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	key      any                       // []byte for HMAC, or a public key; nil with a JWKS
	algs     []jose.SignatureAlgorithm // what tokens may be signed with
	jwks     *keySet
	verified tokenCache
}

// tokenClaims is what a token says, beyond the registered claims.
type tokenClaims struct {
	Comet grants `json:"comet"`
}

// grants are the context patterns a token may read and write: exact keys,
// or a prefix ending in "*" ("*" alone is every context).
type grants struct {
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
}

// token is a verified token: who it is for, from and until when, and what
// it grants.
type token struct {
	subject   string
	notBefore time.Time // zero: always
	expires   time.Time // zero: never
	grants    grants
}

// validAt reports whether the token's time claims hold at now, with leeway.
func (t *token) validAt(now time.Time, leeway time.Duration) error {
	switch {
	case !t.expires.IsZero() && now.After(t.expires.Add(leeway)):
		return errors.New("the token has expired")
	case !t.notBefore.IsZero() && now.Add(leeway).Before(t.notBefore):
		return errors.New("the token is not valid yet")
	}
	return nil
}

// maxVerifiedTokens bounds the cache of verified tokens of a route.
const maxVerifiedTokens = 16384

// tokenCache keeps tokens whose signature and issuer and audience were
// verified, by their exact text: a long poll sends the same token with
// every poll, and checking a signature costs tens of microseconds (an
// ECDSA one a hundred). Only valid tokens get in, so a client cannot fill
// it with garbage; when it is full, an entry Go's map order picks makes
// room.
type tokenCache struct {
	mu     sync.RWMutex
	tokens map[string]*token
}

func (c *tokenCache) get(raw string) *token {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tokens[raw]
}

func (c *tokenCache) put(raw string, t *token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens == nil {
		c.tokens = make(map[string]*token)
	}
	if len(c.tokens) >= maxVerifiedTokens {
		for old := range c.tokens {
			delete(c.tokens, old)
			break
		}
	}
	c.tokens[raw] = t
}

// provision reads the key and settles the algorithms tokens may use.
func (a *AuthConfig) provision() error {
	if !a.Subscribe && !a.Publish {
		return errors.New("auth: require tokens for subscribe, publish or both")
	}
	repl := caddy.NewReplacer()
	secret := repl.ReplaceAll(a.HMACSecret, "")
	given := 0
	for _, v := range []string{a.HMACSecret, a.PublicKeyFile, a.JWKSURL} {
		if v != "" {
			given++
		}
	}
	switch {
	case given > 1:
		return errors.New("auth: give one of hmac_secret, public_key_file and jwks_url")
	case a.JWKSURL != "":
		if a.JWKSMinRefresh <= 0 {
			a.JWKSMinRefresh = caddy.Duration(DefaultJWKSMinRefresh)
		}
		set, err := newKeySet(repl.ReplaceAll(a.JWKSURL, ""), time.Duration(a.JWKSMinRefresh))
		if err != nil {
			return fmt.Errorf("auth: %w", err)
		}
		a.jwks = set
	case secret != "":
		if len(secret) < 32 {
			return fmt.Errorf("auth: the HMAC secret has %d bytes; use at least 32", len(secret))
		}
		a.key = []byte(secret)
		a.algs = []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512}
	case a.PublicKeyFile != "":
		key, algs, err := readPublicKey(repl.ReplaceAll(a.PublicKeyFile, ""))
		if err != nil {
			return fmt.Errorf("auth: %w", err)
		}
		a.key, a.algs = key, algs
	case a.HMACSecret != "":
		return fmt.Errorf("auth: hmac_secret %q is empty once its placeholders are replaced", a.HMACSecret)
	default:
		return errors.New("auth: give the key tokens are checked with: hmac_secret, public_key_file or jwks_url")
	}
	if a.Cookie == "" {
		a.Cookie = DefaultTokenCookie
	}
	return nil
}

// readPublicKey reads a PEM public key (or certificate) and returns it with
// the algorithms its tokens may be signed with.
func readPublicKey(file string) (any, []jose.SignatureAlgorithm, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, nil, fmt.Errorf("%s holds no PEM block", file)
	}
	var key any
	switch block.Type {
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
		key = cert.PublicKey
	case "PUBLIC KEY":
		if key, err = x509.ParsePKIXPublicKey(block.Bytes); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
	default:
		return nil, nil, fmt.Errorf("%s holds a %q; want a PUBLIC KEY or a CERTIFICATE", file, block.Type)
	}
	algs, err := publicKeyAlgorithms(key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", file, err)
	}
	return key, algs, nil
}

// publicKeyAlgorithms returns the algorithms a token checked with key may
// be signed with, which its type decides.
func publicKeyAlgorithms(key any) ([]jose.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}, nil
	case *ecdsa.PublicKey:
		alg, ok := map[elliptic.Curve]jose.SignatureAlgorithm{
			elliptic.P256(): jose.ES256, elliptic.P384(): jose.ES384, elliptic.P521(): jose.ES512,
		}[k.Curve]
		if !ok {
			return nil, errors.New("an ECDSA key on an unsupported curve")
		}
		return []jose.SignatureAlgorithm{alg}, nil
	case ed25519.PublicKey:
		return []jose.SignatureAlgorithm{jose.EdDSA}, nil
	default:
		return nil, fmt.Errorf("a %T key is not supported", key)
	}
}

// tokenFrom returns the token a request carries: in Authorization: Bearer,
// else in the route's cookie, else in its query parameter if it has one.
func (a *AuthConfig) tokenFrom(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
	}
	if c, err := r.Cookie(a.Cookie); err == nil && c.Value != "" {
		return c.Value
	}
	if a.QueryParam != "" {
		return r.URL.Query().Get(a.QueryParam)
	}
	return ""
}

// verify checks a token's signature and registered claims at now and
// returns what it grants. A token verified before is only checked for
// its time claims.
func (a *AuthConfig) verify(raw string, now time.Time) (*token, error) {
	if t := a.verified.get(raw); t != nil {
		if err := t.validAt(now, time.Duration(a.Leeway)); err != nil {
			return nil, err
		}
		return t, nil
	}
	t, err := a.verifySignature(raw, now)
	if err != nil {
		return nil, err
	}
	a.verified.put(raw, t)
	return t, nil
}

// verifySignature checks a token's signature, and its registered claims
// at now.
func (a *AuthConfig) verifySignature(raw string, now time.Time) (*token, error) {
	key, algs := a.key, a.algs
	if a.jwks != nil {
		algs = jwksAlgorithms
	}
	parsed, err := jwt.ParseSigned(raw, algs)
	if err != nil {
		return nil, errors.New("the token is malformed or signed with an algorithm this route does not take")
	}
	if a.jwks != nil {
		if key, err = a.jwks.keyFor(parsed.Headers[0], now); err != nil {
			return nil, err
		}
	}
	var std jwt.Claims
	var own tokenClaims
	if err := parsed.Claims(key, &std, &own); err != nil {
		return nil, errors.New("the token's signature does not verify")
	}
	expected := jwt.Expected{Issuer: a.Issuer, Time: now}
	if a.Audience != "" {
		expected.AnyAudience = jwt.Audience{a.Audience}
	}
	if err := std.ValidateWithLeeway(expected, time.Duration(a.Leeway)); err != nil {
		return nil, claimError(err)
	}
	t := &token{subject: std.Subject, grants: own.Comet}
	if std.Expiry != nil {
		t.expires = std.Expiry.Time()
	}
	if std.NotBefore != nil {
		t.notBefore = std.NotBefore.Time()
	}
	return t, nil
}

// claimError says in plain words which registered claim failed.
func claimError(err error) error {
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return errors.New("the token has expired")
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return errors.New("the token is not valid yet")
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return errors.New("the token's issuer is not the one this route takes")
	case errors.Is(err, jwt.ErrInvalidAudience):
		return errors.New("the token is not meant for this audience")
	default:
		return errors.New("the token's claims are not valid")
	}
}

// grantsContext reports whether one of the patterns covers key.
func grantsContext(patterns []string, key string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(key, prefix) || p == key {
			return true
		}
	}
	return false
}

// authorize checks the request's token, if the route requires one for
// what the request does (write: POST or DELETE, else read), and returns
// it (nil when none was required). With refused set, the request was
// answered, 401 without a valid token or 403 with one that does not grant
// the context, and err is what writing the answer returned.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, key string, write bool) (t *token, refused bool, err error) {
	a := h.Auth
	if a == nil || write && !a.Publish || !write && !a.Subscribe {
		return nil, false, nil
	}
	raw := a.tokenFrom(r)
	if raw == "" {
		return nil, true, h.deny(w, key, http.StatusUnauthorized, `Bearer realm="comet"`, "a token is required")
	}
	t, err = a.verify(raw, time.Now())
	if err != nil {
		return nil, true, h.deny(w, key, http.StatusUnauthorized,
			`Bearer realm="comet", error="invalid_token", error_description="`+err.Error()+`"`, err.Error())
	}
	patterns, what := t.grants.Subscribe, "subscribe to"
	if write {
		patterns, what = t.grants.Publish, "publish to or delete"
	}
	if !grantsContext(patterns, key) {
		reason := fmt.Sprintf("the token does not allow to %s this context", what)
		return nil, true, h.deny(w, key, http.StatusForbidden,
			`Bearer realm="comet", error="insufficient_scope", error_description="`+reason+`"`, reason)
	}
	return t, false, nil
}

// deny answers a request refused for its token (RFC 6750): a client's
// mistake, logged at debug level, not an error of the server.
func (h *Handler) deny(w http.ResponseWriter, key string, status int, challenge, reason string) error {
	h.logger.Debug("request refused", zap.String("context", key), zap.Int("status", status), zap.String("reason", reason))
	hdr := w.Header()
	hdr.Set("WWW-Authenticate", challenge)
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), reason)
	return err
}
