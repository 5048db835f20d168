package hub

import (
	"context"
	"errors"
	"time"
)

// ErrBrokerUnavailable wraps what a broker returns when it cannot be
// reached; the HTTP side answers it with 503.
var ErrBrokerUnavailable = errors.New("broker unavailable")

// Broker makes hubs on several nodes act as one. It assigns each context's
// event ids, keeps its epoch and history, and tells every node of every
// event, so that a cursor obtained on one node resumes on any other.
//
// A hub without a broker is in-process: it assigns ids and keeps history in
// its own memory, which is the default and needs no other service. With a
// broker, the hub's contexts are local mirrors of the broker's, holding the
// subscribers of this node.
type Broker interface {
	// PublishBatch assigns each event of the batch the next id of its
	// context (creating the context in a new epoch if it does not exist),
	// stores it in the context's history, keeping what keep says, and
	// announces it to every node through Follow: in order, in one round
	// trip, returning their cursors, one per event. If any failed, it
	// returns an error too, and the cursors of the events not published
	// are zero. A single publish is a batch of one.
	PublishBatch(ctx context.Context, batch []Publication, keep Retention) ([]Cursor, error)

	// Claim claims an idempotency key for a publish under way, for a
	// short lease (so that a node that dies half way does not hold it for
	// the window). If the key is already known, it returns false and what
	// Settle stored for it, or nil while its publish is under way.
	Claim(ctx context.Context, key string, window time.Duration) (claimed bool, stored []byte, err error)

	// Settle stores what a claimed key's publish gave, for the window, or
	// frees the key if record is nil.
	Settle(ctx context.Context, key string, record []byte, window time.Duration) error

	// Load returns the context's state, with at most what keep says of
	// its history, creating the context in a new epoch if it does not
	// exist.
	Load(ctx context.Context, key string, keep Retention) (BrokerState, error)

	// Position returns the cursor of the context's last event without
	// creating the context, and false if it does not exist.
	Position(ctx context.Context, key string) (Cursor, bool, error)

	// Diverged starts the context in a new epoch if it is still in epoch:
	// a node holds events of it that the broker lost (a failover), and the
	// ids the broker would give next are those of events clients saw.
	Diverged(ctx context.Context, key, epoch string, keep Retention) error

	// Delete removes the context everywhere and reports whether it
	// existed; every node is told through Follow.
	Delete(ctx context.Context, key string) (bool, error)

	// Follow reports the events of the contexts watched (see Watch) and
	// every deletion, from every node, to the hub until ctx ends. It calls
	// Resync after each connection, and reconnects by itself.
	Follow(ctx context.Context, hub BrokerFollower)

	// Probe announces token the way events are announced, so that it
	// comes back through Follow (Probed) if this node still hears them.
	Probe(ctx context.Context, token string) error

	// Watch has Follow report the events of the context named key from
	// now on, and call Watching once it will, after which the hub brings
	// its mirror up to date: events published before then are in what
	// Load returns. Unwatch stops the reports. Both return at once; the
	// broker sends them in batches, and a reconnection watches again
	// every context watched (with Watching for each).
	Watch(key string)
	Unwatch(key string)

	// Close releases the broker's connections.
	Close() error
}

// BrokerProblems is implemented by brokers that know of problems probes
// cannot show, such as a connection of several that went deaf.
type BrokerProblems interface {
	// Problem says what keeps this node from hearing some events now,
	// or "" if nothing does.
	Problem() string
}

// Retention is how much of a context's history is kept: at most Events
// events, none older than MaxAge.
type Retention struct {
	Events int
	MaxAge time.Duration
}

// BrokerState is a context as the broker holds it.
type BrokerState struct {
	Epoch  string
	LastID uint64
	// History holds the events still in history, oldest first, with
	// consecutive ids ending at LastID (or none).
	History []*Event
}

// BrokerFollower is what a broker reports to.
type BrokerFollower interface {
	// Event reports an event published on some node.
	Event(key string, epoch string, ev *Event)
	// Deleted reports that a context was deleted.
	Deleted(key string)
	// Resync says that events may have been missed while disconnected.
	Resync()
	// Probed reports a probe announced by some node (see Broker.Probe).
	Probed(token string)
	// Watching says that the context's events are reported from now on
	// (see Broker.Watch).
	Watching(key string)
}
