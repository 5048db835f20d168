package comet

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// HeaderIdempotencyKey makes a publish safe to retry: one repeated with the
// same key within the hub's idempotency window gets the first one's
// receipts and publishes nothing.
const HeaderIdempotencyKey = "Idempotency-Key"

// HeaderReplayed marks an answer given again for a repeated Idempotency-Key.
const HeaderReplayed = "Idempotent-Replayed"

// servePublish publishes the request body as an event, or the events of a
// batch body.
func (h *Handler) servePublish(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer, key string) error {
	if isBatch(r) {
		return h.servePublishBatch(w, r, key)
	}
	data, err := readMessage(w, r, h.MaxMessageSize)
	if err != nil {
		countPublishError(h.Hub, err)
		return caddyhttp.Error(messageStatus(err), err)
	}
	rcpt, replayed, err := publishOne(h.hub, r, key, eventFromRequest(r, data))
	if err != nil {
		countPublishError(h.Hub, err)
		return h.refuse(w, key, err)
	}
	markReplayed(w, replayed)
	return writeReceipt(w, repl, rcpt)
}

// servePublishBatch publishes a batch's events to the route's context.
func (h *Handler) servePublishBatch(w http.ResponseWriter, r *http.Request, key string) error {
	limits := batchLimits{size: h.MaxBatchSize, events: h.MaxBatchEvents, eventSize: h.MaxMessageSize}
	batch, lines, err := readBatch(w, r, key, limits)
	if err != nil {
		// The client needs the line number, which Caddy's error handling
		// would not tell it: the answer says it, as a batch answer.
		countPublishError(h.Hub, err)
		h.logger.Debug("batch refused", zap.String("context", key), zap.Error(err))
		return writeBatchAnswer(w, messageStatus(err), batchAnswer{Receipts: []batchReceipt{}, Error: err.Error()})
	}
	receipts, replayed, err := publishBatch(h.hub, r, batch)
	if err != nil {
		countPublishError(h.Hub, err)
		if hubStatus(err) == http.StatusServiceUnavailable {
			h.limitLog.Warn("batch stopped", zap.String("hub", h.Hub), zap.String("context", key), zap.Error(err))
		}
	}
	markReplayed(w, replayed)
	return writeBatchAnswer(w, batchAnswerStatus(err), newBatchAnswer(batch, lines, receipts, err))
}

// publishOne publishes one event, once per Idempotency-Key if the request
// has one.
func publishOne(hub *Hub, r *http.Request, key string, ev Event) (Receipt, bool, error) {
	idem, ok, err := idempotencyKey(r)
	if err != nil {
		return Receipt{}, false, err
	}
	if !ok {
		rcpt, err := hub.Publish(key, ev)
		return rcpt, false, err
	}
	receipts, replayed, err := hub.PublishOnce(idem, []Publication{{Key: key, Event: ev}})
	if err != nil {
		return Receipt{}, false, err
	}
	return receipts[0], replayed, nil
}

// publishBatch publishes a batch, once per Idempotency-Key if the request
// has one.
func publishBatch(hub *Hub, r *http.Request, batch []Publication) ([]Receipt, bool, error) {
	idem, ok, err := idempotencyKey(r)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		receipts, err := hub.PublishBatch(batch)
		return receipts, false, err
	}
	return hub.PublishOnce(idem, batch)
}

// idempotencyKey returns the request's Idempotency-Key, if it has one; two
// of them are refused rather than one picked.
func idempotencyKey(r *http.Request) (string, bool, error) {
	values := r.Header.Values(HeaderIdempotencyKey)
	switch {
	case len(values) == 0:
		return "", false, nil
	case len(values) > 1:
		return "", false, ErrBadIdempotencyKey
	}
	return values[0], true, nil
}

// stoppedOnTheWay reports whether a batch failed after it was checked, so
// that its answer says event by event what was published.
func stoppedOnTheWay(err error) bool {
	_, ok := errors.AsType[*BatchError](err)
	return ok
}

// batchAnswerStatus is the status of a batch's answer.
func batchAnswerStatus(err error) int {
	if err == nil {
		return http.StatusOK
	}
	return hubStatus(err)
}

func markReplayed(w http.ResponseWriter, replayed bool) {
	if replayed {
		w.Header().Set(HeaderReplayed, "true")
	}
}
