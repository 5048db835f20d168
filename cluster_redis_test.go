package comet

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/redisbroker"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// sharedHub is a node's hub of the default name on the Redis that cfg
// names, closed when the test ends.
func sharedHub(t *testing.T, cfg RedisConfig, hub HubConfig) *Hub {
	t.Helper()
	broker, err := NewRedisBroker(cfg, DefaultHubName, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	h := NewHub(DefaultHubName, hub, broker)
	t.Cleanup(h.Close)
	return h
}

// redisCluster is a Redis Cluster of three masters, each with replicas
// replicas, on loopback ports.
type redisCluster struct {
	addrs []string             // every node's
	procs map[string]*exec.Cmd // by address
}

// freeClusterAddr is freeAddr for a Redis Cluster node, which binds its
// bus port, its port + 10000, too. Both come from their own range, 5000 to
// 9999 and 15000 to 19999: below the ephemeral range, where the tests' own
// client connections take their ports (a node that cannot bind its bus
// exits at once), and apart from freePorts, whose ports are handed out
// from 20000 on and would leave no room for a bus below 32768 once the
// counter is past 22767.
func freeClusterAddr(t *testing.T) string {
	t.Helper()
	for range lastClusterPort - firstClusterPort {
		port := clusterPorts.next()
		node, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		bus, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+10000))
		node.Close()
		if err != nil {
			continue
		}
		bus.Close()
		return node.Addr().String()
	}
	t.Fatal("no free port for a cluster node and its bus")
	return ""
}

const firstClusterPort, lastClusterPort = 5000, 9999

var clusterPorts = portCounter{first: firstClusterPort, last: firstClusterPort + os.Getpid()%(lastClusterPort-firstClusterPort), max: lastClusterPort}

// startRedisCluster starts the nodes (redis-server --cluster-enabled) and
// joins them (redis-cli --cluster create). Each node gets the extra
// arguments too.
func startRedisCluster(t *testing.T, replicas int, extra ...string) *redisCluster {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	cli, cliErr := exec.LookPath("redis-cli")
	if err != nil || cliErr != nil {
		if os.Getenv("COMET_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server and redis-cli are needed, and COMET_REQUIRE_REDIS says these tests must run")
		}
		t.Skip("redis-server or redis-cli is not installed; skipping the Redis Cluster test")
	}
	c := &redisCluster{procs: make(map[string]*exec.Cmd)}
	for i := range 3 * (1 + replicas) {
		addr := freeClusterAddr(t)
		host, port, _ := net.SplitHostPort(addr)
		dir := filepath.Join(t.TempDir(), fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--bind", host, "--port", port, "--dir", dir, "--save", "",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
			// A replica fails over however long ago it last heard its
			// master: the test's replicas are young.
			"--cluster-replica-validity-factor", "0",
			"--daemonize", "no")
		cmd.Args = append(cmd.Args, extra...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		r := &redisServer{t: t, addr: addr}
		waitWithin(t, 20*time.Second, "a cluster node to answer", r.answers)
		c.addrs = append(c.addrs, addr)
		c.procs[addr] = cmd
	}
	args := append([]string{"--cluster", "create"}, c.addrs...)
	args = append(args, "--cluster-replicas", fmt.Sprint(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, addr := range c.addrs {
		host, port, _ := net.SplitHostPort(addr)
		waitFor(t, "the cluster to be ready", func() bool {
			out, err := exec.Command(cli, "-h", host, "-p", port, "cluster", "info").Output()
			return err == nil && strings.Contains(string(out), "cluster_state:ok")
		})
		waitFor(t, "every replica to be in sync", func() bool {
			out, err := exec.Command(cli, "-h", host, "-p", port, "info", "replication").Output()
			return err == nil && (strings.Contains(string(out), "role:master") || strings.Contains(string(out), "master_link_status:up"))
		})
	}
	return c
}

// killMasterOf kills the master that holds key's slot.
func (c *redisCluster) killMasterOf(t *testing.T, keyInSlot string) {
	t.Helper()
	c.masterOf(t, keyInSlot).Process.Kill()
}

// masterOf is the process of the master that holds key's slot.
func (c *redisCluster) masterOf(t *testing.T, keyInSlot string) *exec.Cmd {
	t.Helper()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.addrs})
	defer rdb.Close()
	node, err := rdb.MasterForKey(context.Background(), keyInSlot)
	if err != nil {
		t.Fatal(err)
	}
	addr := node.Options().Addr
	cmd := c.procs[addr]
	if cmd == nil {
		t.Fatalf("no node at %s", addr)
	}
	return cmd
}

