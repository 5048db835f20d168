// Package floor is the floor comet is measured against: the least a Caddy
// handler does to hold a long poll, an SSE stream or a WebSocket and answer
// it on a publish, with nothing of comet's (no hub, no detaching, no
// protocol beyond what the load tool reads). What it costs is what any
// Caddy handler pays for the same connections; what comet costs above it
// is comet's. It is built beside the module for bench/compare.sh
// (bench/floor/caddy), never into it.
//
// Each path is a topic. A GET waits in its handler's goroutine for the
// next publish (an SSE stream or a WebSocket for every publish, a
// WebSocket with a second goroutine reading its client's frames); a POST
// publishes its body. Cursors are "floor:<n>", and the last 64 events are
// kept, so that a long poll asking again after the next publish still gets
// it: the load tool counts losses.
package floor

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/gobwas/ws"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("comet_floor", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		var f Handler
		return &f, f.UnmarshalCaddyfile(h.Dispenser)
	})
}

// Handler is the floor's handler.
type Handler struct{}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.comet_floor", New: func() caddy.Module { return new(Handler) }}
}

// UnmarshalCaddyfile reads the directive, which takes nothing:
//
//	comet_floor
func (*Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("comet_floor takes no arguments")
	}
	return nil
}

// ringSize is how many of its last events a topic keeps.
const ringSize = 64

// topic is one path's events.
type topic struct {
	mu   sync.Mutex
	seq  uint64 // the last event's number; 0: none yet
	ring [ringSize][]byte
	wake chan struct{} // closed by the next publish
}

var topics = struct {
	mu sync.Mutex
	m  map[string]*topic
}{m: make(map[string]*topic)}

func topicOf(path string) *topic {
	topics.mu.Lock()
	defer topics.mu.Unlock()
	t := topics.m[path]
	if t == nil {
		t = &topic{wake: make(chan struct{})}
		topics.m[path] = t
	}
	return t
}

func (t *topic) publish(data []byte) uint64 {
	t.mu.Lock()
	t.seq++
	n := t.seq
	t.ring[n%ringSize] = data
	wake := t.wake
	t.wake = make(chan struct{})
	t.mu.Unlock()
	close(wake)
	return n
}

// next is the first event after after still kept, or, when there is none
// yet, what to wait on.
func (t *topic) next(after uint64) (n uint64, data []byte, wake <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if after >= t.seq {
		return 0, nil, t.wake
	}
	n = max(after+1, t.seq-min(t.seq, ringSize-1))
	return n, t.ring[n%ringSize], nil
}

func (t *topic) last() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seq
}

// ServeHTTP serves one request on its path's topic.
func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	t := topicOf(r.URL.Path)
	switch {
	case r.Method == http.MethodHead:
		w.Header().Set("Comet-Cursor", cursor(t.last()))
		w.WriteHeader(http.StatusNoContent)
		return nil
	case r.Method == http.MethodPost:
		data, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			return caddyhttp.Error(http.StatusBadRequest, err)
		}
		n := t.publish(data)
		w.Header().Set("Content-Type", "application/json")
		_, err = fmt.Fprintf(w, `{"id":%d,"cursor":%q}`+"\n", n, cursor(n))
		return err
	case r.Method != http.MethodGet:
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		return h.serveWebSocket(w, r, t)
	case strings.HasPrefix(r.Header.Get("Accept"), "text/event-stream"):
		return h.serveSSE(w, r, t)
	}
	return h.servePoll(w, r, t)
}

func cursor(n uint64) string { return "floor:" + strconv.FormatUint(n, 10) }

// after is the event number the client's cursor names; a client without
// one waits for the next event.
func after(r *http.Request, t *topic) uint64 {
	text := r.Header.Get("Last-Event-ID")
	if text == "" {
		text = r.URL.Query().Get("last_event_id")
	}
	if n, err := strconv.ParseUint(strings.TrimPrefix(text, "floor:"), 10, 64); err == nil && strings.HasPrefix(text, "floor:") {
		return n
	}
	return t.last()
}

// wait returns the first event after from, waiting for it in this
// goroutine; false once the client is gone.
func wait(t *topic, from uint64, gone <-chan struct{}) (uint64, []byte, bool) {
	for {
		n, data, wake := t.next(from)
		if wake == nil {
			return n, data, true
		}
		select {
		case <-wake:
		case <-gone:
			return 0, nil, false
		}
	}
}

func (Handler) servePoll(w http.ResponseWriter, r *http.Request, t *topic) error {
	n, data, ok := wait(t, after(r, t), r.Context().Done())
	if !ok {
		return nil
	}
	w.Header().Set("Comet-Cursor", cursor(n))
	w.Header().Set("Content-Type", "text/plain")
	_, err := w.Write(data)
	return err
}

func (Handler) serveSSE(w http.ResponseWriter, r *http.Request, t *topic) error {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return err
	}
	from := after(r, t)
	buf := make([]byte, 0, 256)
	for {
		n, data, ok := wait(t, from, r.Context().Done())
		if !ok {
			return nil
		}
		buf = append(buf[:0], "id: "...)
		buf = append(buf, cursor(n)...)
		buf = append(buf, "\ndata: "...)
		buf = append(buf, data...)
		buf = append(buf, "\n\n"...)
		if _, err := w.Write(buf); err != nil {
			return nil
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
		from = n
	}
}

// serveWebSocket upgrades the request and sends each event as the JSON
// message the load tool reads, while a second goroutine reads the client's
// frames, answering pings, until it leaves.
func (Handler) serveWebSocket(w http.ResponseWriter, r *http.Request, t *topic) error {
	from := after(r, t)
	conn, _, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return nil // answered by UpgradeHTTP
	}
	defer conn.Close()
	gone := make(chan struct{})
	var writing sync.Mutex
	go func() {
		defer close(gone)
		for {
			f, err := ws.ReadFrame(conn)
			if err != nil || f.Header.OpCode == ws.OpClose {
				return
			}
			if f.Header.OpCode == ws.OpPing {
				writing.Lock()
				_ = ws.WriteFrame(conn, ws.NewPongFrame(f.Payload))
				writing.Unlock()
			}
		}
	}()
	for {
		n, data, ok := wait(t, from, gone)
		if !ok {
			return nil
		}
		msg, _ := json.Marshal(struct {
			Cursor string `json:"cursor"`
			Data   string `json:"data"`
		}{cursor(n), string(data)})
		writing.Lock()
		err := ws.WriteFrame(conn, ws.NewTextFrame(msg))
		writing.Unlock()
		if err != nil {
			return nil
		}
		from = n
	}
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
