#!/usr/bin/env bash
# Issue 20's cluster scenarios, on loopback: three Caddy nodes sharing one
# redis-server, with one load-tool process per node (each under the
# 20,000 open files of a process), then one node without Redis for
# comparison.
#   A. all at once: N subscribers on each node follow one context; the
#      tool of node 1 publishes every event, the others only time them.
#   B. one node at a time: node i's N subscribers follow a context whose
#      events are published on another node, while the two other nodes
#      hold N idle subscribers each; the fan-out then costs what it
#      costs a node, not what three nodes fanning out on the same cores
#      do. Then the same without Redis (each node publishing its own).
#   C. sustained, many contexts: node i's N subscribers follow a third of
#      CONTEXTS contexts (default 10000), whose events another node
#      publishes at RATE a second (default 500) for DURATION (10s); each
#      node reports CPU per delivery, and the events and bytes it got
#      from Redis, which should be its third of the traffic.
# Usage:
#   [CONTEXTS=10000] [RATE=500] [DURATION=10s] bench/cluster.sh [subscribers per node] [transport]
#   (default 15000 sse). Phases: PHASES="A B C" (default all).
# Needs redis-server and ss. Stops by itself: every load tool has a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-15000}
transport=${2:-sse}
contexts=${CONTEXTS:-10000} rate=${RATE:-500} duration=${DURATION:-10s}
phases=${PHASES:-A B C}
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
		max_contexts 100000
		max_client_subscribers 100000
		$2
	}
}
http://127.0.0.1:$((9940 + $1)) {
	comet /bench* {
		expiration off
		heartbeat off
	}
	comet /many/* {
		expiration off
		heartbeat off
	}
}
CADDY
}
url() { echo "http://127.0.0.1:$((9940 + $1))$2"; }       # url <node> <path>
other() { echo $(($1 % 3 + 1)); }                           # the next node
received() { # received <node>: events the node's hub got from Redis
	curl -s "http://127.0.0.1:$((2040 + $1))/metrics" |
		awk '/^caddy_comet_broker_events_received_total/ { n += $2 } END { printf "%d", n }'
}
redis_bytes() { # redis_bytes <pid>: bytes the process received from Redis
	ss -tinpH state established '( dport = :6390 )' |
		awk -v pid="pid=$1," 'index($0, pid) { mine = 1; next } mine && /bytes_received/ {
			match($0, /bytes_received:[0-9]+/); n += substr($0, RSTART + 15, RLENGTH - 15); mine = 0 }
			END { printf "%d", n }'
}
attached() { until grep -q attached "$1" 2>/dev/null; do sleep 0.5; done; }

start_nodes() {
	caddy_pids=()
	for i in 1 2 3; do
		"$work/caddy" run --config "$work/node$i.Caddyfile" >"$work/caddy$i.log" 2>&1 &
		caddy_pids+=($!)
		pids+=($!)
	done
	sleep 2
}
stop_nodes() {
	for pid in "${caddy_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	sleep 1
}

redis-server --bind 127.0.0.1 --port 6390 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
sleep 0.5
for i in 1 2 3; do node "$i" "broker redis redis://127.0.0.1:6390/0"; done
base=(-subscribers "$n" -transport "$transport" -timeout 4m)

if [[ $phases == *A* ]]; then
	start_nodes
	for i in 2 3; do
		"$work/bench" -url "$(url "$i" /bench)" -publish=false "${base[@]}" \
			-events 10 -pid "${caddy_pids[$((i - 1))]}" >"$work/out$i" 2>"$work/err$i" &
		pids+=($!)
	done
	for i in 2 3; do attached "$work/err$i"; done
	"$work/bench" -url "$(url 1 /bench)" "${base[@]}" \
		-events 10 -interval 500ms -pid "${caddy_pids[0]}" >"$work/out1" 2>"$work/err1"
	wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
	for i in 1 2 3; do
		echo "=== A. all at once: node $i of 3 (redis), $n subscribers"
		cat "$work/out$i"
	done
	stop_nodes
fi

if [[ $phases == *B* ]]; then
	# With Redis, events are published on another node; without (the
	# same three nodes, each on its own), on the node itself.
	for mode in redis none; do
		for i in 1 2 3; do
			if [[ $mode == redis ]]; then node "$i" "broker redis redis://127.0.0.1:6390/0"; else node "$i" ""; fi
		done
		start_nodes
		for i in 1 2 3; do
			holders=()
			for j in 1 2 3; do
				[[ $j == "$i" ]] && continue
				# Idle: nothing is published to /bench/idle.
				"$work/bench" -url "$(url "$j" /bench/idle)" -publish=false "${base[@]}" -events 1 -timeout 2m \
					>/dev/null 2>"$work/idle$j" &
				holders+=($!)
				pids+=($!)
			done
			for j in 1 2 3; do [[ $j == "$i" ]] || attached "$work/idle$j"; done
			publisher=$i
			[[ $mode == redis ]] && publisher=$(other "$i")
			echo "=== B. one node at a time ($mode): node $i's $n subscribers, events published on node $publisher, $((2 * n)) idle on the others"
			"$work/bench" -url "$(url "$i" "/bench/n$i")" -publish-url "$(url "$publisher" "/bench/n$i")" "${base[@]}" \
				-events 10 -interval 500ms -pid "${caddy_pids[$((i - 1))]}"
			kill "${holders[@]}" 2>/dev/null || true
			wait "${holders[@]}" 2>/dev/null || true
		done
		stop_nodes
	done
	for i in 1 2 3; do node "$i" "broker redis redis://127.0.0.1:6390/0"; done
fi

if [[ $phases == *C* ]]; then
	start_nodes
	third=$(((contexts + 2) / 3))
	declare -A before_events before_bytes
	for i in 1 2 3; do
		before_events[$i]=$(received "$i")
		before_bytes[$i]=$(redis_bytes "${caddy_pids[$((i - 1))]}")
	done
	for i in 1 2 3; do
		"$work/bench" -url "$(url "$i" "/many/g$i")" -publish-url "$(url "$(other "$i")" "/many/g$i")" "${base[@]}" \
			-contexts "$third" -rate "$rate" -duration "$duration" -publishers 8 \
			-pid "${caddy_pids[$((i - 1))]}" >"$work/sustained$i" 2>&1 &
		pids+=($!)
	done
	wait "${pids[-1]}" "${pids[-2]}" "${pids[-3]}" 2>/dev/null || true
	published=0
	for i in 1 2 3; do
		published=$((published + $(sed -n 's/^rate asked.*: \([0-9]*\) events$/\1/p' "$work/sustained$i")))
	done
	for i in 1 2 3; do
		events=$(($(received "$i") - before_events[$i]))
		bytes=$(($(redis_bytes "${caddy_pids[$((i - 1))]}") - before_bytes[$i]))
		echo "=== C. sustained: node $i of 3 follows $third of $((3 * third)) contexts with $n subscribers; node $(other "$i") publishes them"
		cat "$work/sustained$i"
		echo "from redis           $events events, $((100 * events / (published > 0 ? published : 1)))% of the $published published to all nodes; $((bytes / 1024)) KiB"
	done
	stop_nodes
fi

node 4 ""
"$work/caddy" run --config "$work/node4.Caddyfile" >"$work/caddy4.log" 2>&1 &
single=$!
pids+=($single)
sleep 1.5
echo "=== one node without redis, $n subscribers"
"$work/bench" -url "$(url 4 /bench)" "${base[@]}" -events 10 -interval 500ms -pid "$single"
if [[ $phases == *C* ]]; then
	echo "=== one node without redis, sustained: $n subscribers over $third contexts"
	"$work/bench" -url "$(url 4 /many/g1)" "${base[@]}" -contexts "$third" -rate "$rate" -duration "$duration" \
		-publishers 8 -pid "$single"
fi
