package hub

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Errors a hub returns. The HTTP handler maps them to status codes; Go
// callers can test for them with errors.Is.
var (
	ErrTooManyContexts    = errors.New("context limit of the hub reached")
	ErrTooManySubscribers = errors.New("subscriber limit of the hub reached")
	ErrHubClosed          = errors.New("hub is shutting down")
	ErrContextDeleted     = errors.New("context was deleted")
	ErrKeyTooLong         = fmt.Errorf("context key longer than %d bytes", MaxKeyLength)
	ErrBadKey             = errors.New("context key must not be empty or hold NUL, CR or LF")
	ErrBadEventType       = fmt.Errorf("event type must be at most %d bytes with no control characters", MaxEventTypeLength)
	ErrReservedEventType  = fmt.Errorf("event types starting with %q are the server's own control events", ReservedEventTypePrefix)
	ErrBadContentType     = errors.New("content type must be a media type (type/subtype and parameters) with no control characters")
)

// ReservedEventTypePrefix starts the types of the control events the
// server writes itself (comet-missed, comet-reconnect, comet-deleted and
// any later one): a publisher may not forge them.
const ReservedEventTypePrefix = "comet-"

// MaxEventTypeLength bounds an event's type, which every SSE frame repeats.
const MaxEventTypeLength = 128

// MaxKeyLength bounds a context key, which is often taken from the request
// path: contexts are bounded in number, and this bounds what each one costs.
const MaxKeyLength = 1024

// MissedUnknown is the value of Delivery.Missed when the subscriber's cursor
// belongs to an earlier epoch of the context, so the number of events it
// missed cannot be known.
const MissedUnknown = -1

// MinDefaultClientSubscribers is the least default share of one client:
// on a small hub, a tenth of max_subscribers would refuse a single page
// with a few tabs.
const MinDefaultClientSubscribers = 1000

// Defaults of Config.
const (
	DefaultHistory        = 100
	DefaultHistoryMaxAge  = 10 * time.Minute
	DefaultMaxContexts    = 100_000
	DefaultMaxSubscribers = 100_000
)

// Config sets a hub's bounds. Zero values mean the defaults.
type Config struct {
	// How many events each context keeps so that clients can catch up
	// with a cursor. Default: 100.
	History int `json:"history,omitempty"`

	// How long an event stays in a context's history. A context with no
	// subscribers whose history is empty is collected, and its ids start
	// over in a new epoch. Default: 10m.
	HistoryMaxAge caddy.Duration `json:"history_max_age,omitempty"`

	// The most contexts the hub holds at once. Creating one more (by
	// subscribing or publishing) is refused with 503. Default: 100000.
	MaxContexts int `json:"max_contexts,omitempty"`

	// The most subscribers attached to the hub at once, over all its
	// contexts. One more is refused with 503. Default: 100000.
	MaxSubscribers int `json:"max_subscribers,omitempty"`

	// The most subscribers one client holds at once (see TakeShare): a
	// client cannot take all of max_subscribers, nor fill max_contexts
	// with the contexts its subscriptions create. Default: a tenth of
	// max_subscribers, but at least MinDefaultClientSubscribers (and at
	// most max_subscribers).
	MaxClientSubscribers int `json:"max_client_subscribers,omitempty"`

	// How long a publish's Idempotency-Key is remembered: a publish
	// repeated with the same key within it gets the first one's receipts
	// and publishes nothing. Default: 10m.
	IdempotencyWindow caddy.Duration `json:"idempotency_window,omitempty"`

	// The most idempotency keys an in-process hub remembers; past it, the
	// oldest are forgotten before their window ends (counted in
	// caddy_comet_idempotency_keys_forgotten_total). With a broker, keys
	// live in the broker, for the whole window. Default: 100000.
	IdempotencyKeys int `json:"idempotency_keys,omitempty"`

	// How often a hub with a broker announces a probe that must come back
	// through its subscription; three intervals without one make the hub
	// unhealthy (see Health). Default: 1s.
	HealthInterval caddy.Duration `json:"health_interval,omitempty"`
}

