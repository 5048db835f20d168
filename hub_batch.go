package comet

import (
	"context"
	"fmt"
)

// Publication is one event of a batch and the context it goes to.
type Publication struct {
	Key   string
	Event Event
}

// BatchError says which publication of a batch failed. Receipts for the
// publications before it are still returned: those events are published.
type BatchError struct {
	Index int // of the publication in the batch
	Err   error
}

func (e *BatchError) Error() string { return fmt.Sprintf("event %d: %v", e.Index, e.Err) }

func (e *BatchError) Unwrap() error { return e.Err }

// PublishBatch publishes the events in order, as if each were published by
// Publish in turn, and returns one receipt per event. It checks every
// publication before publishing any, so that a malformed one rejects the
// whole batch with nothing published (and no receipts). What can only fail
// on the way (a limit reached, the hub closing, the broker out of reach)
// returns a *BatchError naming the first event not published, with the
// receipts still one per event: those of events not published have a zero
// cursor (see Receipt.Published).
//
// With a broker, the batch is one call to it.
func (h *Hub) PublishBatch(batch []Publication) ([]Receipt, error) {
	if h.isClosed() {
		return nil, ErrHubClosed
	}
	for i := range batch {
		if err := checkPublication(&batch[i]); err != nil {
			return nil, &BatchError{Index: i, Err: err}
		}
		batch[i].Event.withMemo()
	}
	if h.broker != nil {
		return h.publishBatchShared(batch)
	}
	receipts := make([]Receipt, len(batch))
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

// Published reports whether the receipt is for an event that was
// published, as every receipt but some of a failed batch's are.
func (r Receipt) Published() bool { return r.Cursor.Epoch != "" }

// checkPublication refuses what Publish would refuse before publishing.
func checkPublication(p *Publication) error {
	if !validEventType(p.Event.Type) {
		return ErrBadEventType
	}
	if len(p.Key) > MaxKeyLength {
		return ErrKeyTooLong
	}
	return nil
}

// publishBatchShared hands the batch to the broker at once and then applies
// each event to this node's mirror of its context, as publishShared does
// for one.
func (h *Hub) publishBatchShared(batch []Publication) ([]Receipt, error) {
	now := h.now()
	for i := range batch {
		batch[i].Event.Published = now
	}
	ctx, cancel := context.WithTimeout(context.Background(), brokerTimeout)
	cursors, err := h.broker.PublishBatch(ctx, batch, h.config().retention())
	cancel()
	receipts := make([]Receipt, len(batch))
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
