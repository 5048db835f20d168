package redisbroker

import (
	"github.com/caddy-comet/comet/internal/hub"
	"github.com/redis/go-redis/v9"
)

// What the comet module's tests look at in a Redis broker: where it keeps a
// context and announces its events, and its client. Each takes a broker
// New made, and panics on any other.

// Client is the broker's go-redis client.
func Client(b hub.Broker) redis.UniversalClient { return b.(*redisBroker).client }

// HubChannel is the channel the broker announces deletions and probes on.
func HubChannel(b hub.Broker) string { return b.(*redisBroker).channel }

// ContextChannel is the channel the broker announces the events of the
// context named key on.
func ContextChannel(b hub.Broker, key string) string { return b.(*redisBroker).contextChannel(key) }

// Keys are the Redis keys the broker keeps the context named key in: its
// hash (epoch and last id), then its stream (history).
func Keys(b hub.Broker, key string) []string { return b.(*redisBroker).keys(key) }

// KeysOf are the keys of the context named key of the hub named hubName,
// under key prefix prefix, without a broker (see Keys).
func KeysOf(prefix, hubName, key string) []string {
	return (&redisBroker{prefix: prefix, hub: hubName}).keys(key)
}