func (c Config) healthInterval() time.Duration {
	if c.HealthInterval <= 0 {
		return DefaultHealthInterval
	}
	return time.Duration(c.HealthInterval)
}

// withDefaults returns the config with zero values replaced by defaults.
func (c Config) withDefaults() Config {
	if c.History == 0 {
		c.History = DefaultHistory
	}
	if c.HistoryMaxAge == 0 {
		c.HistoryMaxAge = caddy.Duration(DefaultHistoryMaxAge)
	}
	if c.MaxContexts == 0 {
		c.MaxContexts = DefaultMaxContexts
	}
	if c.MaxSubscribers == 0 {
		c.MaxSubscribers = DefaultMaxSubscribers
	}
	if c.MaxClientSubscribers == 0 {
		c.MaxClientSubscribers = min(max(c.MaxSubscribers/10, MinDefaultClientSubscribers), c.MaxSubscribers)
	}
	if c.IdempotencyWindow == 0 {
		c.IdempotencyWindow = caddy.Duration(DefaultIdempotencyWindow)
	}
	if c.IdempotencyKeys == 0 {
		c.IdempotencyKeys = DefaultIdempotencyKeys
	}
	return c
}

// Validate reports the first bound that is out of range.
func (c Config) Validate() error {
	switch {
	case c.History < 0:
		return errors.New("history must not be negative")
	case c.HistoryMaxAge < 0:
		return errors.New("history max age must not be negative")
	case c.MaxContexts < 0:
		return errors.New("max_contexts must not be negative")
	case c.HealthInterval < 0:
		return errors.New("health_interval must not be negative")
	case c.MaxSubscribers < 0:
		return errors.New("max_subscribers must not be negative")
	case c.MaxClientSubscribers < 0:
		return errors.New("max_client_subscribers must not be negative")
	case c.IdempotencyWindow < 0:
		return errors.New("idempotency_window must not be negative")
	case c.IdempotencyKeys < 0:
		return errors.New("idempotency_keys must not be negative")
	}
	return nil
}

// retention is how much history the config keeps.
func (c *Config) retention() Retention {
	return Retention{Events: c.History, MaxAge: time.Duration(c.HistoryMaxAge)}
}

// BrokerTimeout bounds one call to the broker, so that a broker that hangs
// turns into a clear 503 rather than a hung request.
const BrokerTimeout = 3 * time.Second

// Hub is the set of contexts one hub name stands for (the seed's
// CometEngine). It knows nothing about HTTP. It lives across config reloads;
// Close answers every subscriber and refuses new work.
type Hub struct {
	name string
	cfg  atomic.Pointer[Config]
	now  func() time.Time

	// mu guards contexts. Publishing and subscribing hold it for reading
	// while they touch a context, so the janitor, which holds it for
	// writing, never collects a context from under them.
	mu       sync.RWMutex
	contexts map[string]*hubContext

	subscribers atomic.Int64

	// lostSince is the last time, in Unix milliseconds, that this hub may
	// have lost contexts' events without each subscriber being told: its
	// creation, a deletion, a resynchronisation with the broker. An absent
	// cursor given before it no longer proves that nothing was missed.
	lostSince atomic.Int64

	closeOnce sync.Once
	closed    chan struct{}

	// broker, when set, shares the hub with other nodes; the contexts are
	// then mirrors of the broker's. stopFollowing ends the goroutine that
	// applies the broker's announcements.
	broker        Broker
	stopFollowing context.CancelFunc
	logger        *zap.Logger

	metrics hubMetrics

	// idempotency remembers publishes' idempotency keys when there is no
	// broker to.
	idempotency idempotencyMemory

	// health is what the probes of the broker found (see health.go).
	health hubHealth
	// shares are what each client holds of max_client_subscribers.
	shares clientShares
	// idle are the contexts whose last subscriber left (see idle.go).
	idle idleQueue
	// syncs are the mirrors waiting to be brought up to date.
	syncs syncQueue
	// announced counts the events the broker announced to this hub.
	announced atomic.Int64
}

