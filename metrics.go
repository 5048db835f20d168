package comet

import (
	"errors"
	"os"

	"github.com/prometheus/client_golang/prometheus"
)

// The collectors exist once per process, so their counts carry over config
// reloads; every new config's registry gets them registered again. Labels
// are the hub, the transport and a reason, never the context, whose number
// is unbounded.
var metrics = struct {
	subscribers   *prometheus.GaugeVec
	contexts      *prometheus.GaugeVec
	published     *prometheus.CounterVec
	deliveries    *prometheus.CounterVec
	expiries      *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	publishErrors *prometheus.CounterVec
	refusals      *prometheus.CounterVec
	forgotten     *prometheus.CounterVec
	replayed      *prometheus.CounterVec
	announced     *prometheus.CounterVec
}{
	subscribers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "subscribers",
		Help: "Subscribers attached over HTTP, by transport.",
	}, []string{"hub", "transport"}),
	contexts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "contexts",
		Help: "Contexts held by the hub.",
	}, []string{"hub"}),
	published: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "events_published_total",
		Help: "Events published, through HTTP, the admin API or Go.",
	}, []string{"hub"}),
	deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "deliveries_total",
		Help: "Events written to subscribers, by transport.",
	}, []string{"hub", "transport"}),
	expiries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "expiries_total",
		Help: "Long polls answered and streams ended because their expiration passed.",
	}, []string{"hub", "transport"}),
	dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "subscribers_dropped_total",
		Help: "Subscribers refused or cut off: limit (max_subscribers or max_contexts), slow (a write blocked past write_timeout), behind (fell behind the history).",
	}, []string{"hub", "reason"}),
	publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "publish_errors_total",
		Help: "Publishes refused: too_large, invalid, limit, closed, broker (unreachable), idempotency (a key used for other events, or still under way).",
	}, []string{"hub", "reason"}),
	refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "limit_refusals_total",
		Help: "Requests of any kind (subscribe, publish, over HTTP, the admin API or Go) refused because a limit was reached: max_contexts or max_subscribers.",
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

// registerMetrics adds comet's collectors to a config's registry.
func registerMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		metrics.subscribers, metrics.contexts, metrics.published, metrics.deliveries,
		metrics.expiries, metrics.dropped, metrics.publishErrors, metrics.refusals,
		metrics.forgotten, metrics.replayed, metrics.announced,
	} {
		if err := reg.Register(c); err != nil {
			if already, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok && already.ExistingCollector == c {
				continue
			}
			return err
		}
	}
	return nil
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
		contexts:             metrics.contexts.WithLabelValues(hub),
		published:            metrics.published.WithLabelValues(hub),
		idempotencyForgotten: metrics.forgotten.WithLabelValues(hub),
		replayed:             metrics.replayed.WithLabelValues(hub),
		announced:            metrics.announced.WithLabelValues(hub),
	}
	for l, name := range limitNames {
		m.refusals[l] = metrics.refusals.WithLabelValues(hub, name)
	}
	return m
}

// A limit of the hub, as named in caddy_comet_limit_refusals_total.
type limit int

const (
	limitContexts limit = iota
	limitSubscribers
	limitCount
)

var limitNames = [limitCount]string{"max_contexts", "max_subscribers"}

func (m *hubMetrics) refused(l limit) { m.refusals[l].Inc() }

// transportMetrics are a route's series for one transport, looked up once
// so that the request path only adds.
type transportMetrics struct {
	subscribers prometheus.Gauge
	deliveries  prometheus.Counter
	expiries    prometheus.Counter
}

func newTransportMetrics(hub string, t transport) *transportMetrics {
	name := t.String()
	return &transportMetrics{
		subscribers: metrics.subscribers.WithLabelValues(hub, name),
		deliveries:  metrics.deliveries.WithLabelValues(hub, name),
		expiries:    metrics.expiries.WithLabelValues(hub, name),
	}
}

// Reasons in caddy_comet_subscribers_dropped_total.
const (
	droppedLimit  = "limit"
	droppedSlow   = "slow"
	droppedBehind = "behind"
)

func countDropped(hub, reason string) {
	metrics.dropped.WithLabelValues(hub, reason).Inc()
}

// countPublishError counts a refused publish by why it was refused.
func countPublishError(hub string, err error) {
	reason := "invalid"
	switch {
	case errors.Is(err, errMessageTooLarge):
		reason = "too_large"
	case errors.Is(err, ErrTooManyContexts):
		reason = "limit"
	case errors.Is(err, ErrHubClosed):
		reason = "closed"
	case errors.Is(err, ErrBrokerUnavailable):
		reason = "broker"
	case errors.Is(err, ErrIdempotencyKeyReused), errors.Is(err, ErrIdempotencyPending):
		reason = "idempotency"
	}
	metrics.publishErrors.WithLabelValues(hub, reason).Inc()
}

// writeTimedOut reports whether a stream write failed because the reader
// stopped reading, rather than because it went away.
func writeTimedOut(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}
