// Package jwtauth verifies the JSON Web Tokens of a route with auth, with
// go-jose: their signature, against a secret, a public key or a key set
// fetched by URL; their registered claims; and the "comet" claim, which
// lists the contexts a token may read and write. The algorithms a token
// may use come from the key, never from the token: "none", and an HMAC
// token checked against a public key, are refused. Tokens verified once
// are kept by their text, so that a long poll's token is not checked
// again at every poll. It knows nothing of HTTP or of the hub.
package jwtauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Claims is what a token says, beyond the registered claims.
type Claims struct {
	Comet Grants `json:"comet"`
}

// Grants are the context patterns a token may read and write: exact keys,
// or a prefix ending in "*" ("*" alone is every context).
type Grants struct {
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
}

// Covers reports whether one of the patterns covers key.
func Covers(patterns []string, key string) bool {
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(key, prefix) || p == key {
			return true
		}
	}
	return false
}

// Token is a verified token: who it is for, from and until when, and what
// it grants.
type Token struct {
	Subject   string
	NotBefore time.Time // zero: always
	Expires   time.Time // zero: never
	Grants    Grants
}

// ValidAt reports whether the token's time claims hold at now, with leeway.
func (t *Token) ValidAt(now time.Time, leeway time.Duration) error {
	switch {
	case !t.Expires.IsZero() && now.After(t.Expires.Add(leeway)):
		return errors.New("the token has expired")
	case !t.NotBefore.IsZero() && now.Add(leeway).Before(t.NotBefore):
		return errors.New("the token is not valid yet")
	}
	return nil
}

// Expected is what a token's registered claims must say.
type Expected struct {
	Issuer   string        // if set, the "iss" claim must be this
	Audience string        // if set, the "aud" claim must include this
	Leeway   time.Duration // how far clocks may disagree on exp and nbf
}

// Verifier checks tokens against one key, or one key set.
type Verifier struct {
	key      any                       // []byte for HMAC, or a public key; nil with a key set
	algs     []jose.SignatureAlgorithm // what tokens may be signed with
	jwks     *keySet
	expected Expected
	verified cache
}

// MinHMACSecret is the shortest HMAC secret taken.
const MinHMACSecret = 32

// NewHMAC returns a verifier of tokens signed with secret (HS256, HS384,
// HS512), which must have at least MinHMACSecret bytes.
func NewHMAC(secret []byte, e Expected) (*Verifier, error) {
	if len(secret) < MinHMACSecret {
		return nil, fmt.Errorf("the HMAC secret has %d bytes; use at least %d", len(secret), MinHMACSecret)
	}
	return &Verifier{key: secret, algs: []jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512}, expected: e}, nil
}

// NewPublicKeyFile returns a verifier of tokens signed for the public key
// (or certificate) in a PEM file: RSA (RS*, PS*), ECDSA (ES256, ES384 or
// ES512 by its curve) or Ed25519 (EdDSA).
func NewPublicKeyFile(file string, e Expected) (*Verifier, error) {
	key, algs, err := readPublicKey(file)
	if err != nil {
		return nil, err
	}
	return &Verifier{key: key, algs: algs, expected: e}, nil
}

// NewKeySet returns a verifier of tokens signed for the keys of the JSON
// Web Key Set at url, picked by the token's kid. The set is fetched now,
// so that a wrong URL shows at once, and again when a token names a kid it
// does not have, at most once every minRefresh.
func NewKeySet(url string, minRefresh time.Duration, e Expected) (*Verifier, error) {
	set, err := newKeySet(url, minRefresh)
	if err != nil {
		return nil, err
	}
	return &Verifier{jwks: set, algs: jwksAlgorithms, expected: e}, nil
}

// Verify checks a token's signature and registered claims at now and
// returns what it grants. A token verified before is only checked for its
// time claims.
func (v *Verifier) Verify(raw string, now time.Time) (*Token, error) {
	if t := v.verified.get(raw); t != nil {
		if err := t.ValidAt(now, v.expected.Leeway); err != nil {
			return nil, err
		}
		return t, nil
	}
	t, err := v.verifySignature(raw, now)
	if err != nil {
		return nil, err
	}
	v.verified.put(raw, t)
	return t, nil
}

// Cached reports whether the token's text is among those verified before.
func (v *Verifier) Cached(raw string) bool { return v.verified.get(raw) != nil }

// verifySignature checks a token's signature, and its registered claims
// at now.
func (v *Verifier) verifySignature(raw string, now time.Time) (*Token, error) {
	parsed, err := jwt.ParseSigned(raw, v.algs)
	if err != nil {
		return nil, errors.New("the token is malformed or signed with an algorithm this route does not take")
	}
	key := v.key
	if v.jwks != nil {
		if key, err = v.jwks.keyFor(parsed.Headers[0], now); err != nil {
			return nil, err
		}
	}
	var std jwt.Claims
	var own Claims
	if err := parsed.Claims(key, &std, &own); err != nil {
		return nil, errors.New("the token's signature does not verify")
	}
	expected := jwt.Expected{Issuer: v.expected.Issuer, Time: now}
	if v.expected.Audience != "" {
		expected.AnyAudience = jwt.Audience{v.expected.Audience}
	}
	if err := std.ValidateWithLeeway(expected, v.expected.Leeway); err != nil {
		return nil, claimError(err)
	}
	t := &Token{Subject: std.Subject, Grants: own.Comet}
	if std.Expiry != nil {
		t.Expires = std.Expiry.Time()
	}
	if std.NotBefore != nil {
		t.NotBefore = std.NotBefore.Time()
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

// maxVerified bounds the cache of verified tokens of a verifier.
const maxVerified = 16384

// cache keeps tokens whose signature and issuer and audience were
// verified, by their exact text: a long poll sends the same token with
// every poll, and checking a signature costs tens of microseconds (an
// ECDSA one a hundred). Only valid tokens get in, so a client cannot fill
// it with garbage; when it is full, an entry Go's map order picks makes
// room.
type cache struct {
	mu     sync.RWMutex
	tokens map[string]*Token
}

func (c *cache) get(raw string) *Token {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tokens[raw]
}

func (c *cache) put(raw string, t *Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens == nil {
		c.tokens = make(map[string]*Token)
	}
	if len(c.tokens) >= maxVerified {
		for old := range c.tokens {
			delete(c.tokens, old)
			break
		}
	}
	c.tokens[raw] = t
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
