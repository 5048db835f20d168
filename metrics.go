package comet

import (
	"errors"
	"os"

	"github.com/caddy-comet/comet/internal/hub"
	"github.com/prometheus/client_golang/prometheus"
)

// The collectors exist once per process, so their counts carry over config
// reloads; every new config's registry gets them registered again. Labels
// are the hub, the transport and a reason, never the context, whose number
// is unbounded.
var metrics = struct {
	subscribers   *prometheus.GaugeVec
	deliveries    *prometheus.CounterVec
	expiries      *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	publishErrors *prometheus.CounterVec
	inPlace       *prometheus.CounterVec
}{
	subscribers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "subscribers",
		Help: "Subscribers attached over HTTP, by transport.",
	}, []string{"hub", "transport"}),
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
		Help: "Subscribers refused or cut off: limit (max_subscribers, max_contexts or max_client_subscribers), slow (a write blocked past write_timeout), behind (fell behind the history).",
	}, []string{"hub", "reason"}),
	publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "publish_errors_total",
		Help: "Publishes refused: too_large, invalid, limit, closed, broker (unreachable), idempotency (a key used for other events, or still under way).",
	}, []string{"hub", "reason"}),
	inPlace: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "comet", Name: "requests_in_place_total",
		Help: "Requests that came on the connection of an answered detached long poll: served in place, or handed back to net/http (a body, HTTP/1.0, Expect, Upgrade, Connection: close, anything but GET or HEAD).",
	}, []string{"outcome"}),
}

// inPlaceServed and inPlaceHandedBack are the series of requests_in_place_total.
var (
	inPlaceServed     = metrics.inPlace.WithLabelValues("served")
	inPlaceHandedBack = metrics.inPlace.WithLabelValues("handed_back")
)

// registerMetrics adds comet's collectors to a config's registry.
func registerMetrics(reg prometheus.Registerer) error {
	for _, c := range append(hub.Collectors(),
		metrics.subscribers, metrics.deliveries, metrics.expiries, metrics.dropped,
		metrics.publishErrors, metrics.inPlace,
	) {
		if err := reg.Register(c); err != nil {
			if already, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok && already.ExistingCollector == c {
				continue
			}
			return err
		}
	}
	return nil
}

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
