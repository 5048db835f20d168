#!/usr/bin/env bash
# Runs the load tool against comet (Caddy with bench/bench.Caddyfile) and
# Nchan (bench/nchan/run.sh), on loopback, each run on a freshly started
# server: runs x subscriber counts x transports x servers. Usage:
#   bench/compare.sh [runs] [subscribers...]     e.g. bench/compare.sh 3 10000 15000
# Needs Debian's nginx and libnginx-mod-nchan. Results go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
counts=("${@:-10000}")
work=$(mktemp -d)
trap 'pkill -f "nginx: master" 2>/dev/null || true; kill "${caddy_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/bench" ./bench

for n in "${counts[@]}"; do
	for transport in longpoll sse; do
		for run in $(seq "$runs"); do
			"$work/caddy" run --config bench/bench.Caddyfile >"$work/caddy.log" 2>&1 &
			caddy_pid=$!
			sleep 1.5
			"$work/bench" -protocol comet -url http://127.0.0.1:9911/bench -subscribers "$n" \
				-transport "$transport" -events 10 -interval 500ms -pid "$caddy_pid" -timeout 3m
			kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true

			bench/nchan/run.sh >"$work/nchan.log" 2>&1 &
			sleep 1.5
			"$work/bench" -protocol nchan -url http://127.0.0.1:9912/bench -subscribers "$n" \
				-transport "$transport" -events 10 -interval 500ms -pid "$(pgrep -d, -f 'nginx: worker process')" -timeout 3m
			pkill -f "nginx: master"; sleep 1
			echo "--- run $run done"
		done
	done
done