// TestRedisClusterSharesTheHub runs two nodes on a Redis Cluster of three
// masters: contexts hash to every master, events published on either node
// reach subscribers on both, each node subscribes only to the channels of
// the contexts it mirrors, and a cursor from one node resumes on the other.
func TestRedisClusterSharesTheHub(t *testing.T) {
	addrs := startRedisCluster(t, 0).addrs
	cfg := RedisConfig{Addresses: addrs}
	a, b := sharedHub(t, cfg, HubConfig{History: 50}), sharedHub(t, cfg, HubConfig{History: 50})

	// Enough contexts that every master holds some.
	const contexts = 30
	key := func(i int) string { return fmt.Sprintf("/cluster/%d", i) }
	subsA, subsB := make([]*Subscriber, contexts), make([]*Subscriber, contexts)
	for i := range contexts {
		var err error
		if subsA[i], err = a.Subscribe(key(i)); err != nil {
			t.Fatal(err)
		}
		defer subsA[i].Close()
		if subsB[i], err = b.Subscribe(key(i)); err != nil {
			t.Fatal(err)
		}
		defer subsB[i].Close()
	}
	// Both nodes follow every context once their mirrors agree on an
	// event published after the subscriptions (a mirror whose channel is
	// not confirmed yet gets it when it is: see follower.Watching).
	for i := range contexts {
		if _, err := a.Publish(key(i), Event{Data: []byte("warm-up")}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both nodes to follow every context", func() bool {
		for i := range contexts {
			if subsB[i].Position() != subsA[i].Position() {
				return false
			}
		}
		return true
	})

	// Each node follows each context's shard channel on the master that
	// owns its slot, with SSUBSCRIBE, not with a classic SUBSCRIBE that
	// would have every PUBLISH copied to every master.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer rdb.Close()
	ctx := context.Background()
	broker := a.Broker()
	for i := range contexts {
		channel := redisbroker.ContextChannel(broker, key(i))
		master, err := rdb.MasterForKey(ctx, channel)
		if err != nil {
			t.Fatal(err)
		}
		sharded, err := master.PubSubShardNumSub(ctx, channel).Result()
		if err != nil || sharded[channel] != 2 {
			t.Fatalf("%s: %v shard subscribers on its master (%v); want 2, one per node", channel, sharded[channel], err)
		}
		classic, err := master.PubSubNumSub(ctx, channel).Result()
		if err != nil || classic[channel] != 0 {
			t.Fatalf("%s: %v classic subscribers (%v); want none", channel, classic[channel], err)
		}
	}

	for i := range contexts {
		from, name := a, "a"
		if i%2 == 1 {
			from, name = b, "b"
		}
		before := [2]Cursor{subsA[i].Position(), subsB[i].Position()}
		rcpt, err := from.Publish(key(i), Event{Data: []byte("from " + name)})
		if err != nil {
			t.Fatalf("publishing to %s on %s: %v", key(i), name, err)
		}
		for n, sub := range []*Subscriber{subsA[i], subsB[i]} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			d, err := sub.Next(ctx, before[n])
			cancel()
			if err != nil || d.Event == nil || string(d.Event.Data) != "from "+name || d.Cursor != rcpt.Cursor {
				t.Fatalf("%s on node %d got %+v, %v; want the event published on %s at %s", key(i), n, d, err, name, rcpt.Cursor)
			}
		}
	}

	// A cursor from node a resumes on node b, by history.
	cur := subsA[3].Position()
	rcpt, err := a.Publish(key(3), Event{Data: []byte("after the cursor")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if d, err := subsB[3].Next(ctx, subsB[3].Resume(cur)); err != nil || d.Event == nil || d.Cursor != rcpt.Cursor {
		t.Errorf("node b resuming a's cursor got %+v, %v", d, err)
	}
}

// startSentinel starts a Redis master with one replica and a Sentinel that
// monitors them as "comet", and returns the Sentinel's address.
func startSentinel(t *testing.T) (sentinel string, master *redisServer) {
	t.Helper()
	master = startRedis(t)
	replica := startRedis(t)
	mhost, mport, _ := net.SplitHostPort(master.addr)
	rhost, rport, _ := net.SplitHostPort(replica.addr)
	if out, err := exec.Command("redis-cli", "-h", rhost, "-p", rport, "replicaof", mhost, mport).CombinedOutput(); err != nil {
		t.Fatalf("replicaof: %v %s", err, out)
	}
	sentinel = freeAddr(t)
	shost, sport, _ := net.SplitHostPort(sentinel)
	conf := filepath.Join(t.TempDir(), "sentinel.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("bind %s\nport %s\nsentinel monitor comet %s %s 1\nsentinel down-after-milliseconds comet 1000\nsentinel failover-timeout comet 5000\n",
		shost, sport, mhost, mport)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(master.bin, conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "the sentinel to know the master", func() bool {
		out, err := exec.Command("redis-cli", "-h", shost, "-p", sport, "sentinel", "get-master-addr-by-name", "comet").Output()
		return err == nil && strings.Contains(string(out), mport)
	})
	return sentinel, master
}

// TestSentinelSharesTheHub runs two nodes through a Sentinel: an event
// published on one reaches the other's subscriber.
func TestSentinelSharesTheHub(t *testing.T) {
	sentinel, _ := startSentinel(t)
	cfg := RedisConfig{Addresses: []string{sentinel}, MasterName: "comet"}
	a, b := sharedHub(t, cfg, HubConfig{History: 50}), sharedHub(t, cfg, HubConfig{History: 50})
	sub, err := b.Subscribe("/sentinel")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var rcpt Receipt
	waitFor(t, "node b to hear what node a publishes", func() bool {
		before := sub.Position()
		if rcpt, err = a.Publish("/sentinel", Event{Data: []byte("through the sentinel")}); err != nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		d, err := sub.Next(ctx, before)
		return err == nil && d.Cursor == rcpt.Cursor
	})
}

// TestFailoverLosesNothingSilently kills the master that holds a context,
// of a Sentinel set and of a Redis Cluster with replicas, while a node
// publishes and another's client follows: a replica is promoted, both
// nodes go on with it, and the client gets every event published before
// and after, or is told that it may have missed some; none is skipped
// without a word.
func TestFailoverLosesNothingSilently(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for failovers")
	}
	const key = "/failover"
	t.Run("sentinel", func(t *testing.T) {
		sentinel, master := startSentinel(t)
		followFailover(t, RedisConfig{Addresses: []string{sentinel}, MasterName: "comet"}, key, master.kill)
	})
	t.Run("cluster", func(t *testing.T) {
		cluster := startRedisCluster(t, 1)
		followFailover(t, RedisConfig{Addresses: cluster.addrs}, key, func() { cluster.killMasterOf(t, redisbroker.KeysOf(DefaultRedisKeyPrefix, DefaultHubName, key)[0]) })
	})
}

