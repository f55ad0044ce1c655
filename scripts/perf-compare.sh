#!/usr/bin/env bash
# Issue 13's table, measured in one run on this machine: this server with
# its defaults (fsync on, zstd storage) and nginx (sendfile for GET, DAV for
# PUT) on loopback, both driven by the same load generator
# (`bazel-cache bench`, 16 clients, every read verified by hashing), each
# write load starting after a `sync` so one server's dirty pages do not tax
# the next. One table: each figure, its reference and the ratio to it, p50
# and p99 latency, and the server CPU per operation (ours from its
# process_cpu_seconds_total, nginx's from /proc via --server_pid).
#
# References: nginx for HTTP GET and PUT (also for PUT with fsync off); our
# own HTTP figure for the same blobs for every gRPC row (the issue wants
# gRPC within 10 % of HTTP; for write rows an HTTP twin measured just
# before them, on the store as full as they find it) and for gRPC AC rows; 1.5 M digests/s for
# FindMissingBlobs. HTTP AC rows have no reference. Ratios, not absolute
# figures, carry over between machines; a busy machine lowers both sides.
# BLAKE3 rows (issue 15): the same HTTP GET and PUT loads with
# `--digest_function blake3` (paths under /blake3/, every read verified
# with BLAKE3), each measured right after its SHA-256 twin, which is its
# reference. This machine's single-threaded hashing rate of each function
# (`bazel-cache bench --hash_rate`) is printed under the table.
# The gRPC 1 MiB rows named ByteStream use ByteStream for every blob
# (`--batch 0`), as Bazel does for downloads and uploads of that size; the
# BatchRead/BatchUpdate 1 MiB rows put each blob in a batch call of its own.
# The x16 rows batch 16 blobs per call, as a client that batches small
# blobs would, and are per blob. A second table shows every write load's
# p99/p50 (stalls), at 16 clients and again at 64, with nginx's for the
# same HTTP loads beside ours. About 4 minutes.
#
# The `evicted` columns count the blobs our server evicted during each
# load (bazel_remote_disk_cache_evictions_total). Its default 5 GiB store
# fills during the run, and from then on each write load evicts whatever
# the LRU tail holds there. A load that meets the band of 4 KiB blobs the
# PUT 4 KiB rows left deletes ~256 files per 1 MiB it writes, and on this
# VM each deletion costs kernel CPU and a synchronous discard (the root
# ext4 is mounted with `discard`; README, "Storage"). The 1 MiB PUT that
# first meets that band (BLAKE3's, in runs fast enough to get there by
# then) evicted ~75,000 blobs and ran at half its twin's rate. The
# column shows which rows paid for that.
#
# Before the first load the page cache is filled to within 2 GiB of the
# memory available, with the zero pages of a sparse file read once (no disk
# I/O; freed when the script exits). A cache server's page cache is full
# in steady state, since its data outgrow its memory, so the pages new
# blobs are written into come from reclaimed cache. On a freshly booted
# machine they come from free memory instead, and in a VM whose balloon
# reports free pages to the host (virtio-balloon free page reporting, as
# this one does), each of those pages costs a host fault on first touch:
# a 1 MiB PUT on this VM spent ~0.86 ms of its ~3.5 ms in the kernel's copy
# into the page cache with free memory, ~0.1 ms with the cache full, and
# the PUT took 2.4-4.9 ms of server CPU against 1.6-1.9 ms. nginx pays the
# same, so the ratio mostly held while CPU per operation did not.
#
# Usage: scripts/perf-compare.sh [--quick]
#   --quick          1 s per figure, 0.5 s warm-up (a smoke run, ~1 minute)
# Env:   PERF_DURATION=4s  PERF_WARMUP=1s  PERF_CLIENTS=16
#        PERF_DIR=directory for both servers' files (default $TMPDIR or /tmp).
#          This VM's root ext4 has no journal, and such an ext4 skips every
#          inode freed in the last minutes when it allocates one, so once
#          a cache evicts, each new file costs several times more (HTTP PUT
#          4 KiB: 144 µs of server CPU, 417-794 µs after 100,000 deletions;
#          on a journaled ext4, 130-140 µs either way). A journaled ext4 in
#          a loop file on the same disk measures what production sees:
#            truncate -s 22G /work/fs.img && mkfs.ext4 -q -F /work/fs.img
#            mkdir -p /mnt/j && mount -o loop /work/fs.img /mnt/j
#            PERF_DIR=/mnt/j scripts/perf-compare.sh
#        PERF_FILL_CACHE=0 skips filling the page cache (above).
#        BENCH=path to the bazel-cache binary (default target/release/bazel-cache,
#        built when missing)  NGINX=nginx
# Needs nginx with the DAV module and jq: installed with apt-get when missing.
# Everything runs from one temporary directory, removed on exit with every
# process this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${PERF_DURATION:-4s}
warmup=${PERF_WARMUP:-1s}
case "${1:-}" in
  --quick) duration=1s warmup=0.5s ;;
  "") ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "perf-compare: unknown argument $1 (expected --quick)" >&2; exit 2 ;;
