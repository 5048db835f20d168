#!/usr/bin/env bash
# Runs the load tool's sustained scenario (-rate) against comet
# (bench/bench.Caddyfile, /many/<k>) and Nchan (bench/nchan/run.sh), each
# run on a freshly started server, on loopback: runs x context counts x
# transports x servers, SUBSCRIBERS subscribers (default 10000) spread
# over the contexts, RATE events a second (default 2000) for DURATION
# (default 10s). Usage:
#   [SUBSCRIBERS=10000] [RATE=2000] [DURATION=10s] [TRANSPORTS="longpoll sse"] bench/sustained.sh [runs] [contexts...]
#   e.g. bench/sustained.sh 3 1000 10000
# Needs Debian's nginx and libnginx-mod-nchan. Results go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
counts=("${@:-1000}")
subscribers=${SUBSCRIBERS:-10000} rate=${RATE:-2000} duration=${DURATION:-10s}
read -r -a transports <<<"${TRANSPORTS:-longpoll sse}"
work=$(mktemp -d)
trap 'pkill -f "nginx: master" 2>/dev/null || true; kill "${caddy_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/bench" ./bench
args=(-subscribers "$subscribers" -rate "$rate" -duration "$duration" -timeout 5m)

for contexts in "${counts[@]}"; do
	for transport in "${transports[@]}"; do
		for run in $(seq "$runs"); do
			"$work/caddy" run --config bench/bench.Caddyfile >"$work/caddy.log" 2>&1 &
			caddy_pid=$!
			sleep 1.5
			"$work/bench" -url http://127.0.0.1:9911/many -contexts "$contexts" -transport "$transport" "${args[@]}" -pid "$caddy_pid"
			kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true

			bench/nchan/run.sh >"$work/nchan.log" 2>&1 &
			sleep 1.5
			"$work/bench" -protocol nchan -url http://127.0.0.1:9912/many -contexts "$contexts" -transport "$transport" "${args[@]}" \
				-pid "$(pgrep -d, -f 'nginx: worker process')"
			pkill -f "nginx: master"; sleep 1
			echo "--- run $run done"
		done
	done
done
