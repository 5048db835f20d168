package redisbroker

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/hub"
	"go.uber.org/zap"
)

// The comet package's tests run this broker under hubs and Caddy, against
// a single Redis, a Sentinel set and a Cluster; these run it alone, as the
// hub sees it: through hub.Broker.

// startRedis starts a redis-server on a free loopback port until the test
// ends. Without the binary the test fails where COMET_REQUIRE_REDIS is set
// (.ci/run sets it) and is skipped elsewhere.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("COMET_REQUIRE_REDIS") != "" {
			t.Fatal("redis-server is not installed, and COMET_REQUIRE_REDIS says these tests must run")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--bind", host, "--port", port, "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for !answers(addr) {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "redis://" + addr + "/0"
}

func answers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprint(conn, "PING\r\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// recorder is a hub.BrokerFollower that keeps what it is told.
type recorder struct {
	mu       sync.Mutex
	events   []string // "key epoch id data"
	deleted  []string
	probes   []string
	watching []string
	resyncs  int
}

func (r *recorder) Event(key, epoch string, ev *hub.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %s %d %s", key, epoch, ev.ID, ev.Data))
}

func (r *recorder) Deleted(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleted = append(r.deleted, key)
}

func (r *recorder) Resync() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resyncs++
}

func (r *recorder) Probed(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.probes = append(r.probes, token)
}

func (r *recorder) Watching(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watching = append(r.watching, key)
}

func (r *recorder) waitFor(t *testing.T, what string, cond func(*recorder) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		ok := cond(r)
		r.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBrokerSharesAContext: what one broker publishes, another loads and
// hears, in order, with one epoch and consecutive ids; a deletion and a
// probe reach every follower.
func TestBrokerSharesAContext(t *testing.T) {
	url := startRedis(t)
	ctx := t.Context()
	newBroker := func() hub.Broker {
		b, err := New(Config{URL: url}, "test", zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	publisher, follower := newBroker(), newBroker()
	var heard recorder
	followCtx, stop := context.WithCancel(ctx)
	defer stop()
	go follower.Follow(followCtx, &heard)
	heard.waitFor(t, "the follower's subscription", func(r *recorder) bool { return r.resyncs == 1 })

	const key = "/shared"
	if _, ok, err := follower.Position(ctx, key); err != nil || ok {
		t.Fatalf("the position of a context nobody made: %v, %v; want none", ok, err)
	}
	start, err := follower.Load(ctx, key, hub.Retention{Events: 10, MaxAge: time.Minute})
	if err != nil || start.LastID != 0 || !hub.ValidEpoch(start.Epoch) {
		t.Fatalf("loading a new context: %+v, %v", start, err)
	}
	follower.Watch(key)
	heard.waitFor(t, "the follower to watch the context", func(r *recorder) bool { return len(r.watching) == 1 })

	batch := []hub.Publication{
		{Key: key, Event: hub.Event{Data: []byte("one"), Published: time.Now()}},
		{Key: key, Event: hub.Event{Type: "t", ContentType: "text/plain", Data: []byte("two"), Published: time.Now()}},
	}
	cursors, err := publisher.PublishBatch(ctx, batch, hub.Retention{Events: 10, MaxAge: time.Minute})
	if err != nil || len(cursors) != 2 || cursors[0] != (hub.Cursor{Epoch: start.Epoch, ID: 1}) || cursors[1].ID != 2 {
		t.Fatalf("publishing a batch of two: %v, %v; want ids 1 and 2 in epoch %s", cursors, err, start.Epoch)
	}
	want := []string{key + " " + start.Epoch + " 1 one", key + " " + start.Epoch + " 2 two"}
	heard.waitFor(t, "the follower to hear both events", func(r *recorder) bool { return len(r.events) == 2 })
	if fmt.Sprint(heard.events) != fmt.Sprint(want) {
		t.Errorf("the follower heard %q, want %q", heard.events, want)
	}
	st, err := follower.Load(ctx, key, hub.Retention{Events: 10, MaxAge: time.Minute})
	if err != nil || st.LastID != 2 || len(st.History) != 2 || string(st.History[1].Data) != "two" || st.History[1].Type != "t" {
		t.Fatalf("loading after the batch: %+v, %v", st, err)
	}
	if pos, ok, err := follower.Position(ctx, key); err != nil || !ok || pos != cursors[1] {
		t.Errorf("the position: %v, %v, %v; want %v", pos, ok, err, cursors[1])
	}

	if err := publisher.Probe(ctx, "node:1"); err != nil {
		t.Fatal(err)
	}
	existed, err := publisher.Delete(ctx, key)
	if err != nil || !existed {
		t.Fatalf("deleting the context: %v, %v", existed, err)
	}
	heard.waitFor(t, "the probe and the deletion", func(r *recorder) bool { return len(r.probes) == 1 && len(r.deleted) == 1 })
	if _, ok, _ := follower.Position(ctx, key); ok {
		t.Error("the context is still there after its deletion")
	}
}

// TestBrokerIdempotencyKeys: a claimed key is another claimer's stored
// record once settled, and free again once settled with nothing.
func TestBrokerIdempotencyKeys(t *testing.T) {
	url := startRedis(t)
	ctx := t.Context()
	b, err := New(Config{URL: url}, "test", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if claimed, _, err := b.Claim(ctx, "k", time.Minute); err != nil || !claimed {
		t.Fatalf("the first claim: %v, %v", claimed, err)
	}
	if claimed, stored, err := b.Claim(ctx, "k", time.Minute); err != nil || claimed || stored != nil {
		t.Fatalf("a claim while the first is under way: %v, %q, %v; want neither", claimed, stored, err)
	}
	if err := b.Settle(ctx, "k", []byte("record"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if claimed, stored, err := b.Claim(ctx, "k", time.Minute); err != nil || claimed || string(stored) != "record" {
		t.Fatalf("a claim after the settle: %v, %q, %v; want the record", claimed, stored, err)
	}
	if claimed, _, err := b.Claim(ctx, "free", time.Minute); err != nil || !claimed {
		t.Fatal(err)
	}
	if err := b.Settle(ctx, "free", nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if claimed, _, err := b.Claim(ctx, "free", time.Minute); err != nil || !claimed {
		t.Errorf("a key settled with nothing is not free again: %v, %v", claimed, err)
	}
}