esac
clients=${PERF_CLIENTS:-16}
bench=${BENCH:-target/release/bazel-cache}

die() { echo "perf-compare: $*" >&2; exit 2; }

for tool in nginx jq curl; do
  if ! command -v "${tool/nginx/${NGINX:-nginx}}" >/dev/null; then
    echo "perf-compare: installing $tool" >&2
    { apt-get install -y "$tool" >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y "$tool" >/dev/null 2>&1; }; } \
      || die "$tool is missing and apt-get could not install it"
  fi
done
if [ ! -x "$bench" ]; then
  cargo build --release --locked -p bazel-cache || die "cannot build $bench"
fi

source scripts/nginx-blobs.sh
source scripts/metrics.sh
source scripts/ours.sh
work=$(mktemp -d -p "${PERF_DIR:-${TMPDIR:-/tmp}}" perf-compare.XXXXXX)
server_pids=()
cleanup() {
  local pid
  for pid in "${server_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  stop_nginx
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME FLAGS...: this server on a fresh directory (ours.sh);
# sets <NAME>_http and <NAME>_grpc.
start_server() {
  local name=$1
  shift
  start_ours "$bench" "$work/$name.log" --dir "$work/$name" \
    --http_address 127.0.0.1:0 --grpc_address 127.0.0.1:0 "$@"
  server_pids+=("$OURS_PID")
  printf -v "${name}_http" %s "$OURS_HTTP"
  printf -v "${name}_grpc" %s "$OURS_GRPC"
}

# A report's errors by kind ("94 gRPC NotFound, 2 timeout"): the progress
# line and the table's flag name them alike.
kinds_jq='def kinds: .errors.by_kind | to_entries | map("\(.value) \(.key)") | join(", ");'

# evictions HTTP_URL: the blobs our server at HTTP_URL has evicted so far
# (bazel-remote's counter).
evictions() { metric "$1" bazel_remote_disk_cache_evictions_total; }

# run KEY URL ARGS...: one measurement, its JSON report in $work/KEY.json,
# and for our servers the blobs evicted meanwhile in $work/KEY.evicted.
# Writes start after a sync. A run that cannot start stops the script; one
# whose requests failed is kept and flagged in the table.
run() {
  local key=$1 url=$2 status=0 metrics="" before=""
  shift 2
  case " $* " in *" --mix write"* | *" --mix ac-write"*) sync ;; esac
  case $url in
    "$ours_http" | "$ours_grpc") metrics=$ours_http ;;
    "$nofsync_http") metrics=$nofsync_http ;;
  esac
  [ -z "$metrics" ] || before=$(evictions "$metrics")
  printf '  %-28s' "$key" >&2
  "$bench" bench "$url" --concurrency "${RUN_CLIENTS:-$clients}" --duration "$duration" --warmup "$warmup" \
    --json "$@" >"$work/$key.json" 2>"$work/$key.err" || status=$?
  if [ "$status" -ge 2 ]; then
    echo >&2
    cat "$work/$key.err" >&2
    die "bench $key could not run"
  fi
  [ -z "$metrics" ] || echo $(($(evictions "$metrics") - before)) >"$work/$key.evicted"
  jq -r "$kinds_jq"'"\(.total.requests) requests, \(.errors.total) errors"
    + (if .errors.total > 0 then ": " + kinds else "" end)' "$work/$key.json" >&2
}

# fill_page_cache: the page cache filled with clean pages (header).
fill_page_cache() {
  local avail_kib gib started
  avail_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
  gib=$((avail_kib / 1048576 - 2))
  [ "$gib" -gt 0 ] || return 0
  started=$(date +%s)
  truncate -s "${gib}G" "$work/page-cache-fill"
  # One reader per core: the time goes to the host's page faults, and two
  # readers took 1.4-5.8 s for 4 GiB here against 4.9-16.4 s for one.
  local readers part i
  readers=$(nproc)
  part=$(((gib * 1024 + readers - 1) / readers))
  for ((i = 0; i < readers; i++)); do
    dd if="$work/page-cache-fill" of=/dev/null bs=1M skip=$((i * part)) count="$part" status=none &
  done
  wait
  echo "perf-compare: page cache filled with ${gib} GiB of zero pages in" \
    "$(($(date +%s) - started)) s (PERF_FILL_CACHE=0 to skip)" >&2
}

