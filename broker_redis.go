package comet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
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

// DefaultRedisKeyPrefix starts every key and channel comet uses in Redis.
const DefaultRedisKeyPrefix = "comet:"

// RedisConfig connects a hub to Redis: a single server, a Redis Cluster, or
// a Sentinel-managed set, through go-redis' universal client.
type RedisConfig struct {
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

func (c RedisConfig) validate() error {
	if c.URL == "" && len(c.Addresses) == 0 {
		return errors.New("redis broker needs a URL or addresses")
	}
	return nil
}

// universalOptions turns the config into go-redis options, replacing
// placeholders in the URL and credentials.
func (c RedisConfig) universalOptions() (*redis.UniversalOptions, error) {
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

// NewRedisBroker connects to Redis as cfg says, for the hub named hub, and
// fails if Redis does not answer. Hubs of that name on every node that use
// the same Redis and key prefix act as one.
func NewRedisBroker(cfg RedisConfig, hub string, logger *zap.Logger) (Broker, error) {
	opts, err := cfg.universalOptions()
	if err != nil {
		return nil, err
	}
	client := redis.NewUniversalClient(opts)
	watchClusterFailures(client)
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("%w: redis at %s: %v", ErrBrokerUnavailable, strings.Join(opts.Addrs, ", "), err)
	}
	prefix := cfg.KeyPrefix
	if prefix == "" {
		prefix = DefaultRedisKeyPrefix
	}
	announce := "PUBLISH"
	if _, ok := client.(*redis.ClusterClient); ok {
		announce = "SPUBLISH"
	}
	return &redisBroker{
		client:   client,
		prefix:   prefix,
		hub:      hub,
		channel:  prefix + hub + ":events",
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
func (b *redisBroker) publish(ctx context.Context, key string, ev *Event, keep Retention) (Cursor, error) {
	res, err := publishScript.Run(ctx, b.client, b.keys(key), b.publishArgs(key, ev, keep)...).Slice()
	if err != nil {
		return Cursor{}, fmt.Errorf("%w: publishing to redis: %v", ErrBrokerUnavailable, err)
	}
	epoch, id, err := epochAndID(res)
	if err != nil {
		return Cursor{}, err
	}
	ev.ID = id
	return Cursor{Epoch: epoch, ID: id}, nil
}

// PublishBatch runs the publish script once per event in one pipeline: one
// round trip per Redis node the batch's contexts live on. The pipeline
// uses the script's hash; events that a node refused for not knowing the
// script (a node that restarted or was flushed) did not run, so they are
// sent again with the script itself, in their order.
func (b *redisBroker) PublishBatch(ctx context.Context, batch []Publication, keep Retention) ([]Cursor, error) {
	if len(batch) == 1 {
		cur, err := b.publish(ctx, batch[0].Key, &batch[0].Event, keep)
		return []Cursor{cur}, err
	}
	cursors := make([]Cursor, len(batch))
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
			return cursors, fmt.Errorf("%w: publishing to redis: %v", ErrBrokerUnavailable, firstErr)
		}
		if pending = again; len(pending) == 0 {
			break
		}
	}
	return cursors, nil
}

// publishCmd queues the publish script for one event, by hash or whole.
func (b *redisBroker) publishCmd(ctx context.Context, p redis.Pipeliner,
	run func(context.Context, redis.Scripter, []string, ...any) *redis.Cmd, pub *Publication, keep Retention) *redis.Cmd {
	return run(ctx, p, b.keys(pub.Key), b.publishArgs(pub.Key, &pub.Event, keep)...)
}

// publishArgs are the publish script's arguments for one event.
func (b *redisBroker) publishArgs(key string, ev *Event, keep Retention) []any {
	published := strconv.FormatInt(ev.Published.UnixMilli(), 10)
	return []any{newEpoch(), keep.Events, keep.MaxAge.Milliseconds(), b.contextChannel(key),
		ev.Type, ev.ContentType, published, ev.Data, key, b.announce}
}

func (b *redisBroker) Load(ctx context.Context, key string, keep Retention) (BrokerState, error) {
	res, err := loadScript.Run(ctx, b.client, b.keys(key),
		newEpoch(), keep.MaxAge.Milliseconds(), keep.Events).Slice()
	if err != nil {
		return BrokerState{}, fmt.Errorf("%w: loading from redis: %v", ErrBrokerUnavailable, err)
	}
	epoch, last, err := epochAndID(res)
	if err != nil || len(res) < 3 {
		return BrokerState{}, fmt.Errorf("unexpected answer from redis: %v", res)
	}
	entries, _ := res[2].([]any)
	st := BrokerState{Epoch: epoch, LastID: last}
	cutoff := time.Now().Add(-keep.MaxAge)
	for i := len(entries) - 1; i >= 0; i-- { // XREVRANGE: newest first
		ev, err := eventFromStreamEntry(entries[i])
		if err != nil {
			return BrokerState{}, err
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

func (b *redisBroker) Position(ctx context.Context, key string) (Cursor, bool, error) {
	vals, err := b.client.HMGet(ctx, b.keys(key)[0], "epoch", "last").Result()
	if err != nil {
		return Cursor{}, false, fmt.Errorf("%w: reading from redis: %v", ErrBrokerUnavailable, err)
	}
	if vals[0] == nil {
		return Cursor{}, false, nil
	}
	epoch, id, err := epochAndID(vals)
	return Cursor{Epoch: epoch, ID: id}, err == nil, err
}

// idempotencyLease is how long a claimed idempotency key waits for its
// publish to be settled: longer than a publish may take (brokerTimeout),
// short enough that a node that died half way frees it soon.
const idempotencyLease = 3 * brokerTimeout

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
		return false, nil, fmt.Errorf("%w: claiming an idempotency key: %v", ErrBrokerUnavailable, err)
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
		return fmt.Errorf("%w: settling an idempotency key: %v", ErrBrokerUnavailable, err)
	}
	return nil
}

func (b *redisBroker) Diverged(ctx context.Context, key, epoch string, keep Retention) error {
	if err := divergeScript.Run(ctx, b.client, b.keys(key), epoch, newEpoch(), keep.MaxAge.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("%w: starting a new epoch in redis: %v", ErrBrokerUnavailable, err)
	}
	return nil
}

func (b *redisBroker) Delete(ctx context.Context, key string) (bool, error) {
	n, err := deleteScript.Run(ctx, b.client, b.keys(key), b.channel, key).Int()
	if err != nil {
		return false, fmt.Errorf("%w: deleting from redis: %v", ErrBrokerUnavailable, err)
	}
	return n > 0, nil
}

func (b *redisBroker) Follow(ctx context.Context, f BrokerFollower) {
	ps := b.client.Subscribe(ctx, b.channel)
	defer ps.Close()
	var channels contextChannels = &classicChannels{ps: ps, broker: b}
	if cluster, ok := b.client.(*redis.ClusterClient); ok {
		sharded := newShardedChannels(ctx, cluster, b, f)
		b.sharded.Store(sharded)
		defer sharded.close()
		channels = sharded
	}
	go b.sendWatches(ctx, channels)
	backoff := 100 * time.Millisecond
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// go-redis reconnects and subscribes again, to the hub's
			// channel and every context's, on the next Receive.
			b.logger.Warn("lost the redis subscription; reconnecting", zap.String("hub", b.hub), zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if m.Channel == b.channel {
				backoff = 100 * time.Millisecond
				f.Resync()
			} else if key, ok := b.contextOfChannel(m.Channel); ok {
				f.Watching(key)
			}
		case *redis.Message:
			if err := dispatch(m.Payload, f); err != nil {
				b.logger.Error("unreadable message on the redis channel", zap.String("channel", m.Channel), zap.Error(err))
			}
		}
	}
}

// Watch subscribes this node to the context's channel, soon: the
// subscriber goroutine (sendWatches) sends every change waiting at once.
func (b *redisBroker) Watch(key string) { b.queueWatch(b.contextChannel(key), true) }

// Unwatch unsubscribes this node from the context's channel, soon.
func (b *redisBroker) Unwatch(key string) { b.queueWatch(b.contextChannel(key), false) }

func (b *redisBroker) queueWatch(channel string, subscribe bool) {
	b.watchMu.Lock()
	b.watches[channel] = subscribe // the last change of a channel wins
	b.watchMu.Unlock()
	select {
	case b.watching <- struct{}{}:
	default:
	}
}

// watchLinger is how long the subscriber goroutine waits for more changes
// before it sends what it has: a new context's events may reach this node
// that much later (the mirror, loaded at once, has every earlier one).
const watchLinger = 2 * time.Millisecond

// maxChannelsPerCommand bounds one SUBSCRIBE or UNSUBSCRIBE, so that a
// node that follows 100,000 contexts sends 100 commands, not 100,000 and
// not one of several megabytes.
const maxChannelsPerCommand = 1000

// watchAgain watches channels again whose subscription was lost, unless
// a change to them is waiting: an Unwatch since then must win.
func (b *redisBroker) watchAgain(channels []string) {
	b.watchMu.Lock()
	for _, ch := range channels {
		if _, pending := b.watches[ch]; !pending {
			b.watches[ch] = true
		}
	}
	b.watchMu.Unlock()
	select {
	case b.watching <- struct{}{}:
	default:
	}
}

// contextChannels subscribes the node to contexts' channels: classic
// pub/sub on a single Redis or a Sentinel-managed one, shard channels on
// a Redis Cluster (see shardedChannels).
type contextChannels interface {
	subscribe(ctx context.Context, channels []string)
	unsubscribe(ctx context.Context, channels []string)
}

// sendWatches sends the waiting changes to the contexts' channels until
// ctx ends.
func (b *redisBroker) sendWatches(ctx context.Context, channels contextChannels) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.watching:
		}
		// Contexts come in bursts (a page subscribing to many, clients
		// coming back after a restart): wait a moment for the rest of one.
		select {
		case <-ctx.Done():
			return
		case <-time.After(watchLinger):
		}
		b.watchMu.Lock()
		changes := b.watches
		b.watches = make(map[string]bool)
		b.watchMu.Unlock()
		var subscribe, unsubscribe []string
		for channel, sub := range changes {
			if sub {
				subscribe = append(subscribe, channel)
			} else {
				unsubscribe = append(unsubscribe, channel)
			}
		}
		if len(unsubscribe) > 0 {
			channels.unsubscribe(ctx, unsubscribe)
		}
		if len(subscribe) > 0 {
			channels.subscribe(ctx, subscribe)
		}
	}
}

