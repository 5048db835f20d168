package comet

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddyserver/caddy/v2"
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

// DefaultJWKSMinRefresh is the least time between two fetches of a key
// set, however many tokens name a kid it does not have.
const DefaultJWKSMinRefresh = 10 * time.Second

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

	verifier *jwtauth.Verifier
}

// provision reads the key tokens are checked with.
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
	expected := jwtauth.Expected{Issuer: a.Issuer, Audience: a.Audience, Leeway: time.Duration(a.Leeway)}
	var err error
	switch {
	case given > 1:
		return errors.New("auth: give one of hmac_secret, public_key_file and jwks_url")
	case a.JWKSURL != "":
		if a.JWKSMinRefresh <= 0 {
			a.JWKSMinRefresh = caddy.Duration(DefaultJWKSMinRefresh)
		}
		a.verifier, err = jwtauth.NewKeySet(repl.ReplaceAll(a.JWKSURL, ""), time.Duration(a.JWKSMinRefresh), expected)
	case secret != "":
		a.verifier, err = jwtauth.NewHMAC([]byte(secret), expected)
	case a.PublicKeyFile != "":
		a.verifier, err = jwtauth.NewPublicKeyFile(repl.ReplaceAll(a.PublicKeyFile, ""), expected)
	case a.HMACSecret != "":
		return fmt.Errorf("auth: hmac_secret %q is empty once its placeholders are replaced", a.HMACSecret)
	default:
		return errors.New("auth: give the key tokens are checked with: hmac_secret, public_key_file or jwks_url")
	}
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	if a.Cookie == "" {
		a.Cookie = DefaultTokenCookie
	}
	return nil
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

// verify checks a token at now and returns what it grants.
func (a *AuthConfig) verify(raw string, now time.Time) (*jwtauth.Token, error) {
	return a.verifier.Verify(raw, now)
}

// authorize checks the request's token, if the route requires one for
// what the request does (write: POST or DELETE, else read), and returns
// it (nil when none was required). With refused set, the request was
// answered, 401 without a valid token or 403 with one that does not grant
// the context, and err is what writing the answer returned.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, key string, write bool) (t *jwtauth.Token, refused bool, err error) {
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
	patterns, what := t.Grants.Subscribe, "subscribe to"
	if write {
		patterns, what = t.Grants.Publish, "publish to or delete"
	}
	if !jwtauth.Covers(patterns, key) {
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
