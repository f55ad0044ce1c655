#!/usr/bin/env bash
# The physical limits the README's Performance figures are put next to,
# measured on this machine with the same load generator:
#
#  1. GET: nginx serving the same blobs from a directory with sendfile, on
#     127.0.0.1, loaded by `bazel-cache bench` over HTTP exactly as the
#     cache is (same clients, keep-alive, every body hashed and checked);
#  2. PUT: the single-core SHA-256 rate (`openssl speed -evp sha256`), since
#     a cache must hash every byte it accepts before acknowledging it.
#
# Usage: scripts/perf-baseline.sh            (3 s per phase, 1/16/64 clients)
# Env:   SECONDS_PER_PHASE=3  CLIENTS="1 16 64"  SIZES="4KiB 1MiB"
#        BENCH=/path/to/bazel-cache (default: target/release/bazel-cache,
#        built when missing)  NGINX=nginx  OPENSSL=openssl
# Needs: nginx with the DAV module (Debian: apt-get install nginx), openssl.
# nginx runs from a temporary directory on an ephemeral port of 127.0.0.1
# and is stopped on exit; nothing outside that directory is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

phase_seconds=${SECONDS_PER_PHASE:-3}
clients=${CLIENTS:-"1 16 64"}
sizes=${SIZES:-"4KiB 1MiB"}
nginx=${NGINX:-nginx}
openssl=${OPENSSL:-openssl}
bench=${BENCH:-target/release/bazel-cache}

command -v "$nginx" >/dev/null || { echo "perf-baseline: $nginx not found (apt-get install nginx)" >&2; exit 2; }
command -v "$openssl" >/dev/null || { echo "perf-baseline: $openssl not found" >&2; exit 2; }
if [ ! -x "$bench" ]; then
  cargo build --release --locked
fi

source scripts/nginx-blobs.sh
work=$(mktemp -d -t perf-baseline.XXXXXX)
cleanup() {
  stop_nginx
  rm -rf "$work"
}
trap cleanup EXIT
start_nginx "$work"
url=$NGINX_URL

echo "== machine: $(nproc) cores, $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== nginx $("$nginx" -v 2>&1 | sed 's/.*nginx\///') (sendfile on, $(nproc) workers) at $url, loaded by $bench bench"
for size in $sizes; do
  # Store the blobs once (PUT through DAV), then read them back.
  "$bench" bench "$url" --mix read --sizes "$size" --requests 1 --warmup 0s >/dev/null
  for c in $clients; do
    printf 'nginx GET %-6s %3s clients: ' "$size" "$c"
    "$bench" bench "$url" --mix read --sizes "$size" --concurrency "$c" \
      --duration "${phase_seconds}s" --warmup 1s | awk '$1 == "read" { printf "%s req/s  %s MiB/s  p50 %s ms  p99 %s ms  p999 %s ms  errors %s\n", $4, $6, $7, $8, $9, $11 }'
  done
done

echo "== single-core SHA-256 ($("$openssl" version))"
for bytes in 4096 1048576; do
  "$openssl" speed -evp sha256 -bytes "$bytes" -seconds "$phase_seconds" 2>/dev/null \
    | awk -v b="$bytes" '/^sha256/ || /^SHA256/ { v=$NF; sub(/k$/, "", v); printf "sha256 %8d-byte blocks: %.0f MiB/s (%.0f blocks/s)\n", b, v*1000/1048576, v*1000/b }'
done
