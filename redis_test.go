package comet

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
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
	a.stopFollowing()

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
	if d, ready, err := sub.poll(from); err != nil || ready {
		t.Fatalf("node A served the cursor %s from B with %+v (event %v), %v; want nothing: the client is up to date", told.Cursor, d, d.Event, err)
	}
	if from != told.Cursor {
		t.Errorf("node A resumes %s from %s", told.Cursor, from)
	}
	// The subscriber A held in the dead epoch is told of the gap.
	if d, ready, err := held.poll(dead); err != nil || !ready || d.Missed != MissedUnknown || d.Cursor != told.Cursor {
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
