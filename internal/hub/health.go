package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// A hub with a broker checks that it still hears the broker's
// announcements: every health_interval it announces a probe of its own
// through the broker, and the probe must come back through its
// subscription. A node whose probes stop coming back (the broker down,
// hanging, or the subscription lost without the client noticing) would
// miss every event published on other nodes; Health says so, and the
// admin API's GET /comet/health answers 503, so that a load balancer
// takes the node out until it hears again.

// DefaultHealthInterval is how often a hub with a broker sends a probe.
const DefaultHealthInterval = time.Second

// healthStaleAfter is how many intervals may pass without a probe coming
// back before the hub is unhealthy: one probe may be slow.
const healthStaleAfter = 3

// Health is how a hub's link to its broker stands.
type Health struct {
	// Broker says the hub has one; a hub without is always healthy.
	Broker bool `json:"broker"`
	OK     bool `json:"ok"`
	// Problem says what is wrong when not OK.
	Problem string `json:"problem,omitempty"`
	// LastHeard is when a probe of this node last came back.
	LastHeard time.Time `json:"last_heard,omitzero"`
}

// hubHealth is what the probes found.
type hubHealth struct {
	node     string // tells this node's probes from other nodes'
	seq      atomic.Uint64
	lastBack atomic.Int64 // Unix nanoseconds; 0: none yet
	problem  atomic.Pointer[string]
}

func newNodeID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// probeLoop sends a probe every interval until ctx ends.
func (h *Hub) probeLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		h.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe announces one probe through the broker.
func (h *Hub) probe(ctx context.Context) {
	token := h.health.node + ":" + strconv.FormatUint(h.health.seq.Add(1), 10)
	ctx, cancel := context.WithTimeout(ctx, BrokerTimeout)
	defer cancel()
	if err := h.broker.Probe(ctx, token); err != nil {
		problem := "announcing a probe: " + err.Error()
		h.health.problem.Store(&problem)
		return
	}
	h.health.problem.Store(nil)
}

// probed notes a probe that came back, if it is this node's.
func (h *Hub) probed(token string) {
	if strings.HasPrefix(token, h.health.node+":") {
		h.health.lastBack.Store(h.now().UnixNano())
	}
}

// Health says whether the hub hears its broker: whether a probe it
// announced came back within a few intervals.
func (h *Hub) Health() Health {
	if h.broker == nil {
		return Health{OK: true}
	}
	hl := Health{Broker: true}
	if back := h.health.lastBack.Load(); back != 0 {
		hl.LastHeard = time.Unix(0, back)
	}
	stale := healthStaleAfter * h.config().healthInterval()
	brokerKnows := brokerProblem(h.broker)
	switch p := h.health.problem.Load(); {
	case p != nil:
		hl.Problem = *p
	case brokerKnows != "":
		hl.Problem = brokerKnows
	case hl.LastHeard.IsZero():
		hl.Problem = "no probe has come back from the broker yet"
	case h.now().Sub(hl.LastHeard) > stale:
		hl.Problem = "no probe has come back from the broker for " + h.now().Sub(hl.LastHeard).Round(time.Millisecond).String()
	default:
		hl.OK = true
	}
	return hl
}

// brokerProblem is what the broker itself knows to be wrong, if anything.
func brokerProblem(b Broker) string {
	if p, ok := b.(BrokerProblems); ok {
		return p.Problem()
	}
	return ""
}