// classicChannels subscribes on the connection that follows the hub's
// channel, up to maxChannelsPerCommand channels per command. Redis'
// confirmations come back through Follow's Receive.
type classicChannels struct {
	ps     *redis.PubSub
	broker *redisBroker
}

func (c *classicChannels) subscribe(ctx context.Context, channels []string) {
	for batch := range slices.Chunk(channels, maxChannelsPerCommand) {
		// go-redis remembers them even if sending fails, and a
		// reconnection subscribes to them again.
		if err := c.ps.Subscribe(ctx, batch...); err != nil && ctx.Err() == nil {
			c.broker.logger.Warn("subscribing to contexts' channels; will again on reconnecting",
				zap.String("hub", c.broker.hub), zap.Int("channels", len(batch)), zap.Error(err))
		}
	}
}

func (c *classicChannels) unsubscribe(ctx context.Context, channels []string) {
	for batch := range slices.Chunk(channels, maxChannelsPerCommand) {
		// go-redis forgets them even if sending fails, so a
		// reconnection does not subscribe to them again.
		_ = c.ps.Unsubscribe(ctx, batch...)
	}
}

// Probe publishes a probe on the hub's channel.
func (b *redisBroker) Probe(ctx context.Context, token string) error {
	if err := b.client.Publish(ctx, b.channel, "p "+strconv.Itoa(len(token))+"\n"+token).Err(); err != nil {
		return fmt.Errorf("%w: publishing a probe: %v", ErrBrokerUnavailable, err)
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

// dispatch decodes an announcement made by publishScript or deleteScript.
func dispatch(payload string, f BrokerFollower) error {
	head, body, ok := strings.Cut(payload, "\n")
	fields := strings.Fields(head)
	if !ok || len(fields) == 0 {
		return fmt.Errorf("no header in %.40q", payload)
	}
	nums := make([]int, 0, 5)
	for _, field := range fields[min(len(fields), 2):] {
		n, err := strconv.Atoi(field)
		if err != nil || n < 0 {
			return fmt.Errorf("bad header %q", head)
		}
		nums = append(nums, n)
	}
	switch {
	case fields[0] == "p" && len(fields) == 2:
		if n, err := strconv.Atoi(fields[1]); err != nil || n != len(body) {
			return fmt.Errorf("bad header %q", head)
		}
		f.Probed(body)
		return nil
	case fields[0] == "d" && len(fields) == 2:
		n, err := strconv.Atoi(fields[1])
		if err != nil || n != len(body) {
			return fmt.Errorf("bad header %q", head)
		}
		f.Deleted(body)
		return nil
	case fields[0] == "e" && len(fields) == 7:
		id, err := strconv.ParseUint(fields[2], 10, 64)
		keyLen, typeLen, ctLen := nums[2], nums[3], nums[4]
		if err != nil || keyLen+typeLen+ctLen > len(body) {
			return fmt.Errorf("bad header %q", head)
		}
		ev := &Event{
			ID:          id,
			Type:        body[keyLen : keyLen+typeLen],
			ContentType: body[keyLen+typeLen : keyLen+typeLen+ctLen],
			Data:        []byte(body[keyLen+typeLen+ctLen:]),
			Published:   time.UnixMilli(int64(nums[1])),
		}
		f.Event(body[:keyLen], fields[1], ev)
		return nil
	}
	return fmt.Errorf("unknown message %q", head)
}

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
	if err != nil || !validEpoch(epoch) {
		return "", 0, fmt.Errorf("unexpected answer from redis: %v", res)
	}
	return epoch, id, nil
}

// eventFromStreamEntry decodes an XREVRANGE entry: [id, [field, value...]].
func eventFromStreamEntry(entry any) (*Event, error) {
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
	ev := &Event{ID: id}
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
	_ Broker         = (*redisBroker)(nil)
	_ BrokerProblems = (*redisBroker)(nil)
)
