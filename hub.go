package comet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Errors a hub returns. The HTTP handler maps them to status codes; Go
// callers can test for them with errors.Is.
var (
	ErrTooManyContexts    = errors.New("context limit of the hub reached")
	ErrTooManySubscribers = errors.New("subscriber limit of the hub reached")
	ErrHubClosed          = errors.New("hub is shutting down")
	ErrContextDeleted     = errors.New("context was deleted")
	ErrKeyTooLong         = fmt.Errorf("context key longer than %d bytes", MaxKeyLength)
	ErrBadEventType       = fmt.Errorf("event type must be at most %d bytes with no CR, LF or NUL", MaxEventTypeLength)
)

// MaxEventTypeLength bounds an event's type, which every SSE frame repeats.
const MaxEventTypeLength = 128

// MaxKeyLength bounds a context key, which is often taken from the request
// path: contexts are bounded in number, and this bounds what each one costs.
const MaxKeyLength = 1024

// MissedUnknown is the value of Delivery.Missed when the subscriber's cursor
// belongs to an earlier epoch of the context, so the number of events it
// missed cannot be known.
const MissedUnknown = -1

// Defaults of HubConfig.
const (
	DefaultHistory        = 100
	DefaultHistoryMaxAge  = 10 * time.Minute
	DefaultMaxContexts    = 100_000
	DefaultMaxSubscribers = 100_000
)

// HubConfig sets a hub's bounds. Zero values mean the defaults.
type HubConfig struct {
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
}

// withDefaults returns the config with zero values replaced by defaults.
func (c HubConfig) withDefaults() HubConfig {
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
	return c
}

func (c HubConfig) validate() error {
	switch {
	case c.History < 0:
		return errors.New("history must not be negative")
	case c.HistoryMaxAge < 0:
		return errors.New("history max age must not be negative")
	case c.MaxContexts < 0:
		return errors.New("max_contexts must not be negative")
	case c.MaxSubscribers < 0:
		return errors.New("max_subscribers must not be negative")
	}
	return nil
}

// Hub is the set of contexts one hub name stands for (the seed's
// CometEngine). It knows nothing about HTTP. It lives across config reloads;
// Close answers every subscriber and refuses new work.
type Hub struct {
	name string
	cfg  atomic.Pointer[HubConfig]
	now  func() time.Time

	// mu guards contexts. Publishing and subscribing hold it for reading
	// while they touch a context, so the janitor, which holds it for
	// writing, never collects a context from under them.
	mu       sync.RWMutex
	contexts map[string]*hubContext

	subscribers atomic.Int64

	closeOnce sync.Once
	closed    chan struct{}

	metrics hubMetrics
}

// NewHub makes a hub of its own, outside any Caddy config, for programs
// that embed the hub; Caddy's handlers use LookupHub's instead. It runs a
// janitor goroutine until Close.
func NewHub(name string, cfg HubConfig) *Hub {
	h := &Hub{
		name:     name,
		now:      time.Now,
		contexts: make(map[string]*hubContext),
		closed:   make(chan struct{}),
		metrics:  newHubMetrics(name),
	}
	h.configure(cfg)
	go h.janitor()
	return h
}

// Name returns the hub's name.
func (h *Hub) Name() string { return h.name }

// configure replaces the hub's bounds; a reload calls it with the new config.
// History lengths adjust as events are next published.
func (h *Hub) configure(cfg HubConfig) {
	cfg = cfg.withDefaults()
	h.cfg.Store(&cfg)
}

func (h *Hub) config() *HubConfig { return h.cfg.Load() }

// Close answers every subscriber with ErrHubClosed and makes later calls
// fail with it. It does not wait.
func (h *Hub) Close() {
	h.closeOnce.Do(func() { close(h.closed) })
}

// Destruct closes the hub when the last config using it is cleaned up.
func (h *Hub) Destruct() error {
	h.Close()
	return nil
}

func (h *Hub) isClosed() bool {
	select {
	case <-h.closed:
		return true
	default:
		return false
	}
}

// LookupHub returns the hub that Caddy runs under that name, if a running
// config uses it. Other modules and embedders publish and subscribe through
// it; the hub outlives config reloads.
func LookupHub(name string) (*Hub, bool) {
	var found *Hub
	hubs.Range(func(key, value any) bool {
		if key == name {
			found = value.(*Hub)
			return false
		}
		return true
	})
	return found, found != nil
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
	// Woken is how many subscribers were waiting on the context.
	Woken int
}

