package redisbroker

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// On a Redis Cluster, contexts' channels are shard channels: the publish
// script announces with SPUBLISH, which Redis sends only within the shard
// that owns the channel's slot (a classic PUBLISH is copied to every node
// of the cluster), and a node subscribes with SSUBSCRIBE on the master
// that owns the slot.
//
// go-redis' sharded PubSub holds one connection for channels of one slot
// and, on reconnecting, subscribes to all of them in one command, which
// Redis refuses when they span slots (CROSSSLOT). shardedChannels
// therefore keeps one PubSub per master, sends one SSUBSCRIBE per slot,
// and when a connection fails, a master's slots move (Redis then ends the
// subscriptions with sunsubscribe) or a master answers MOVED, it places
// the channels again on the masters that own them now. Every placement is
// confirmed (ssubscribe), and each confirmation has the hub bring the
// context's mirror up to date (Watching), so that events published while
// a channel moved are not lost.
type shardedChannels struct {
	client   *redis.ClusterClient
	broker   *redisBroker
	follower hub.BrokerFollower
	ctx      context.Context

	mu      sync.Mutex
	shards  map[string]*shard    // master address → its connection
	placed  map[string]*shard    // channel → where it was subscribed
	lost    map[string]struct{}  // channels to place again
	waiting map[string]time.Time // channels without a confirmed subscription, since
	backoff time.Duration        // before placing lost channels again
	retry   *time.Timer          // set while a placement again is due
}

// shard is the subscription connection to one master.
type shard struct {
	addr     string
	ps       *redis.PubSub
	channels map[string]struct{}
}

const (
	// shardPingEvery is how long a shard connection may be silent
	// before it is pinged; with no answer within as long again, the
	// master is taken for gone (a paused or cut-off master resets no
	// connection) and its channels are placed again.
	shardPingEvery = 500 * time.Millisecond
	// shardStaleAfter is how long a channel may go without a confirmed
	// subscription before the hub is unhealthy: about as long as a
	// Redis Cluster failover takes.
	shardStaleAfter = 2 * time.Second
	shardRetryFirst = 100 * time.Millisecond
	shardRetryMax   = 2 * time.Second
)

func newShardedChannels(ctx context.Context, client *redis.ClusterClient, b *redisBroker, f hub.BrokerFollower) *shardedChannels {
	return &shardedChannels{
		client:   client,
		broker:   b,
		follower: f,
		ctx:      ctx,
		shards:   make(map[string]*shard),
		placed:   make(map[string]*shard),
		lost:     make(map[string]struct{}),
		waiting:  make(map[string]time.Time),
		backoff:  shardRetryFirst,
	}
}

// subscribe places channels on the masters that own their slots, one
// SSUBSCRIBE per slot. Commands are written without waiting for their
// answers, which come back through each shard's receive loop.
func (s *shardedChannels) subscribe(ctx context.Context, channels []string) {
	now := time.Now()
	for slot, group := range bySlot(channels) {
		master, err := s.client.MasterForKey(ctx, group[0])
		if err != nil {
			s.logFailure("finding the master of a slot", slot, err)
			s.loseAll(group)
			continue
		}
		sh := s.shardFor(master)
		s.mu.Lock()
		for _, ch := range group {
			s.placed[ch] = sh
			sh.channels[ch] = struct{}{}
			delete(s.lost, ch)
			if _, ok := s.waiting[ch]; !ok {
				s.waiting[ch] = now
			}
		}
		s.mu.Unlock()
		if err := sh.ps.SSubscribe(ctx, group...); err != nil && ctx.Err() == nil {
			s.logFailure("subscribing on "+sh.addr, slot, err)
			s.drop(sh)
		}
	}
}

// unsubscribe ends the subscriptions of channels no context here follows.
func (s *shardedChannels) unsubscribe(ctx context.Context, channels []string) {
	type target struct {
		sh   *shard
		slot int
	}
	groups := make(map[target][]string)
	s.mu.Lock()
	for _, ch := range channels {
		delete(s.lost, ch)
		delete(s.waiting, ch)
		if sh := s.placed[ch]; sh != nil {
			delete(s.placed, ch)
			delete(sh.channels, ch)
			t := target{sh, SlotOf(ch)}
			groups[t] = append(groups[t], ch)
		}
	}
	s.mu.Unlock()
	for t, group := range groups {
		// go-redis forgets them even if sending fails; a connection
		// that failed is dropped by its receive loop anyway.
		_ = t.sh.ps.SUnsubscribe(ctx, group...)
	}
}

// shardFor is the connection to master, opened and followed on first use.
func (s *shardedChannels) shardFor(master *redis.Client) *shard {
	addr := master.Options().Addr
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh := s.shards[addr]; sh != nil {
		return sh
	}
	sh := &shard{addr: addr, ps: master.SSubscribe(s.ctx), channels: make(map[string]struct{})}
	s.shards[addr] = sh
	go s.receive(sh)
	return sh
}

// receive reports what one master sends until its connection fails or is
// dropped, pinging it when it is silent.
func (s *shardedChannels) receive(sh *shard) {
	pinged := false
	for {
		msg, err := sh.ps.ReceiveTimeout(s.ctx, shardPingEvery)
		if s.ctx.Err() != nil {
			return
		}
		if err == nil {
			pinged = false
			s.handle(sh, msg)
			continue
		}
		var netErr interface{ Timeout() bool }
		if errors.As(err, &netErr) && netErr.Timeout() && !pinged {
			pinged = true
			if err := sh.ps.Ping(s.ctx); err == nil {
				continue
			}
		} else if slot := movedSlot(err); slot >= 0 {
			// Subscribing to a slot this master no longer owns.
			s.loseSlot(sh, slot)
			continue
		}
		// The connection failed, or the master left a ping unanswered.
		if !errors.Is(err, redis.ErrClosed) {
			s.logFailure("receiving from "+sh.addr, -1, err)
		}
		s.drop(sh)
		return
	}
}

