package comet

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestAdapt pins the JSON each Caddyfile form produces: JSON users and
// Caddyfile users must get the same module.
func TestAdapt(t *testing.T) {
	for _, tc := range []struct {
		name, caddyfile, want string
	}{
		{
			name:      "bare directive, no global option",
			caddyfile: ":8080 {\n\tcomet\n}",
			want: `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[
				{"handle":[{"handler":"comet"}]}]}}}}}`,
		},
		{
			name: "ordered after header and before respond without an order option",
			caddyfile: `:8080 {
	respond "fallback"
	comet /lp {
		expiration 150s
	}
	header /lp >X-JSON ` + "`\\{\"counter\":{comet.event.id}\\}`" + `
}`,
			want: `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[
				{"match":[{"path":["/lp"]}],"handle":[
					{"handler":"headers","response":{"deferred":true,"set":{"X-Json":["\\{\"counter\":{comet.event.id}\\}"]}}},
					{"expiration":150000000000,"handler":"comet"}]},
				{"handle":[{"body":"fallback","handler":"static_response"}]}]}}}}}`,
		},
		{
			name: "every option",
			caddyfile: `{
	comet {
		history 50 1m
		max_contexts 10
		max_subscribers 20
		max_client_subscribers 7
		idempotency_window 1h
		idempotency_keys 5000
		health_interval 250ms
	}
	comet chat {
		history 5
	}
}
:8080 {
	comet /chat/* {
		hub chat
		context room-{query.room}
		expiration off
		publish off
		max_message_size 1MiB
		max_batch_size 4MiB
		max_batch_events 500
		heartbeat 20s
		transports sse stream
		write_timeout 5s
		detach off
	}
}`,
			want: `{"apps":{
				"comet":{"hubs":{
					"chat":{"history":5},
					"default":{"history":50,"history_max_age":60000000000,"max_contexts":10,"max_subscribers":20,"max_client_subscribers":7,"idempotency_window":3600000000000,"idempotency_keys":5000,"health_interval":250000000}}},
				"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[
					{"match":[{"path":["/chat/*"]}],"handle":[{"context":"room-{http.request.uri.query.room}","detach":false,"expiration":-1,
					"handler":"comet","heartbeat":20000000000,"hub":"chat","max_batch_events":500,"max_batch_size":4194304,"max_message_size":1048576,"publish":false,
					"transports":["sse","stream"],"write_timeout":5000000000}]}]}}}}}`,
		},
		{
			name: "redis broker, short and long forms",
			caddyfile: `{
	comet {
		broker redis redis://127.0.0.1:6379/0
	}
	comet shared {
		broker redis {
			addresses 10.0.0.1:6379 10.0.0.2:6379
			master_name main
			username comet
			password {env.REDIS_PASSWORD}
			tls
			key_prefix app1:
		}
	}
}
:8080 {
	comet
}`,
			want: `{"apps":{
				"comet":{"hubs":{
					"default":{"broker":{"redis":{"url":"redis://127.0.0.1:6379/0"}}},
					"shared":{"broker":{"redis":{"addresses":["10.0.0.1:6379","10.0.0.2:6379"],"master_name":"main",
						"username":"comet","password":"{env.REDIS_PASSWORD}","tls":true,"key_prefix":"app1:"}}}}},
				"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[{"handle":[{"handler":"comet"}]}]}}}}}`,
		},
		{
			name:      "publish on is explicit",
			caddyfile: ":8080 {\n\tcomet {\n\t\tpublish on\n\t}\n}",
			want: `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[
				{"handle":[{"handler":"comet","publish":true}]}]}}}}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.caddyfile), nil)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := compactJSON(t, got), compactJSON(t, []byte(tc.want)); g != w {
				t.Errorf("adapted to\n%s\nwant\n%s", g, w)
			}
		})
	}
}

func compactJSON(t *testing.T, in []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, in); err != nil {
		t.Fatalf("%v in %s", err, in)
	}
	return buf.String()
}

// TestAdaptErrors checks that bad config fails with the file, the line and
// a message that says what is wrong.
func TestAdaptErrors(t *testing.T) {
	for _, tc := range []struct {
		caddyfile, want string
	}{
		{":8080 {\n\tcomet {\n\t\tfrobnicate yes\n\t}\n}", `Caddyfile:3`},
		{":8080 {\n\tcomet {\n\t\texpiration soon\n\t}\n}", `Caddyfile:3`},
		{":8080 {\n\tcomet {\n\t\texpiration 0s\n\t}\n}", `expiration must be a positive duration or off`},
		{":8080 {\n\tcomet {\n\t\tpublish maybe\n\t}\n}", `publish must be on or off`},
		{":8080 {\n\tcomet {\n\t\tmax_message_size lots\n\t}\n}", `max_message_size must be a positive size`},
		{":8080 {\n\tcomet {\n\t\tcontext\n\t}\n}", `Caddyfile:3`},
		{":8080 {\n\tcomet {\n\t\thub a b\n\t}\n}", `Caddyfile:3`},
		{":8080 {\n\tcomet extra-arg\n}", `Caddyfile:2`},
		{":8080 {\n\tcomet {\n\t\theartbeat 0s\n\t}\n}", `heartbeat must be a positive duration or off`},
		{":8080 {\n\tcomet {\n\t\ttransports sse carrier-pigeon\n\t}\n}", `unknown transport "carrier-pigeon"`},
		{":8080 {\n\tcomet {\n\t\ttransports\n\t}\n}", `Caddyfile:3`},
		{":8080 {\n\tcomet {\n\t\twrite_timeout off\n\t}\n}", `write_timeout must be a positive duration`},
		{":8080 {\n\tcomet {\n\t\thub chta\n\t}\n}", `comet hub "chta" is not configured`},
		{"{\n\tcomet {\n\t\thistory\n\t}\n}\n:8080", `Caddyfile:3`},
		{"{\n\tcomet {\n\t\thistory 0\n\t}\n}\n:8080", `history count must be a whole number of at least 1`},
		{"{\n\tcomet {\n\t\thistory 10 -1s\n\t}\n}\n:8080", `history max age must be a positive duration`},
		{"{\n\tcomet {\n\t\tmax_contexts -3\n\t}\n}\n:8080", `max_contexts must be a whole number of at least 1`},
		{"{\n\tcomet {\n\t\tmax_subscribers many\n\t}\n}\n:8080", `Caddyfile:3`},
		{"{\n\tcomet {\n\t\thistroy 5\n\t}\n}\n:8080", `unrecognized comet global option "histroy"`},
		{"{\n\tcomet {\n\t}\n\tcomet {\n\t}\n}\n:8080", `comet hub "default" is configured twice`},
		{"{\n\tcomet a b {\n\t}\n}\n:8080", `Caddyfile:2`},
		{"{\n\tcomet {\n\t\tbroker memcached x\n\t}\n}\n:8080", `unknown broker "memcached": want redis`},
		{"{\n\tcomet {\n\t\tbroker redis\n\t}\n}\n:8080", `redis broker needs a URL or addresses`},
		{"{\n\tcomet {\n\t\tbroker\n\t}\n}\n:8080", `Caddyfile:3`},
		{"{\n\tcomet {\n\t\tbroker redis redis://x {\n\t\t\tfrob 1\n\t\t}\n\t}\n}\n:8080", `Caddyfile:4`},
		{"{\n\tcomet {\n\t\tbroker redis redis://x {\n\t\t\ttls yes\n\t\t}\n\t}\n}\n:8080", `Caddyfile:4`},
	} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.caddyfile), map[string]any{"filename": "Caddyfile"})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("adapting\n%s\ngave error %v, want one containing %q", tc.caddyfile, err, tc.want)
		}
	}
}

// TestValidateJSON checks that JSON config, which has no Caddyfile parser
// in front of it, is still checked by caddy validate.
func TestValidateJSON(t *testing.T) {
	for _, tc := range []struct {
		config, want string
	}{
		{`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"comet","max_message_size":-1}]}]}}}}}`,
			"max_message_size must not be negative"},
		{`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"comet","hub":"nope"}]}]}}}}}`,
			`hub "nope" is not configured`},
		{`{"apps":{"comet":{"hubs":{"default":{"history":-1}}}}}`, "history must not be negative"},
		{`{"apps":{"comet":{"hubs":{"default":{"broker":{}}}}}}`, "broker needs a kind: redis"},
		{`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"comet","transports":["smoke"]}]}]}}}}}`,
			`unknown transport "smoke"`},
		{`{"apps":{"comet":{"hubs":{"default":{"max_subscribers":-1}}}}}`, "max_subscribers must not be negative"},
		{`{"apps":{"comet":{"hubs":{"default":{"max_client_subscribers":-1}}}}}`, "max_client_subscribers must not be negative"},
		{`{"apps":{"comet":{"hubs":{"default":{"idempotency_keys":-1}}}}}`, "idempotency_keys must not be negative"},
		{`{"apps":{"comet":{"hubs":{"default":{"health_interval":-1}}}}}`, "health_interval must not be negative"},
		{`{"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],"routes":[{"handle":[{"handler":"comet","max_batch_events":-1}]}]}}}}}`,
			"max_batch_size and max_batch_events must not be negative"},
		// Bad bounds fail before the hub is made and its Redis dialled:
		// nothing listens on port 1.
		{`{"apps":{"comet":{"hubs":{"default":{"history":-1,"broker":{"redis":{"url":"redis://127.0.0.1:1"}}}}}}}`,
			"history must not be negative"},
	} {
		var cfg caddy.Config
		if err := json.Unmarshal([]byte(tc.config), &cfg); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(&cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validating %s gave %v, want an error containing %q", tc.config, err, tc.want)
		}
	}
}

