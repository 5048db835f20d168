package comet

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-comet/comet/internal/redisbroker"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

func TestRedisDownAtStartFailsTheConfig(t *testing.T) {
	addr := freeAddr(t) // nothing listens there
	s := newTestServer(t)
	cfg := adaptCaddyfile(t, s.caddyfile("comet {\n\t\tbroker redis redis://"+addr+"\n\t}", "comet"))
	err := caddyLoadErr(cfg)
	if err == nil || !strings.Contains(err.Error(), "broker unavailable: redis at "+addr) {
		t.Fatalf("loading with Redis down: %v; want a broker unavailable error naming %s", err, addr)
	}
}

// TestRedisOutage takes Redis away under a running node and brings it
// back: publishes fail with 503 meanwhile, parked clients stay parked and
// expire with their current id, and once Redis is back the node follows
// it again by itself, with no event skipped.
func TestRedisOutage(t *testing.T) {
	r := startRedis(t)
	s := startCaddy(t, brokerOption(r, ""), `comet /c {
		expiration 1s
	}`)
	first := s.publish("/c", "before")
	// A second node, through the Go API: events it publishes reach this
	// node only through Redis.
	other := redisHub(t, r, HubConfig{History: 500})
	defer other.Close()

	poll := s.startPoll("/c", "Last-Event-ID", first.Cursor)
	waitFor(t, "the poll to park", func() bool {
		info, ok := s.hub(DefaultHubName).Inspect("/c")
		return ok && info.Subscribers == 1
	})
	r.kill()

	resp, body := s.do(http.MethodPost, "/c", "during")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "broker unavailable") {
		t.Errorf("publish with Redis down: %s %q", resp.Status, body)
	}
	resp, _ = poll.wait(t)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(HeaderCursor) != first.Cursor || resp.Header.Get(HeaderMissed) != "" {
		t.Errorf("parked poll during the outage: %s cursor %q missed %q; want 204 at %s",
			resp.Status, resp.Header.Get(HeaderCursor), resp.Header.Get(HeaderMissed), first.Cursor)
	}

	r.start()
	var second Receipt
	var err error
	waitFor(t, "the other node to publish again", func() bool {
		second, err = other.Publish("/c", Event{Data: []byte("after")})
		return err == nil
	})
	// A client long-polls with its cursor, as it would, until this node
	// has followed Redis again by itself and hands it the event.
	cur := first.Cursor
	deadline := time.Now().Add(10 * time.Second)
	for cur == first.Cursor && time.Now().Before(deadline) {
		resp, body = s.startPoll("/c", "Last-Event-ID", cur).wait(t)
		if m := resp.Header.Get(HeaderMissed); m != "" {
			t.Fatalf("after Redis came back the client was told it missed %s events", m)
		}
		if resp.StatusCode == http.StatusOK && (body != "after" || resp.Header.Get(HeaderCursor) != second.Cursor.String()) {
			t.Fatalf("after Redis came back: %q at %q; want the other node's event at %s", body, resp.Header.Get(HeaderCursor), second.Cursor)
		}
		cur = resp.Header.Get(HeaderCursor)
	}
	if cur != second.Cursor.String() {
		t.Fatalf("the node did not follow Redis again within 10s: cursor %s, want %s", cur, second.Cursor)
	}
	if second.Cursor.ID != 2 {
		t.Errorf("the id after the outage is %d, want 2: ids must continue", second.Cursor.ID)
	}
}

