#!/usr/bin/env bash
# Issue 13's "Scale" and "Memory" targets, measured in one run: does a
# store with 1,000,000 entries answer as fast as an empty one, and does the
# server stay under 100 MiB resident while it does?
#
# One server (defaults: fsync on, zstd storage; --max_size large enough
# that nothing is evicted), on 127.0.0.1 and a temporary directory, is never
# restarted. `bazel-cache-bench` (16 clients) measures HTTP GET and PUT of
# 4 KiB and 1 MiB blobs on the empty store; the store is then filled with
# small blobs over HTTP by a write load of many clients (every write is of
# a blob the server has never seen, so each one adds an entry) until the
# index holds the target; then the same four figures are measured again.
# During every load the server's resident memory is sampled from its
# /metrics (process_resident_memory_bytes) and /proc (VmRSS); VmHWM (the
# process's peak so far) is read after each phase. Write loads start after
# a `sync`, so earlier dirty pages don't tax them.
#
# The table: p50/p99 of each figure, empty vs full, the ratio
# p99(full)/p99(empty) (goal: at most 1.5), the throughput of both, and the
# highest RSS seen during each load (goal: at most 100 MiB).
#
# Usage: scripts/scale-test.sh
# Env:   SCALE_ENTRIES=1000000   entries to fill the index to
#        SCALE_DURATION=5s       per figure, after SCALE_WARMUP=1s of warm-up
#        SCALE_CLIENTS=16        clients of each measured load
#        SCALE_ROUNDS=1          runs of each figure; the table shows the
#                                one with the median p99 (3 on a busy machine)
#        SCALE_FILL_SIZE=64B     blobs the fill writes, SCALE_FILL_CLIENTS=64
#        SCALE_KEEP=1            keep the temporary directory (server log,
#                                every bench report as JSON)
#        SERVER, BENCH           the binaries (default target/release/
#                                bazel-cache and bazel-cache-bench, built
#                                with `cargo build --release` when not given)
# Takes about 4 minutes on a 2-core machine (the fill about 2 of them) and
# about 15 GB of disk, most of it the 1 MiB PUT loads' blobs (nothing may
# be evicted: that would take the fill's entries away); it refuses to start
# with less than SCALE_MIN_FREE_GB=20 free. Removing the million files at
# the end slows file creation on the same file system for a minute or so
# (ext4 skips recently freed inodes): wait before measuring anything else.
# Needs jq and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/metrics.sh
source scripts/ours.sh

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "scale-test: unknown argument $1" >&2; exit 2 ;;
esac
target_entries=${SCALE_ENTRIES:-1000000}
duration=${SCALE_DURATION:-5s}
warmup=${SCALE_WARMUP:-1s}
clients=${SCALE_CLIENTS:-16}
rounds=${SCALE_ROUNDS:-1}
fill_size=${SCALE_FILL_SIZE:-64B}
fill_clients=${SCALE_FILL_CLIENTS:-64}

die() { echo "scale-test: $*" >&2; exit 2; }
for tool in jq curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install $tool)"
done
if [ -z "${SERVER:-}" ] || [ -z "${BENCH:-}" ]; then
  cargo build --release --locked -p bazel-cache -p bazel-cache-bench >&2 || die "cargo build failed"
fi
server=${SERVER:-target/release/bazel-cache}
bench=${BENCH:-target/release/bazel-cache-bench}

work=$(mktemp -d -t scale-test.XXXXXX)
free_gb=$(df --output=avail -BG "$work" | tail -n 1 | tr -dc 0-9)
if [ "$free_gb" -lt "${SCALE_MIN_FREE_GB:-20}" ]; then
  rmdir "$work"
  die "only ${free_gb} GB free under $(dirname "$work"); the run needs about 15 GB"
fi
server_pid=""
sampler_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && { kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; }
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "${SCALE_KEEP:-}" ]; then
    echo "scale-test: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The server, on a port the kernel chooses (ours.sh).
start_ours "$server" "$work/server.log" --dir "$work/data" --max_size 1000 \
  --http_address 127.0.0.1:0 --grpc_address none
server_pid=$OURS_PID
url=$OURS_HTTP

entries() { metric "$url" bazel_remote_disk_cache_entries; }
status_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$server_pid/status"; }

# Samples RSS every 0.2 s until killed, one line each: metrics bytes, VmRSS KiB.
start_sampler() {
  local out=$1
  : >"$out"
  (
    while kill -0 "$server_pid" 2>/dev/null; do
      echo "$(metric "$url" process_resident_memory_bytes 2>/dev/null || echo 0) $(status_kib VmRSS || echo 0)" >>"$out"
      sleep 0.2
    done
  ) &
  sampler_pid=$!
}
stop_sampler() {
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
}

