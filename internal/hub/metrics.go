package hub

import "github.com/prometheus/client_golang/prometheus"

// The hub's own collectors exist once per process, so their counts carry
// over config reloads; the comet module registers them (with its own) in
// every new config's registry. Labels are the hub and a limit, never the
// context, whose number is unbounded.
var collectors = struct {
	contexts  *prometheus.GaugeVec
	published *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	forgotten *prometheus.CounterVec
	replayed  *prometheus.CounterVec
	announced *prometheus.CounterVec
}{
	contexts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "contexts",
		Help: "Contexts held by the hub.",
	}, []string{"hub"}),
	published: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "events_published_total",
		Help: "Events published, through HTTP, the admin API or Go.",
	}, []string{"hub"}),
	refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "limit_refusals_total",
		Help: "Requests of any kind (subscribe, publish, over HTTP, the admin API or Go) refused because a limit was reached: max_contexts, max_subscribers or max_client_subscribers.",
	}, []string{"hub", "limit"}),
	forgotten: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "idempotency_keys_forgotten_total",
		Help: "Idempotency keys an in-process hub forgot before their window ended because it held idempotency_keys of them; a retry with one would publish again.",
	}, []string{"hub"}),
	replayed: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "publishes_replayed_total",
		Help: "Publishes repeated with an Idempotency-Key already used, answered with the first receipts and not published again.",
	}, []string{"hub"}),
	announced: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "broker_events_received_total",
		Help: "Events the broker announced to this node: in cluster mode, those of the contexts the node mirrors.",
	}, []string{"hub"}),
}

// Collectors are the hub's series, for the comet module to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		collectors.contexts, collectors.published, collectors.refusals,
		collectors.forgotten, collectors.replayed, collectors.announced,
	}
}

// hubMetrics are the series a hub keeps itself, so that publishing from Go
// counts as well.
type hubMetrics struct {
	contexts             prometheus.Gauge
	published            prometheus.Counter
	refusals             [limitCount]prometheus.Counter
	idempotencyForgotten prometheus.Counter
	replayed             prometheus.Counter
	announced            prometheus.Counter
}

func newHubMetrics(hub string) hubMetrics {
	m := hubMetrics{
		contexts:             collectors.contexts.WithLabelValues(hub),
		published:            collectors.published.WithLabelValues(hub),
		idempotencyForgotten: collectors.forgotten.WithLabelValues(hub),
		replayed:             collectors.replayed.WithLabelValues(hub),
		announced:            collectors.announced.WithLabelValues(hub),
	}
	for l, name := range limitNames {
		m.refusals[l] = collectors.refusals.WithLabelValues(hub, name)
	}
	return m
}

// A limit of the hub, as named in caddy_comet_limit_refusals_total.
type limit int

const (
	limitContexts limit = iota
	limitSubscribers
	limitClientSubscribers
	limitCount
)

var limitNames = [limitCount]string{"max_contexts", "max_subscribers", "max_client_subscribers"}

func (m *hubMetrics) refused(l limit) { m.refusals[l].Inc() }
