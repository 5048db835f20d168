package comet

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAdminPublish(t *testing.T) {
	s := startCaddy(t, "comet chat {\n\t\thistory 5\n\t}", `comet /lp
	comet /chat {
		hub chat
	}`)
	p := s.startPoll("/lp")
	waitFor(t, "the poll to park", func() bool { return parkedCount(s.hub(DefaultHubName), "/lp") == 1 })

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

func TestAdminListsContextsInPages(t *testing.T) {
	s := startCaddy(t, "", `comet`)
	hub := s.hub(DefaultHubName)
	const n = 250
	for i := range n {
		if _, err := hub.Publish(fmt.Sprintf("/ctx-%03d", i), Event{Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	after, pages := "", 0
	for {
		var page contextPage
		getJSON(t, s.admin+"/comet/contexts?limit=100&after="+url.QueryEscape(after), http.StatusOK, &page)
		pages++
		for _, c := range page.Contexts {
			keys = append(keys, c.Context)
			if c.LastEventID != 1 || c.History != 1 || c.Subscribers != 0 || !strings.HasSuffix(c.Cursor, ":1") {
				t.Errorf("context %+v, want one event in history and no subscribers", c)
			}
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if pages != 3 || len(keys) != n || !slices.IsSorted(keys) || keys[0] != "/ctx-000" || keys[n-1] != "/ctx-249" {
		t.Fatalf("%d pages, %d keys (sorted: %v), first %q; want 3 pages of all %d keys in order",
			pages, len(keys), slices.IsSorted(keys), keys[0], n)
	}
	var apiErr struct{ Error string }
	getJSON(t, s.admin+"/comet/contexts?limit=0", http.StatusBadRequest, &apiErr)
	getJSON(t, s.admin+"/comet/contexts?limit=5000", http.StatusBadRequest, &apiErr)
}

func TestAdminInspectsAndDeletesAContext(t *testing.T) {
	s := startCaddy(t, "", `comet /c`)
	first := s.publish("/c", "one")
	poll := s.startPoll("/c", "Last-Event-ID", first.Cursor)
	_, sse := s.openSSE("/c", "Last-Event-ID", first.Cursor)
	ndjson := bufio.NewScanner(s.openStream(nil, "/c", "application/x-ndjson", "Last-Event-ID", first.Cursor).Body)
	waitFor(t, "three subscribers", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 3 })

	var info contextJSON
	getJSON(t, s.admin+"/comet/contexts?context=/c", http.StatusOK, &info)
	if info != (contextJSON{Context: "/c", Cursor: first.Cursor, LastEventID: 1, Subscribers: 3, History: 1}) {
		t.Errorf("inspect: %+v", info)
	}

	resp, body := doRequest(t, t.Context(), http.MethodDelete, s.admin+"/comet/contexts?context=/c", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"subscribers":3`) {
		t.Fatalf("delete: %s %s", resp.Status, body)
	}
	if resp, _ := poll.wait(t); resp.StatusCode != http.StatusGone {
		t.Errorf("long poll got %s, want 410 Gone", resp.Status)
	}
	if ev := nextWithin(t, sse, 5*time.Second); ev.Type != "comet-deleted" {
		t.Errorf("SSE got %+v, want comet-deleted", ev)
	}
	if _, err := sse.next(); err != io.EOF {
		t.Errorf("SSE after comet-deleted: %v, want EOF", err)
	}
	for ndjson.Scan() && !strings.Contains(ndjson.Text(), `"deleted"`) {
	}
	if !strings.Contains(ndjson.Text(), `{"control":"deleted"}`) || ndjson.Scan() {
		t.Errorf("NDJSON ended with %q, want a deleted control line and the end", ndjson.Text())
	}

	var apiErr struct{ Error string }
	getJSON(t, s.admin+"/comet/contexts?context=/c", http.StatusNotFound, &apiErr)
	if resp, _ := doRequest(t, t.Context(), http.MethodDelete, s.admin+"/comet/contexts?context=/c", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("deleting it again: %s, want 404", resp.Status)
	}
	// A later publish creates the context anew, in a new epoch.
	if r := s.publish("/c", "again"); r.ID != 1 || r.Cursor == first.Cursor {
		t.Errorf("publish after delete: %+v, want id 1 in a new epoch", r)
	}
}

func TestDeleteOnTheRoute(t *testing.T) {
	s := startCaddy(t, "", `comet /c`)
	s.publish("/c", "one")
	poll := s.startPoll("/c")
	waitFor(t, "the poll to park", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 1 })
	resp, body := s.do(http.MethodDelete, "/c", "")
	var info contextJSON
	if err := json.Unmarshal([]byte(body), &info); err != nil || resp.StatusCode != http.StatusOK || info.Subscribers != 1 || info.LastEventID != 1 {
		t.Fatalf("DELETE: %s %s", resp.Status, body)
	}
	if resp, _ := poll.wait(t); resp.StatusCode != http.StatusGone {
		t.Errorf("long poll got %s, want 410", resp.Status)
	}
}

func TestAdminAPIFindsTheHubAfterAReload(t *testing.T) {
	s := startCaddy(t, "", `comet /c`)
	s.publish("/c", "before")
	s.reload("", "comet /c {\n\t\texpiration 5s\n\t}")
	var info contextJSON
	getJSON(t, s.admin+"/comet/contexts?context=/c", http.StatusOK, &info)
	if info.LastEventID != 1 {
		t.Errorf("after reload: %+v", info)
	}
	resp, _ := doRequest(t, t.Context(), http.MethodPost, s.admin+"/comet/publish?context=/c", "after")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("publish after reload: %s", resp.Status)
	}
}

func getJSON(t *testing.T, url string, wantStatus int, v any) {
	t.Helper()
	resp, body := doRequest(t, t.Context(), http.MethodGet, url, "")
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %s %s, want %d", url, resp.Status, body, wantStatus)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("GET %s: %q: %v", url, body, err)
	}
}