// TestCursorsNeverMoveBackAfterRedisLosesItsData restarts Redis without
// its data, which starts every context over in a new epoch, and brings a
// client that one node told of the new epoch to another node whose mirror
// still holds the old one: that node must check the cursor against Redis
// rather than serve the dead epoch's events again and move the client's
// cursor back.
func TestCursorsNeverMoveBackAfterRedisLosesItsData(t *testing.T) {
	r := startRedis(t)
	a := redisHub(t, r, HubConfig{})
	defer a.Close()
	b := redisHub(t, r, HubConfig{})
	defer b.Close()

	held, err := a.Subscribe("/c")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	publishN(t, b, "/c", 14)
	waitFor(t, "node A to mirror the 14 events", func() bool { return held.Position().ID == 14 })
	dead := held.Position()
	// Node A hears no more announcements, as between Redis going away and
	// A's subscription coming back: its mirror stays in the dead epoch.
	a.StopFollowing()

	r.restartEmpty()
	var told Receipt
	waitFor(t, "node B to publish again", func() bool {
		told, err = b.Publish("/c", Event{Data: []byte("new epoch")})
		return err == nil
	})
	if told.Cursor.Epoch == dead.Epoch || told.Cursor.ID != 1 {
		t.Fatalf("after Redis lost its data, B published at %s; want id 1 of a new epoch (the old was %s)", told.Cursor, dead)
	}

	sub, err := a.Subscribe("/c")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	from := sub.Resume(told.Cursor)
	if d, ready, err := sub.Poll(from); err != nil || ready {
		t.Fatalf("node A served the cursor %s from B with %+v (event %v), %v; want nothing: the client is up to date", told.Cursor, d, d.Event, err)
	}
	if from != told.Cursor {
		t.Errorf("node A resumes %s from %s", told.Cursor, from)
	}
	// The subscriber A held in the dead epoch is told of the gap.
	if d, ready, err := held.Poll(dead); err != nil || !ready || d.Missed != MissedUnknown || d.Cursor != told.Cursor {
		t.Errorf("the subscriber at %s got %+v, ready %v, %v; want the new epoch's event with missed unknown", dead, d, ready, err)
	}
}

// caddyLoadErr loads a config and returns the error, stopping Caddy if it
// did start.
func caddyLoadErr(cfg []byte) error {
	err := caddy.Load(cfg, true)
	if err == nil {
		caddy.Stop()
	}
	return err
}

// TestEventsLostByRedisAreNeverSkippedSilently plays what a failover does
// to Redis' asynchronous replication: the last events a master
// acknowledged are gone from the new master, which gives their ids out
// again. A node whose clients saw those events must not take the new
// events for them: its clients are told that they may have missed events,
// whether the node notices at a new event's announcement or when it
// reloads the context.
func TestEventsLostByRedisAreNeverSkippedSilently(t *testing.T) {
	r := startRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	for _, noticed := range []string{"at an announcement", "at a reload", "at a client's return to another node"} {
		t.Run(noticed, func(t *testing.T) {
			follower, publisher := redisHub(t, r, HubConfig{History: 50}), redisHub(t, r, HubConfig{History: 50})
			defer follower.Close()
			defer publisher.Close()
			key := "/lost/" + strings.ReplaceAll(noticed, " ", "-")
			sub, err := follower.Subscribe(key)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			waitFor(t, "the follower to follow", func() bool {
				return numSub(t, rdb, redisbroker.ContextChannel(follower.Broker(), key)) == 1
			})
			var last Cursor
			for i := 1; i <= 5; i++ {
				rcpt, err := publisher.Publish(key, Event{Data: []byte(fmt.Sprintf("event %d", i))})
				if err != nil {
					t.Fatal(err)
				}
				last = rcpt.Cursor
			}
			waitFor(t, "the follower to hold every event", func() bool { return sub.Position() == last })

			// Events 4 and 5 are lost, as a failed-over master loses them.
			keys := redisbroker.Keys(follower.Broker(), key)
			ctx := context.Background()
			if err := rdb.HSet(ctx, keys[0], "last", 3).Err(); err != nil {
				t.Fatal(err)
			}
			// A new master never had them: its stream ends at 3 (XDEL
			// would leave the stream's last id at 5).
			kept, err := rdb.XRange(ctx, keys[1], "-", "3-0").Result()
			if err != nil {
				t.Fatal(err)
			}
			rdb.Del(ctx, keys[1])
			for _, m := range kept {
				if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys[1], ID: m.ID, Values: m.Values}).Err(); err != nil {
					t.Fatal(err)
				}
			}

			if noticed == "at an announcement" {
				// The next publish is given id 4 again.
				if rcpt, err := publisher.Publish(key, Event{Data: []byte("a new event 4")}); err != nil || rcpt.Cursor.ID != 4 {
					t.Fatalf("the publish after the loss got %v, %v; want id 4 given again", rcpt.Cursor, err)
				}
			} else if noticed == "at a reload" {
				follower.Reload(key)
			} else {
				// The client comes back with its cursor to a node that
				// never held the lost events.
				other := redisHub(t, r, HubConfig{History: 50})
				defer other.Close()
				if sub, err = other.Subscribe(key); err != nil {
					t.Fatal(err)
				}
				defer sub.Close()
			}

			waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			d, err := sub.Next(waitCtx, sub.Resume(last))
			if err != nil || d.Missed == 0 {
				t.Fatalf("a client at %s got %+v, %v; want to be told it may have missed events", last, d, err)
			}
			if d.Cursor.Epoch == last.Epoch {
				t.Errorf("the context is still in epoch %s after the loss", last.Epoch)
			}
			// And the context goes on from there.
			rcpt, err := publisher.Publish(key, Event{Data: []byte("after")})
			if err != nil {
				t.Fatal(err)
			}
			d, err = sub.Next(waitCtx, d.Cursor)
			if err != nil || d.Event == nil || string(d.Event.Data) != "after" || d.Cursor != rcpt.Cursor {
				t.Errorf("after the loss the client got %+v, %v; want the next event at %s", d, err, rcpt.Cursor)
			}
		})
	}
}

