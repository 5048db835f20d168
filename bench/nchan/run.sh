#!/usr/bin/env bash
# Runs nginx with Nchan in the foreground, from a temporary prefix, until
# interrupted: on http://127.0.0.1:9912, or with "tls <cert> <key>" on
# https://127.0.0.1:9922. Needs Debian's nginx and libnginx-mod-nchan. Its
# worker pids, for the load tool's -pid:
#   pgrep -d, -f 'nginx: worker process'
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
conf=$here/nginx.conf
if [ "${1:-}" = tls ]; then
	# nginx finds relative certificate paths beside its config.
	cp "$here/nginx-tls.conf" "$prefix/nginx.conf"
	cp "$2" "$prefix/cert.pem"
	cp "$3" "$prefix/key.pem"
	conf=$prefix/nginx.conf
fi
nginx -p "$prefix" -c "$conf"
