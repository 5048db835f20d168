package comet

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminMaxMessageSize is the largest event the admin API accepts. The admin
// endpoint is trusted, but history holds every event in memory.
const AdminMaxMessageSize = 1 << 20

// AdminAPI serves comet's endpoints on Caddy's admin listener, so that a
// backend can publish without going through a public route:
//
//	POST /comet/publish?context=<key>[&hub=<name>]
//
// The body is the event's payload and its Content-Type is kept; a
// Comet-Event-Type header sets the event type. The answer is the same JSON
// receipt a POST on a comet route gets.
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
	}
}

func (AdminAPI) handlePublish(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed; use POST", r.Method))
	}
	query := r.URL.Query()
	key := query.Get("context")
	if key == "" {
		return apiError(http.StatusBadRequest, errors.New("missing context query parameter"))
	}
	name := query.Get("hub")
	if name == "" {
		name = DefaultHubName
	}
	hub, ok := lookupHub(name)
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("no running hub named %q", name))
	}
	data, err := readMessage(w, r, AdminMaxMessageSize)
	if err != nil {
		return apiError(messageStatus(err), err)
	}
	rcpt, err := hub.Publish(key, eventFromRequest(r, data))
	if err != nil {
		return apiError(hubStatus(err), fmt.Errorf("context %.64q: %w", key, err))
	}
	return writeReceipt(w, nil, rcpt)
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)