// FuzzCaddyfile feeds arbitrary tokens to both parsers: they must return
// an error or a value, never panic, and whatever they accept must marshal.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"comet", "comet {\n}", "comet {\n\texpiration off\n\tpublish on\n}",
		"comet {\n\tcontext {path}\n\tmax_message_size 1MiB\n\thub x\n}",
		"comet {\n\texpiration -5s\n}", "comet {\n\tmax_message_size 99999999999999999999EiB\n}",
		"comet {\n\theartbeat off\n\ttransports longpoll sse stream\n\twrite_timeout 1s\n}", "comet {\n\ttransports\n}",
		"comet x {\n\thistory 5 1m\n\tmax_contexts 1\n\tmax_subscribers 2\n}",
		"comet {\n\thistory 1 2 3\n}", "comet {\n\tbroker redis redis://h {\n\t\ttls\n\t\taddresses a b\n\t}\n}", "comet {\n\thistory 9999999999999999999999\n}", "comet {{}}", "comet \"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil {
			if _, err := json.Marshal(h); err != nil {
				t.Fatalf("accepted handler does not marshal: %v", err)
			}
			if h.MaxMessageSize < 0 || (h.Expiration < 0 && h.Expiration != -1) {
				t.Fatalf("accepted impossible values: %+v", h)
			}
		}
		if app, err := parseGlobalOption(caddyfile.NewTestDispenser(input), nil); err == nil {
			if _, err := json.Marshal(app); err != nil {
				t.Fatalf("accepted option does not marshal: %v", err)
			}
		}
	})
}
