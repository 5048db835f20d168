// Package hub is comet's core: contexts, their ids, epochs and history,
// subscribers and their wake-ups, the one publish pipeline (Hub.Submit),
// idempotency, and the mirroring of a Broker's contexts when several nodes
// share one. It knows nothing of HTTP, wire formats, Caddy's app or Redis:
// the comet module's handlers turn requests into Submissions and
// Subscribers, and internal/redisbroker implements Broker.
//
// Programs that embed a hub use it through the comet package, which
// re-exports this package's API under the names it always had
// (comet.Hub, comet.NewHub, comet.HubConfig, ...). Exported names that
// the comet package does not re-export are for its own use, not part of
// the Go API.
package hub
