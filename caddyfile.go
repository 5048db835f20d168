package comet

import (
	"encoding/json"
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("comet", parseCaddyfile)
	// comet answers requests itself, so it goes with the other terminal
	// handlers, after every directive that shapes or wraps the response.
	httpcaddyfile.RegisterDirectiveOrder("comet", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterGlobalOption("comet", parseGlobalOption)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	// Catch a misspelt hub name here, where the error can point at the line.
	if handler.Hub != "" && handler.Hub != DefaultHubName && !globalHubConfigured(h, handler.Hub) {
		return nil, h.Errf("comet hub %q is not configured: add a global option block 'comet %s { ... }'", handler.Hub, handler.Hub)
	}
	return handler, nil
}

func globalHubConfigured(h httpcaddyfile.Helper, name string) bool {
	opt, ok := h.Option("comet").(httpcaddyfile.App)
	if !ok {
		return false
	}
	var app App
	if err := json.Unmarshal(opt.Value, &app); err != nil {
		return false
	}
	_, ok = app.Hubs[name]
	return ok
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	comet [<matcher>] {
//		hub              <name>
//		context          <template>
//		expiration       <duration>|off
//		publish          on|off
//		max_message_size <size>
//		max_batch_size   <size>
//		max_batch_events <n>
//		heartbeat        <duration>|off
//		transports       longpoll|sse|stream|websocket...
//		write_timeout    <duration>
//		detach           on|off
//		multiplex        <query param> [<max>]
//		auth [subscribe] [publish] {
//			hmac_secret     <secret>
//			public_key_file <pem file>
//			jwks_url        <url>
//			jwks_min_refresh <duration>
//			issuer          <iss>
//			audience        <aud>
//			cookie          <name>
//			query_param     <name>
//			leeway          <duration>
//		}
//	}
//
// Every subdirective is optional; see the Handler fields for defaults.
// auth without subscribe or publish requires tokens for both.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "hub":
			h.Hub, err = oneArg(d)
		case "context":
			h.Context, err = oneArg(d)
		case "expiration":
			h.Expiration, err = parseDurationOrOff(d)
		case "publish":
			h.Publish, err = parseOnOff(d)
		case "max_message_size":
			h.MaxMessageSize, err = parseSize(d)
		case "max_batch_size":
			h.MaxBatchSize, err = parseSize(d)
		case "max_batch_events":
			h.MaxBatchEvents, err = parseCount(d)
		case "heartbeat":
			h.Heartbeat, err = parseDurationOrOff(d)
		case "write_timeout":
			h.WriteTimeout, err = parsePositiveDuration(d)
		case "transports":
			h.Transports, err = parseTransportNames(d)
		case "detach":
			h.Detach, err = parseOnOff(d)
		case "auth":
			h.Auth, err = parseAuth(d)
		case "multiplex":
			h.Multiplex, err = parseMultiplex(d)
		default:
			return d.Errf("unrecognized comet subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseAuth parses an auth block: what needs a token, and how tokens are
// checked.
func parseAuth(d *caddyfile.Dispenser) (*AuthConfig, error) {
	a := new(AuthConfig)
	for d.NextArg() {
		switch d.Val() {
		case "subscribe":
			a.Subscribe = true
		case "publish":
			a.Publish = true
		default:
			return nil, d.Errf("auth requires tokens for subscribe or publish, not %q", d.Val())
		}
	}
	if !a.Subscribe && !a.Publish {
		a.Subscribe, a.Publish = true, true
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "hmac_secret":
			a.HMACSecret, err = oneArg(d)
		case "public_key_file":
			a.PublicKeyFile, err = oneArg(d)
		case "jwks_url":
			a.JWKSURL, err = oneArg(d)
		case "jwks_min_refresh":
			a.JWKSMinRefresh, err = parsePositiveDuration(d)
		case "issuer":
			a.Issuer, err = oneArg(d)
		case "audience":
			a.Audience, err = oneArg(d)
		case "cookie":
			a.Cookie, err = oneArg(d)
		case "query_param":
			a.QueryParam, err = oneArg(d)
		case "leeway":
			a.Leeway, err = parsePositiveDuration(d)
		default:
			return nil, d.Errf("unrecognized auth subdirective %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// parseGlobalOption parses the global comet option, which configures a hub
// (the one named "default" when no name is given). Syntax:
//
//	comet [<hub>] {
//		history         <count> [<max_age>]
//		max_contexts    <n>
//		max_subscribers <n>
//		max_client_subscribers <n>
//		idempotency_window <duration>
//		idempotency_keys   <n>
//		health_interval    <duration>
//		broker redis [<url>] {
//			url         <url>
//			addresses   <host:port>...
//			master_name <name>
//			username    <username>
//			password    <password>
//			tls
//			key_prefix  <prefix>
//		}
//	}
//
// The option may be given once per hub name.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := App{Hubs: make(map[string]*HubOptions)}
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, &app); err != nil {
			return nil, err
		}
	}
	d.Next() // consume the option name
	name := DefaultHubName
	if d.NextArg() {
		name = d.Val()
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if _, dup := app.Hubs[name]; dup {
		return nil, d.Errf("comet hub %q is configured twice", name)
	}
	cfg := new(HubOptions)
	if err := cfg.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	app.Hubs[name] = cfg
	return httpcaddyfile.App{Name: "comet", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile reads the block of the global comet option.
func (c *HubOptions) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "history":
			err = parseHistory(&c.HubConfig, d)
		case "max_contexts":
			c.MaxContexts, err = parseCount(d)
		case "max_subscribers":
			c.MaxSubscribers, err = parseCount(d)
		case "max_client_subscribers":
			c.MaxClientSubscribers, err = parseCount(d)
		case "idempotency_window":
			c.IdempotencyWindow, err = parsePositiveDuration(d)
		case "idempotency_keys":
			c.IdempotencyKeys, err = parseCount(d)
		case "health_interval":
			c.HealthInterval, err = parsePositiveDuration(d)
		case "broker":
			c.Broker, err = parseBroker(d)
		default:
			return d.Errf("unrecognized comet global option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseHistory(c *HubConfig, d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		return d.Errf("history count must be a whole number of at least 1, got %q", args[0])
	}
	c.History = n
	if len(args) == 2 {
		age, err := caddy.ParseDuration(args[1])
		if err != nil || age <= 0 {
			return d.Errf("history max age must be a positive duration, got %q", args[1])
		}
		c.HistoryMaxAge = caddy.Duration(age)
	}
	return nil
}

// parseBroker reads the broker subdirective of the global option; redis is
// the one kind there is.
func parseBroker(d *caddyfile.Dispenser) (*BrokerConfig, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	if kind := d.Val(); kind != "redis" {
		return nil, d.Errf("unknown broker %q: want redis", kind)
	}
	r := new(RedisConfig)
	if d.NextArg() {
		r.URL = d.Val()
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "url":
			r.URL, err = oneArg(d)
		case "addresses":
			if r.Addresses = d.RemainingArgs(); len(r.Addresses) == 0 {
				err = d.ArgErr()
			}
		case "master_name":
			r.MasterName, err = oneArg(d)
		case "username":
			r.Username, err = oneArg(d)
		case "password":
			r.Password, err = oneArg(d)
		case "tls":
			if d.NextArg() {
				err = d.ArgErr()
			}
			r.TLS = true
		case "key_prefix":
			r.KeyPrefix, err = oneArg(d)
		default:
			err = d.Errf("unrecognized redis broker option %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	if err := r.Validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return &BrokerConfig{Redis: r}, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

// parseDurationOrOff reads a positive duration, or off as -1.
func parseDurationOrOff(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	if v == "off" {
		return -1, nil
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s must be a positive duration or off, got %q", name, v)
	}
	return caddy.Duration(dur), nil
}

func parsePositiveDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s must be a positive duration, got %q", name, v)
	}
	return caddy.Duration(dur), nil
}

func parseTransportNames(d *caddyfile.Dispenser) ([]string, error) {
	names := d.RemainingArgs()
	if len(names) == 0 {
		return nil, d.ArgErr()
	}
	if _, err := parseTransports(names); err != nil {
		return nil, d.Err(err.Error())
	}
	return names, nil
}

func parseOnOff(d *caddyfile.Dispenser) (*bool, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return nil, err
	}
	switch v {
	case "on":
		return new(true), nil
	case "off":
		return new(false), nil
	}
	return nil, d.Errf("%s must be on or off, got %q", name, v)
}

func parseMultiplex(d *caddyfile.Dispenser) (*MultiplexConfig, error) {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return nil, d.ArgErr()
	}
	m := &MultiplexConfig{Param: args[0]}
	if len(args) == 2 {
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 2 || n > MaxMultiplexCeiling {
			return nil, d.Errf("multiplex max must be a whole number from 2 to %d, got %q", MaxMultiplexCeiling, args[1])
		}
		m.Max = n
	}
	return m, nil
}

func parseSize(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 || n > math.MaxInt64 {
		return 0, d.Errf("%s must be a positive size such as 64KiB, got %q", name, v)
	}
	return int64(n), nil
}

func parseCount(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, d.Errf("%s must be a whole number of at least 1, got %q", name, v)
	}
	return n, nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*HubOptions)(nil)
)
