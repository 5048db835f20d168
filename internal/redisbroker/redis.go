package redisbroker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisBroker keeps each context in two keys that share a hash tag, so
// that scripts work on a Redis Cluster too:
//
//	<prefix>{<hub>:<context>}:m   hash: epoch, last (the last id)
//	<prefix>{<hub>:<context>}:s   stream: the history, entry ids <id>-0
//
// and announces a context's events on a channel with the same hash tag,
//
//	<prefix>{<hub>:<context>}:e   a shard channel on a Redis Cluster
//
// and deletions and probes on one channel per hub, <prefix><hub>:events.
// The keys expire after the history's max age without a publish (both) or
// a node loading the context (the hash).
type redisBroker struct {
	client  redis.UniversalClient
	prefix  string
	hub     string
	channel string // the hub's: deletions and probes
	logger  *zap.Logger

	// announce is the command contexts' events are announced with:
	// SPUBLISH on a Redis Cluster, PUBLISH otherwise.
	announce string
	// sharded follows contexts' channels on a Redis Cluster, while
	// Follow runs.
	sharded atomic.Pointer[shardedChannels]

	// The contexts' channels this node follows (see watch.go's Watch):
	// changes wait in watches until the subscriber goroutine sends them, in
	// as few commands as it can.
	watchMu  sync.Mutex
	watches  map[string]bool // channel → subscribe (true) or unsubscribe
	watching chan struct{}   // signals the subscriber goroutine
}

// New connects to Redis as cfg says, for the hub named hubName, and fails
// if Redis does not answer. Hubs of that name on every node that use the
// same Redis and key prefix act as one.
func New(cfg Config, hubName string, logger *zap.Logger) (hub.Broker, error) {
	opts, err := cfg.universalOptions()
	if err != nil {
		return nil, err
	}
	client := redis.NewUniversalClient(opts)
	watchClusterFailures(client)
	ctx, cancel := context.WithTimeout(context.Background(), hub.BrokerTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("%w: redis at %s: %v", hub.ErrBrokerUnavailable, strings.Join(opts.Addrs, ", "), err)
	}
	prefix := cfg.KeyPrefix
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	announce := "PUBLISH"
	if _, ok := client.(*redis.ClusterClient); ok {
		announce = "SPUBLISH"
	}
	return &redisBroker{
		client:   client,
		prefix:   prefix,
		hub:      hubName,
		channel:  prefix + hubName + ":events",
		logger:   logger,
		announce: announce,
		watches:  make(map[string]bool),
		watching: make(chan struct{}, 1),
	}, nil
}

func (b *redisBroker) keys(key string) []string {
	tag := b.prefix + "{" + b.hub + ":" + key + "}"
	return []string{tag + ":m", tag + ":s"}
}

// contextChannel is the channel a context's events are announced on. It
// has the context's hash tag, so that on a Redis Cluster it hashes to the
// slot of the context's keys.
func (b *redisBroker) contextChannel(key string) string {
	return b.prefix + "{" + b.hub + ":" + key + "}:e"
}

// contextOfChannel is the context a channel of contextChannel's is of.
func (b *redisBroker) contextOfChannel(channel string) (string, bool) {
	start, end := b.prefix+"{"+b.hub+":", "}:e"
	if len(channel) < len(start)+len(end) || !strings.HasPrefix(channel, start) || !strings.HasSuffix(channel, end) {
		return "", false
	}
	return channel[len(start) : len(channel)-len(end)], true
}

// luaEnsureContext starts with every script that may create a context: a
// context whose hash expired starts a new epoch (ARGV[1]), and any stream
// left behind is dropped so that ids can start at 1 again.
const luaEnsureContext = `
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
	epoch = ARGV[1]
	redis.call('DEL', KEYS[2])
	redis.call('HSET', KEYS[1], 'epoch', epoch, 'last', 0)
end
`

