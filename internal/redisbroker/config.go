package redisbroker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

func init() {
	// go-redis logs connection trouble through a logger of its own, on
	// standard error; send it to Caddy's log, where operators look.
	redis.SetLogger(redisLogger{})
}

type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...any) {
	caddy.Log().Named("comet.redis").Warn(fmt.Sprintf(format, v...))
}

// DefaultKeyPrefix starts every key and channel comet uses in Redis.
const DefaultKeyPrefix = "comet:"

// Config connects a hub to Redis: a single server, a Redis Cluster, or
// a Sentinel-managed set, through go-redis' universal client.
type Config struct {
	// The server: redis://[[user]:password@]host[:port][/db], or rediss://
	// for TLS. Placeholders such as {env.REDIS_URL} are replaced.
	URL string `json:"url,omitempty"`

	// Instead of URL's host: the nodes of a Redis Cluster, or the
	// Sentinels when MasterName is set.
	Addresses []string `json:"addresses,omitempty"`

	// The Sentinel master set's name.
	MasterName string `json:"master_name,omitempty"`

	// Credentials, overriding URL's. Placeholders are replaced.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// Use TLS (implied by a rediss:// URL).
	TLS bool `json:"tls,omitempty"`

	// Starts every key and channel, so that several hubs or applications
	// can share one Redis. Default: "comet:".
	KeyPrefix string `json:"key_prefix,omitempty"`
}

func (c Config) Validate() error {
	if c.URL == "" && len(c.Addresses) == 0 {
		return errors.New("redis broker needs a URL or addresses")
	}
	return nil
}

// universalOptions turns the config into go-redis options, replacing
// placeholders in the URL and credentials.
func (c Config) universalOptions() (*redis.UniversalOptions, error) {
	repl := caddy.NewReplacer()
	opts := &redis.UniversalOptions{Addrs: c.Addresses, MasterName: c.MasterName}
	if c.URL != "" {
		parsed, err := redis.ParseURL(repl.ReplaceAll(c.URL, ""))
		if err != nil {
			return nil, fmt.Errorf("redis url: %v", err)
		}
		if len(opts.Addrs) == 0 {
			opts.Addrs = []string{parsed.Addr}
		}
		opts.DB, opts.Username, opts.Password, opts.TLSConfig = parsed.DB, parsed.Username, parsed.Password, parsed.TLSConfig
	}
	if c.Username != "" {
		opts.Username = repl.ReplaceAll(c.Username, "")
	}
	if c.Password != "" {
		opts.Password = repl.ReplaceAll(c.Password, "")
	}
	if c.TLS && opts.TLSConfig == nil {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return opts, nil
}