# measure PHASE: the four figures, each in $work/PHASE-<op>-<size>.json
# (of SCALE_ROUNDS runs, the one with the median p99) with the RSS samples
# of its runs in $work/PHASE-<op>-<size>-rss; VmHWM afterwards in
# $work/PHASE-hwm.
measure() {
  local phase=$1 op size key status round
  for op in read write; do
    for size in 4KiB 1MiB; do
      key="$phase-$op-$size"
      printf '  %-22s' "$key" >&2
      : >"$work/$key-rss"
      for round in $(seq "$rounds"); do
        [ "$op" = write ] && sync
        status=0
        start_sampler "$work/$key-rss.$round"
        "$bench" "$url" --mix "$op:100" --sizes "$size" --concurrency "$clients" \
          --duration "$duration" --warmup "$warmup" --json >"$work/$key.$round.json" 2>"$work/$key.err" \
          || status=$?
        stop_sampler
        cat "$work/$key-rss.$round" >>"$work/$key-rss"
        [ "$status" -ge 2 ] && { echo >&2; cat "$work/$key.err" >&2; die "bench $key could not run"; }
      done
      jq -s 'sort_by(.total.latency.p99_ms) | .[(length - 1) / 2 | floor]' "$work/$key".*.json >"$work/$key.json"
      jq -r '"\(.total.requests) requests, \(.errors.total) errors, p99 \(.total.latency.p99_ms) ms"' \
        "$work/$key.json" >&2
    done
  done
  status_kib VmHWM >"$work/$phase-hwm"
}

echo "scale-test: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $clients clients," \
  "$duration per figure after $warmup warm-up; filling to $target_entries entries" >&2
echo "empty store:" >&2
measure empty
empty_entries=$(entries)

# The fill: a write load of small new blobs until the index holds the target.
echo "filling: $empty_entries entries to $target_entries with $fill_size blobs, $fill_clients clients" >&2
fill_start=$(date +%s)
start_sampler "$work/fill-rss"
for round in 1 2 3; do
  have=$(entries)
  [ "$have" -ge "$target_entries" ] && break
  status=0
  "$bench" "$url" --mix write:100 --sizes "$fill_size" --concurrency "$fill_clients" \
    --requests $((target_entries - have)) --warmup 0s --no_write_check --json \
    >"$work/fill-$round.json" 2>"$work/fill-$round.err" || status=$?
  [ "$status" -ge 2 ] && { cat "$work/fill-$round.err" >&2; die "the fill could not run"; }
  jq -r '"  round '"$round"': \(.total.blobs) blobs at \(.total.blobs_per_second | floor)/s, p99 \(.total.latency.p99_ms) ms, \(.errors.total) errors"' \
    "$work/fill-$round.json" >&2
done
stop_sampler
full_entries=$(entries)
fill_seconds=$(($(date +%s) - fill_start))
[ "$full_entries" -ge "$target_entries" ] || die "the fill reached only $full_entries entries"
echo "  $full_entries entries in $fill_seconds s" >&2
sync

echo "full store:" >&2
measure full

# The table.
max_rss() {
  # Highest sample of the files named, in MiB: "metrics / VmRSS".
  cat "$@" | awk '{ if ($1 > m) m = $1; if ($2 > v) v = $2 } END { printf "%.0f / %.0f", m / 1048576, v / 1024 }'
}
hwm() { awk '{ printf "%.0f", $1 / 1024 }' "$1"; }
row() {
  local label=$1 op=$2 size=$3 unit=$4 rss
  rss="$(max_rss "$work/empty-$op-$size-rss" | cut -d' ' -f3) / $(max_rss "$work/full-$op-$size-rss" | cut -d' ' -f3)"
  jq -nr --arg figure "$label" --arg unit "$unit" --arg rss "$rss" \
    --slurpfile e "$work/empty-$op-$size.json" --slurpfile f "$work/full-$op-$size.json" '
    def r2(x): (x * 100 | round) / 100;
    def rate(rep): if $unit == "MiB/s" then rep.total.mib_per_second else rep.total.blobs_per_second end;
    def lat(rep): "\(r2(rep.total.latency.p50_ms)) / \(r2(rep.total.latency.p99_ms))"
      + (if rep.errors.total > 0 then " (\(rep.errors.total) errors)" else "" end);
    $e[0] as $e | $f[0] as $f
    | [ $figure, lat($e), lat($f),
        (if $e.total.latency.p99_ms > 0 then r2($f.total.latency.p99_ms / $e.total.latency.p99_ms) | tostring else "-" end),
        "\(rate($e) | floor) / \(rate($f) | floor) \($unit)", $rss ] | @tsv'
}

{
  printf 'figure\tempty p50/p99 ms\t%s entries p50/p99 ms\tp99 ratio (goal <=1.5)\tthroughput empty / full\tVmRSS MiB empty / full\n' "$full_entries"
  row "HTTP GET 4 KiB" read 4KiB req/s
  row "HTTP GET 1 MiB" read 1MiB MiB/s
  row "HTTP PUT 4 KiB" write 4KiB req/s
  row "HTTP PUT 1 MiB" write 1MiB MiB/s
  printf 'all four loads: RSS MiB (metrics / VmRSS; goal <=100)\t%s\t%s\t-\tVmHWM %s / %s MiB\t-\n' \
    "$(max_rss "$work"/empty-*-rss)" "$(max_rss "$work"/full-*-rss)" "$(hwm "$work/empty-hwm")" "$(hwm "$work/full-hwm")"
  printf 'the fill (%s clients): RSS MiB (metrics / VmRSS)\t-\t%s\t-\t%s entries in %s s\t-\n' \
    "$fill_clients" "$(max_rss "$work/fill-rss")" "$((full_entries - empty_entries))" "$fill_seconds"
} | column -t -s $'\t'
echo "(empty: $empty_entries entries, the read loads' blobs; $clients clients, $duration per figure, median p99 of $rounds;" \
  "server defaults: fsync on, zstd storage; VmHWM: the peak since start, the fill's included)"
