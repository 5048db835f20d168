package comet

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// node is a Caddy subprocess sharing one Redis with the other nodes.
type node struct {
	t      *testing.T
	name   string
	bin    string
	config string
	base   string
	admin  string
	cmd    *exec.Cmd
	output bytes.Buffer
}

func startNode(t *testing.T, name string, r *redisServer) *node {
	t.Helper()
	n := &node{t: t, name: name, bin: buildCaddy(t), base: "http://" + freeAddr(t), admin: freeAddr(t)}
	n.config = filepath.Join(t.TempDir(), "Caddyfile")
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	comet {
		history 500
		health_interval 50ms
		broker redis %s
	}
}
%s {
	header /c >X-Subscribers {comet.subscribers}
	comet /c {
		expiration 5s
		heartbeat off
	}
}
`, n.admin, r.url(), n.base)
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("node %s output:\n%s", n.name, n.output.String())
		}
	})
	return n
}

func (n *node) start() {
	n.t.Helper()
	n.cmd = exec.Command(n.bin, "run", "--config", n.config)
	n.cmd.Stdout, n.cmd.Stderr = &n.output, &n.output
	n.cmd.Env = quietRaceEnv()
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	waitFor(n.t, "node "+n.name+" to serve", func() bool { return headSubscribers(http.DefaultClient, n.base+"/c") >= 0 })
	// As a load balancer would, send clients only once the node hears the
	// broker: until then it cannot tell an absent cursor given by another
	// node from one that missed a deletion, and answers it "missed unknown".
	waitFor(n.t, "node "+n.name+" to hear the broker", func() bool {
		resp, err := http.Get("http://" + n.admin + "/comet/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (n *node) stop() {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Kill()
	n.cmd.Wait()
	n.cmd = nil
}

func (n *node) publish(data string) {
	n.t.Helper()
	resp, body := doRequest(n.t, n.t.Context(), http.MethodPost, n.base+"/c", data)
	if resp.StatusCode != http.StatusOK {
		n.t.Fatalf("publish through node %s: %s %s", n.name, resp.Status, body)
	}
}

// TestTwoNodesActAsOneHub spreads long polls and SSE streams over two
// nodes sharing one Redis and publishes through both in turn: every client
// must get every event, once, in order. Then one node restarts, and a
// client resumes through it from Redis' history.
func TestTwoNodesActAsOneHub(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy subprocesses")
	}
	const perKindPerNode, events = 10, 200
	r := startRedis(t)
	nodes := []*node{startNode(t, "A", r), startNode(t, "B", r)}

	resp, _ := doRequest(t, t.Context(), http.MethodHead, nodes[0].base+"/c", "")
	start := resp.Header.Get(HeaderCursor)
	if start == "" {
		t.Fatal("no cursor from HEAD")
	}

	var got receivedEvents
	record := got.record
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range nodes {
		for i := range perKindPerNode {
			poller := fmt.Sprintf("%s-longpoll-%d", n.name, i)
			wg.Go(func() {
				who := poller
				cur := start
				for count := 0; count < events && ctx.Err() == nil; {
					resp, body := doRequest(t, ctx, http.MethodGet, n.base+"/c", "", "Last-Event-ID", cur)
					if m := resp.Header.Get(HeaderMissed); m != "" {
						t.Errorf("%s: told it missed %s", who, m)
						return
					}
					if resp.StatusCode == http.StatusOK {
						record(who, body)
						count++
					}
					cur = resp.Header.Get(HeaderCursor)
				}
			})
			streamer := fmt.Sprintf("%s-sse-%d", n.name, i)
			wg.Go(func() {
				who := streamer
				for cur, count := start, 0; count < events && ctx.Err() == nil; {
					// A stream ends at expiration; EventSource would reconnect
					// with its last id, and so does this client.
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.base+"/c", nil)
					req.Header.Set("Accept", "text/event-stream")
					req.Header.Set("Last-Event-ID", cur)
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Errorf("%s: %v", who, err)
						return
					}
					p := newSSEParser(resp.Body)
					for count < events {
						ev, err := p.next()
						if err != nil {
							break
						}
						switch ev.Type {
						case "message":
							record(who, ev.Data)
							count++
						case "comet-missed":
							t.Errorf("%s: told it missed %s", who, ev.Data)
						}
					}
					cur = p.lastID
					resp.Body.Close()
				}
			})
		}
	}
	for _, n := range nodes {
		waitFor(t, "node "+n.name+"'s clients to attach", func() bool { return headSubscribers(http.DefaultClient, n.base+"/c") == 2*perKindPerNode })
	}
	for i := range events {
		nodes[i%2].publish(fmt.Sprintf("event-%d", i))
	}
	wg.Wait()
	got.checkAllInOrder(t, 4*perKindPerNode, events)

	// Node B restarts while A goes on publishing; a client of B resumes
	// through the new B from Redis' history, without loss.
	resp, _ = doRequest(t, t.Context(), http.MethodHead, nodes[0].base+"/c", "")
	last := resp.Header.Get(HeaderCursor)
	nodes[1].stop()
	for i := range 5 {
		nodes[0].publish(fmt.Sprintf("while B was down %d", i))
	}
	nodes[1].start()
	cur := last
	for i := range 5 {
		resp, body := doRequest(t, t.Context(), http.MethodGet, nodes[1].base+"/c", "", "Last-Event-ID", cur)
		if want := fmt.Sprintf("while B was down %d", i); resp.StatusCode != http.StatusOK || body != want || resp.Header.Get(HeaderMissed) != "" {
			t.Fatalf("resuming through the restarted node: %s %q missed %q, want %q", resp.Status, body, resp.Header.Get(HeaderMissed), want)
		}
		cur = resp.Header.Get(HeaderCursor)
	}
	if !strings.HasPrefix(cur, strings.SplitN(last, ":", 2)[0]+":") {
		t.Errorf("the epoch changed across the restart: %s then %s", last, cur)
	}
}