// New makes a hub of its own, outside any Caddy config, for programs
// that embed the hub; Caddy's handlers use LookupHub's instead. With a
// broker (nil: none, in-process), the hub's contexts are mirrors of the
// broker's, shared with the hubs of other nodes that use it, and Close
// closes the broker. It runs a janitor goroutine, and one following the
// broker, until Close.
func New(name string, cfg Config, broker Broker) *Hub {
	h := &Hub{
		name:     name,
		now:      time.Now,
		contexts: make(map[string]*hubContext),
		closed:   make(chan struct{}),
		logger:   caddy.Log().Named("comet"),
		metrics:  newHubMetrics(name),
	}
	h.Configure(cfg)
	h.idempotency.evicted = h.metrics.idempotencyForgotten.Inc
	// Whatever an earlier lifetime held is lost; absent cursors given from
	// now on hold.
	h.lostSince.Store(h.now().UnixMilli() - 1)
	if broker != nil {
		h.broker = broker
		h.health.node = newNodeID()
		ctx, cancel := context.WithCancel(context.Background())
		h.stopFollowing = cancel
		go broker.Follow(ctx, follower{h})
		go h.probeLoop(ctx, h.config().healthInterval())
	}
	go h.janitor()
	return h
}

// Name returns the hub's name.
func (h *Hub) Name() string { return h.name }

// Configure replaces the hub's bounds; a reload calls it with the new
// config. History lengths adjust as events are next published. For the
// comet module's use; not part of its Go API.
func (h *Hub) Configure(cfg Config) {
	cfg = cfg.withDefaults()
	h.cfg.Store(&cfg)
}

func (h *Hub) config() *Config { return h.cfg.Load() }

// Close answers every subscriber with ErrHubClosed and makes later calls
// fail with it. It does not wait.
func (h *Hub) Close() {
	h.closeOnce.Do(func() {
		close(h.closed)
		h.notifyAllWatchers()
		if h.broker != nil {
			h.stopFollowing()
			if err := h.broker.Close(); err != nil {
				h.logger.Warn("closing the broker", zap.String("hub", h.name), zap.Error(err))
			}
		}
	})
}

func (h *Hub) isClosed() bool {
	select {
	case <-h.closed:
		return true
	default:
		return false
	}
}

// SubscriberCount returns how many subscribers are attached to the hub.
func (h *Hub) SubscriberCount() int { return int(h.subscribers.Load()) }

// ContextCount returns how many contexts the hub holds.
func (h *Hub) ContextCount() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.contexts)
}

// Receipt tells a publisher what became of its event.
type Receipt struct {
	// Cursor is the new event's position; Cursor.ID is its id.
	Cursor Cursor
	// Woken is how many subscribers the event reached at once: those
	// waiting in Next, and detached streams.
	Woken int
}

// contextList returns the hub's contexts at this moment, for work on each
// that must not hold the hub lock.
func (h *Hub) contextList() []*hubContext {
	h.mu.RLock()
	defer h.mu.RUnlock()
	list := make([]*hubContext, 0, len(h.contexts))
	for _, c := range h.contexts {
		list = append(list, c)
	}
	return list
}

// Position describes the context named key, so that a client can learn
// the cursor to subscribe from before any event, without creating the
// context: one that does not exist stands at an absent cursor, from which
// a subscriber gets every event of the context once it is created.
func (h *Hub) Position(key string) (ContextInfo, error) {
	if h.isClosed() {
		return ContextInfo{}, ErrHubClosed
	}
	if err := checkKey(key); err != nil {
		return ContextInfo{}, err
	}
	if info, ok := h.Inspect(key); ok {
		return info, nil
	}
	if h.broker != nil {
		ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
		cur, ok, err := h.broker.Position(ctx, key)
		cancel()
		if err != nil || ok {
			return ContextInfo{Key: key, Cursor: cur}, err
		}
	}
	return ContextInfo{Key: key, Cursor: absentCursor(h.now())}, nil
}

// markLoss records that events may have been lost to subscribers from now.
func (h *Hub) markLoss() { h.lostSince.Store(h.now().UnixMilli()) }

