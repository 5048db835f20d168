package comet

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// requestVars are a request's comet.* placeholders ({comet.context},
// {comet.cursor}, ...). The replacer reads them when a placeholder is
// asked for, through one provider per request, rather than having each
// set in its map: most requests are never logged with them, and every
// Set costs a map entry and a value boxed, which thousands of held
// requests would keep.
type requestVars struct {
	context        string
	subscriber     string
	cursor         Cursor
	hasCursor      bool
	subscribers    int
	hasSubscribers bool
	missed         int64
}

// newRequestVars makes the request's comet.* placeholders readable
// through repl.
func newRequestVars(repl *caddy.Replacer) *requestVars {
	v := new(requestVars)
	repl.Map(v.replace)
	return v
}

func (v *requestVars) setCursor(cur Cursor) { v.cursor, v.hasCursor = cur, true }

func (v *requestVars) setSubscribers(n int) { v.subscribers, v.hasSubscribers = n, true }

// replace is the replacer's provider: it knows the comet.* placeholders
// that were given a value.
func (v *requestVars) replace(key string) (any, bool) {
	name, ok := strings.CutPrefix(key, "comet.")
	if !ok {
		return nil, false
	}
	switch name {
	case "context":
		return v.context, v.context != ""
	case "subscriber":
		return v.subscriber, v.subscriber != ""
	case "cursor":
		return v.cursor.String(), v.hasCursor
	case "event.id":
		return v.cursor.ID, v.hasCursor
	case "subscribers":
		return v.subscribers, v.hasSubscribers
	case "missed":
		return missedText(v.missed), v.missed != 0
	}
	return nil, false
}
