package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Every way to publish (a route's POST, a batch, the admin API, a
// WebSocket message, the Go API) hands the hub a Submission, and Submit is
// the one path it takes:
//
//	Submit ─ closed? ─ check every publication ─┬─ commit ─────────────────────┐
//	                                            └─ claim key ─ commit ─ settle ─┴─ receipts
//	commit: broker? ── broker.PublishBatch, then apply to this node's mirrors
//	        else    ── append to each context here, in order
//
// What a publish must satisfy is checked in check, once, for all of them.

// Publication is one event of a batch and the context it goes to.
type Publication struct {
	Key   string
	Event Event
}

// Submission is what every way to publish hands the hub: the events, in
// order, each with its context (a single publish is a batch of one), and
// the idempotency key that makes the publish safe to retry, if any.
type Submission struct {
	Publications []Publication
	// IdempotencyKey, if not empty, makes a repeat of the submission
	// within the hub's idempotency window get the first one's receipts
	// without publishing anything (see PublishOnce).
	IdempotencyKey string
	// Publisher scopes IdempotencyKey: the keys of different publishers
	// never meet, so that one can neither claim another's key (and have
	// its event refused as a key reused) nor learn which keys others used.
	// The comet module names a route's publisher by its token's subject,
	// or else by the route; the Go API's default is the empty publisher.
	Publisher string
}

// BatchError says which publication of a batch failed. Receipts for the
// publications before it are still returned: those events are published.
type BatchError struct {
	Index int // of the publication in the batch
	Err   error
}

func (e *BatchError) Error() string { return fmt.Sprintf("event %d: %v", e.Index, e.Err) }

func (e *BatchError) Unwrap() error { return e.Err }

// Published reports whether the receipt is for an event that was
// published, as every receipt but some of a failed batch's are.
func (r Receipt) Published() bool { return r.Cursor.Epoch != "" }

// Submit publishes a submission's events in order and returns one receipt
// per event, and whether they are those of an earlier submission with the
// same idempotency key (replayed: nothing was published).
//
// It checks every publication before publishing any, so that a malformed
// one rejects the whole submission with nothing published and no receipts
// (a *BatchError naming it). What can only fail on the way (a limit
// reached, the hub closing, the broker out of reach) returns a *BatchError
// naming the first event not published, with the receipts still one per
// event: those of events not published have a zero cursor (see
// Receipt.Published). With a broker, the events are one call to it.
func (h *Hub) Submit(s Submission) (receipts []Receipt, replayed bool, err error) {
	return h.submit(s, nil)
}

// submit is Submit with receipts written into room, if it has enough: a
// single publish keeps its receipt off the heap.
func (h *Hub) submit(s Submission, room []Receipt) (receipts []Receipt, replayed bool, err error) {
	if h.isClosed() {
		return nil, false, ErrHubClosed
	}
	if err := check(s); err != nil {
		return nil, false, err
	}
	if s.IdempotencyKey == "" {
		receipts, err = h.commit(s.Publications, room)
		return receipts, false, err
	}
	return h.commitOnce(scopedKey(s.Publisher, s.IdempotencyKey), s.Publications)
}

// scopedKey is where publisher's idempotency key is kept: behind a hash of
// the publisher, which keeps token subjects out of the broker's key names
// and the hash tag of a Redis Cluster key whole.
func scopedKey(publisher, key string) string {
	if publisher == "" {
		return key
	}
	sum := sha256.Sum256([]byte(publisher))
	return hex.EncodeToString(sum[:8]) + ":" + key
}

// check refuses a submission that no hub would publish, before anything of
// it is published.
func check(s Submission) error {
	if s.IdempotencyKey != "" && !validIdempotencyKey(s.IdempotencyKey) {
		return ErrBadIdempotencyKey
	}
	for i := range s.Publications {
		if err := CheckPublication(&s.Publications[i]); err != nil {
			return &BatchError{Index: i, Err: err}
		}
	}
	return nil
}

// CheckPublication refuses what no context would take, as Submit would,
// so that a reader of many publications can name the bad one. For the
// comet module's use.
func CheckPublication(p *Publication) error {
	if err := checkKey(p.Key); err != nil {
		return err
	}
	if err := checkEventType(p.Event.Type); err != nil {
		return err
	}
	return checkContentType(p.Event.ContentType)
}

// commitOnce commits the batch unless the idempotency key already stands
// for a publish, whose receipts it then gives again. A publish that
// published nothing frees its key, so that a retry can publish.
func (h *Hub) commitOnce(key string, batch []Publication) ([]Receipt, bool, error) {
	fp := fingerprint(batch)
	keys := h.idempotencyKeys()
	known, err := keys.claim(key)
	if err != nil {
		return nil, false, err
	}
	if known != nil {
		return h.replay(known, fp)
	}
	receipts, err := h.commit(batch, nil)
	keys.settle(key, newOutcome(fp, receipts, err))
	return receipts, false, err
}

// commit publishes checked publications: through the broker, or to this
// hub's own contexts.
func (h *Hub) commit(batch []Publication, room []Receipt) ([]Receipt, error) {
	for i := range batch {
		batch[i].Event.withMemo()
	}
	if h.broker != nil {
		return h.commitShared(batch, receiptsIn(room, len(batch)))
	}
	return h.commitLocal(batch, receiptsIn(room, len(batch)))
}

// receiptsIn returns n zero receipts, in room if it has space for them.
func receiptsIn(room []Receipt, n int) []Receipt {
	if cap(room) < n {
		return make([]Receipt, n)
	}
	room = room[:n]
	clear(room)
	return room
}

// commitLocal appends each event to its context here, in order.
func (h *Hub) commitLocal(batch []Publication, receipts []Receipt) ([]Receipt, error) {
	cfg, now := h.config(), h.now()
	for i := range batch {
		err := h.withContext(batch[i].Key, func(c *hubContext) error {
			receipts[i] = c.publish(&batch[i].Event, cfg, now)
			return nil
		})
		if err != nil {
			return receipts, &BatchError{Index: i, Err: err}
		}
		h.metrics.published.Inc()
	}
	return receipts, nil
}

// commitShared hands the batch to the broker at once and then applies each
// event to this node's mirror of its context rather than waiting for the
// broker's announcement, which then finds it already applied.
func (h *Hub) commitShared(batch []Publication, receipts []Receipt) ([]Receipt, error) {
	now := h.now()
	for i := range batch {
		batch[i].Event.Published = now
	}
	ctx, cancel := context.WithTimeout(context.Background(), BrokerTimeout)
	cursors, err := h.broker.PublishBatch(ctx, batch, h.config().retention())
	cancel()
	failed := -1
	for i, cur := range cursors {
		if cur.Epoch == "" {
			if failed < 0 {
				failed = i
			}
			continue
		}
		h.metrics.published.Inc()
		receipts[i] = h.applyPublished(batch[i].Key, cur, &batch[i].Event)
	}
	if err != nil {
		return receipts, &BatchError{Index: max(failed, 0), Err: err}
	}
	return receipts, nil
}

// Publish appends ev to the context named key, creating the context if
// needed, and wakes every subscriber waiting on it: goroutines waiting in
// Next are woken by one broadcast and each reads the event from the history
// by its own cursor; detached streams are written to, as far as their
// sockets take it without waiting, before Publish returns. The hub sets
// ev's ID and Published time and keeps ev.Data, which the caller must not
// modify afterwards. It is Submit of one event.
func (h *Hub) Publish(key string, ev Event) (Receipt, error) {
	var room [1]Receipt
	receipts, _, err := h.submit(Submission{Publications: []Publication{{Key: key, Event: ev}}}, room[:0])
	if be, ok := errors.AsType[*BatchError](err); ok {
		err = be.Err // of one event, the error is the event's
	}
	if err != nil || len(receipts) == 0 {
		return Receipt{}, err
	}
	return receipts[0], nil
}

// PublishBatch publishes the events in order, as if each were published by
// Publish in turn, and returns one receipt per event: it is Submit without
// an idempotency key.
func (h *Hub) PublishBatch(batch []Publication) ([]Receipt, error) {
	receipts, _, err := h.Submit(Submission{Publications: batch})
	return receipts, err
}

// PublishOnce publishes the batch as PublishBatch does, unless a publish
// with the same idempotency key was made within the hub's idempotency
// window: then it returns that publish's receipts (and replayed true)
// without publishing anything. The key covers the same events only: used
// for other events it fails with ErrIdempotencyKeyReused. A publish that
// published nothing frees its key, so that a retry can publish. With a
// broker, the keys are shared by every node. It is Submit with the key.
func (h *Hub) PublishOnce(key string, batch []Publication) (receipts []Receipt, replayed bool, err error) {
	if key == "" {
		return nil, false, ErrBadIdempotencyKey
	}
	return h.Submit(Submission{Publications: batch, IdempotencyKey: key})
}
