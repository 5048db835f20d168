package comet

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestAdminPublish(t *testing.T) {
	s := startCaddy(t, "comet chat {\n\t\thistory 5\n\t}", `comet /lp
	comet /chat {
		hub chat
	}`)
	p := s.startPoll("/lp")
	waitFor(t, "the poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })

	resp, body := doRequest(t, t.Context(), http.MethodPost, s.admin+"/comet/publish?context=/lp", `{"n":1}`,
		"Content-Type", "application/json", HeaderEventType, "tick")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admin publish: %s: %s", resp.Status, body)
	}
	var r receipt
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.ID != 1 || r.Woken != 1 {
		t.Fatalf("receipt %q (%v), want id 1 and 1 woken", body, err)
	}
	resp, body = p.wait(t)
	if body != `{"n":1}` || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get(HeaderEventType) != "tick" {
		t.Errorf("poll got %q, type %q, event type %q", body, resp.Header.Get("Content-Type"), resp.Header.Get(HeaderEventType))
	}

	// Another hub, by name: it must reach that hub's subscribers.
	p = s.startPoll("/chat")
	waitFor(t, "the chat poll to park", func() bool { return s.hub("chat").SubscriberCount() == 1 })
	resp, _ = doRequest(t, t.Context(), http.MethodPost, s.admin+"/comet/publish?hub=chat&context=/chat", "hi")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admin publish to chat: %s", resp.Status)
	}
	if _, body := p.wait(t); body != "hi" {
		t.Errorf("chat poll got %q", body)
	}
}

func TestAdminPublishErrors(t *testing.T) {
	s := startCaddy(t, "", `comet`)
	for _, tc := range []struct {
		name, method, query, body string
		wantStatus                int
		wantError                 string
	}{
		{"no context", http.MethodPost, "", "x", 400, "missing context"},
		{"unknown hub", http.MethodPost, "?context=/a&hub=nope", "x", 404, `no running hub named "nope"`},
		{"wrong method", http.MethodGet, "?context=/a", "", 405, "use POST"},
		{"too large", http.MethodPost, "?context=/a", strings.Repeat("x", AdminMaxMessageSize+1), 413, "message too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := doRequest(t, t.Context(), tc.method, s.admin+"/comet/publish"+tc.query, tc.body)
			var apiErr struct{ Error string }
			if err := json.Unmarshal([]byte(body), &apiErr); err != nil {
				t.Fatalf("error body %q is not JSON: %v", body, err)
			}
			if resp.StatusCode != tc.wantStatus || !strings.Contains(apiErr.Error, tc.wantError) {
				t.Errorf("got %s %q, want %d with %q", resp.Status, apiErr.Error, tc.wantStatus, tc.wantError)
			}
		})
	}
}
