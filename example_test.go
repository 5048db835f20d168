package comet_test

import (
	"context"
	"fmt"

	"github.com/caddy-comet/comet"
	"github.com/caddyserver/caddy/v2"
)

// A hub of one's own, for a program that embeds the hub without Caddy's
// HTTP side: subscribe, publish, and read by cursor.
func ExampleNewHub() {
	hub := comet.NewHub("example", comet.HubConfig{History: 10}, nil) // nil: no broker, in-process
	defer hub.Close()

	sub, err := hub.Subscribe("/news")
	if err != nil {
		panic(err)
	}
	defer sub.Close()

	for _, headline := range []string{"first", "second"} {
		if _, err := hub.Publish("/news", comet.Event{ContentType: "text/plain", Data: []byte(headline)}); err != nil {
			panic(err)
		}
	}

	// Read both events by cursor: each delivery moves the cursor on.
	cur := sub.Start()
	for range 2 {
		d, err := sub.Next(context.Background(), cur)
		if err != nil {
			panic(err)
		}
		fmt.Println(d.Event.ID, string(d.Event.Data))
		cur = d.Cursor
	}
	// Output:
	// 1 first
	// 2 second
}

// Another Caddy module, or a program embedding Caddy, finds a running hub by
// name and publishes to it; HTTP subscribers of that context get the event.
func ExampleLookupHub() {
	config := `{
		"admin": {"disabled": true},
		"logging": {"logs": {"default": {"level": "ERROR"}}},
		"apps": {"comet": {"hubs": {"prices": {"history": 50}}}}
	}`
	if err := caddy.Load([]byte(config), true); err != nil {
		panic(err)
	}
	defer caddy.Stop()

	hub, ok := comet.LookupHub("prices")
	if !ok {
		panic("hub not running")
	}
	receipt, err := hub.Publish("/prices/acme", comet.Event{ContentType: "application/json", Data: []byte(`{"price":42}`)})
	if err != nil {
		panic(err)
	}
	info, _ := hub.Inspect("/prices/acme")
	fmt.Println(receipt.Cursor.ID, info.History)
	// Output: 1 1
}
