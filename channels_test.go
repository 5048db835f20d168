package comet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/redisbroker"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// redisStat reads one of INFO commandstats' call counts, e.g. "subscribe".
func redisStat(t testing.TB, rdb *redis.Client, command string) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+command+":calls="); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

// numSub returns how many subscribers Redis counts on a channel.
func numSub(t testing.TB, rdb *redis.Client, channel string) int64 {
	t.Helper()
	n, err := rdb.PubSubNumSub(context.Background(), channel).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n[channel]
}

// TestANodeReceivesOnlyWhatItFollows: with two nodes on one Redis, a node
// subscribes to the channels of the contexts it mirrors, in a few batched
// commands, receives their events and no other's, leaves a context's
// channel once it no longer mirrors it, and subscribes again to all of
// them after Redis restarts.
func TestANodeReceivesOnlyWhatItFollows(t *testing.T) {
	r := startRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	// Contexts outlive the restart below, and are collected soon after
	// their subscribers leave.
	cfg := HubConfig{History: 10, HistoryMaxAge: caddy.Duration(2 * time.Second)}
	follower, publisher := redisHub(t, r, cfg), redisHub(t, r, cfg)
	defer follower.Close()
	defer publisher.Close()
	b := follower.Broker()

	const followed = 2000
	before := redisStat(t, rdb, "subscribe")
	// Subscribers come as clients do, many at once.
	subs := make([]*Subscriber, followed)
	var wg sync.WaitGroup
	for w := range 20 {
		wg.Go(func() {
			for i := w; i < followed; i += 20 {
				var err error
				if subs[i], err = follower.Subscribe(fmt.Sprintf("/f/%d", i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "every context's channel to be subscribed", func() bool {
		return numSub(t, rdb, redisbroker.ContextChannel(b, "/f/0")) == 1 && numSub(t, rdb, redisbroker.ContextChannel(b, fmt.Sprintf("/f/%d", followed-1))) == 1
	})
	if n := redisStat(t, rdb, "subscribe") - before; n > followed/10 {
		t.Errorf("%d SUBSCRIBE commands for %d contexts, want them batched", n, followed)
	}

	// Events of a followed context arrive; those of others never reach
	// this node.
	received := follower.Announced()
	for i := range 100 {
		if _, err := publisher.Publish("/other", Event{Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := publisher.Publish("/f/7", Event{Data: []byte("followed")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := subs[7].Next(ctx, subs[7].Start())
	if err != nil || d.Event == nil || string(d.Event.Data) != "followed" {
		t.Fatalf("the followed context got %v, %v", d, err)
	}
	if got := follower.Announced() - received; got != 1 {
		t.Errorf("the node received %d events, want the 1 of the context it follows (100 were published to another)", got)
	}

	// Redis restarts (with its data): the node subscribes again to every
	// channel, and hears what the other node publishes.
	at := subs[9].Position()
	r.kill()
	r.start()
	waitFor(t, "the channels to be subscribed again", func() bool {
		return numSub(t, rdb, redisbroker.ContextChannel(b, "/f/0")) == 1 && numSub(t, rdb, redisbroker.ContextChannel(b, fmt.Sprintf("/f/%d", followed-1))) == 1
	})
	if n := redisStat(t, rdb, "subscribe"); n > 10 {
		t.Errorf("%d SUBSCRIBE commands to subscribe again to %d channels", n, followed+1)
	}
	waitFor(t, "a publish after the restart", func() bool {
		_, err := publisher.Publish("/f/9", Event{Data: []byte("after the restart")})
		return err == nil
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	d, err = subs[9].Next(ctx2, at)
	if err != nil || d.Event == nil || string(d.Event.Data) != "after the restart" {
		t.Fatalf("after the restart the followed context got %v, %v", d, err)
	}

	// Once the node no longer mirrors a context, it leaves its channel.
	for _, s := range subs {
		s.Close()
	}
	waitFor(t, "the channels to be left", func() bool {
		return numSub(t, rdb, redisbroker.ContextChannel(b, "/f/0")) == 0 && numSub(t, rdb, redisbroker.ContextChannel(b, "/f/9")) == 0
	})
}

// TestEachNodeReceivesItsShare: three nodes each follow a third of 10,000
// contexts, a fourth publishes one event to every context, and each of the
// three receives exactly the events of its own contexts: a third of the
// traffic, where one channel per hub would have sent each all of it. It
// runs on a single Redis (classic pub/sub) and on a Redis Cluster of three
// masters (shard channels).
func TestEachNodeReceivesItsShare(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 10,000 events through Redis")
	}
	t.Run("redis", func(t *testing.T) {
		r := startRedis(t)
		rdb := redis.NewClient(&redis.Options{Addr: r.addr})
		defer rdb.Close()
		eachNodeReceivesItsShare(t, RedisConfig{URL: r.url()}, func(channel string) int64 { return numSub(t, rdb, channel) })
	})
	t.Run("cluster", func(t *testing.T) {
		cluster := startRedisCluster(t, 0)
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.addrs})
		defer rdb.Close()
		var sent int
		subscribers := func(channel string) int64 {
			master, err := rdb.MasterForKey(context.Background(), channel)
			if err != nil {
				t.Fatal(err)
			}
			n, err := master.PubSubShardNumSub(context.Background(), channel).Result()
			if err != nil {
				t.Fatal(err)
			}
			return n[channel]
		}
		slots := eachNodeReceivesItsShare(t, RedisConfig{Addresses: cluster.addrs}, subscribers)
		// Shard channels are subscribed with one SSUBSCRIBE per slot (of
		// those in a batch) on the slot's master: at least a command per
		// slot a node follows, at most one per context.
		for _, addr := range cluster.addrs { // all masters
			master := redis.NewClient(&redis.Options{Addr: addr})
			sent += redisStat(t, master, "ssubscribe")
			master.Close()
		}
		t.Logf("the nodes sent %d SSUBSCRIBE commands for the %d slots they follow 10,000 contexts in", sent, slots)
		if sent < slots || sent > 10_000 {
			t.Errorf("the nodes sent %d SSUBSCRIBE commands for the %d slots they follow 10,000 contexts in", sent, slots)
		}
	})
}

// eachNodeReceivesItsShare runs TestEachNodeReceivesItsShare on a Redis,
// with subscribers counting a channel's, and returns how many slots the
// followers' contexts are in, counted per follower.
func eachNodeReceivesItsShare(t *testing.T, redisCfg RedisConfig, subscribers func(channel string) int64) (slots int) {
	const contexts, nodes = 10_000, 3
	cfg := HubConfig{History: 1, MaxContexts: contexts}
	publisher := sharedHub(t, redisCfg, cfg)
	var followers [nodes]*Hub
	want := [nodes]int64{}
	for n := range followers {
		followers[n] = sharedHub(t, redisCfg, cfg)
	}
	key := func(i int) string { return "/share/" + strconv.Itoa(i) }
	var wg sync.WaitGroup
	var subs [nodes][]*Subscriber
	for n, hub := range followers {
		wg.Go(func() {
			for i := n; i < contexts; i += nodes {
				sub, err := hub.Subscribe(key(i))
				if err != nil {
					t.Error(err)
					return
				}
				subs[n] = append(subs[n], sub)
			}
		})
		want[n] = int64((contexts - n + nodes - 1) / nodes)
	}
	wg.Wait()
	defer func() {
		for _, ss := range subs {
			for _, sub := range ss {
				sub.Close()
			}
		}
	}()
	b := publisher.Broker()
	waitFor(t, "every node to subscribe to its contexts' channels", func() bool {
		for i := contexts - nodes; i < contexts; i++ {
			if subscribers(redisbroker.ContextChannel(b, key(i))) != 1 {
				return false
			}
		}
		return true
	})
	for n := range followers {
		followed := map[int]bool{}
		for i := n; i < contexts; i += nodes {
			followed[redisbroker.SlotOf(redisbroker.ContextChannel(b, key(i)))] = true
		}
		slots += len(followed)
	}
	var before [nodes]int64
	for n, hub := range followers {
		before[n] = hub.Announced()
	}
	batch := make([]Publication, 0, 100)
	for i := range contexts {
		batch = append(batch, Publication{Key: key(i), Event: Event{Data: []byte("x")}})
		if len(batch) == cap(batch) {
			if _, err := publisher.PublishBatch(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	for n, hub := range followers {
		waitFor(t, fmt.Sprintf("node %d to receive its share", n), func() bool { return hub.Announced()-before[n] >= want[n] })
	}
	time.Sleep(100 * time.Millisecond) // anything more would have come by now
	for n, hub := range followers {
		if got := hub.Announced() - before[n]; got != want[n] {
			t.Errorf("node %d received %d events, want the %d of its contexts, of %d published", n, got, want[n], contexts)
		}
	}
	return slots
}