// Publish appends ev to the context named key, creating the context if
// needed, and wakes every subscriber waiting on it. Its cost does not depend
// on the number of subscribers: they are woken by one broadcast and each
// reads the event from the history by its own cursor. The hub sets ev's ID
// and Published time and keeps ev.Data, which the caller must not modify
// afterwards.
func (h *Hub) Publish(key string, ev Event) (Receipt, error) {
	if h.isClosed() {
		return Receipt{}, ErrHubClosed
	}
	if !validEventType(ev.Type) {
		return Receipt{}, ErrBadEventType
	}
	ev.frames = new(frameCache)
	var r Receipt
	err := h.withContext(key, func(c *hubContext) error {
		r = c.publish(&ev, h.config(), h.now())
		return nil
	})
	if err == nil {
		h.metrics.published.Inc()
	}
	return r, err
}

// ContextInfo describes a context at one moment.
type ContextInfo struct {
	// Key names the context.
	Key string
	// Cursor is the position of the context's last event (id 0 before the
	// first).
	Cursor Cursor
	// Subscribers is how many subscribers are attached.
	Subscribers int
	// History is how many events the context holds for catching up.
	History int
}

// Position describes the context named key, creating it if needed, so that
// a client can learn the cursor to subscribe from before any event.
func (h *Hub) Position(key string) (ContextInfo, error) {
	if h.isClosed() {
		return ContextInfo{}, ErrHubClosed
	}
	var info ContextInfo
	err := h.withContext(key, func(c *hubContext) error {
		info = c.info()
		return nil
	})
	return info, err
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
	keys := make([]string, 0, min(limit+1, len(h.contexts)))
	for key := range h.contexts {
		if key > after {
			keys = insertBounded(keys, key, limit+1)
		}
	}
	if more = len(keys) > limit; more {
		keys = keys[:limit]
	}
	page = make([]ContextInfo, 0, len(keys))
	for _, key := range keys {
		page = append(page, h.contexts[key].info())
	}
	h.mu.RUnlock()
	return page, more
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
// ErrContextDeleted. A later publish or subscribe creates it anew, in a
// new epoch. It reports what the context was, and false if there was none.
func (h *Hub) Delete(key string) (ContextInfo, bool) {
	h.mu.Lock()
	c, ok := h.contexts[key]
	if ok {
		delete(h.contexts, key)
		h.metrics.contexts.Set(float64(len(h.contexts)))
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
	if len(key) > MaxKeyLength {
		return ErrKeyTooLong
	}
	h.mu.RLock()
	if c, ok := h.contexts[key]; ok {
		defer h.mu.RUnlock()
		return fn(c)
	}
	h.mu.RUnlock()

	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.contexts[key]
	if !ok {
		if len(h.contexts) >= h.config().MaxContexts {
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
	for {
		t := time.NewTimer(sweepInterval(time.Duration(h.config().HistoryMaxAge)))
		select {
		case <-h.closed:
			t.Stop()
			return
		case <-t.C:
			h.collectIdle()
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
			removed++
		}
	}
	h.metrics.contexts.Set(float64(len(h.contexts)))
	return removed
}

// hubContext is one context (the seed's CometContext): an id sequence, its
// recent history and the channel that wakes its waiting subscribers.
type hubContext struct {
	key   string
	epoch string

	// subscribers counts attached subscribers; it only goes up while the
	// hub lock is held for reading, so the janitor can trust a zero.
	subscribers atomic.Int64
	// waiting counts subscribers blocked in Next, for publish receipts.
	waiting atomic.Int64

	mu      sync.RWMutex
	lastID  uint64
	history history
	deleted bool
	// wake is closed and replaced by every publish: one broadcast wakes
	// every waiting subscriber, however many there are.
	wake chan struct{}
}

func newHubContext(key string) *hubContext {
	return &hubContext{key: key, epoch: newEpoch(), wake: make(chan struct{})}
}

// newEpoch returns a short random name for a new id sequence.
func newEpoch() string {
	const tenBase36Digits = 3656158440062976 // 36^10
	return strconv.FormatUint(rand.Uint64N(tenBase36Digits), 36)
}

func (c *hubContext) publish(ev *Event, cfg *HubConfig, now time.Time) Receipt {
	c.mu.Lock()
	c.lastID++
	ev.ID = c.lastID
	ev.Published = now
	c.history.push(ev, cfg.History)
	c.history.expire(now.Add(-time.Duration(cfg.HistoryMaxAge)))
	wake := c.wake
	c.wake = make(chan struct{})
	r := Receipt{Cursor: Cursor{Epoch: c.epoch, ID: ev.ID}, Woken: int(c.waiting.Load())}
	c.mu.Unlock()
	// Closing readies every waiting goroutine; doing it after unlocking
	// lets them read the event at once instead of queueing on the lock.
	close(wake)
	return r
}

func (c *hubContext) info() ContextInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.infoLocked()
}

func (c *hubContext) infoLocked() ContextInfo {
	return ContextInfo{
		Key:         c.key,
		Cursor:      Cursor{Epoch: c.epoch, ID: c.lastID},
		Subscribers: int(c.subscribers.Load()),
		History:     c.history.len(),
	}
}

// markDeleted wakes every subscriber to find the context deleted.
func (c *hubContext) markDeleted() ContextInfo {
	c.mu.Lock()
	c.deleted = true
	wake := c.wake
	c.wake = make(chan struct{})
	info := c.infoLocked()
	c.history = history{}
	c.mu.Unlock()
	close(wake)
	return info
}

func (c *hubContext) position() Cursor {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return Cursor{Epoch: c.epoch, ID: c.lastID}
}

// expire drops events published before cutoff and reports whether the
// history is now empty.
func (c *hubContext) expire(cutoff time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.history.expire(cutoff)
	return c.history.len() == 0
}

// Delivery is what a subscriber gets from Next: the event after its cursor,
// and how many events it missed because history no longer held them.
type Delivery struct {
	// Event is nil when events were missed and history holds nothing newer.
	Event *Event
	// Cursor is the subscriber's position after this delivery.
	Cursor Cursor
	// Missed counts events the subscriber will never see; MissedUnknown if
	// its cursor came from an earlier epoch.
	Missed int64
}

// deliveryAfter finds what a subscriber at cursor after should get now. It
// returns false when the subscriber is up to date and must wait. The caller
// holds c.mu.
func (c *hubContext) deliveryAfter(after Cursor) (Delivery, bool) {
	current := Cursor{Epoch: c.epoch, ID: c.lastID}
	if after.Epoch != c.epoch || after.ID > c.lastID {
		if ev := c.history.oldest(); ev != nil {
			return Delivery{Event: ev, Cursor: Cursor{Epoch: c.epoch, ID: ev.ID}, Missed: MissedUnknown}, true
		}
		return Delivery{Cursor: current, Missed: MissedUnknown}, true
	}
	if after.ID == c.lastID {
		return Delivery{}, false
	}
	ev := c.history.after(after.ID)
	if ev == nil {
		return Delivery{Cursor: current, Missed: int64(c.lastID - after.ID)}, true
	}
	return Delivery{Event: ev, Cursor: Cursor{Epoch: c.epoch, ID: ev.ID}, Missed: int64(ev.ID - after.ID - 1)}, true
}

// Subscriber is one client attached to a context (the seed's suspended
// CometHandler). It is used by one goroutine.
type Subscriber struct {
	hub    *Hub
	c      *hubContext
	start  Cursor
	closed bool
}

// Start returns the context's cursor when the subscriber attached: a
// client without a cursor waits for the first event after it.
func (s *Subscriber) Start() Cursor { return s.start }

// Context returns the key of the subscriber's context.
func (s *Subscriber) Context() string { return s.c.key }

// validEventType keeps a type from ending an SSE field early and injecting
// another.
func validEventType(t string) bool {
	return len(t) <= MaxEventTypeLength && !strings.ContainsAny(t, "\r\n\x00")
}

// Position returns the context's current cursor.
func (s *Subscriber) Position() Cursor { return s.c.position() }

// ContextSubscribers returns how many subscribers the context has,
// this one included.
func (s *Subscriber) ContextSubscribers() int { return int(s.c.subscribers.Load()) }

// Next returns the first event after cursor after, waiting until one is
// published, ctx is done (ctx.Err() is returned), the hub closes
// (ErrHubClosed) or the context is deleted (ErrContextDeleted). It returns at once if the event is already in history, or
// if events after the cursor were lost, with Delivery.Missed saying so.
func (s *Subscriber) Next(ctx context.Context, after Cursor) (Delivery, error) {
	return s.next(ctx, after, nil)
}

// errTick is what next returns when its tick channel fires first.
var errTick = errors.New("tick")

// next is Next that also returns errTick when tick fires, so that a stream
// can write heartbeats from its own goroutine without another one.
func (s *Subscriber) next(ctx context.Context, after Cursor, tick <-chan time.Time) (Delivery, error) {
	c := s.c
	for {
		c.mu.RLock()
		if c.deleted {
			c.mu.RUnlock()
			return Delivery{}, ErrContextDeleted
		}
		d, ready := c.deliveryAfter(after)
		wake := c.wake
		if !ready {
			c.waiting.Add(1)
		}
		c.mu.RUnlock()
		if ready {
			return d, nil
		}
		var err error
		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.hub.closed:
			err = ErrHubClosed
		case <-tick:
			err = errTick
		}
		c.waiting.Add(-1)
		if err != nil {
			return Delivery{}, err
		}
	}
}

// Close detaches the subscriber. It is safe to call more than once.
func (s *Subscriber) Close() {
	if s.closed {
		return
	}
	s.closed = true
	s.c.subscribers.Add(-1)
	s.hub.subscribers.Add(-1)
}

// Interface guard: the hub is a caddy.UsagePool value.
var _ caddy.Destructor = (*Hub)(nil)