[ "${PERF_FILL_CACHE:-1}" = 0 ] || fill_page_cache
start_nginx "$work/nginx"
start_server ours
start_server nofsync --fsync=false
echo "perf-compare: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $clients clients," \
  "$duration per figure after $warmup warm-up; nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')" >&2

nginx_cpu=(--server_pid "$NGINX_PID")
ours_cpu=(--metrics_url "$ours_http")
for size in 4KiB 1MiB; do
  run "nginx-get-$size" "$NGINX_URL" --mix read --sizes "$size" "${nginx_cpu[@]}"
  run "ours-get-$size" "$ours_http" --mix read --sizes "$size"
  run "blake3-get-$size" "$ours_http" --mix read --sizes "$size" --digest_function blake3
  run "nginx-put-$size" "$NGINX_URL" --mix write --sizes "$size" "${nginx_cpu[@]}"
  run "ours-put-$size" "$ours_http" --mix write --sizes "$size"
  run "blake3-put-$size" "$ours_http" --mix write --sizes "$size" --digest_function blake3
done
run nofsync-put-1MiB "$nofsync_http" --mix write --sizes 1MiB
run grpc-read-4KiB-batch "$ours_grpc" --mix read --sizes 4KiB "${ours_cpu[@]}"
run grpc-read-4KiB-bytestream "$ours_grpc" --mix read --sizes 4KiB --batch 0 "${ours_cpu[@]}"
# Each gRPC write row is compared with an HTTP twin measured just before
# it, on the same store: by then the store holds gigabytes and has begun
# to evict, and on this VM's ext4 (no journal) every new file then costs
# more (inode allocation skips recently freed inodes), so an HTTP figure
# from the start of the run would flatter HTTP.
run http-put-4KiB-twin "$ours_http" --mix write --sizes 4KiB
run grpc-write-4KiB-batch "$ours_grpc" --mix write --sizes 4KiB "${ours_cpu[@]}"
run grpc-read-1MiB "$ours_grpc" --mix read --sizes 1MiB --batch 0 "${ours_cpu[@]}"
run http-put-1MiB-twin "$ours_http" --mix write --sizes 1MiB
run grpc-write-1MiB "$ours_grpc" --mix write --sizes 1MiB --batch 0 "${ours_cpu[@]}"
run grpc-read-1MiB-batch "$ours_grpc" --mix read --sizes 1MiB "${ours_cpu[@]}"
run grpc-write-1MiB-batch "$ours_grpc" --mix write --sizes 1MiB "${ours_cpu[@]}"
run grpc-find-1000 "$ours_grpc" --mix find --sizes 4KiB --batch 1000 "${ours_cpu[@]}"
run grpc-read-4KiB-batch16 "$ours_grpc" --mix read --sizes 4KiB --batch 16 "${ours_cpu[@]}"
run http-put-4KiB-twin16 "$ours_http" --mix write --sizes 4KiB
run grpc-write-4KiB-batch16 "$ours_grpc" --mix write --sizes 4KiB --batch 16 "${ours_cpu[@]}"
run http-ac-read "$ours_http" --mix ac-read --sizes 4KiB
run http-ac-write "$ours_http" --mix ac-write --sizes 4KiB
run grpc-ac-read "$ours_grpc" --mix ac-read --sizes 4KiB "${ours_cpu[@]}"
run grpc-ac-write "$ours_grpc" --mix ac-write --sizes 4KiB "${ours_cpu[@]}"
# Last: the 64-client write loads write the most, and the VM's disk slows
# down after several GB; what follows them would measure the disk. nginx's
# PUT at 64 clients goes first: its p99/p50 is the stall table's reference,
# what the machine (client and disk) gives a server that neither hashes nor
# fsyncs.
RUN_CLIENTS=64 run nginx-put-4KiB-c64 "$NGINX_URL" --mix write --sizes 4KiB "${nginx_cpu[@]}"
RUN_CLIENTS=64 run nginx-put-1MiB-c64 "$NGINX_URL" --mix write --sizes 1MiB "${nginx_cpu[@]}"
RUN_CLIENTS=64 run ours-put-4KiB-c64 "$ours_http" --mix write --sizes 4KiB
RUN_CLIENTS=64 run ours-put-1MiB-c64 "$ours_http" --mix write --sizes 1MiB
RUN_CLIENTS=64 run grpc-write-4KiB-c64 "$ours_grpc" --mix write --sizes 4KiB
RUN_CLIENTS=64 run grpc-write-1MiB-c64 "$ours_grpc" --mix write --sizes 1MiB --batch 0

