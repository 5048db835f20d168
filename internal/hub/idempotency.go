package hub

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Errors of a publish with an idempotency key.
var (
	// ErrIdempotencyKeyReused: the key was used for different events.
	ErrIdempotencyKeyReused = errors.New("idempotency key already used for other events")
	// ErrIdempotencyPending: a publish with the key is still under way
	// (on another node: one on this node is waited for).
	ErrIdempotencyPending = errors.New("a publish with this idempotency key is still under way")
	// ErrBadIdempotencyKey: empty, longer than MaxIdempotencyKeyLength, or
	// with bytes other than printable ASCII.
	ErrBadIdempotencyKey = fmt.Errorf("idempotency key must be 1 to %d printable ASCII characters", MaxIdempotencyKeyLength)
	// ErrFailedBefore stands for the error of a first publish that failed
	// half way, when its answer is given again.
	ErrFailedBefore = errors.New("the first publish with this idempotency key stopped on the way")
)

// MaxIdempotencyKeyLength bounds an idempotency key.
const MaxIdempotencyKeyLength = 255

// Defaults of a hub's idempotency memory.
const (
	DefaultIdempotencyWindow = 10 * time.Minute
	DefaultIdempotencyKeys   = 100000
)

// outcome is what a publish with an idempotency key gave, kept for the
// window so that a retry gets the same answer.
type outcome struct {
	Fingerprint string    `json:"f"`
	Receipts    []Receipt `json:"r"`
	// Failed is the index of the first event not published, and Error
	// why, when the publish stopped half way; -1 otherwise.
	Failed int    `json:"x"`
	Error  string `json:"e,omitempty"`
}

// idempotencyKeys is where a hub records its idempotency keys: in its own
// memory, or with a broker, in the broker for every node.
type idempotencyKeys interface {
	// claim returns what the key's publish gave, or nil once it claimed
	// the key for the caller, who must then settle it. A publish with the
	// key under way is waited for.
	claim(key string) (*outcome, error)
	// settle records what the claimed key's publish gave, or frees the
	// key if o is nil.
	settle(key string, o *outcome)
}

func (h *Hub) idempotencyKeys() idempotencyKeys {
	if h.broker != nil {
		return brokerKeys{h}
	}
	return memoryKeys{h}
}

// memoryKeys are an in-process hub's keys.
type memoryKeys struct{ h *Hub }

func (k memoryKeys) claim(key string) (*outcome, error) {
	h := k.h
	for {
		known, wait := h.idempotency.claim(key, h.now(), h.config())
		if wait == nil {
			return known, nil
		}
		select {
		case <-wait: // the first publish ended: look again
		case <-h.closed:
			return nil, ErrHubClosed
		}
	}
}

func (k memoryKeys) settle(key string, o *outcome) {
	k.h.idempotency.settle(key, o, k.h.now(), k.h.config())
}

// brokerKeys are claimed in the broker for the window; a key under way on
// some node is looked at again until that publish ends or brokerTimeout
// passes.
type brokerKeys struct{ h *Hub }

func (k brokerKeys) claim(key string) (*outcome, error) {
	h := k.h
	window := time.Duration(h.config().IdempotencyWindow)
	deadline := time.Now().Add(BrokerTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
		claimed, stored, err := h.broker.Claim(ctx, key, window)
		cancel()
		switch {
		case err != nil:
			return nil, err
		case claimed:
			return nil, nil
		case stored != nil:
			var known outcome
			if err := json.Unmarshal(stored, &known); err != nil {
				return nil, fmt.Errorf("idempotency record of %.64q: %v", key, err)
			}
			return &known, nil
		case time.Now().After(deadline):
			return nil, ErrIdempotencyPending
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-h.closed:
			return nil, ErrHubClosed
		}
	}
}

func (k brokerKeys) settle(key string, o *outcome) {
	h := k.h
	window := time.Duration(h.config().IdempotencyWindow)
	ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
	defer cancel()
	if o == nil {
		_ = h.broker.Settle(ctx, key, nil, window) // frees the key
		return
	}
	record, _ := json.Marshal(o)
	if err := h.broker.Settle(ctx, key, record, window); err != nil {
		h.logger.Warn("recording an idempotency key; a retry would publish again",
			zap.String("hub", h.name), zap.Error(err))
	}
}

// newOutcome records what a publish gave, or nil if it published nothing
// (its key is then freed).
func newOutcome(fp string, receipts []Receipt, err error) *outcome {
	o := &outcome{Fingerprint: fp, Receipts: receipts, Failed: -1}
	if err == nil {
		return o
	}
	be, ok := errors.AsType[*BatchError](err)
	if !ok || !slices.ContainsFunc(receipts, Receipt.Published) {
		return nil
	}
	o.Failed, o.Error = be.Index, be.Err.Error()
	return o
}

