#!/usr/bin/env bash
# Finds the highest publish rate each server sustains with p99 latency
# under 100 ms and nothing lost, by stepping the load tool's sustained
# scenario (-rate) through RATES, each step on a freshly started server,
# on loopback: comet (bench/bench.Caddyfile, /many/<k>) and Nchan
# (bench/nchan/run.sh), SUBSCRIBERS subscribers (default 10000) over
# CONTEXTS contexts (default 1000), for DURATION (default 10s) per step.
# A server's steps stop at its first failing rate. Usage:
#   [SUBSCRIBERS=10000] [CONTEXTS=1000] [DURATION=10s] [RATES="500 1000 ..."] bench/maxrate.sh [transports...]
#   e.g. bench/maxrate.sh sse longpoll
# Needs Debian's nginx and libnginx-mod-nchan. Results go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
transports=("${@:-sse}")
subscribers=${SUBSCRIBERS:-10000} contexts=${CONTEXTS:-1000} duration=${DURATION:-10s}
read -r -a rates <<<"${RATES:-500 1000 1500 2000 3000 4000 5000 6000 8000}"
work=$(mktemp -d)
trap 'pkill -f "nginx: master" 2>/dev/null || true; kill "${caddy_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/bench" ./bench
args=(-subscribers "$subscribers" -contexts "$contexts" -duration "$duration" -timeout 2m)

# step runs one rate against one server and prints its summary line.
step() {
	local server=$1 transport=$2 rate=$3
	if [ "$server" = comet ]; then
		"$work/caddy" run --config bench/bench.Caddyfile >"$work/caddy.log" 2>&1 &
		caddy_pid=$!
		sleep 1.5
		"$work/bench" -url http://127.0.0.1:9911/many -transport "$transport" -rate "$rate" "${args[@]}" -pid "$caddy_pid" | grep '^summary' || true
		kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true
	else
		bench/nchan/run.sh >"$work/nchan.log" 2>&1 &
		sleep 1.5
		"$work/bench" -protocol nchan -url http://127.0.0.1:9912/many -transport "$transport" -rate "$rate" "${args[@]}" \
			-pid "$(pgrep -d, -f 'nginx: worker process')" | grep '^summary' || true
		pkill -f "nginx: master"; sleep 1
	fi
}

echo "# summary <server> <transport> <contexts> <rate> <p99 ms> <lost> <deliveries/s> <µs CPU/delivery>"
for transport in "${transports[@]}"; do
	for server in comet nchan; do
		best=0
		for rate in "${rates[@]}"; do
			line=$(step "$server" "$transport" "$rate")
			echo "$line"
			read -r _ _ _ _ _ p99 lost _ _ <<<"$line"
			if [ -z "$line" ] || [ "$lost" != 0 ] || awk -v p="$p99" 'BEGIN { exit !(p >= 100) }'; then
				break
			fi
			best=$rate
		done
		echo "highest $server $transport: $best events/s with p99 < 100 ms and nothing lost"
	done
done