// absentHolds reports whether an absent cursor given at since still
// proves that nothing was missed: no context's events were lost since
// then, and none was collected with events in its history, which takes
// longer than the history's max age.
func (h *Hub) absentHolds(since time.Time) bool {
	return since.UnixMilli() > h.lostSince.Load() &&
		h.now().Sub(since) < time.Duration(h.config().HistoryMaxAge)
}

// Inspect describes the context named key, if it exists.
func (h *Hub) Inspect(key string) (ContextInfo, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	c, ok := h.contexts[key]
	if !ok {
		return ContextInfo{}, false
	}
	return c.info(), true
}

// Contexts describes up to limit contexts whose keys sort after the key
// after, in key order, and reports whether there are more. Paging this way
// keeps one call small however many contexts the hub holds.
func (h *Hub) Contexts(after string, limit int) (page []ContextInfo, more bool) {
	h.mu.RLock()
	keys, more := pageOfKeys(h.contexts, after, limit)
	page = make([]ContextInfo, 0, len(keys))
	for _, key := range keys {
		page = append(page, h.contexts[key].info())
	}
	h.mu.RUnlock()
	return page, more
}

// pageOfKeys returns up to limit keys of m that sort after after, in
// order, and whether there are more, without sorting all of them.
func pageOfKeys[V any](m map[string]V, after string, limit int) (keys []string, more bool) {
	keys = make([]string, 0, min(limit+1, len(m)))
	for key := range m {
		if key > after {
			keys = insertBounded(keys, key, limit+1)
		}
	}
	if more = len(keys) > limit; more {
		keys = keys[:limit]
	}
	return keys, more
}

// insertBounded inserts key into the sorted keys, keeping at most n of the
// smallest: a scan of every context costs O(contexts × log n), not a sort
// of them all.
func insertBounded(keys []string, key string, n int) []string {
	i, _ := slices.BinarySearch(keys, key)
	if i >= n {
		return keys
	}
	if len(keys) == n {
		keys = keys[:n-1]
	}
	return slices.Insert(keys, i, key)
}

