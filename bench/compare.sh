#!/usr/bin/env bash
# Runs the load tool against the floor (a trivial Caddy handler,
# bench/floor, with bench/floor.Caddyfile or bench/floor-tls.Caddyfile),
# comet (Caddy with bench/bench.Caddyfile, or bench/tls.Caddyfile over
# HTTPS) and Nchan (bench/nchan/run.sh), on loopback, each run on a freshly
# started server: runs x subscriber counts x modes x transports x servers.
# Usage:
#   [MODES="plain tls h2 h3"] [TRANSPORTS="longpoll sse websocket"] bench/compare.sh [runs] [subscribers...]
#   e.g. bench/compare.sh 3 10000 15000; MODES="tls h2" bench/compare.sh 3 5000 10000
# Modes: plain (HTTP/1.1), tls (HTTP/1.1 over TLS), h2 (HTTP/2 over TLS,
# one connection per subscriber), h3 (HTTP/3, one QUIC connection per
# subscriber; comet only: Debian's nginx has no HTTP/3), auth (plaintext,
# comet with every request carrying a token, bench/auth.Caddyfile, beside
# comet without, instead of Nchan); default plain.
# The TLS modes use a self-signed certificate made for the run. Needs Debian's nginx and
# libnginx-mod-nchan, and openssl for the TLS modes. Results go to
# standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
counts=("${@:-10000}")
read -r -a modes <<<"${MODES:-plain}"
work=$(mktemp -d)
trap 'pkill -f "nginx: master" 2>/dev/null || true; kill "${caddy_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/floor" ./bench/floor/caddy
go build -o "$work/bench" ./bench

export BENCH_CERT=$work/cert.pem BENCH_KEY=$work/key.pem
for mode in "${modes[@]}"; do
	case $mode in
	tls | h2 | h3)
		[ -f "$BENCH_CERT" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
			-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
			-keyout "$BENCH_KEY" -out "$BENCH_CERT" 2>/dev/null
		;;
	auth)
		export BENCH_TOKEN_KEY=${BENCH_TOKEN_KEY:-$(head -c 32 /dev/urandom | base64)}
		bench_token=$("$work/caddy" comet-token --key "$BENCH_TOKEN_KEY" --sub bench --subscribe /bench --publish /bench --ttl 1h)
		;;
	plain) ;;
	*) echo "unknown mode $mode: want plain, tls, h2, h3 or auth" >&2; exit 2 ;;
	esac
done

for n in "${counts[@]}"; do
	for mode in "${modes[@]}"; do
		caddyfile=bench/bench.Caddyfile comet_url=http://127.0.0.1:9911/bench floorfile=bench/floor.Caddyfile
		nchan_args=() nchan_url=http://127.0.0.1:9912/bench tls_args=()
		if [ "$mode" = auth ]; then
			: # comet with tokens below, beside comet without
		elif [ "$mode" != plain ]; then
			caddyfile=bench/tls.Caddyfile comet_url=https://127.0.0.1:9921/bench floorfile=bench/floor-tls.Caddyfile
			nchan_args=(tls "$BENCH_CERT" "$BENCH_KEY") nchan_url=https://127.0.0.1:9922/bench
			tls_args=(-ca "$BENCH_CERT")
			[ "$mode" = plain ] || [ "$mode" = tls ] || tls_args+=("-$mode")
		fi
		for transport in ${TRANSPORTS:-longpoll sse}; do
			for run in $(seq "$runs"); do
				if [ "$mode" != auth ]; then
					echo "mode                 $mode"
					"$work/floor" run --config "$floorfile" >"$work/floor.log" 2>&1 &
					caddy_pid=$!
					sleep 1.5
					"$work/bench" -protocol comet -server floor -url "$comet_url" "${tls_args[@]}" -subscribers "$n" \
						-transport "$transport" -events 10 -interval 500ms -pid "$caddy_pid" -timeout 3m || true
					kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true
				fi
				echo "mode                 $mode"
				"$work/caddy" run --config "$caddyfile" >"$work/caddy.log" 2>&1 &
				caddy_pid=$!
				sleep 1.5
				"$work/bench" -protocol comet -url "$comet_url" "${tls_args[@]}" -subscribers "$n" \
					-transport "$transport" -events 10 -interval 500ms -pid "$caddy_pid" -timeout 3m
				kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true

				if [ "$mode" = h3 ]; then
					echo "--- run $run done (Nchan: no HTTP/3 in Debian's nginx)"
					continue
				fi
				if [ "$mode" = auth ]; then
					echo "mode                 auth"
					"$work/caddy" run --config bench/auth.Caddyfile >"$work/caddy.log" 2>&1 &
					caddy_pid=$!
					sleep 1.5
					"$work/bench" -protocol comet -url http://127.0.0.1:9913/bench -token "$bench_token" -subscribers "$n" \
						-transport "$transport" -events 10 -interval 500ms -pid "$caddy_pid" -timeout 3m
					kill "$caddy_pid"; wait "$caddy_pid" 2>/dev/null || true
					echo "--- run $run done (comet with tokens)"
					continue
				fi
				echo "mode                 $mode"
				bench/nchan/run.sh "${nchan_args[@]}" >"$work/nchan.log" 2>&1 &
				sleep 1.5
				"$work/bench" -protocol nchan -url "$nchan_url" "${tls_args[@]}" -subscribers "$n" \
					-transport "$transport" -events 10 -interval 500ms -pid "$(pgrep -d, -f 'nginx: worker process')" -timeout 3m
				pkill -f "nginx: master"; sleep 1
				echo "--- run $run done"
			done
		done
	done
done