// handle reports one message from a master.
func (s *shardedChannels) handle(sh *shard, msg any) {
	switch m := msg.(type) {
	case *redis.Message:
		if err := dispatch(m.Payload, s.follower); err != nil {
			s.broker.logger.Error("unreadable message on the redis channel", zap.String("channel", m.Channel), zap.Error(err))
		}
	case *redis.Subscription:
		switch m.Kind {
		case "ssubscribe":
			s.confirmed(sh, m.Channel)
		case "sunsubscribe":
			// Ours are forgotten before they are sent: one still placed
			// here was ended by Redis, its slot moved elsewhere.
			s.mu.Lock()
			here := s.placed[m.Channel] == sh
			s.mu.Unlock()
			if here {
				s.lose(sh, []string{m.Channel})
			}
		}
	}
}

// confirmed notes a subscription Redis confirmed, and has the hub bring
// the context's mirror up to date.
func (s *shardedChannels) confirmed(sh *shard, channel string) {
	s.mu.Lock()
	here := s.placed[channel] == sh
	if here {
		delete(s.waiting, channel)
		s.backoff = shardRetryFirst
	}
	s.mu.Unlock()
	if key, ok := s.broker.contextOfChannel(channel); ok && here {
		s.follower.Watching(key)
	}
}

// drop closes a failed shard connection and places its channels again.
func (s *shardedChannels) drop(sh *shard) {
	s.mu.Lock()
	if s.shards[sh.addr] == sh {
		delete(s.shards, sh.addr)
	}
	channels := make([]string, 0, len(sh.channels))
	for ch := range sh.channels {
		channels = append(channels, ch)
	}
	s.mu.Unlock()
	_ = sh.ps.Close()
	s.lose(sh, channels)
}

// loseSlot places again the channels of slot subscribed on sh.
func (s *shardedChannels) loseSlot(sh *shard, slot int) {
	var channels []string
	s.mu.Lock()
	for ch := range sh.channels {
		if SlotOf(ch) == slot {
			channels = append(channels, ch)
		}
	}
	s.mu.Unlock()
	s.lose(sh, channels)
}

// lose takes channels off sh, and has them placed again after a backoff,
// once the client has reloaded its map of slots.
func (s *shardedChannels) lose(sh *shard, channels []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lost []string
	for _, ch := range channels {
		if s.placed[ch] == sh {
			delete(s.placed, ch)
			delete(sh.channels, ch)
			lost = append(lost, ch)
		}
	}
	s.markLost(lost)
}

// loseAll has channels that could not be placed placed again later.
func (s *shardedChannels) loseAll(channels []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markLost(channels)
}

// markLost notes channels to place again, unsubscribed from now on if
// they were not already waiting, and schedules the placement. s.mu is
// held.
func (s *shardedChannels) markLost(channels []string) {
	now := time.Now()
	for _, ch := range channels {
		s.lost[ch] = struct{}{}
		if _, ok := s.waiting[ch]; !ok {
			s.waiting[ch] = now
		}
	}
	s.scheduleRetry()
}

func (s *shardedChannels) scheduleRetry() {
	if len(s.lost) == 0 || s.retry != nil || s.ctx.Err() != nil {
		return
	}
	s.client.ReloadState(s.ctx)
	s.retry = time.AfterFunc(s.backoff, s.placeLost)
	s.backoff = min(2*s.backoff, shardRetryMax)
}

// placeLost hands the lost channels back to the broker's subscriber
// goroutine, unless the node stopped following them meanwhile.
func (s *shardedChannels) placeLost() {
	s.mu.Lock()
	s.retry = nil
	channels := make([]string, 0, len(s.lost))
	for ch := range s.lost {
		channels = append(channels, ch)
	}
	clear(s.lost)
	s.mu.Unlock()
	s.broker.watchAgain(channels)
}

// stale says how many channels have waited too long for a subscription.
func (s *shardedChannels) stale(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, since := range s.waiting {
		if now.Sub(since) > shardStaleAfter {
			n++
		}
	}
	return n
}

func (s *shardedChannels) close() {
	s.mu.Lock()
	if s.retry != nil {
		s.retry.Stop()
	}
	shards := make([]*shard, 0, len(s.shards))
	for _, sh := range s.shards {
		shards = append(shards, sh)
	}
	s.mu.Unlock()
	for _, sh := range shards {
		_ = sh.ps.Close()
	}
}

func (s *shardedChannels) logFailure(doing string, slot int, err error) {
	if s.ctx.Err() != nil {
		return
	}
	fields := []zap.Field{zap.String("hub", s.broker.hub), zap.Error(err)}
	if slot >= 0 {
		fields = append(fields, zap.Int("slot", slot))
	}
	s.broker.logger.Warn("sharded subscription: "+doing+"; will place its channels again", fields...)
}

// bySlot groups channels by their Redis Cluster slot.
func bySlot(channels []string) map[int][]string {
	groups := make(map[int][]string)
	for _, ch := range channels {
		slot := SlotOf(ch)
		groups[slot] = append(groups[slot], ch)
	}
	return groups
}

// movedSlot is the slot of a MOVED or ASK answer, or -1.
func movedSlot(err error) int {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return -1
	}
	fields := strings.Fields(rerr.Error())
	if len(fields) < 2 || (fields[0] != "MOVED" && fields[0] != "ASK") {
		return -1
	}
	slot, err := strconv.Atoi(fields[1])
	if err != nil || slot < 0 || slot >= clusterSlots {
		return -1
	}
	return slot
}
