package comet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// publishEntry publishes one event, of type typ and content type ct, to key
// through one way in, and reports the HTTP status it was answered with
// (what the socket's error carries for WebSocket, 400 for a Go API error
// that HTTP answers with 400) and the answer's text.
type publishEntry struct {
	name string
	// headers says the entry takes type and content type as request
	// headers, which cannot hold control bytes at all.
	headers bool
	do      func(t *testing.T, s *testServer, key, typ, ct string) (int, string)
}

func batchLineOf(key, typ, ct string) string {
	line := map[string]string{"data": "x"}
	if key != "" || typ != "" || ct != "" {
		line["context"] = key
	}
	if typ != "" {
		line["type"] = typ
	}
	if ct != "" {
		line["content_type"] = ct
	}
	b, _ := json.Marshal(line)
	return string(b)
}

var publishEntries = []publishEntry{
	{name: "route POST", headers: true, do: func(t *testing.T, s *testServer, key, typ, ct string) (int, string) {
		resp, body := s.do(http.MethodPost, key, "x", HeaderEventType, typ, "Content-Type", ct)
		return resp.StatusCode, body
	}},
	{name: "route batch", do: func(t *testing.T, s *testServer, key, typ, ct string) (int, string) {
		resp, _, text := postBatch(t, s.base+key, batchOf(`{"data":"ok"}`, batchLineOf(key, typ, ct)))
		return resp.StatusCode, text
	}},
	{name: "admin publish", headers: true, do: func(t *testing.T, s *testServer, key, typ, ct string) (int, string) {
		resp, body := doRequest(t, t.Context(), http.MethodPost, s.admin+"/comet/publish?context="+url.QueryEscape(key), "x", HeaderEventType, typ, "Content-Type", ct)
		return resp.StatusCode, body
	}},
	{name: "admin batch", do: func(t *testing.T, s *testServer, key, typ, ct string) (int, string) {
		resp, _, text := postBatch(t, s.admin+"/comet/publish", batchOf(batchLineOf(key, "", ""), batchLineOf(key, typ, ct)))
		return resp.StatusCode, text
	}},
	{name: "WebSocket publish", do: func(t *testing.T, s *testServer, key, typ, ct string) (int, string) {
		c := dialWS(t, wsURL(s, key), nil)
		defer c.conn.Close()
		c.message(5 * time.Second) // open
		c.sendJSON(map[string]any{"publish": map[string]any{"ref": "r", "type": typ, "content_type": ct, "data": "x"}})
		m := c.message(5 * time.Second)
		if m["control"] != "error" {
			return http.StatusOK, fmt.Sprint(m)
		}
		status, _ := m["status"].(float64)
		return int(status), fmt.Sprint(m["error"])
	}},
	{name: "Go API", do: func(t *testing.T, s *testServer, key, typ, ct string) (int, string) {
		_, err := s.hub(DefaultHubName).Publish(key, Event{Type: typ, ContentType: ct, Data: []byte("x")})
		if err == nil {
			return http.StatusOK, ""
		}
		return hubStatus(err), err.Error()
	}},
}

// TestEveryWayInRefusesWhatBecomesABadHeader: an event type or content
// type that a long poll's answer could not carry as a header (control
// bytes, not a media type), or a type that passes for one of the server's
// control events, is refused alike by every way to publish, and nothing of
// the request is published. Batches name the line.
func TestEveryWayInRefusesWhatBecomesABadHeader(t *testing.T) {
	s := startCaddy(t, "", "comet /*")
	const key = "/rules"
	cases := []struct {
		name, typ, ct string
		control       bool // holds control bytes, which no header may carry
	}{
		{"NUL in the type", "a\x00b", "", true},
		{"a control byte in the type", "a\x01b", "", true},
		{"a tab in the type", "a\tb", "", true},
		{"DEL in the type", "a\x7fb", "", true},
		{"NUL in the content type", "", "text/plain\x00", true},
		{"a control byte in the content type", "", "text/pl\x1bain", true},
		{"not a media type", "", "not a media type", false},
		{"no subtype", "", "text", false},
		{"comet-deleted", "comet-deleted", "", false},
		{"comet-missed", "comet-missed", "", false},
		{"a later control event", "comet-whatever", "", false},
		{"another case", "Comet-Reconnect", "", false},
	}
	for _, entry := range publishEntries {
		for _, tc := range cases {
			if tc.control && entry.headers {
				continue // net/http's client will not send it; its server refuses it (400)
			}
			status, text := entry.do(t, s, key, tc.typ, tc.ct)
			if status != http.StatusBadRequest {
				t.Errorf("%s, %s: %d %q, want 400", entry.name, tc.name, status, text)
			}
			if strings.Contains(entry.name, "batch") && !strings.Contains(text, "line 2") {
				t.Errorf("%s, %s: %q does not name line 2", entry.name, tc.name, text)
			}
		}
	}
	if info, ok := s.hub(DefaultHubName).Inspect(key); ok && info.Cursor.ID != 0 {
		t.Errorf("%s is at id %d after refused publishes, want nothing published", key, info.Cursor.ID)
	}
	// What is allowed still is: a type of its own, a media type with
	// parameters.
	for _, entry := range publishEntries {
		if status, text := entry.do(t, s, key, "chat", "text/plain; charset=utf-8"); status != http.StatusOK {
			t.Errorf("%s, a good event: %d %q", entry.name, status, text)
		}
	}
}

