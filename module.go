// Package comet is a Caddy module that brings Grizzly's Comet model to Caddy:
// clients subscribe to a context (by default the request path) with a GET
// that is suspended until an event is published to that context by a POST,
// the admin API or Go code, or until the context's expiration delay passes.
package comet

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
	caddy.RegisterModule(Handler{})
}

// DefaultHubName is the hub handlers use unless they name another.
const DefaultHubName = "default"

// hubs holds every hub by name. It outlives configs, so a reload keeps
// subscribers, history and ids; a hub is closed when the last config that
// uses it is cleaned up.
var hubs = caddy.NewUsagePool()

// pooledHub is a hub in the pool.
type pooledHub struct {
	*Hub
	// generation orders hubs of the same name while a reload that changes
	// the broker runs two.
	generation uint64
}

var hubGenerations atomic.Uint64

// Destruct closes the hub when the last config using it is cleaned up.
func (p pooledHub) Destruct() error {
	p.Close()
	return nil
}

// LookupHub returns the hub that Caddy runs under that name, if a running
// config uses it. Other modules and embedders publish and subscribe through
// it; the hub outlives config reloads.
func LookupHub(name string) (*Hub, bool) {
	var found pooledHub
	hubs.Range(func(_, value any) bool {
		// A reload that changes a hub's broker runs the old and the new hub
		// side by side for a moment: the newer one is the current one.
		if p := value.(pooledHub); p.Name() == name && (found.Hub == nil || p.generation > found.generation) {
			found = p
		}
		return true
	})
	return found.Hub, found.Hub != nil
}

// runningHubNames returns the names of the hubs running configs use.
func runningHubNames() []string {
	seen := make(map[string]bool)
	var names []string
	hubs.Range(func(_, value any) bool {
		if name := value.(pooledHub).Name(); !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
		return true
	})
	slices.Sort(names)
	return names
}

// App is the comet app. It configures hubs; the Caddyfile's global comet
// option fills it in, and handlers load it to find their hub.
type App struct {
	// Hubs configures hubs by name. The hub named "default" exists even
	// when it is not listed; any other name a handler uses must be.
	Hubs map[string]*HubOptions `json:"hubs,omitempty"`

	acquired map[string]acquiredHub
	logger   *zap.Logger
}

// HubOptions configure one of the app's hubs: its bounds, and the broker
// that shares it with other nodes.
type HubOptions struct {
	HubConfig

	// Shares the hub between Caddy nodes. Default: none, in-process.
	Broker *BrokerConfig `json:"broker,omitempty"`
}

func (o HubOptions) validate() error {
	switch {
	case o.Broker != nil && o.Broker.Redis == nil:
		return errors.New("broker needs a kind: redis")
	case o.Broker != nil:
		if err := o.Broker.Redis.Validate(); err != nil {
			return err
		}
	}
	return o.HubConfig.Validate()
}

// newHub makes the hub the options describe, connecting to its broker.
func (o HubOptions) newHub(name string, logger *zap.Logger) (*Hub, error) {
	var broker Broker
	if o.Broker != nil {
		var err error
		if broker, err = NewRedisBroker(*o.Broker.Redis, name, logger); err != nil {
			return nil, err
		}
	}
	return NewHub(name, o.HubConfig, broker), nil
}

// acquiredHub is a hub this config holds, with its key in the pool.
type acquiredHub struct {
	hub     *Hub
	poolKey string
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "comet",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets up the app. Caddy validates a module after provisioning
// it, but a hub is made here, and with a broker that means dialling Redis:
// the bounds are checked first, so that a config with bad ones fails
// before anything is made.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if err := a.Validate(); err != nil {
		return err
	}
	a.acquired = make(map[string]acquiredHub)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	// Configured hubs run even before a route uses them, so that Go code
	// and the admin API can reach them.
	for name := range a.Hubs {
		if _, err := a.hub(name); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks every hub's bounds.
func (a *App) Validate() error {
	for name, cfg := range a.Hubs {
		if name == "" {
			return errors.New("hub name must not be empty")
		}
		if cfg == nil {
			continue
		}
		if err := cfg.validate(); err != nil {
			return fmt.Errorf("hub %q: %w", name, err)
		}
	}
	return nil
}

// hub returns the hub named name, creating it on first use, and holds a
// reference to it until Cleanup.
func (a *App) hub(name string) (*Hub, error) {
	if acq, ok := a.acquired[name]; ok {
		return acq.hub, nil
	}
	if _, ok := a.Hubs[name]; !ok && name != DefaultHubName {
		return nil, fmt.Errorf("hub %q is not configured: add it to the global comet option", name)
	}
	opts := a.options(name)
	poolKey := hubPoolKey(name, opts)
	val, loaded, err := hubs.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		h, err := opts.newHub(name, a.logger)
		if err != nil {
			return nil, fmt.Errorf("hub %q: %w", name, err)
		}
		return pooledHub{Hub: h, generation: hubGenerations.Add(1)}, nil
	})
	if err != nil {
		return nil, err
	}
	a.logger.Debug("hub acquired", zap.String("hub", name), zap.Bool("existing", loaded))
	h := val.(pooledHub).Hub
	a.acquired[name] = acquiredHub{hub: h, poolKey: poolKey}
	return h, nil
}

// hubPoolKey names a hub in the pool by its name and its broker: a reload
// that keeps both keeps the hub, one that changes the broker starts a new
// hub, since subscribers cannot be carried from one broker to another.
func hubPoolKey(name string, opts HubOptions) string {
	if opts.Broker == nil {
		return name
	}
	broker, _ := json.Marshal(opts.Broker)
	return name + "\x00" + string(broker)
}

func (a *App) options(name string) HubOptions {
	if opts := a.Hubs[name]; opts != nil {
		return *opts
	}
	return HubOptions{}
}

// Start applies this config's bounds to the hubs it uses. Only a config
// that starts does so, so a reload that fails to provision leaves the
// running config's bounds in place.
func (a *App) Start() error {
	for name, acq := range a.acquired {
		acq.hub.Configure(a.options(name).HubConfig)
	}
	return nil
}

// Stop does nothing on a reload: hubs outlive configs. When the process
// exits, it closes the hubs and waits, for a bounded time, for their
// subscribers to be answered: the streams the handlers took over from the
// server are not waited for by the server's own shutdown. (Requests still
// in the server are answered through the handlers' server shutdown hook,
// because the http app's Stop waits for them and may run before this one.)
func (a *App) Stop() error {
	if !caddy.Exiting() {
		return nil
	}
	for _, acq := range a.acquired {
		acq.hub.Close() // all at once, so that they drain side by side
	}
	deadline := time.Now().Add(detachedDrainTimeout)
	for name, acq := range a.acquired {
		for acq.hub.SubscriberCount() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := acq.hub.SubscriberCount(); n > 0 {
			a.logger.Warn("exiting before every subscriber was answered",
				zap.String("hub", name), zap.Int("subscribers", n))
		}
	}
	return nil
}

// Cleanup releases the hubs this config used; the last release closes a hub.
func (a *App) Cleanup() error {
	for name, acq := range a.acquired {
		if _, err := hubs.Delete(acq.poolKey); err != nil {
			a.logger.Error("releasing hub", zap.String("hub", name), zap.Error(err))
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
