package comet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/caddy-comet/comet/internal/jwtauth"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// HeaderIdempotencyKey makes a publish safe to retry: one repeated with the
// same key within the hub's idempotency window gets the first one's
// receipts and publishes nothing.
const HeaderIdempotencyKey = "Idempotency-Key"

// HeaderReplayed marks an answer given again for a repeated Idempotency-Key.
const HeaderReplayed = "Idempotent-Replayed"

// The HTTP side of the publish path: every entry (a route's POST, the admin
// API, a WebSocket message) turns what it was sent into a publishInput,
// hands it to submit, which is Hub.Submit, and renders the publishResult
// in its own form (a receipt, a batch answer, a reply frame).
//
//	request ─ readPublish ─ submit ─ Hub.Submit ─ render (writeReceipt │ writeBatchAnswer │ wsReply)

// publishInput is a publish as read: the submission for the hub and, for a
// batch, each event's line, to answer by.
type publishInput struct {
	Submission
	batch bool
	lines []int
	// keyErr is what is wrong with the Idempotency-Key header: the
	// publish is refused as the hub refuses a bad key.
	keyErr error
}

// publishResult is what the hub made of a publishInput.
type publishResult struct {
	receipts []Receipt
	replayed bool
	err      error
}

// receipt is the receipt of a single publish.
func (res publishResult) receipt() Receipt {
	if len(res.receipts) == 0 {
		return Receipt{}
	}
	return res.receipts[0]
}

// readPublish reads a publish request: one event to key, or a batch's
// events (on a route, to key; on the admin API, where key is empty, each
// to the context its line names), and the request's Idempotency-Key.
func readPublish(w http.ResponseWriter, r *http.Request, key string, limits batchLimits) (publishInput, error) {
	var in publishInput
	if in.batch = isBatch(r); in.batch {
		pubs, lines, err := readBatch(w, r, key, limits)
		if err != nil {
			return in, err
		}
		in.Publications, in.lines = pubs, lines
	} else {
		data, err := readMessage(w, r, limits.eventSize)
		if err != nil {
			return in, err
		}
		in.Publications = []Publication{{Key: key, Event: eventFromRequest(r, data)}}
	}
	in.IdempotencyKey, in.keyErr = idempotencyKey(r)
	return in, nil
}

// submit hands the input to the hub and counts a refusal. The error of a
// single publish is its event's, not a batch's.
func submit(hub *Hub, in publishInput) publishResult {
	var res publishResult
	if res.err = in.keyErr; res.err == nil {
		res.receipts, res.replayed, res.err = hub.Submit(in.Submission)
	}
	if be, ok := errors.AsType[*BatchError](res.err); ok && !in.batch {
		res.err = be.Err
	}
	if res.err != nil {
		countPublishError(hub.Name(), res.err)
	}
	return res
}

// servePublish publishes the request body as an event, or the events of a
// batch body, to the route's context.
func (h *Handler) servePublish(w http.ResponseWriter, r *http.Request, vars *requestVars, key string, tok *jwtauth.Token) error {
	limits := batchLimits{size: h.MaxBatchSize, events: h.MaxBatchEvents, eventSize: h.MaxMessageSize}
	in, err := readPublish(w, r, key, limits)
	in.Publisher = h.publisherOf(tok)
	if err != nil {
		countPublishError(h.Hub, err)
		if in.batch {
			// The client needs the line number, which Caddy's error
			// handling would not tell it: the answer says it, as a batch
			// answer.
			h.logger.Debug("batch refused", zap.String("context", key), zap.Error(err))
			return writeBatchAnswer(w, messageStatus(err), batchAnswer{Receipts: []batchReceipt{}, Error: err.Error()})
		}
		return caddyhttp.Error(messageStatus(err), err)
	}
	res := submit(h.hub, in)
	if in.batch {
		if hubStatus(res.err) == http.StatusServiceUnavailable {
			h.limitLog.Warn("batch stopped", zap.String("hub", h.Hub), zap.String("context", key), zap.Error(res.err))
		}
		markReplayed(w, res.replayed)
		return writeBatchAnswer(w, batchAnswerStatus(res.err), newBatchAnswer(in.Publications, in.lines, res.receipts, res.err))
	}
	if res.err != nil {
		return h.refuse(w, key, res.err)
	}
	markReplayed(w, res.replayed)
	return writeReceipt(w, vars, res.receipt())
}

// publisherOf names who publishes with tok on this route, to scope their
// idempotency keys (Submission.Publisher): the token's subject where the
// route has tokens, else the route itself.
func (h *Handler) publisherOf(tok *jwtauth.Token) string {
	if tok != nil {
		return "token " + tok.Subject
	}
	return h.routePublisher
}

// routePublisher names a route by its handler's configuration as loaded,
// which is the same on every node of a cluster (so that a retry through
// another node finds its key) and differs between routes configured
// differently.
func routePublisher(h *Handler) string {
	cfg, _ := json.Marshal(h)
	sum := sha256.Sum256(cfg)
	return "route " + hex.EncodeToString(sum[:8])
}

// adminPublisher is the admin API's publishers, the backends trusted with
// every hub: they share their keys.
const adminPublisher = "admin"

// idempotencyKey returns the request's Idempotency-Key, if it has one; two
// of them are refused rather than one picked, and so is an empty one.
func idempotencyKey(r *http.Request) (string, error) {
	values := r.Header.Values(HeaderIdempotencyKey)
	switch {
	case len(values) == 0:
		return "", nil
	case len(values) > 1 || values[0] == "":
		return "", ErrBadIdempotencyKey
	}
	return values[0], nil
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
