#!/usr/bin/env bash
# Runs nginx with Nchan on 127.0.0.1:9912 in the foreground, from a
# temporary prefix, until interrupted. Needs Debian's nginx and
# libnginx-mod-nchan. Its worker pids, for the load tool's -pid:
#   pgrep -d, -f 'nginx: worker process'
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
exec nginx -p "$prefix" -c "$here/nginx.conf"