// publishScript assigns the next id, appends to the capped stream, renews
// both keys' lifetime and announces the event (with ARGV[10], PUBLISH or
// SPUBLISH), all at once.
var publishScript = redis.NewScript(luaEnsureContext + `
local id = redis.call('HINCRBY', KEYS[1], 'last', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 't', ARGV[5], 'c', ARGV[6], 'p', ARGV[7], 'd', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[10], ARGV[4], 'e ' .. epoch .. ' ' .. id .. ' ' .. ARGV[7] .. ' ' .. #ARGV[9] .. ' ' .. #ARGV[5] .. ' ' .. #ARGV[6] .. '\n' .. ARGV[9] .. ARGV[5] .. ARGV[6] .. ARGV[8])
return {epoch, id}
`)

// loadScript returns a context's epoch, last id and history, creating the
// context if it does not exist. It renews the hash's lifetime, so that a
// context clients keep using keeps its epoch while nothing is published.
var loadScript = redis.NewScript(luaEnsureContext + `
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {epoch, redis.call('HGET', KEYS[1], 'last'), redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])}
`)

// divergeScript starts a context in a new epoch (ARGV[2]) if it is still
// in epoch ARGV[1], renewing its hash's lifetime (ARGV[3]).
var divergeScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
	redis.call('DEL', KEYS[2])
	redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'last', 0)
	redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