# evicted KEY: the blobs our server evicted during KEY's run ("-": none
# counted, e.g. nginx's).
evicted() {
  cat "$work/$1.evicted" 2>/dev/null || echo -
}

# One row: label, our report, reference (a report, or "target:<blobs/s>", or
# "-"), unit (req/s: blobs per second; MiB/s), the issue's goal for the ratio,
# and optionally the reference's name (default: its report's first word).
row() {
  local label=$1 ours=$2 ref=$3 unit=$4 goal=$5 refname=${6:-}
  jq -nr --arg figure "$label" --arg unit "$unit" --arg goal "$goal" --arg ref "$ref" \
    --arg refname "$refname" --arg evicted "$(evicted "$ours")" --arg refevicted "$(evicted "$ref")" \
    --slurpfile o "$work/$ours.json" \
    --slurpfile r "$([ -f "$work/$ref.json" ] && echo "$work/$ref.json" || echo /dev/null)" "$kinds_jq"'
    def rate(rep): if $unit == "MiB/s" then rep.total.mib_per_second else rep.total.blobs_per_second end;
    def fmt(x): if x == null then "-" elif x >= 100 then (x | floor | tostring)
                else ((x * 10 | floor) / 10 | tostring) end;
    def cpu(rep): rep.server_cpu.per_blob_us as $us
      | if $us == null then "n/a" elif $us >= 1000 then ((($us / 10 | floor) / 100 | tostring) + " ms")
        else (fmt($us) + " µs") end;
    def lat(rep): (rep.total.latency | "\(.p50_ms * 100 | floor / 100)/\(.p99_ms * 100 | floor / 100)");
    def flag(rep): if rep.errors.total > 0 then " (\(rep.errors.total) errors: \(rep | kinds))" else "" end;
    $o[0] as $ours
    | (if ($r | length) > 0 then rate($r[0])
       elif ($ref | startswith("target:")) then ($ref | ltrimstr("target:") | tonumber)
       else null end) as $refrate
    | (if $refname != "" then $refname elif ($r | length) > 0 then ($ref | split("-")[0])
       elif $refrate != null then "target" else "" end) as $refname
    | [ $figure,
        fmt(rate($ours)) + " " + $unit + flag($ours),
        (if $refrate == null then "-" else fmt($refrate) + " " + $unit + " (" + $refname
           + (if ($refevicted | test("^[1-9]")) then ", \($refevicted) evicted" else "" end) + ")" end),
        (if $refrate == null or $refrate == 0 then "-" else (rate($ours) / $refrate * 100 | floor / 100 | tostring) end),
        $goal,
        lat($ours),
        $evicted,
        cpu($ours),
        (if ($r | length) > 0 and ($ref | startswith("nginx")) then cpu($r[0]) + flag($r[0]) else "-" end)
      ] | @tsv'
}

