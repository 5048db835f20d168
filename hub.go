package comet

import "github.com/caddy-comet/comet/internal/hub"

// The hub lives in internal/hub, which knows nothing of HTTP, Caddy's app
// or Redis. Its API is the comet package's, under the names it always had,
// so that programs embedding a hub import only this package.

// Hub holds contexts and their subscribers (see internal/hub).
type (
	Hub           = hub.Hub
	HubConfig     = hub.Config
	Event         = hub.Event
	Cursor        = hub.Cursor
	Publication   = hub.Publication
	Submission    = hub.Submission
	Receipt       = hub.Receipt
	BatchError    = hub.BatchError
	ContextInfo   = hub.ContextInfo
	Subscriber    = hub.Subscriber
	Delivery      = hub.Delivery
	IdentityCount = hub.IdentityCount
	Health        = hub.Health
	Retention     = hub.Retention
	Share         = hub.Share
)

// NewHub makes a hub of its own, outside any Caddy config, for programs
// that embed the hub; Caddy's handlers use LookupHub's instead. With a
// broker (nil: none, in-process), the hub's contexts are mirrors of the
// broker's, shared with the hubs of other nodes that use it, and Close
// closes the broker.
func NewHub(name string, cfg HubConfig, broker Broker) *Hub { return hub.New(name, cfg, broker) }

// ParseCursor parses the text form of a cursor. It accepts only what
// Cursor.String produces: a non-empty epoch of lower-case letters and
// digits, a colon and a decimal id.
func ParseCursor(s string) (Cursor, error) { return hub.ParseCursor(s) }

// Errors a hub returns. The HTTP handler maps them to status codes; Go
// callers can test for them with errors.Is.
var (
	ErrTooManyContexts      = hub.ErrTooManyContexts
	ErrTooManySubscribers   = hub.ErrTooManySubscribers
	ErrHubClosed            = hub.ErrHubClosed
	ErrContextDeleted       = hub.ErrContextDeleted
	ErrKeyTooLong           = hub.ErrKeyTooLong
	ErrBadKey               = hub.ErrBadKey
	ErrBadEventType         = hub.ErrBadEventType
	ErrReservedEventType    = hub.ErrReservedEventType
	ErrBadContentType       = hub.ErrBadContentType
	ErrBadIdempotencyKey    = hub.ErrBadIdempotencyKey
	ErrIdempotencyKeyReused = hub.ErrIdempotencyKeyReused
	ErrIdempotencyPending   = hub.ErrIdempotencyPending
	ErrBrokerUnavailable    = hub.ErrBrokerUnavailable
	ErrShareExceeded        = hub.ErrShareExceeded
)

// Bounds and defaults of a hub (see HubConfig).
const (
	MaxEventTypeLength       = hub.MaxEventTypeLength
	ReservedEventTypePrefix  = hub.ReservedEventTypePrefix
	MaxKeyLength             = hub.MaxKeyLength
	MaxIdempotencyKeyLength  = hub.MaxIdempotencyKeyLength
	MissedUnknown            = hub.MissedUnknown
	DefaultHistory           = hub.DefaultHistory
	DefaultHistoryMaxAge     = hub.DefaultHistoryMaxAge
	DefaultMaxContexts       = hub.DefaultMaxContexts
	DefaultMaxSubscribers    = hub.DefaultMaxSubscribers
	DefaultIdempotencyKeys   = hub.DefaultIdempotencyKeys
	DefaultIdempotencyWindow = hub.DefaultIdempotencyWindow
	DefaultHealthInterval    = hub.DefaultHealthInterval
)
