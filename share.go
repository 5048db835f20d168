package comet

import (
	"net"
	"net/http"
	"net/netip"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// clientOf names the client of a request for its share of the hub
// (max_client_subscribers): the subject of its token where the route has
// tokens, else its address as Caddy's client_ip sees it (which honours the
// server's trusted_proxies), an IPv6 address by its /64, which one host
// is usually given whole.
func clientOf(r *http.Request, tok *jwtauth.Token) string {
	if tok != nil {
		return "sub " + tok.Subject
	}
	text, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if text == "" {
		text, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	addr, err := netip.ParseAddr(text)
	if err != nil {
		return "ip " + text
	}
	if addr = addr.Unmap(); addr.Is6() {
		prefix, _ := addr.Prefix(64)
		return "ip " + prefix.String()
	}
	return "ip " + addr.String()
}