// TestContextKeysFollowOneRule: a key that is empty or holds NUL, CR or LF
// is refused wherever a publish names it, so that every context that
// exists can be listed, inspected and deleted through the admin API.
func TestContextKeysFollowOneRule(t *testing.T) {
	s := startCaddy(t, "", "comet /*")
	for _, key := range []string{"", "a\x00b", "/a\nb", "/a\rb"} {
		resp, _, text := postBatch(t, s.admin+"/comet/publish", batchOf(`{"context":"/fine","data":"x"}`, fmt.Sprintf(`{"context":%q,"data":"x"}`, key)))
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(text, "line 2") {
			t.Errorf("an admin batch line with context %q: %s %q, want 400 naming line 2", key, resp.Status, text)
		}
		if key == "" {
			continue // an empty query is the one a single publish answers "missing context"
		}
		resp, body := doRequest(t, t.Context(), http.MethodPost, s.admin+"/comet/publish?context="+url.QueryEscape(key), "x")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("an admin publish to %q: %s %q, want 400", key, resp.Status, body)
		}
		if _, err := s.hub(DefaultHubName).Publish(key, Event{Data: []byte("x")}); !errors.Is(err, ErrBadKey) {
			t.Errorf("the Go API's publish to %q: %v, want ErrBadKey", key, err)
		}
		if _, err := s.hub(DefaultHubName).Subscribe(key); !errors.Is(err, ErrBadKey) {
			t.Errorf("the Go API's subscribe to %q: %v, want ErrBadKey", key, err)
		}
	}
	if _, err := s.hub(DefaultHubName).Publish("", Event{Data: []byte("x")}); !errors.Is(err, ErrBadKey) {
		t.Errorf("the Go API's publish to an empty key: %v, want ErrBadKey", err)
	}
	// A route's key comes from the request's path, decoded.
	resp, body := s.do(http.MethodPost, "/a%0Ab", "x")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a POST to /a%%0Ab: %s %q, want 400", resp.Status, body)
	}
	if n := s.hub(DefaultHubName).ContextCount(); n != 0 {
		t.Errorf("%d contexts after refused publishes, want none", n)
	}
}

// TestBatchLinesAreParsedStrictly: field names match exactly and each is
// given once, so that what a filter in front reads is what is published.
func TestBatchLinesAreParsedStrictly(t *testing.T) {
	s := startCaddy(t, "", "comet /*")
	for _, line := range []string{
		`{"CONTEXT":"/a","data":"x"}`,
		`{"context":"/a","DATA":"x"}`,
		`{"context":"/a","Content_Type":"text/plain","data":"x"}`,
		`{"context":"/a","context":"/b","data":"x"}`,
		`{"context":"/a","data":"x","data":"y"}`,
	} {
		for _, url := range []string{s.admin + "/comet/publish", s.base + "/a"} {
			resp, _, text := postBatch(t, url, batchOf(`{"context":"/a","data":"fine"}`, line))
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(text, "line 2") {
				t.Errorf("%s to %s: %s %q, want 400 naming line 2", line, url, resp.Status, text)
			}
		}
	}
	if n := s.hub(DefaultHubName).ContextCount(); n != 0 {
		t.Errorf("%d contexts after refused batches, want none", n)
	}
}
