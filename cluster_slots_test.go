package comet

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/redisbroker"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// moveSlot migrates a slot, with its keys, from the master that owns it
// to another, the way redis-cli --cluster reshard does.
func (c *redisCluster) moveSlot(t *testing.T, slot int) (from, to string) {
	t.Helper()
	ctx := context.Background()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.addrs})
	defer rdb.Close()
	masters, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	type master struct{ addr, id string }
	var src, dst master
	for _, shard := range masters {
		for _, node := range shard.Nodes {
			if node.Role != "master" {
				continue
			}
			m := master{net.JoinHostPort(node.IP, fmt.Sprint(node.Port)), node.ID}
			owns := false
			for _, r := range shard.Slots {
				owns = owns || (int(r.Start) <= slot && slot <= int(r.End))
			}
			if owns {
				src = m
			} else if dst.addr == "" {
				dst = m
			}
		}
	}
	if src.addr == "" || dst.addr == "" {
		t.Fatalf("no two masters for slot %d in %+v", slot, masters)
	}
	node := func(addr string) *redis.Client { return redis.NewClient(&redis.Options{Addr: addr}) }
	s, d := node(src.addr), node(dst.addr)
	defer s.Close()
	defer d.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("moving slot %d: %v", slot, err)
		}
	}
	must(d.Do(ctx, "cluster", "setslot", slot, "importing", src.id).Err())
	must(s.Do(ctx, "cluster", "setslot", slot, "migrating", dst.id).Err())
	keys, err := s.ClusterGetKeysInSlot(ctx, slot, 1000).Result()
	must(err)
	if len(keys) > 0 {
		host, port, _ := net.SplitHostPort(dst.addr)
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(s.Do(ctx, args...).Err())
	}
	for _, addr := range c.addrs {
		n := node(addr)
		must(n.Do(ctx, "cluster", "setslot", slot, "node", dst.id).Err())
		n.Close()
	}
	return src.addr, dst.addr
}

// TestShardChannelsFollowAMovedSlot moves the slot of a followed context
// to another master: Redis ends the node's shard subscription there
// (sunsubscribe), the node subscribes again on the new master, and its
// client gets every event published after the move, in order.
func TestShardChannelsFollowAMovedSlot(t *testing.T) {
	cluster := startRedisCluster(t, 0)
	cfg := RedisConfig{Addresses: cluster.addrs}
	publisher, follower := sharedHub(t, cfg, HubConfig{History: 100}), sharedHub(t, cfg, HubConfig{History: 100})
	const key = "/moving"
	sub := followFrom(t, publisher, follower, key)

	channel := redisbroker.ContextChannel(follower.Broker(), key)
	from, to := cluster.moveSlot(t, redisbroker.SlotOf(channel))
	newMaster := redis.NewClient(&redis.Options{Addr: to})
	defer newMaster.Close()
	waitFor(t, "both nodes to subscribe on the slot's new master", func() bool {
		n, err := newMaster.PubSubShardNumSub(context.Background(), channel).Result()
		return err == nil && n[channel] == 1 // the publisher follows nothing
	})
	oldMaster := redis.NewClient(&redis.Options{Addr: from})
	defer oldMaster.Close()
	if n, err := oldMaster.PubSubShardNumSub(context.Background(), channel).Result(); err != nil || n[channel] != 0 {
		t.Errorf("%d subscribers left on the slot's old master (%v)", n[channel], err)
	}

	after := sub.Position()
	var want []Cursor
	for i := range 20 {
		rcpt, err := publisher.Publish(key, Event{Data: []byte(fmt.Sprint("after the move ", i))})
		if err != nil {
			t.Fatalf("publishing after the move: %v", err)
		}
		want = append(want, rcpt.Cursor)
	}
	for i, cur := range want {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d, err := sub.Next(ctx, after)
		cancel()
		if err != nil || d.Missed != 0 || d.Cursor != cur {
			t.Fatalf("event %d after the move: got %+v, %v; want %v with nothing missed", i, d, err, cur)
		}
		after = d.Cursor
	}
}

// TestHealthFailsWhileAShardIsDeaf pauses (SIGSTOP) the master that holds
// a followed context's shard channel, on a cluster that keeps serving its
// other slots: the node notices that the master no longer answers its
// pings, cannot subscribe again, and says so on its health; once the
// master resumes, the subscription comes back, health is good again, and
// events flow.
func TestHealthFailsWhileAShardIsDeaf(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a subscription to go stale")
	}
	cluster := startRedisCluster(t, 0, "--cluster-require-full-coverage", "no")
	cfg := RedisConfig{Addresses: cluster.addrs}
	hubCfg := HubConfig{History: 100, HealthInterval: caddy.Duration(100 * time.Millisecond)}
	publisher, follower := sharedHub(t, cfg, hubCfg), sharedHub(t, cfg, hubCfg)
	// A context whose slot is on another master than the hub's channel,
	// so that only the shard channel goes deaf.
	broker := follower.Broker()
	hubMaster := cluster.masterOf(t, redisbroker.HubChannel(broker))
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprint("/deaf/", i); cluster.masterOf(t, redisbroker.ContextChannel(broker, k)) != hubMaster {
			key = k
		}
	}
	sub := followFrom(t, publisher, follower, key)
	waitFor(t, "the follower to be healthy", func() bool { return follower.Health().OK })

	master := cluster.masterOf(t, redisbroker.ContextChannel(broker, key))
	if err := master.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			master.Process.Signal(syscall.SIGCONT)
		}
	}()
	paused := time.Now()
	// The master is taken for gone after an unanswered ping (0.5 to 1 s)
	// and health fails once its channels have been unsubscribed for 2 s.
	for hl := follower.Health(); hl.OK || !strings.Contains(hl.Problem, "shard channels"); hl = follower.Health() {
		if time.Since(paused) > 10*time.Second {
			t.Fatalf("health did not name the deaf shard 10 s after its master paused: %+v", hl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("health failed %v after the master paused: %s", time.Since(paused).Round(10*time.Millisecond), follower.Health().Problem)

	master.Process.Signal(syscall.SIGCONT)
	resumed = true
	waitFor(t, "health to come back", func() bool { return follower.Health().OK })
	after := sub.Position()
	rcpt, err := publisher.Publish(key, Event{Data: []byte("after the pause")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d, err := sub.Next(ctx, after); err != nil || d.Cursor != rcpt.Cursor {
		t.Errorf("after the pause the follower got %+v, %v; want %v", d, err, rcpt.Cursor)
	}
}
