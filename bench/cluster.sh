#!/usr/bin/env bash
# Issue 20's fan-out across nodes, on loopback: three Caddy nodes sharing
# one redis-server, N subscribers on each, one load-tool process per node
# (the first publishes to its node; the other two only subscribe and time
# each event by the publish time its payload carries), then the same load
# on one node without Redis, for comparison. Each node reports its memory
# and CPU per delivery. Usage:
#   bench/cluster.sh [subscribers per node] [transport]   (default 15000 sse)
# Needs redis-server. Stops by itself: every load tool has a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-15000}
transport=${2:-sse}
work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 20000
go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/bench" ./bench

node() { # node <i> <broker option>: writes node i's Caddyfile
	cat >"$work/node$1.Caddyfile" <<CADDY
{
	admin 127.0.0.1:$((2040 + $1))
	persist_config off
	log {
		level WARN
	}
	comet {
		history 1000
		$2
	}
}
http://127.0.0.1:$((9940 + $1)) {
	comet /bench {
		expiration off
		heartbeat off
	}
}
CADDY
}

redis-server --bind 127.0.0.1 --port 6390 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
sleep 0.5
caddy_pids=()
for i in 1 2 3; do
	node "$i" "broker redis redis://127.0.0.1:6390/0"
	"$work/caddy" run --config "$work/node$i.Caddyfile" >"$work/caddy$i.log" 2>&1 &
	caddy_pids+=($!)
	pids+=($!)
done
sleep 2
# Nodes 2 and 3: subscribers only.
for i in 2 3; do
	"$work/bench" -url "http://127.0.0.1:$((9940 + i))/bench" -publish=false -subscribers "$n" -transport "$transport" \
		-events 10 -pid "${caddy_pids[$((i - 1))]}" -timeout 4m >"$work/out$i" 2>"$work/err$i" &
	pids+=($!)
done
for i in 2 3; do
	until grep -q attached "$work/err$i" 2>/dev/null; do sleep 0.5; done
done
# Node 1: subscribers, and the publisher of every event.
"$work/bench" -url http://127.0.0.1:9941/bench -subscribers "$n" -transport "$transport" \
	-events 10 -interval 500ms -pid "${caddy_pids[0]}" -timeout 4m >"$work/out1" 2>"$work/err1"
wait "${pids[4]}" "${pids[5]}" 2>/dev/null || true
for i in 1 2 3; do
	echo "=== cluster: node $i of 3 (redis), $n subscribers"
	cat "$work/out$i"
done
for pid in "${caddy_pids[@]}"; do kill "$pid"; done
sleep 1

node 4 ""
"$work/caddy" run --config "$work/node4.Caddyfile" >"$work/caddy4.log" 2>&1 &
single=$!
pids+=($single)
sleep 1.5
echo "=== one node without redis, $n subscribers"
"$work/bench" -url http://127.0.0.1:9944/bench -subscribers "$n" -transport "$transport" \
	-events 10 -interval 500ms -pid "$single" -timeout 4m