// Delete removes the context named key and answers its subscribers with
// ErrContextDeleted, on every node. A later publish or subscribe creates it
// anew, in a new epoch. It reports what the context was on this node, and
// false if there was none.
func (h *Hub) Delete(key string) (ContextInfo, bool, error) {
	if h.broker == nil {
		info, ok := h.deleteLocal(key)
		return info, ok, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
	existed, err := h.broker.Delete(ctx, key)
	cancel()
	if err != nil {
		return ContextInfo{}, false, err
	}
	info, ok := h.deleteLocal(key)
	if !ok {
		info = ContextInfo{Key: key}
	}
	return info, existed || ok, nil
}

func (h *Hub) deleteLocal(key string) (ContextInfo, bool) {
	h.markLoss()
	h.mu.Lock()
	c, ok := h.contexts[key]
	if ok {
		delete(h.contexts, key)
		h.metrics.contexts.Set(float64(len(h.contexts)))
		h.unwatch(key)
	}
	h.mu.Unlock()
	if !ok {
		return ContextInfo{}, false
	}
	return c.markDeleted(), true
}

// Subscribe attaches a subscriber to the context named key, creating the
// context if needed. The caller must Close the subscriber when done.
func (h *Hub) Subscribe(key string) (*Subscriber, error) {
	if h.isClosed() {
		return nil, ErrHubClosed
	}
	if h.subscribers.Add(1) > int64(h.config().MaxSubscribers) {
		h.subscribers.Add(-1)
		h.metrics.refused(limitSubscribers)
		return nil, ErrTooManySubscribers
	}
	var s *Subscriber
	err := h.withContext(key, func(c *hubContext) error {
		c.subscribers.Add(1)
		s = &Subscriber{hub: h, c: c, start: c.position()}
		return nil
	})
	if err != nil {
		h.subscribers.Add(-1)
		return nil, err
	}
	return s, nil
}

// withContext runs fn on the context named key, creating it if needed,
// while holding the lock that keeps the janitor from collecting it.
func (h *Hub) withContext(key string, fn func(*hubContext) error) error {
	if err := checkKey(key); err != nil {
		return err
	}
	h.mu.RLock()
	if c, ok := h.contexts[key]; ok {
		defer h.mu.RUnlock()
		return fn(c)
	}
	h.mu.RUnlock()
	if h.broker != nil {
		return h.withSharedContext(key, fn)
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.contexts[key]
	if !ok {
		if len(h.contexts) >= h.config().MaxContexts {
			h.metrics.refused(limitContexts)
			return ErrTooManyContexts
		}
		c = newHubContext(key)
		h.contexts[key] = c
		h.metrics.contexts.Set(float64(len(h.contexts)))
	}
	return fn(c)
}

// janitor trims expired history and collects idle contexts until the hub
// is closed.
func (h *Hub) janitor() {
	idle := time.NewTicker(idleTick)
	defer idle.Stop()
	sweep := time.NewTimer(sweepInterval(time.Duration(h.config().HistoryMaxAge)))
	defer sweep.Stop()
	for {
		select {
		case <-h.closed:
			return
		case <-sweep.C:
			h.collectIdle()
			sweep.Reset(sweepInterval(time.Duration(h.config().HistoryMaxAge)))
		case <-idle.C:
			h.collectLeft()
		}
	}
}

// sweepInterval keeps history ages accurate to about half of max age,
// without sweeping a large hub more than a few times a second or less than
// once a minute.
func sweepInterval(maxAge time.Duration) time.Duration {
	return min(max(maxAge/2, 10*time.Millisecond), time.Minute)
}

// collectIdle drops expired events from every context and removes contexts
// that have neither subscribers nor history. It returns how many it removed.
func (h *Hub) collectIdle() int {
	cutoff := h.now().Add(-time.Duration(h.config().HistoryMaxAge))
	h.mu.Lock()
	defer h.mu.Unlock()
	removed := 0
	for key, c := range h.contexts {
		if c.expire(cutoff) && c.subscribers.Load() == 0 {
			delete(h.contexts, key)
			h.unwatch(key)
			removed++
		}
	}
	h.metrics.contexts.Set(float64(len(h.contexts)))
	return removed
}

// unwatch stops the broker's reports of a context this node no longer
// mirrors, if there is a broker.
func (h *Hub) unwatch(key string) {
	if h.broker != nil {
		h.broker.Unwatch(key)
	}
}

// checkKey is the one rule for context keys, whoever names them (a
// route's path, the admin API's query, a batch line, the Go API): bounded,
// and nothing that would end a header, a log field or a query early. An
// empty key could not be named to the admin API, which lists every
// context when none is given.
func checkKey(key string) error {
	switch {
	case len(key) > MaxKeyLength:
		return ErrKeyTooLong
	case key == "" || strings.ContainsAny(key, "\x00\r\n"):
		return ErrBadKey
	}
	return nil
}

// checkEventType keeps a type from ending an SSE field early and injecting
// another, from making a long poll's Comet-Event-Type header one that
// strict clients cannot parse (a client that cannot read the answer asks
// again from the same cursor, and never gets past that event), and from
// passing for one of the server's control events.
func checkEventType(t string) error {
	switch {
	case len(t) > MaxEventTypeLength || hasControl(t):
		return ErrBadEventType
	case len(t) >= len(ReservedEventTypePrefix) && strings.EqualFold(t[:len(ReservedEventTypePrefix)], ReservedEventTypePrefix):
		return ErrReservedEventType
	}
	return nil
}

// checkContentType: a long poll answers with it as its Content-Type, so
// it must be one, with no byte a header may not hold.
func checkContentType(ct string) error {
	if ct == "" {
		return nil
	}
	if hasControl(ct) {
		return ErrBadContentType
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || !strings.Contains(mt, "/") {
		return ErrBadContentType
	}
	return nil
}

// hasControl reports whether s holds a control character (U+0000 to
// U+001F, or U+007F).
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