// followFrom subscribes to key on follower, closed when the test ends,
// and waits until an event published on publisher reaches it: the
// follower's channel subscription is in place.
func followFrom(t *testing.T, publisher, follower *Hub, key string) *Subscriber {
	t.Helper()
	sub, err := follower.Subscribe(key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	start := sub.Position()
	waitFor(t, "the follower to follow", func() bool {
		_, err := publisher.Publish(key, Event{Data: []byte("warm-up")})
		return err == nil && sub.Position() != start
	})
	return sub
}

// followFailover has one node publish and another's client follow while
// kill kills the master that holds the context, until the publishes go
// through again.
func followFailover(t *testing.T, cfg RedisConfig, key string, kill func()) {
	publisher, follower := sharedHub(t, cfg, HubConfig{History: 1000}), sharedHub(t, cfg, HubConfig{History: 1000})
	sub := followFrom(t, publisher, follower, key)

	// The client reads everything, in order, as a stream would.
	type got struct {
		data   string
		missed bool
	}
	seen := make(chan got, 10_000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The client starts where the context is before the first publish
	// (read here, not in the goroutine, which may start after it).
	after := sub.Position()
	go func() {
		for {
			d, err := sub.Next(ctx, after)
			if err != nil {
				close(seen)
				return
			}
			if d.Missed != 0 {
				seen <- got{missed: true}
			}
			if d.Event != nil {
				seen <- got{data: string(d.Event.Data)}
			}
			after = d.Cursor
		}
	}()

	// Publish before, during and after the failover; keep what was
	// acknowledged.
	var acked []string
	var lastErr error
	publish := func(n int) {
		data := fmt.Sprintf("event %d", n)
		if _, err := publisher.Publish(key, Event{Data: []byte(data)}); err == nil {
			acked = append(acked, data)
		} else {
			lastErr = err
		}
	}
	n := 0
	for ; n < 20; n++ {
		publish(n)
	}
	kill()
	failedOver := time.Now().Add(20 * time.Second)
	for time.Now().Before(failedOver) {
		publish(n)
		n++
		if len(acked) > 40 {
			break // the new master takes publishes
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(acked) <= 40 {
		t.Fatalf("no publish succeeded in 20 s after the master died (%d acknowledged; the last error: %v)", len(acked), lastErr)
	}
	// The client gets the last acknowledged event; any acknowledged
	// event it did not get must have been announced as missed where it
	// would have come: after the events published before it and before
	// any published after it.
	last := acked[len(acked)-1]
	received := map[string]bool{}
	var order []got
	missedNotices := 0
	timeout := time.After(15 * time.Second)
	for !received[last] {
		select {
		case g, ok := <-seen:
			if !ok {
				t.Fatal("the client's wait ended")
			}
			order = append(order, g)
			if g.missed {
				missedNotices++
			} else {
				received[g.data] = true
			}
		case <-timeout:
			t.Fatalf("the client did not get %q, the last event acknowledged, after the failover", last)
		}
	}
	number := func(data string) int {
		n, _ := strconv.Atoi(strings.TrimPrefix(data, "event "))
		return n
	}
	// toldMissed: a missed notice came after the last event published
	// before k that the client got, and before the first after k.
	toldMissed := func(k int) bool {
		told := false
		for _, g := range order {
			switch {
			case g.missed:
				told = true
			case number(g.data) > k:
				return told
			default:
				told = false
			}
		}
		return told
	}
	var lost, silent []string
	for _, data := range acked {
		if received[data] {
			continue
		}
		lost = append(lost, data)
		if !toldMissed(number(data)) {
			silent = append(silent, data)
		}
	}
	t.Logf("%d events acknowledged, %d published while the master was down refused, %d lost by the failover, %d missed notices",
		len(acked), n-len(acked), len(lost), missedNotices)
	if len(silent) > 0 {
		t.Errorf("the client silently missed %d acknowledged events: %v", len(silent), silent)
	}
}