// answersLate is a broker whose next Load answers with a state captured
// earlier, as a load whose answer was on its way while newer events came
// in on the subscription's connection.
type answersLate struct {
	Broker
	mu   sync.Mutex
	next *BrokerState
}

func (b *answersLate) Load(ctx context.Context, key string, keep Retention) (BrokerState, error) {
	b.mu.Lock()
	next := b.next
	b.next = nil
	b.mu.Unlock()
	if next != nil {
		return *next, nil
	}
	return b.Broker.Load(ctx, key, keep)
}

// TestALateLoadIsNotALoss: a reload's answer older than the events the
// mirror applied meanwhile is not taken for a broker that lost them (as a
// failover's is, above): the context keeps its epoch and clients are told
// nothing.
func TestALateLoadIsNotALoss(t *testing.T) {
	r := startRedis(t)
	real, err := NewRedisBroker(RedisConfig{URL: r.url()}, DefaultHubName, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	late := &answersLate{Broker: real}
	follower := NewHub(DefaultHubName, HubConfig{History: 50}, late)
	defer follower.Close()
	publisher := redisHub(t, r, HubConfig{History: 50})
	defer publisher.Close()
	const key = "/late"
	sub := followFrom(t, publisher, follower, key)
	ctx := context.Background()
	earlier, err := real.Load(ctx, key, follower.Retention())
	if err != nil {
		t.Fatal(err)
	}
	var last Cursor
	for i := range 3 {
		rcpt, err := publisher.Publish(key, Event{Data: []byte(fmt.Sprint("event ", i))})
		if err != nil {
			t.Fatal(err)
		}
		last = rcpt.Cursor
	}
	waitFor(t, "the follower to hold every event", func() bool { return sub.Position() == last })

	late.mu.Lock()
	late.next = &earlier
	late.mu.Unlock()
	follower.Reload(key)

	if got := sub.Position(); got != last {
		t.Fatalf("after a late load the mirror is at %v, want %v: taken for a loss", got, last)
	}
	rcpt, err := publisher.Publish(key, Event{Data: []byte("after")})
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if d, err := sub.Next(waitCtx, last); err != nil || d.Missed != 0 || d.Cursor != rcpt.Cursor {
		t.Errorf("after a late load the client got %+v, %v; want the next event, nothing missed", d, err)
	}
}
