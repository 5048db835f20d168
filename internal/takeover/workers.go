package takeover

import (
	"sync/atomic"
	"time"
)

// Workers run the requests served in place. A request served by net/http
// runs on its connection's goroutine, new for a connection that was handed
// back, whose stack grows to the depth of the server's handler chain (for
// Caddy, tens of KiB, copied at every doubling). A worker keeps its stack
// from one request to the next.
//
// A few workers (one per core) take the jobs in turn from a queue, as an
// event loop would: an event's fan-out makes thousands of clients send
// their next request at once, and a goroutine for each would be thousands
// of stacks grown for one request. A job may block, though (a handler that
// waits for an upstream, a subscriber held on the ordinary path). A job
// that knows it will wait says so (Block), and a job waiting gets a
// worker at once; otherwise, when the queue has not moved for Stall, one
// more worker starts, and when the queue is full the next job gets one. A worker ends
// after Linger without work: a quiet server keeps none.
type Workers struct {
	jobs    chan func()
	size    int32
	running atomic.Int32
	// taken counts the jobs workers took off the queue, to tell a stall.
	taken    atomic.Uint64
	watching atomic.Bool
}

const (
	// workersQueued is how many jobs wait at most before a worker is
	// started for the next: a fan-out's worth of clients.
	workersQueued = 16 << 10
	// Stall is how long the queue may stand still before one more worker
	// is started.
	Stall = 5 * time.Millisecond
	// Linger is how long a worker waits for work before it ends.
	Linger = time.Second
)

// NewWorkers returns a pool of size workers, started as jobs come.
func NewWorkers(size int) *Workers {
	return &Workers{jobs: make(chan func(), workersQueued), size: int32(size)}
}

// Go runs fn on a worker, soon; it never waits.
func (ws *Workers) Go(fn func()) {
	if ws.running.Load() < ws.size {
		ws.start(fn)
		return
	}
	select {
	case ws.jobs <- fn:
		ws.watch()
	default:
		ws.start(fn) // the queue is full: it is not to grow
	}
}

// Block says that the calling worker is about to wait, for long maybe
// (a subscriber held by its request): it no longer counts among the
// workers, and a job waiting gets a new one at once. The worker calls the
// function returned when the wait is over; it is then one over the
// pool's size, and ends after Linger without work.
func (ws *Workers) Block() (unblocked func()) {
	ws.running.Add(-1)
	select {
	case fn := <-ws.jobs:
		ws.taken.Add(1)
		ws.start(fn)
	default:
	}
	return func() { ws.running.Add(1) }
}

// Running is how many workers there are, but those blocked.
func (ws *Workers) Running() int { return int(ws.running.Load()) }

func (ws *Workers) start(fn func()) {
	ws.running.Add(1)
	go ws.work(fn)
}

func (ws *Workers) work(fn func()) {
	defer ws.running.Add(-1)
	fn()
	idle := time.NewTimer(Linger)
	defer idle.Stop()
	for {
		select {
		case fn = <-ws.jobs:
			ws.taken.Add(1)
			fn()
		case <-idle.C:
			if len(ws.jobs) == 0 {
				return // one queued as it ends is the stall watch's (see check)
			}
		}
		idle.Reset(Linger)
	}
}

// watch makes sure the queue is looked at within Stall, unless a look is
// due already.
func (ws *Workers) watch() {
	if ws.watching.CompareAndSwap(false, true) {
		taken := ws.taken.Load()
		time.AfterFunc(Stall, func() { ws.check(taken) })
	}
}

// check starts one more worker if jobs wait and none was taken since the
// last look, and looks again while jobs wait.
func (ws *Workers) check(takenBefore uint64) {
	taken := ws.taken.Load()
	if len(ws.jobs) == 0 {
		ws.watching.Store(false)
		if len(ws.jobs) > 0 {
			ws.watch() // queued as the look ended
		}
		return
	}
	if taken == takenBefore {
		// One more worker: every worker is blocked, or the cores are
		// busy elsewhere, which a worker per job would only make worse.
		select {
		case fn := <-ws.jobs:
			taken = ws.taken.Add(1)
			ws.start(fn)
		default:
		}
	}
	time.AfterFunc(Stall, func() { ws.check(taken) })
}
