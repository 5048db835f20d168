package hub

import (
	"runtime"
	"slices"
	"sync"
)

// A WatcherFunc is a watcher's: a watcher is a subscriber with no
// goroutine of its own waiting in Next; the hub calls its changed function
// instead of waking it, on the goroutine that published (or deleted, or
// closed), after releasing every hub lock. changed must not block; it reads
// what changed with Poll, and may return work to do once every watcher of
// the context has been called (waking a goroutine, say), so that nothing
// competes with the fan-out for the processors until it is done.
//
// This is what lets an HTTP/1.1 stream or long poll be written by the
// publisher's goroutines, without a goroutine per subscriber woken for
// every event.
//
// For the comet module's use; not part of its Go API.
type WatcherFunc func() (later func())

// fanOutBatch is about how many watchers one goroutine handles on its own
// before a fan-out is worth splitting between processors.
const fanOutBatch = 256

// Watch makes the subscriber a watcher: changed is called on every change
// of its context until the subscriber is closed. It must be called once,
// before the subscriber's first Poll, so that no change is missed. For the
// comet module's use; not part of its Go API.
func (s *Subscriber) Watch(changed WatcherFunc) {
	c := s.c
	c.mu.Lock()
	s.changed = changed
	s.watchIndex = len(c.watchers)
	c.watchers = append(c.watchers, s)
	c.mu.Unlock()
}

// unwatchLocked removes a watcher in constant time, moving the last one
// into its place. The caller holds c.mu.
func (c *hubContext) unwatchLocked(s *Subscriber) {
	last := len(c.watchers) - 1
	moved := c.watchers[last]
	c.watchers[s.watchIndex] = moved
	moved.watchIndex = s.watchIndex
	c.watchers[last] = nil
	c.watchers = c.watchers[:last]
	s.changed = nil
}

// Poll returns what the subscriber at cursor after gets now, without
// waiting: ready is false when it is up to date. It fails like Next when
// the hub closes or the context is deleted. For the comet module's use;
// not part of its Go API.
func (s *Subscriber) Poll(after Cursor) (d Delivery, ready bool, err error) {
	if s.hub.isClosed() {
		return Delivery{}, false, ErrHubClosed
	}
	c := s.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.deleted {
		return Delivery{}, false, ErrContextDeleted
	}
	d, ready = c.deliveryAfter(after)
	return d, ready, nil
}

// broadcast tells every subscriber of the context that it changed: it
// closes wake, the channel taken from the context under its lock, which
// readies every goroutine waiting in Next, then calls every watcher. The
// caller must not hold c.mu.
func (c *hubContext) broadcast(wake chan struct{}) {
	close(wake)
	c.notifyWatchers()
}

func (c *hubContext) notifyWatchers() {
	c.mu.RLock()
	if len(c.watchers) == 0 {
		c.mu.RUnlock()
		return
	}
	changed := make([]WatcherFunc, len(c.watchers))
	for i, s := range c.watchers {
		changed[i] = s.changed
	}
	c.mu.RUnlock()
	fanOut(changed)
}

// notifyAllWatchers calls the watchers of every context, when the hub
// closes.
func (h *Hub) notifyAllWatchers() {
	for _, c := range h.contextList() {
		c.notifyWatchers()
	}
}

// fanOut calls every function, shared between at most one goroutine per
// processor, then what they left for later, and returns when all is done.
// Writing an event to thousands of sockets is bound by system calls, so it
// is worth using every processor; more goroutines than processors would
// only queue.
func fanOut(fns []WatcherFunc) {
	workers := min(runtime.GOMAXPROCS(0), (len(fns)+fanOutBatch-1)/fanOutBatch)
	if workers <= 1 {
		runAll(fns)()
		return
	}
	share := (len(fns) + workers - 1) / workers
	laters := make([]func(), workers)
	var wg sync.WaitGroup
	for i, part := range slices.Collect(slices.Chunk(fns, share)) {
		if i == 0 {
			continue // this goroutine's own share, below
		}
		wg.Go(func() { laters[i] = runAll(part) })
	}
	laters[0] = runAll(fns[:share])
	wg.Wait()
	for _, later := range laters {
		later()
	}
}

// runAll calls every function and returns one that calls what they left
// for later.
func runAll(fns []WatcherFunc) func() {
	var laters []func()
	for _, fn := range fns {
		if later := fn(); later != nil {
			laters = append(laters, later)
		}
	}
	return func() {
		for _, later := range laters {
			later()
		}
	}
}
