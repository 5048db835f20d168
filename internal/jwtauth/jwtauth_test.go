package jwtauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const secret = "a secret of more than thirty-two bytes, for tests"

// mint signs a token for sub granting g, valid from a minute ago for ttl.
func mint(t testing.TB, key any, alg jose.SignatureAlgorithm, sub string, ttl time.Duration, g Grants) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	std := jwt.Claims{Subject: sub, NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), Expiry: jwt.NewNumericDate(now.Add(ttl))}
	raw, err := jwt.Signed(signer).Claims(std).Claims(Claims{Comet: g}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		key      string
		want     bool
	}{
		{[]string{"/a"}, "/a", true},
		{[]string{"/a"}, "/ab", false},
		{[]string{"/a*"}, "/ab", true},
		{[]string{"*"}, "/anything", true},
		{[]string{"/b/*", "/a"}, "/b/c", true},
		{nil, "/a", false},
	} {
		if got := Covers(tc.patterns, tc.key); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tc.patterns, tc.key, got, tc.want)
		}
	}
}

func TestVerifyReturnsWhatTheTokenGrants(t *testing.T) {
	v, err := NewHMAC([]byte(secret), Expected{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := v.Verify(mint(t, []byte(secret), jose.HS256, "alice", time.Hour, Grants{Subscribe: []string{"/rooms/*"}}), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if tok.Subject != "alice" || !Covers(tok.Grants.Subscribe, "/rooms/1") || tok.Expires.IsZero() {
		t.Fatalf("token %+v, want alice's, granting /rooms/*, with its expiry", tok)
	}
}

func TestNewHMACRefusesAShortSecret(t *testing.T) {
	if _, err := NewHMAC([]byte("short"), Expected{}); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("a 5-byte secret gave %v, want a refusal", err)
	}
}

// TestVerifyTakesOnlyTheKeysAlgorithms checks that the algorithm comes
// from the key: an HMAC token signed with the text of the public key
// (the classic confusion attack) and an unsigned token are refused.
func TestVerifyTakesOnlyTheKeysAlgorithms(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	file := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(file, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := NewPublicKeyFile(file, Expected{})
	if err != nil {
		t.Fatal(err)
	}
	g := Grants{Subscribe: []string{"*"}}
	if _, err := v.Verify(mint(t, ecKey, jose.ES256, "alice", time.Hour, g), time.Now()); err != nil {
		t.Fatalf("an ES256 token of the key was refused: %v", err)
	}
	if _, err := v.Verify(mint(t, pemBytes, jose.HS256, "mallory", time.Hour, g), time.Now()); err == nil {
		t.Fatal("an HMAC token signed with the public key was taken")
	}
	unsigned := "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5IiwiY29tZXQiOnsic3Vic2NyaWJlIjpbIioiXX19."
	if _, err := v.Verify(unsigned, time.Now()); err == nil {
		t.Fatal("an unsigned token was taken")
	}
}

// TestVerifiedTokensStillExpire checks that a token taken from the cache
// is checked against the clock again.
func TestVerifiedTokensStillExpire(t *testing.T) {
	v, _ := NewHMAC([]byte(secret), Expected{})
	raw := mint(t, []byte(secret), jose.HS256, "alice", time.Minute, Grants{Subscribe: []string{"*"}})
	now := time.Now()
	if _, err := v.Verify(raw, now); err != nil {
		t.Fatal(err)
	}
	if !v.Cached(raw) {
		t.Fatal("a verified token was not kept")
	}
	if _, err := v.Verify(raw, now.Add(2*time.Minute)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("a cached token past its exp gave %v, want expired", err)
	}
}

// BenchmarkVerifyToken is the cost of checking a token, which every
// request on a guarded route pays, a long poll's every re-poll included.
func BenchmarkVerifyToken(b *testing.B) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, bc := range []struct {
		name    string
		v       *Verifier
		private any
		alg     jose.SignatureAlgorithm
	}{
		{"HS256", &Verifier{key: []byte(secret), algs: []jose.SignatureAlgorithm{jose.HS256}}, []byte(secret), jose.HS256},
		{"ES256", &Verifier{key: &ecKey.PublicKey, algs: []jose.SignatureAlgorithm{jose.ES256}}, ecKey, jose.ES256},
	} {
		raw := mint(b, bc.private, bc.alg, "alice", time.Hour, Grants{Subscribe: []string{"/rooms/*"}})
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.v.verifySignature(raw, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
		// A long poll's re-poll, with the token it sent before.
		b.Run(bc.name+"/again", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.v.Verify(raw, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