// replay gives the outcome again to a publish of the events fp stands for.
func (h *Hub) replay(o *outcome, fp string) ([]Receipt, bool, error) {
	if o.Fingerprint != fp {
		return nil, false, ErrIdempotencyKeyReused
	}
	h.metrics.replayed.Inc()
	if o.Failed >= 0 {
		return o.Receipts, true, &BatchError{Index: o.Failed, Err: fmt.Errorf("%w: %s", ErrFailedBefore, o.Error)}
	}
	return o.Receipts, true, nil
}

// fingerprint identifies a batch's events and their contexts.
func fingerprint(batch []Publication) string {
	sum := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		sum.Write(n[:])
		sum.Write(b)
	}
	for i := range batch {
		p := &batch[i]
		field([]byte(p.Key))
		field([]byte(p.Event.Type))
		field([]byte(p.Event.ContentType))
		field(p.Event.Data)
	}
	return hex.EncodeToString(sum.Sum(nil)[:16])
}

func validIdempotencyKey(key string) bool {
	if key == "" || len(key) > MaxIdempotencyKeyLength {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return false
		}
	}
	return true
}

// idempotencyMemory is an in-process hub's record of idempotency keys. Keys
// expire in the order they were claimed (all live for the same window), so
// a queue in that order finds the expired ones; past the configured count,
// the oldest are forgotten before their window ends, and counted.
type idempotencyMemory struct {
	mu      sync.Mutex
	entries map[string]*idempotencyEntry
	order   []idempotencyRef // oldest first
	// freed counts the refs in order whose key was freed (or claimed
	// again since): order is compacted when they outnumber the live keys,
	// so that refused publishes behind a live key cost nothing for long.
	freed   int
	evicted func()
}

type idempotencyEntry struct {
	outcome *outcome      // nil while the publish is under way
	done    chan struct{} // closed when it ends
	expires time.Time
}

type idempotencyRef struct {
	key   string
	entry *idempotencyEntry
}

// claim returns the key's outcome if it has one, a channel to wait on if
// its publish is under way, or neither once it claimed the key for the
// caller, who must then settle it.
func (m *idempotencyMemory) claim(key string, now time.Time, cfg *Config) (*outcome, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(now, cfg.IdempotencyKeys-1)
	if e, ok := m.entries[key]; ok {
		if e.outcome == nil {
			return nil, e.done
		}
		return e.outcome, nil
	}
	if m.entries == nil {
		m.entries = make(map[string]*idempotencyEntry)
	}
	e := &idempotencyEntry{done: make(chan struct{}), expires: now.Add(time.Duration(cfg.IdempotencyWindow))}
	m.entries[key] = e
	m.order = append(m.order, idempotencyRef{key, e})
	return nil, nil
}

// settle records the outcome of the key's publish, or frees the key if
// the outcome is nil, and wakes whoever waits for it.
func (m *idempotencyMemory) settle(key string, o *outcome, now time.Time, cfg *Config) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[key]
	if e == nil {
		return
	}
	if o == nil {
		delete(m.entries, key)
		m.dropFreedLocked(e)
	} else {
		e.outcome = o
		e.expires = now.Add(time.Duration(cfg.IdempotencyWindow))
	}
	close(e.done)
}

// dropFreedLocked forgets the ref of a key just freed: at once when it is
// the newest (a refused publish, with no other claim since), else when the
// freed refs outnumber the live keys, by compacting the queue.
func (m *idempotencyMemory) dropFreedLocked(e *idempotencyEntry) {
	if n := len(m.order); n > 0 && m.order[n-1].entry == e {
		m.order[n-1] = idempotencyRef{}
		m.order = m.order[:n-1]
		return
	}
	if m.freed++; m.freed <= len(m.entries)+64 {
		return
	}
	live := m.order[:0]
	for _, ref := range m.order {
		if m.entries[ref.key] == ref.entry {
			live = append(live, ref)
		}
	}
	clear(m.order[len(live):])
	m.order, m.freed = live, 0
}

// expireLocked forgets expired keys, and the oldest settled ones while more
// than limit are held. A key under way is never forgotten.
func (m *idempotencyMemory) expireLocked(now time.Time, limit int) {
	n := 0
	for ; n < len(m.order); n++ {
		ref := m.order[n]
		if m.entries[ref.key] != ref.entry {
			m.freed = max(m.freed-1, 0)
			continue // freed or claimed again: a newer ref stands for it
		}
		over := len(m.entries) > limit
		if !over && now.Before(ref.entry.expires) {
			break
		}
		if ref.entry.outcome == nil {
			break // under way
		}
		if over && now.Before(ref.entry.expires) && m.evicted != nil {
			m.evicted()
		}
		delete(m.entries, ref.key)
	}
	m.order = m.order[n:]
	if cap(m.order) > 64 && len(m.order) < cap(m.order)/4 {
		m.order = append([]idempotencyRef(nil), m.order...)
	}
}
