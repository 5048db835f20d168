package jwtauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// jwksAlgorithms are the algorithms a token checked against a JWKS may
// name; the key it names by kid then decides which of them it may use.
var jwksAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// DefaultJWKSMinRefresh is the least time between two fetches of a key
// set, however many tokens name a kid it does not have.
const DefaultJWKSMinRefresh = 10 * time.Second

// maxJWKSSize bounds a key set's document.
const maxJWKSSize = 1 << 20

// keySet is a JSON Web Key Set fetched from a URL: its public keys by kid.
type keySet struct {
	url        string
	client     *http.Client
	minRefresh time.Duration

	mu        sync.Mutex // held while fetching: one fetch at a time
	keys      map[string]jose.JSONWebKey
	fetchedAt time.Time // of the last attempt
}

// newKeySet checks the URL and fetches the set once, so that a wrong URL
// shows when the config loads.
func newKeySet(raw string, minRefresh time.Duration) (*keySet, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("jwks_url: %w", err)
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname())) {
		return nil, fmt.Errorf("jwks_url %q: use https (http only on a loopback address): keys fetched in the clear could be forged", raw)
	}
	s := &keySet{url: raw, client: &http.Client{Timeout: 10 * time.Second}, minRefresh: minRefresh}
	if err := s.fetch(time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// keyFor returns the key a token's header names, fetching the set again
// if it does not have that kid and the last fetch is old enough. The
// token's algorithm must be one the key's type allows, and the key's own
// alg if it names one.
func (s *keySet) keyFor(h jose.Header, now time.Time) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[h.KeyID]
	if !ok && now.Sub(s.fetchedAt) >= s.minRefresh {
		_ = s.fetch(now) // on failure the keys held stay
		k, ok = s.keys[h.KeyID]
	}
	if !ok {
		return nil, errors.New("the token's key (kid) is not in the key set")
	}
	algs, err := publicKeyAlgorithms(k.Key)
	if err != nil || !slices.Contains(algs, jose.SignatureAlgorithm(h.Algorithm)) || k.Algorithm != "" && k.Algorithm != h.Algorithm {
		return nil, errors.New("the token's algorithm does not go with its key")
	}
	return k.Key, nil
}

// fetch gets the set and keeps its public signing keys. The caller holds
// s.mu, or has the set to itself.
func (s *keySet) fetch(now time.Time) error {
	s.fetchedAt = now
	resp, err := s.client.Get(s.url)
	if err != nil {
		return fmt.Errorf("fetching the key set: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching the key set %s: %s", s.url, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJWKSSize)).Decode(&set); err != nil {
		return fmt.Errorf("the key set at %s: %w", s.url, err)
	}
	keys := make(map[string]jose.JSONWebKey, len(set.Keys))
	for _, k := range set.Keys {
		// Only public keys meant for signatures: a secret has no business
		// in a set served over HTTP, and would allow HMAC tokens.
		if k.Valid() && k.IsPublic() && (k.Use == "" || k.Use == "sig") {
			keys[k.KeyID] = k
		}
	}
	if len(keys) == 0 {
		return fmt.Errorf("the key set at %s holds no public signing key", s.url)
	}
	s.keys = keys
	return nil
}
