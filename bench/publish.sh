#!/usr/bin/env bash
# Measures the publishing POST alone (issue 27, point 4): single POSTs at
# RATE a second (default 2000) for DURATION (default 10s), round-robin
# over CONTEXTS contexts (default 1000) with no subscriber, against the
# floor (bench/floor), comet (bench/bench.Caddyfile) and Nchan
# (bench/nchan/run.sh), each on a freshly started server, on loopback:
# runs x servers. It prints each run's server CPU time per publish (user
# and system, from /proc/<pid>/stat, over the publishing).
# Usage:
#   [RATE=2000] [CONTEXTS=1000] [DURATION=10s] bench/publish.sh [runs]
# Needs Debian's nginx and libnginx-mod-nchan. Results go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
rate=${RATE:-2000} contexts=${CONTEXTS:-1000} duration=${DURATION:-10s}
work=$(mktemp -d)
trap 'pkill -f "nginx: master" 2>/dev/null || true; kill "${caddy_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/comet" ./cmd/caddy
go build -o "$work/floor" ./bench/floor/caddy
go build -o "$work/bench" ./bench
args=(-subscribers 0 -rate "$rate" -contexts "$contexts" -duration "$duration" -timeout 2m)

for run in $(seq "$runs"); do
	for server in floor comet; do
		config=bench/bench.Caddyfile
		[ "$server" = floor ] && config=bench/floor.Caddyfile
		"$work/$server" run --config "$config" >"$work/$server.log" 2>&1 &
		caddy_pid=$!
		sleep 1.5
		"$work/bench" -server "$server" -url http://127.0.0.1:9911/many "${args[@]}" -pid "$caddy_pid" | grep '^summary-publish' || true
		kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true
	done
	bench/nchan/run.sh >"$work/nchan.log" 2>&1 &
	sleep 1.5
	"$work/bench" -protocol nchan -url http://127.0.0.1:9912/many "${args[@]}" \
		-pid "$(pgrep -d, -f 'nginx: worker process')" | grep '^summary-publish' || true
	pkill -f "nginx: master"; sleep 1
done