`)

var deleteScript = redis.NewScript(`
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], 'd ' .. #ARGV[2] .. '\n' .. ARGV[2])
return n
`)

// publish runs the publish script for one event: a batch of one needs no
// pipeline.
func (b *redisBroker) publish(ctx context.Context, key string, ev *hub.Event, keep hub.Retention) (hub.Cursor, error) {
	res, err := publishScript.Run(ctx, b.client, b.keys(key), b.publishArgs(key, ev, keep)...).Slice()
	if err != nil {
		return hub.Cursor{}, fmt.Errorf("%w: publishing to redis: %v", hub.ErrBrokerUnavailable, err)
	}
	epoch, id, err := epochAndID(res)
	if err != nil {
		return hub.Cursor{}, err
	}
	ev.ID = id
	return hub.Cursor{Epoch: epoch, ID: id}, nil
}

// PublishBatch runs the publish script once per event in one pipeline: one
// round trip per Redis node the batch's contexts live on. The pipeline
// uses the script's hash; events that a node refused for not knowing the
// script (a node that restarted or was flushed) did not run, so they are
// sent again with the script itself, in their order.
func (b *redisBroker) PublishBatch(ctx context.Context, batch []hub.Publication, keep hub.Retention) ([]hub.Cursor, error) {
	if len(batch) == 1 {
		cur, err := b.publish(ctx, batch[0].Key, &batch[0].Event, keep)
		return []hub.Cursor{cur}, err
	}
	cursors := make([]hub.Cursor, len(batch))
	pending := make([]int, len(batch))
	for i := range pending {
		pending[i] = i
	}
	for _, send := range []func(redis.Pipeliner, int) *redis.Cmd{
		func(p redis.Pipeliner, i int) *redis.Cmd {
			return b.publishCmd(ctx, p, publishScript.EvalSha, &batch[i], keep)
		},
		func(p redis.Pipeliner, i int) *redis.Cmd {
			return b.publishCmd(ctx, p, publishScript.Eval, &batch[i], keep)
		},
	} {
		pipe := b.client.Pipeline()
		cmds := make([]*redis.Cmd, len(pending))
		for j, i := range pending {
			cmds[j] = send(pipe, i)
		}
		_, _ = pipe.Exec(ctx) // each command's error is looked at below
		var again []int
		var firstErr error
		for j, i := range pending {
			res, err := cmds[j].Slice()
			if err == nil {
				var id uint64
				cursors[i].Epoch, id, err = epochAndID(res)
				cursors[i].ID, batch[i].Event.ID = id, id
			}
			switch {
			case err == nil:
			case redis.HasErrorPrefix(err, "NOSCRIPT"):
				again = append(again, i)
			case firstErr == nil:
				firstErr = err
			}
		}
		if firstErr != nil {
			return cursors, fmt.Errorf("%w: publishing to redis: %v", hub.ErrBrokerUnavailable, firstErr)
		}
		if pending = again; len(pending) == 0 {
			break
		}
	}
	return cursors, nil
}

// publishCmd queues the publish script for one event, by hash or whole.
func (b *redisBroker) publishCmd(ctx context.Context, p redis.Pipeliner,
	run func(context.Context, redis.Scripter, []string, ...any) *redis.Cmd, pub *hub.Publication, keep hub.Retention) *redis.Cmd {
	return run(ctx, p, b.keys(pub.Key), b.publishArgs(pub.Key, &pub.Event, keep)...)
}

// publishArgs are the publish script's arguments for one event.
func (b *redisBroker) publishArgs(key string, ev *hub.Event, keep hub.Retention) []any {
	published := strconv.FormatInt(ev.Published.UnixMilli(), 10)
	return []any{hub.NewEpoch(), keep.Events, keep.MaxAge.Milliseconds(), b.contextChannel(key),
		ev.Type, ev.ContentType, published, ev.Data, key, b.announce}
}

func (b *redisBroker) Load(ctx context.Context, key string, keep hub.Retention) (hub.BrokerState, error) {
	res, err := loadScript.Run(ctx, b.client, b.keys(key),
		hub.NewEpoch(), keep.MaxAge.Milliseconds(), keep.Events).Slice()
	if err != nil {
		return hub.BrokerState{}, fmt.Errorf("%w: loading from redis: %v", hub.ErrBrokerUnavailable, err)
	}
	epoch, last, err := epochAndID(res)
	if err != nil || len(res) < 3 {
		return hub.BrokerState{}, fmt.Errorf("unexpected answer from redis: %v", res)
	}
	entries, _ := res[2].([]any)
	st := hub.BrokerState{Epoch: epoch, LastID: last}
	cutoff := time.Now().Add(-keep.MaxAge)
	for i := len(entries) - 1; i >= 0; i-- { // XREVRANGE: newest first
		ev, err := eventFromStreamEntry(entries[i])
		if err != nil {
			return hub.BrokerState{}, err
		}
		if ev.Published.Before(cutoff) {
			continue
		}
		st.History = append(st.History, ev)
	}
	// Keep only a run of consecutive ids that ends at the last id, the
	// shape a hub's history has; anything else is a gap to report.
	for i := len(st.History) - 1; i >= 0; i-- {
		if st.History[i].ID != last-uint64(len(st.History)-1-i) {
			st.History = st.History[i+1:]
			break
		}
	}
	return st, nil
}

func (b *redisBroker) Position(ctx context.Context, key string) (hub.Cursor, bool, error) {
	vals, err := b.client.HMGet(ctx, b.keys(key)[0], "epoch", "last").Result()
	if err != nil {
		return hub.Cursor{}, false, fmt.Errorf("%w: reading from redis: %v", hub.ErrBrokerUnavailable, err)
	}
	if vals[0] == nil {
		return hub.Cursor{}, false, nil
	}
	epoch, id, err := epochAndID(vals)
	return hub.Cursor{Epoch: epoch, ID: id}, err == nil, err
}

// idempotencyLease is how long a claimed idempotency key waits for its
// publish to be settled: longer than a publish may take (hub.BrokerTimeout),
// short enough that a node that died half way frees it soon.
const idempotencyLease = 3 * hub.BrokerTimeout

// claimScript claims an idempotency key (an empty value while its publish
// is under way) or returns what is stored for it.
var claimScript = redis.NewScript(`
if redis.call('SET', KEYS[1], '', 'NX', 'PX', ARGV[1]) then
	return {1}
