package comet

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/chromedp/chromedp"
	"github.com/go-jose/go-jose/v4"
)

// startBrowser starts Debian's headless Chromium for the test. Without it
// the test fails where COMET_REQUIRE_BROWSER is set (.ci/run sets it) and
// is skipped elsewhere.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("COMET_REQUIRE_BROWSER") != "" {
			t.Fatal("chromium is not installed, and COMET_REQUIRE_BROWSER says the browser tests must run")
		}
		t.Skip("chromium is not installed (apt-get install chromium); skipping the browser tests")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser); err != nil { // start the browser now
		t.Fatalf("starting chromium: %v", err)
	}
	return browser
}

// page opens a tab of the browser at url.
func page(t *testing.T, browser context.Context, url string) context.Context {
	t.Helper()
	tab, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	if err := chromedp.Do(tab, chromedp.Navigate(url)); err != nil {
		t.Fatalf("opening %s: %v", url, err)
	}
	return tab
}

// act runs browser actions in the tab, failing the test if they do not
// finish within ten seconds rather than hanging it.
func act(t *testing.T, tab context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// runJS runs a JavaScript statement in the tab.
func runJS(t *testing.T, tab context.Context, what, statement string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[string](statement+"; 'done'")); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// waitJS polls a JavaScript expression in the tab until it returns want.
func waitJS(t *testing.T, tab context.Context, what, expr, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(tab, 5*time.Second)
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		cancel()
		if err == nil && v == want {
			return
		}
		got = v
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %s is %q after %v, want %q", what, expr, got, timeout, want)
}

// screenshots keeps pictures of the sample pages for a person to look at.
type screenshots struct {
	t   *testing.T
	dir string
}

func newScreenshots(t *testing.T) *screenshots {
	dir, err := os.MkdirTemp("", "comet-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return &screenshots{t: t, dir: dir}
}

func (s *screenshots) take(tab context.Context, name string) {
	s.t.Helper()
	png, err := chromedp.Run(tab, chromedp.CaptureScreenshot())
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, name+".png"), png, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

const countJS = `document.getElementById('count').textContent`

// TestCounterInTheBrowser drives the seed's count-clicker in two pages of a
// real Chromium: a click in one shows in both, across a config reload and
// across a server restart.
func TestCounterInTheBrowser(t *testing.T) {
	browser := startBrowser(t)
	s, cfg := startExample(t)
	shots := newScreenshots(t)

	a, b := page(t, browser, s.base+"/"), page(t, browser, s.base+"/")
	for _, tab := range []context.Context{a, b} {
		waitJS(t, tab, "the page to show the count", countJS, "0", 10*time.Second)
	}
	waitFor(t, "both pages to long-poll", func() bool { return s.hub(DefaultHubName).SubscriberCount() == 2 })
	click := func(tab context.Context, want string) {
		t.Helper()
		act(t, tab, "clicking", chromedp.Click("#increment"))
		waitJS(t, a, "page A after the click", countJS, want, 10*time.Second)
		waitJS(t, b, "page B after the click", countJS, want, 10*time.Second)
	}
	click(a, "1")
	click(b, "2")
	shots.take(a, "counter-a")
	shots.take(b, "counter-b")

	// A reload keeps the hub: the pages go on as if nothing happened.
	reloaded := bytes.Replace(cfg, []byte(`"expiration":150000000000`), []byte(`"expiration":149000000000`), 1)
	if bytes.Equal(reloaded, cfg) {
		t.Fatal("could not change the config to reload it")
	}
	resp, err := http.Post(s.admin+"/load", "application/json", bytes.NewReader(reloaded))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("reload: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	click(a, "3")

	// A restart loses an in-process hub: the pages reconnect by themselves,
	// are told their cursor is from an earlier lifetime, and show the
	// server's count, which then goes on from there.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	// They were told to come back in 5s (Retry-After), give or take jitter.
	for _, tab := range []context.Context{a, b} {
		waitJS(t, tab, "the page after the restart", countJS, "0", 20*time.Second)
	}
	click(b, "1")
	shots.take(b, "counter-after-restart")
}

// TestChatInTheBrowser sends messages from two pages of the chat sample in
// turn: both pages show all of them, in order.
func TestChatInTheBrowser(t *testing.T) {
	browser := startBrowser(t)
	s, _ := startExample(t)
	shots := newScreenshots(t)

	tabs := map[string]context.Context{"ada": page(t, browser, s.base+"/chat/"), "bob": page(t, browser, s.base+"/chat/")}
	waitFor(t, "both pages to join the lobby", func() bool {
		info, ok := s.hub(DefaultHubName).Inspect("/rooms/lobby")
		return ok && info.Subscribers == 2
	})
	for name, tab := range tabs {
		act(t, tab, "typing a name", chromedp.SendKeys("#name", name))
		waitJS(t, tab, name+"'s transport", `String(window.chatTransport())`, "websocket", 5*time.Second)
	}
	var want []string
	for i := range 6 {
		name := []string{"ada", "bob"}[i%2]
		text := fmt.Sprintf("message %d", i)
		want = append(want, name+text)
		// Fill the field and submit the form as the Send button does; the
		// page's own submit handler publishes.
		runJS(t, tabs[name], "sending "+text,
			fmt.Sprintf(`document.getElementById('text').value = %q; document.getElementById('send').requestSubmit()`, text))
		// Wait for it to arrive before the next, so that the order the
		// pages show is the order the messages were sent in.
		for who, tab := range tabs {
			waitJS(t, tab, who+"'s page", `String(document.querySelectorAll('#messages .message').length)`, fmt.Sprint(i+1), 10*time.Second)
		}
	}
	shown := `Array.from(document.querySelectorAll('#messages .message')).map(li => li.textContent).join('|')`
	for who, tab := range tabs {
		waitJS(t, tab, who+"'s page", shown, strings.Join(want, "|"), 5*time.Second)
	}
	shots.take(tabs["ada"], "chat-ada")
	shots.take(tabs["bob"], "chat-bob")

	// A newcomer gets the room's history.
	late := page(t, browser, s.base+"/chat/")
	waitJS(t, late, "a newcomer's page", shown, strings.Join(want, "|"), 10*time.Second)

	// A publish sent twice with one idempotency key is published once,
	// and both resolve with its receipt.
	runJS(t, late, "publishing twice with one key", `(async () => {
		const once = () => Comet.publish('/rooms/retried', 'once', { idempotencyKey: 'retry-1' });
		const [a, b] = [await once(), await once()];
		window.retried = a.cursor === b.cursor ? 'same ' + a.id : 'differ';
	})()`)
	waitJS(t, late, "both publishes' receipts", `String(window.retried)`, "same 1", 5*time.Second)
	if info, ok := s.hub(DefaultHubName).Inspect("/rooms/retried"); !ok || info.Cursor.ID != 1 {
		t.Errorf("/rooms/retried holds %+v after a publish and its retry, want one event", info)
	}
}

// TestSeveralRoomsInTheBrowser opens the chat's page that follows every
// room on one connection, and subscribes from the page to two rooms by
// long poll, one from a cursor of an epoch gone: events land in their
// rooms, and the gap is told for its room only.
func TestSeveralRoomsInTheBrowser(t *testing.T) {
	browser := startBrowser(t)
	s, _ := startExample(t)
	hub := s.hub(DefaultHubName)
	s.publishAs("/rooms/lobby", "application/json", `{"name":"ada","text":"early"}`)
	tab := page(t, browser, s.base+"/chat/together.html")
	waitFor(t, "the page to follow three rooms", func() bool {
		for _, room := range []string{"lobby", "games", "music"} {
			if info, ok := hub.Inspect("/rooms/" + room); !ok || info.Subscribers != 1 {
				return false
			}
		}
		return true
	})
	s.publishAs("/rooms/games", "application/json", `{"name":"bob","text":"to games"}`)
	s.publishAs("/rooms/music", "application/json", `{"name":"ada","text":"to music"}`)
	shown := func(room string) string {
		return fmt.Sprintf(`Array.from(document.querySelectorAll('ul[data-room="%s"] li')).map(li => li.textContent).join('|')`, room)
	}
	waitJS(t, tab, "the lobby, with its history", shown("lobby"), "adaearly", 10*time.Second)
	waitJS(t, tab, "games", shown("games"), "bobto games", 10*time.Second)
	waitJS(t, tab, "music", shown("music"), "adato music", 10*time.Second)
	newScreenshots(t).take(tab, "chat-together")

	music := s.position("/rooms/music")
	runJS(t, tab, "subscribing by long poll", fmt.Sprintf(`window.got = []; Comet.subscribe(['/together?room=lobby', '/together?room=music'], {
		transport: 'longpoll', lastEventId: 'zzzzzzzzzz:3,%s',
		onEvent(e) { window.got.push(e.context + ' ' + JSON.parse(e.data).text); },
		onGap(missed, context) { window.got.push(context + ' missed ' + missed); },
	})`, music))
	waitJS(t, tab, "the lobby's gap and history", `window.got.join('|')`, "/rooms/lobby missed unknown|/rooms/lobby early", 10*time.Second)
	s.publishAs("/rooms/music", "application/json", `{"name":"bob","text":"again"}`)
	waitJS(t, tab, "music's next event", `window.got.slice(2).join('|')`, "/rooms/music again", 10*time.Second)

	// The same over one WebSocket, whose cursor the client keeps for
	// both contexts across a reconnection.
	music = s.position("/rooms/music")
	runJS(t, tab, "subscribing by WebSocket", fmt.Sprintf(`window.gotWS = []; window.wsSub = Comet.subscribe(['/together?room=lobby', '/together?room=music'], {
		transport: 'websocket', lastEventId: 'zzzzzzzzzz:3,%s',
		onEvent(e) { window.gotWS.push(e.context + ' ' + JSON.parse(e.data).text); },
		onGap(missed, context) { window.gotWS.push(context + ' missed ' + missed); },
	})`, music))
	waitJS(t, tab, "the socket's transport", `window.wsSub.transport`, "websocket", 10*time.Second)
	waitJS(t, tab, "the lobby's gap and history, over WebSocket", `window.gotWS.join('|')`, "/rooms/lobby missed unknown|/rooms/lobby early", 10*time.Second)
	s.publishAs("/rooms/music", "application/json", `{"name":"bob","text":"over the socket"}`)
	waitJS(t, tab, "music's next event, over WebSocket", `window.gotWS.slice(2).join('|')`, "/rooms/music over the socket", 10*time.Second)
	lobby := s.position("/rooms/lobby")
	waitJS(t, tab, "the cursor of both rooms", `window.wsSub.cursor`, lobby+","+s.position("/rooms/music"), 10*time.Second)
}

// TestTokensInTheBrowser subscribes from a page of a real Chromium to a
// route that requires tokens, by SSE (EventSource, so the token goes in
// the cookie) and by long poll (Authorization), with a token function
// that hands out a short-lived token, then a fresh one, which the test
// holds back until it has published. When the first expires, the client
// asks for the second and resumes from its cursor: the event published
// while it was away arrives, in order, nothing missed.
func TestTokensInTheBrowser(t *testing.T) {
	browser := startBrowser(t)
	t.Setenv("COMET_TEST_KEY", testSecret)
	client, err := filepath.Abs("client")
	if err != nil {
		t.Fatal(err)
	}
	pages := t.TempDir()
	if err := os.WriteFile(filepath.Join(pages, "index.html"), []byte(`<!doctype html>
<script src="/client/comet.js"></script>
<script>
  window.got = [];
  window.tokensAsked = 0;
  window.start = (path, transport) => Comet.subscribe(path, {
    transport,
    // The first token at once; the next when the test releases it.
    token: () => ++window.tokensAsked === 1 ? window.tokens[0]
      : new Promise((resolve) => { window.release = () => resolve(window.tokens[1]); }),
    onEvent: (e) => window.got.push(e.data),
  });
</script>`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startCaddy(t, "", fmt.Sprintf(`handle_path /client/* {
		root * %s
		file_server
	}
	comet /private/* {
		auth subscribe {
			hmac_secret {env.COMET_TEST_KEY}
		}
		heartbeat off
	}
	root * %s
	file_server`, client, pages))
	hub := s.hub(DefaultHubName)
	tab := page(t, browser, s.base+"/")

	for _, tc := range []struct{ transport, context string }{
		{"sse", "/private/sse"},
		{"longpoll", "/private/poll"},
		{"websocket", "/private/ws"},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			short := mint(t, []byte(testSecret), jose.HS256, "alice", 1500*time.Millisecond, grants{Subscribe: []string{tc.context}})
			fresh := mint(t, []byte(testSecret), jose.HS256, "alice", time.Hour, grants{Subscribe: []string{tc.context}})
			runJS(t, tab, "starting", fmt.Sprintf(`window.got = []; window.tokensAsked = 0; window.tokens = [%q, %q];
				window.sub = window.start(%q, %q)`, short, fresh, tc.context, tc.transport))
			waitFor(t, "the page to subscribe", func() bool {
				info, ok := hub.Inspect(tc.context)
				return ok && info.Subscribers == 1
			})
			// Without a cursor, a long poll starts with HEAD, then parks.
			time.Sleep(100 * time.Millisecond)
			if _, err := hub.Publish(tc.context, Event{Data: []byte("one")}); err != nil {
				t.Fatal(err)
			}
			waitJS(t, tab, "the first event", `window.got.join(',')`, "one", 10*time.Second)

			// The short token expires: the stream is ended, or the poll
			// answered and its next one refused, and the page asks for a
			// fresh token, which the test holds back while it publishes.
			waitJS(t, tab, "the page to ask for a fresh token", `String(window.tokensAsked)`, "2", 10*time.Second)
			waitFor(t, "the short token's subscription to end", func() bool {
				info, _ := hub.Inspect(tc.context)
				return info.Subscribers == 0
			})
			if _, err := hub.Publish(tc.context, Event{Data: []byte("two")}); err != nil {
				t.Fatal(err)
			}
			runJS(t, tab, "handing the fresh token over", `window.release()`)
			waitJS(t, tab, "the event published while away", `window.got.join(',')`, "one,two", 10*time.Second)
			waitFor(t, "the page to come back", func() bool {
				info, _ := hub.Inspect(tc.context)
				return info.Subscribers == 1
			})
			if _, err := hub.Publish(tc.context, Event{Data: []byte("three")}); err != nil {
				t.Fatal(err)
			}
			waitJS(t, tab, "every event, in order", `window.got.join(',')`, "one,two,three", 10*time.Second)
			waitJS(t, tab, "the tokens asked for", `String(window.tokensAsked)`, "2", time.Second)
			runJS(t, tab, "closing", `window.sub.close()`)
		})
	}
}

// TestWebSocketInTheBrowser subscribes Chromium over WebSocket, and over
// the fallbacks where the route does not serve it: SSE, then long poll.
func TestWebSocketInTheBrowser(t *testing.T) {
	browser := startBrowser(t)
	client, err := filepath.Abs("client")
	if err != nil {
		t.Fatal(err)
	}
	pages := t.TempDir()
	if err := os.WriteFile(filepath.Join(pages, "index.html"), []byte(`<!doctype html>
<script src="/client/comet.js"></script>
<script>
  window.got = {};
  window.subs = {};
  window.sockets = 0;
  const OwnWebSocket = WebSocket;
  window.WebSocket = function (url) { window.sockets++; return new OwnWebSocket(url); };
  window.start = (path) => {
    window.got[path] = [];
    window.subs[path] = Comet.subscribe(path, {
      transport: 'websocket',
      onEvent: (e) => window.got[path].push(e.data + '@' + e.id),
    });
  };
</script>`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startCaddy(t, "", fmt.Sprintf(`handle_path /client/* {
		root * %s
		file_server
	}
	comet /ws/*
	comet /sse/* {
		transports sse longpoll
	}
	comet /poll/* {
		transports longpoll
	}
	comet /expiring/* {
		expiration 400ms
	}
	root * %s
	file_server`, client, pages))
	hub := s.hub(DefaultHubName)
	tab := page(t, browser, s.base+"/")

	for _, tc := range []struct{ path, transport string }{
		{"/ws/a", "websocket"},
		{"/sse/a", "sse"},
		{"/poll/a", "longpoll"},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			runJS(t, tab, "subscribing", fmt.Sprintf(`window.start(%q)`, tc.path))
			waitJS(t, tab, "the transport", fmt.Sprintf(`window.subs[%q].transport`, tc.path), tc.transport, 10*time.Second)
			waitFor(t, "the page to subscribe", func() bool {
				info, ok := hub.Inspect(tc.path)
				return ok && info.Subscribers == 1
			})
			time.Sleep(100 * time.Millisecond) // a long poll starts with HEAD
			for _, d := range []string{"one", "two"} {
				if _, err := hub.Publish(tc.path, Event{Data: []byte(d)}); err != nil {
					t.Fatal(err)
				}
			}
			want := "one@1,two@2"
			waitJS(t, tab, "the events", fmt.Sprintf(`window.got[%q].join(',')`, tc.path), want, 10*time.Second)
		})
	}

	// A socket the server closes (at its expiration, here) comes back
	// from its cursor: nothing published meanwhile is missed.
	runJS(t, tab, "subscribing", `window.start('/expiring/a')`)
	waitJS(t, tab, "the socket", `String(window.sockets)`, "4", 10*time.Second) // one per subscription
	var want []string
	for i := range 6 {
		time.Sleep(150 * time.Millisecond)
		hub.Publish("/expiring/a", Event{Data: []byte(fmt.Sprint(i))})
		want = append(want, fmt.Sprintf("%d@%d", i, i+1))
	}
	waitJS(t, tab, "every event across reconnections", `window.got['/expiring/a'].join(',')`, strings.Join(want, ","), 10*time.Second)
	sockets, err := chromedp.Run(tab, chromedp.Evaluate[string](`String(window.sockets)`))
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(sockets); n < 5 {
		t.Errorf("%s sockets in all: the expiring one did not reconnect", sockets)
	}
}
