#!/usr/bin/env bash
# What bounds issue 13's "gRPC within 10 % of HTTP" on this machine: the
# real server's gRPC and HTTP reads side by side with servers that do
# nothing but answer from memory (crates/bench/examples/protocol_ceiling.rs),
# reading 4 KiB and 1 MiB blobs and writing 1 MiB ones (`put/` rows; each
# write load after a `sync`):
# HTTP/1.1 on hyper, gRPC on tonic (the real server's stack), and gRPC on
# the h2 crate alone, with a task per call (as hyper) and with every call
# run inside its connection's task. Same load generator, 16 clients, each
# load in turn, the whole set repeated PERF_ROUNDS times; the table gives
# each figure's median with its range over the rounds, the median of its
# ratio to the real server's HTTP figure of the same round, and the median
# server CPU per call (from /proc, every server alike).
#
# Reading it: the real server's HTTP does everything the real gRPC does
# (open and read the blob's file, or hash, compress and write it; log the
# call, count it in the metrics).
# When a gRPC server that does none of that answers fewer calls than the
# real HTTP server, the gap left between the real gRPC and HTTP is the
# protocol's, on both ends (the load generator's gRPC client shares the
# two cores).
#
# Usage: scripts/protocol-ceiling.sh
# Env:   PERF_ROUNDS=3  PERF_DURATION=4s  PERF_WARMUP=1s  PERF_CLIENTS=16
#        BENCH=path to the bazel-cache binary (default target/release/bazel-cache)
#        CEILING=path to the example (default target/release/examples/protocol_ceiling)
#        Both are built when missing. About 5 minutes. Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ours.sh

rounds=${PERF_ROUNDS:-3}
duration=${PERF_DURATION:-4s}
warmup=${PERF_WARMUP:-1s}
clients=${PERF_CLIENTS:-16}
bench=${BENCH:-target/release/bazel-cache}
ceiling=${CEILING:-target/release/examples/protocol_ceiling}

die() { echo "protocol-ceiling: $*" >&2; exit 2; }
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"
if [ ! -x "$bench" ]; then
  cargo build --release --locked -p bazel-cache || die "cannot build $bench"
fi
if [ ! -x "$ceiling" ]; then
  cargo build --release --locked -p bazel-cache-bench --example protocol_ceiling \
    || die "cannot build $ceiling"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/protocol-ceiling.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_ours "$bench" "$work/ours.log" --dir "$work/ours" \
  --http_address 127.0.0.1:0 --grpc_address 127.0.0.1:0
ours=$OURS_PID
pids+=("$ours")
ours_http=$OURS_HTTP
ours_grpc=$OURS_GRPC

# The empty servers print their addresses on one line once all listen.
"$ceiling" 127.0.0.1:0 >"$work/ceiling.log" 2>&1 &
empty=$!
pids+=("$empty")
for _ in $(seq 300); do
  grep -q "h2_inline=" "$work/ceiling.log" && break
  kill -0 "$empty" 2>/dev/null || break
  sleep 0.1
done
grep -q "h2_inline=" "$work/ceiling.log" || { cat "$work/ceiling.log" >&2; die "the empty servers did not start"; }
read -r c_http c_grpc c_h2 c_inline < <(sed 's/[a-z_0-9]*=//g' "$work/ceiling.log")

# Each load: KEY PID URL ARGS... Rows of one figure share the prefix before
# the first '/'; the real HTTP row of each size is its reference.
loads=(
  "4k/ours-http $ours $ours_http --mix read --sizes 4KiB"
  "4k/empty-http $empty http://$c_http --mix read --sizes 4KiB"
  "4k/ours-batch $ours $ours_grpc --mix read --sizes 4KiB"
  "4k/empty-tonic-batch $empty grpc://$c_grpc --mix read --sizes 4KiB"
  "4k/empty-h2-batch $empty grpc://$c_h2 --mix read --sizes 4KiB"
  "4k/empty-h2-inline-batch $empty grpc://$c_inline --mix read --sizes 4KiB"
  "4k/ours-bytestream $ours $ours_grpc --mix read --sizes 4KiB --batch 0"
  "4k/empty-tonic-bytestream $empty grpc://$c_grpc --mix read --sizes 4KiB --batch 0"
  "1m/ours-http $ours $ours_http --mix read --sizes 1MiB"
  "1m/empty-http $empty http://$c_http --mix read --sizes 1MiB"
  "1m/ours-bytestream $ours $ours_grpc --mix read --sizes 1MiB --batch 0"
  "1m/empty-tonic-bytestream $empty grpc://$c_grpc --mix read --sizes 1MiB --batch 0"
  "put/ours-http $ours $ours_http --mix write --sizes 1MiB"
  "put/empty-http $empty http://$c_http --mix write --sizes 1MiB"
  "put/ours-bytestream $ours $ours_grpc --mix write --sizes 1MiB --batch 0"
  "put/empty-tonic-bytestream $empty grpc://$c_grpc --mix write --sizes 1MiB --batch 0"
)

for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for load in "${loads[@]}"; do
    read -r key pid url args <<<"$load"
    case $args in *"--mix write"*) sync ;; esac
    # shellcheck disable=SC2086 # $args: the load's own flags
    "$bench" bench "$url" $args --concurrency "$clients" --duration "$duration" \
      --warmup "$warmup" --server_pid "$pid" --json >"$work/$round-${key/\//-}.json" 2>"$work/err" \
      || { cat "$work/err" >&2; die "load $key failed (round $round)"; }
  done
done

echo
echo "Servers answering from memory (empty-*) and the real server (ours-*), $clients clients,"
echo "$rounds rounds; median (min-max); ratio = median of the round's figure over ours-http's."
echo
printf '| %-26s | %-28s | %-14s | %-12s |\n' "load" "throughput" "vs ours HTTP" "CPU per call"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "$(printf -- '-%.0s' {1..30})" \
  "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..14})"
for load in "${loads[@]}"; do
  read -r key _ <<<"$load"
  size=${key%%/*}
  unit="req/s"; field=requests_per_second
  [ "$size" = 4k ] || { unit="MiB/s"; field=mib_per_second; }
  files=() refs=()
  for round in $(seq "$rounds"); do
    files+=("$work/$round-${key/\//-}.json")
    refs+=("$work/$round-$size-ours-http.json")
  done
  jq -nr --arg key "$key" --arg unit "$unit" --arg field "$field" \
    --slurpfile o <(cat "${files[@]}") --slurpfile r <(cat "${refs[@]}") '
    def median: sort | .[(length / 2 | floor)];
    def fmt: if . >= 100 then round | tostring else (. * 100 | round / 100 | tostring) end;
    def duration: if . >= 1000 then "\(. / 10 | round / 100) ms" else "\(fmt) µs" end;
    ($o | map(.total[$field])) as $x
    | ([range(0; $o | length)] | map($x[.] / ($r[.].total[$field]))) as $ratio
    | ($o | map(.server_cpu.per_request_us)) as $cpu
    | "| \($key | .[0:26] | . + " " * (26 - length)) | "
      + ("\($x | median | fmt) (\($x | min | fmt)-\($x | max | fmt)) \($unit)" | . + " " * ([28 - length, 0] | max))
      + " | " + ("\($ratio | median * 100 | round / 100)" | . + " " * (14 - length))
      + " | " + ($cpu | median | duration | . + " " * (12 - length)) + " |"'
done