{
  printf 'figure\tours\treference\tratio\tgoal\tp50/p99 ms\tevicted\tCPU/op ours\tCPU/op nginx\n'
  row "HTTP GET 4 KiB" ours-get-4KiB nginx-get-4KiB req/s ">=0.7"
  row "HTTP GET 1 MiB" ours-get-1MiB nginx-get-1MiB MiB/s ">=0.85"
  row "HTTP PUT 4 KiB" ours-put-4KiB nginx-put-4KiB req/s "-"
  row "HTTP PUT 1 MiB" ours-put-1MiB nginx-put-1MiB MiB/s ">=0.7"
  row "HTTP PUT 1 MiB fsync:false" nofsync-put-1MiB nginx-put-1MiB MiB/s ">=0.9"
  row "HTTP GET 4 KiB BLAKE3" blake3-get-4KiB ours-get-4KiB req/s "-" "our SHA-256"
  row "HTTP GET 1 MiB BLAKE3" blake3-get-1MiB ours-get-1MiB MiB/s "-" "our SHA-256"
  row "HTTP PUT 4 KiB BLAKE3" blake3-put-4KiB ours-put-4KiB req/s "-" "our SHA-256"
  row "HTTP PUT 1 MiB BLAKE3" blake3-put-1MiB ours-put-1MiB MiB/s "-" "our SHA-256"
  row "gRPC read 4 KiB BatchRead" grpc-read-4KiB-batch ours-get-4KiB req/s ">=0.9"
  row "gRPC read 4 KiB ByteStream" grpc-read-4KiB-bytestream ours-get-4KiB req/s ">=0.9"
  row "gRPC write 4 KiB BatchUpdate" grpc-write-4KiB-batch http-put-4KiB-twin req/s ">=0.9"
  row "gRPC read 4 KiB BatchRead x16" grpc-read-4KiB-batch16 ours-get-4KiB req/s "-"
  row "gRPC write 4 KiB BatchUpdate x16" grpc-write-4KiB-batch16 http-put-4KiB-twin16 req/s "-"
  row "gRPC ByteStream read 1 MiB" grpc-read-1MiB ours-get-1MiB MiB/s ">=0.9"
  row "gRPC ByteStream write 1 MiB" grpc-write-1MiB http-put-1MiB-twin MiB/s ">=0.9"
  row "gRPC read 1 MiB BatchRead" grpc-read-1MiB-batch ours-get-1MiB MiB/s "-"
  row "gRPC write 1 MiB BatchUpdate" grpc-write-1MiB-batch http-put-1MiB-twin MiB/s "-"
  row "FindMissingBlobs 1000/call" grpc-find-1000 target:1500000 digests/s ">=1"
  row "AC get HTTP" http-ac-read - req/s "-"
  row "AC put HTTP" http-ac-write - req/s "-"
  row "AC get gRPC" grpc-ac-read http-ac-read req/s ">=0.9"
  row "AC put gRPC" grpc-ac-write http-ac-write req/s ">=0.9"
} | sed 's/(ours\([,)]\)/(our HTTP\1/; s/(http\([,)]\)/(our HTTP\1/' | column -t -s $'\t'
echo "(ours: this server, defaults: fsync on, zstd storage; ref for gRPC rows: our HTTP figure" \
  "(for writes, a twin measured just before);" \
  "for BLAKE3 rows: the same load named by SHA-256; x16: 16 blobs per call, per blob;" \
  "CPU/op: server CPU seconds during the window / blobs (digests for FindMissing);" \
  "evicted: blobs our server evicted from before the load (prefill and warm-up included) to its end;" \
  "a reference of ours that evicted any says how many)"
# The hashing rate behind the BLAKE3 rows: what one core does with each function.
"$bench" bench --hash_rate --json >"$work/hash-rate.json" 2>"$work/hash-rate.err" \
  || { cat "$work/hash-rate.err" >&2; die "bench --hash_rate failed"; }
jq -r '.rates as $r | ($r | map({(.function): .mib_per_second}) | add) as $m
  | "hashing, one core, 1 MiB updates: "
    + ($r | map("\(.function) \(.mib_per_second | floor) MiB/s") | join(", "))
    + "; blake3/sha256 \($m.blake3 / $m.sha256 * 100 | floor / 100)"' "$work/hash-rate.json"

# Stalls: the issue's goal is a write p99 at most 3 x its p50, at 16 and
# 64 clients, 4 KiB and 1 MiB, HTTP and gRPC. Each HTTP row shows nginx's
# p99/p50 for the same load beside it: the spread that the shared cores and
# the disk give any server.
echo
{
  printf 'writes\tclients\tp50 ms\tp99 ms\tp99/p50\tnginx p99/p50\tevicted\tgoal\n'
  for key in ours-put-4KiB ours-put-1MiB grpc-write-4KiB-batch grpc-write-1MiB \
    ours-put-4KiB-c64 ours-put-1MiB-c64 grpc-write-4KiB-c64 grpc-write-1MiB-c64; do
    ref=/dev/null
    case $key in ours-put-*) ref=$work/nginx-${key#ours-}.json ;; esac
    jq -nr --arg key "$key" --arg evicted "$(evicted "$key")" --slurpfile o "$work/$key.json" --slurpfile r "$ref" '
      def spread(l): if l.p50_ms > 0 then (l.p99_ms / l.p50_ms * 100 | floor / 100) else "-" end;
      $o[0].total.latency as $l
      | [$key, (if ($key | endswith("-c64")) then "64" else "16" end),
         ($l.p50_ms * 100 | floor / 100), ($l.p99_ms * 100 | floor / 100), spread($l),
         (if ($r | length) > 0 then spread($r[0].total.latency) else "-" end), $evicted, "<=3"]
      | @tsv'
  done
} | column -t -s $'\t'
