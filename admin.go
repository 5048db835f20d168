package comet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminMaxMessageSize is the largest event the admin API accepts. The admin
// endpoint is trusted, but history holds every event in memory.
const AdminMaxMessageSize = 1 << 20

// AdminAPI serves comet's endpoints on Caddy's admin listener, so that a
// backend can publish and an operator can see and steer the hubs without
// going through a public route:
//
//	POST   /comet/publish?context=<key>             publish the body
//	GET    /comet/contexts[?after=<key>&limit=<n>]  list contexts, a page at a time
//	GET    /comet/contexts?context=<key>[&after=<identity>&limit=<n>]
//	                                                describe one context, with
//	                                                who is subscribed, a page at a time
//	DELETE /comet/contexts?context=<key>            delete one context
//
// Every endpoint takes hub=<name>, default "default". A publish keeps the
// body's Content-Type, takes a Comet-Event-Type header for the event type,
// and answers the JSON receipt a POST on a comet route gets.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.comet",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes. Hubs are looked up per request because
// admin modules are provisioned before the apps, and hubs outlive configs.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/comet/publish", Handler: caddy.AdminHandlerFunc(a.handlePublish)},
		{Pattern: "/comet/contexts", Handler: caddy.AdminHandlerFunc(a.handleContexts)},
		{Pattern: "/comet/health", Handler: caddy.AdminHandlerFunc(a.handleHealth)},
	}
}

// healthReport is the answer of GET /comet/health: every running hub's
// health, and whether all are healthy.
type healthReport struct {
	OK   bool              `json:"ok"`
	Hubs map[string]Health `json:"hubs"`
}

// handleHealth answers GET /comet/health: 200 when every running hub hears
// its broker (or has none), 503 otherwise, for a load balancer to take a
// deaf node out.
func (AdminAPI) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use GET", r.Method))
	}
	report := healthReport{OK: true, Hubs: make(map[string]Health)}
	for _, name := range runningHubNames() {
		hub, ok := LookupHub(name)
		if !ok {
			continue
		}
		hl := hub.Health()
		report.Hubs[name] = hl
		report.OK = report.OK && hl.OK
	}
	w.Header().Set("Cache-Control", "no-store")
	if !report.OK {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		return json.NewEncoder(w).Encode(report)
	}
	return writeJSON(w, report)
}

// Paging of GET /comet/contexts.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// contextPage is the answer of GET /comet/contexts: a page of contexts in
// key order, and the after value of the next page when there is one.
type contextPage struct {
	Contexts []contextJSON `json:"contexts"`
	Next     string        `json:"next,omitempty"`
}

// contextDetail is the answer of GET /comet/contexts?context=<key>: the
// context, and a page of the identities its subscribers have (on routes
// with tokens, their subjects), with the after value of the next page.
type contextDetail struct {
	contextJSON
	Identities     []identityJSON `json:"identities"`
	NextIdentities string         `json:"identities_next,omitempty"`
}

type identityJSON struct {
	Identity    string `json:"identity"`
	Subscribers int    `json:"subscribers"`
}

func (AdminAPI) handlePublish(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use POST", r.Method))
	}
	hub, err := requestHub(r)
	if err != nil {
		return err
	}
	limits := batchLimits{size: AdminMaxBatchSize, events: AdminMaxBatchEvents, eventSize: AdminMaxMessageSize}
	key := r.URL.Query().Get("context")
	switch {
	case isBatch(r) && r.URL.Query().Has("context"):
		return apiError(http.StatusBadRequest, errors.New("a batch names each event's context on its line, not in the query"))
	case !isBatch(r) && key == "":
		return apiError(http.StatusBadRequest, errors.New("missing context query parameter"))
	}
	in, err := readPublish(w, r, key, limits)
	in.Publisher = adminPublisher
	if err != nil {
		countPublishError(hub.Name(), err)
		return apiError(messageStatus(err), err)
	}
	res := submit(hub, in)
	if !in.batch {
		if res.err != nil {
			return apiError(hubStatus(res.err), fmt.Errorf("context %.64q: %w", key, res.err))
		}
		markReplayed(w, res.replayed)
		return writeReceipt(w, nil, res.receipt())
	}
	if res.err != nil && !stoppedOnTheWay(res.err) {
		return apiError(hubStatus(res.err), res.err)
	}
	markReplayed(w, res.replayed)
	return writeBatchAnswer(w, batchAnswerStatus(res.err), newBatchAnswer(in.Publications, in.lines, res.receipts, res.err))
}

func (AdminAPI) handleContexts(w http.ResponseWriter, r *http.Request) error {
	hub, err := requestHub(r)
	if err != nil {
		return err
	}
	query := r.URL.Query()
	key := query.Get("context")
	switch {
	case r.Method == http.MethodGet && key == "":
		return listContexts(w, hub, query.Get("after"), query.Get("limit"))
	case r.Method == http.MethodGet:
		return describeContext(w, hub, key, query.Get("after"), query.Get("limit"))
	case r.Method == http.MethodDelete && key != "":
		info, ok, err := hub.Delete(key)
		if err != nil {
			return apiError(hubStatus(err), fmt.Errorf("context %.64q: %w", key, err))
		}
		if !ok {
			return apiError(http.StatusNotFound, fmt.Errorf("no context %.64q in hub %q", key, hub.Name()))
		}
		return writeJSON(w, contextJSONFrom(info))
	case r.Method == http.MethodDelete:
		return apiError(http.StatusBadRequest, errors.New("missing context query parameter: DELETE removes one context"))
	}
	w.Header().Set("Allow", "GET, DELETE")
	return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use GET or DELETE", r.Method))
}

// pageSize reads a limit parameter.
func pageSize(text string) (int, error) {
	if text == "" {
		return defaultPageSize, nil
	}
	n, err := strconv.Atoi(text)
	if err != nil || n < 1 || n > maxPageSize {
		return 0, apiError(http.StatusBadRequest, fmt.Errorf("limit must be a whole number from 1 to %d, got %q", maxPageSize, text))
	}
	return n, nil
}

func describeContext(w http.ResponseWriter, hub *Hub, key, after, limitText string) error {
	limit, err := pageSize(limitText)
	if err != nil {
		return err
	}
	info, ok := hub.Inspect(key)
	ids, more, _ := hub.Identities(key, after, limit)
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("no context %.64q in hub %q", key, hub.Name()))
	}
	detail := contextDetail{contextJSON: contextJSONFrom(info), Identities: make([]identityJSON, 0, len(ids))}
	for _, id := range ids {
		detail.Identities = append(detail.Identities, identityJSON(id))
	}
	if more {
		detail.NextIdentities = ids[len(ids)-1].Identity
	}
	return writeJSON(w, detail)
}

func listContexts(w http.ResponseWriter, hub *Hub, after, limitText string) error {
	limit, err := pageSize(limitText)
	if err != nil {
		return err
	}
	infos, more := hub.Contexts(after, limit)
	page := contextPage{Contexts: make([]contextJSON, 0, len(infos))}
	for _, info := range infos {
		page.Contexts = append(page.Contexts, contextJSONFrom(info))
	}
	if more {
		page.Next = infos[len(infos)-1].Key
	}
	return writeJSON(w, page)
}

// requestHub finds the hub a request names, default "default".
func requestHub(r *http.Request) (*Hub, error) {
	name := r.URL.Query().Get("hub")
	if name == "" {
		name = DefaultHubName
	}
	hub, ok := LookupHub(name)
	if !ok {
		return nil, apiError(http.StatusNotFound, fmt.Errorf("no running hub named %q", name))
	}
	return hub, nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)
