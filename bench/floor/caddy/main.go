// Command caddy is Caddy with the standard modules and the floor handler
// (bench/floor), for bench/compare.sh's floor runs.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-comet/comet/bench/floor"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
