package comet

import (
	"github.com/caddy-comet/comet/internal/hub"
	"github.com/caddy-comet/comet/internal/redisbroker"
	"go.uber.org/zap"
)

// A broker makes hubs on several nodes act as one (see internal/hub's
// Broker); internal/redisbroker is the one comet ships. Programs that
// embed a hub may write their own.
type (
	Broker         = hub.Broker
	BrokerFollower = hub.BrokerFollower
	BrokerProblems = hub.BrokerProblems
	BrokerState    = hub.BrokerState
)

// BrokerConfig selects a broker for a hub. No broker: in-process.
type BrokerConfig struct {
	// Redis shares the hub through a Redis server, cluster or sentinel
	// set.
	Redis *RedisConfig `json:"redis,omitempty"`
}

// RedisConfig connects a hub to Redis (see internal/redisbroker).
type RedisConfig = redisbroker.Config

// DefaultRedisKeyPrefix starts every key and channel comet uses in Redis.
const DefaultRedisKeyPrefix = redisbroker.DefaultKeyPrefix

// NewRedisBroker connects to Redis as cfg says, for the hub named hubName,
// and fails if Redis does not answer. Hubs of that name on every node that
// use the same Redis and key prefix act as one.
func NewRedisBroker(cfg RedisConfig, hubName string, logger *zap.Logger) (Broker, error) {
	return redisbroker.New(cfg, hubName, logger)
}
