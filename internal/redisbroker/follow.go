package redisbroker

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// A Redis broker's announcements: every node subscribes to the hub's
// channel (probes, deletions) and to the channel of each context it
// mirrors, batching its (un)subscriptions; dispatch decodes what comes.

func (b *redisBroker) Follow(ctx context.Context, f hub.BrokerFollower) {
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

// dispatch decodes an announcement made by publishScript or deleteScript.
func dispatch(payload string, f hub.BrokerFollower) error {
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
		ev := &hub.Event{
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