end
return {0, redis.call('GET', KEYS[1])}
`)

// idempotencyKey is where an idempotency key of the hub lives, in a hash
// slot of its own.
func (b *redisBroker) idempotencyKey(key string) string {
	return b.prefix + "{" + b.hub + ":idem:" + key + "}"
}

func (b *redisBroker) Claim(ctx context.Context, key string, window time.Duration) (bool, []byte, error) {
	lease := min(window, idempotencyLease).Milliseconds()
	res, err := claimScript.Run(ctx, b.client, []string{b.idempotencyKey(key)}, max(lease, 1)).Slice()
	if err != nil {
		return false, nil, fmt.Errorf("%w: claiming an idempotency key: %v", hub.ErrBrokerUnavailable, err)
	}
	if n, _ := res[0].(int64); n == 1 {
		return true, nil, nil
	}
	if len(res) > 1 {
		if stored, _ := res[1].(string); stored != "" {
			return false, []byte(stored), nil
		}
	}
	return false, nil, nil // under way, or gone since: the caller looks again
}

func (b *redisBroker) Settle(ctx context.Context, key string, record []byte, window time.Duration) error {
	var err error
	if record == nil {
		err = b.client.Del(ctx, b.idempotencyKey(key)).Err()
	} else {
		err = b.client.Set(ctx, b.idempotencyKey(key), record, window).Err()
	}
	if err != nil {
		return fmt.Errorf("%w: settling an idempotency key: %v", hub.ErrBrokerUnavailable, err)
	}
	return nil
}

func (b *redisBroker) Diverged(ctx context.Context, key, epoch string, keep hub.Retention) error {
	if err := divergeScript.Run(ctx, b.client, b.keys(key), epoch, hub.NewEpoch(), keep.MaxAge.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("%w: starting a new epoch in redis: %v", hub.ErrBrokerUnavailable, err)
	}
	return nil
}

func (b *redisBroker) Delete(ctx context.Context, key string) (bool, error) {
	n, err := deleteScript.Run(ctx, b.client, b.keys(key), b.channel, key).Int()
	if err != nil {
		return false, fmt.Errorf("%w: deleting from redis: %v", hub.ErrBrokerUnavailable, err)
	}
	return n > 0, nil
}

// Probe publishes a probe on the hub's channel.
func (b *redisBroker) Probe(ctx context.Context, token string) error {
	if err := b.client.Publish(ctx, b.channel, "p "+strconv.Itoa(len(token))+"\n"+token).Err(); err != nil {
		return fmt.Errorf("%w: publishing a probe: %v", hub.ErrBrokerUnavailable, err)
	}
	return nil
}

// Problem reports, on a Redis Cluster, contexts' shard channels that have
// gone unsubscribed too long (a master gone and not yet replaced, or not
// answering): probes go through the hub's channel, on one connection, and
// cannot tell.
func (b *redisBroker) Problem() string {
	if sharded := b.sharded.Load(); sharded != nil {
		if n := sharded.stale(time.Now()); n > 0 {
			return fmt.Sprintf("%d contexts' shard channels not subscribed for over %s", n, shardStaleAfter)
		}
	}
	return ""
}

func (b *redisBroker) Close() error { return b.client.Close() }

func epochAndID(res []any) (string, uint64, error) {
	if len(res) < 2 {
		return "", 0, fmt.Errorf("unexpected answer from redis: %v", res)
	}
	epoch, _ := res[0].(string)
	var id uint64
	var err error
	switch v := res[1].(type) {
	case int64:
		id = uint64(v)
	case string:
		id, err = strconv.ParseUint(v, 10, 64)
	default:
		err = fmt.Errorf("id of type %T", v)
	}
	if err != nil || !hub.ValidEpoch(epoch) {
		return "", 0, fmt.Errorf("unexpected answer from redis: %v", res)
	}
	return epoch, id, nil
}

// eventFromStreamEntry decodes an XREVRANGE entry: [id, [field, value...]].
func eventFromStreamEntry(entry any) (*hub.Event, error) {
	parts, ok := entry.([]any)
	if !ok || len(parts) != 2 {
		return nil, fmt.Errorf("unexpected stream entry %v", entry)
	}
	streamID, _ := parts[0].(string)
	idText, _, _ := strings.Cut(streamID, "-")
	id, err := strconv.ParseUint(idText, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("unexpected stream entry id %q", streamID)
	}
	fields, _ := parts[1].([]any)
	ev := &hub.Event{ID: id}
	for i := 0; i+1 < len(fields); i += 2 {
		name, _ := fields[i].(string)
		value, _ := fields[i+1].(string)
		switch name {
		case "t":
			ev.Type = value
		case "c":
			ev.ContentType = value
		case "d":
			ev.Data = []byte(value)
		case "p":
			ms, _ := strconv.ParseInt(value, 10, 64)
			ev.Published = time.UnixMilli(ms)
		}
	}
	return ev, nil
}

// Interface guard
var (
	_ hub.Broker         = (*redisBroker)(nil)
	_ hub.BrokerProblems = (*redisBroker)(nil)
)
