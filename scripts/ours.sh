# Sourced by the performance scripts (perf-compare.sh, protocol-ceiling.sh,
# scale-test.sh): this server, started on ports the kernel chooses.
#
#   start_ours BINARY LOG ARGS...
#       starts BINARY (bazel-cache) with ARGS, its output in LOG, and waits
#       until it serves; sets OURS_PID, OURS_HTTP and OURS_GRPC (empty with
#       `--grpc_address none`) from the `build --remote_cache=` lines it
#       prints. When it does not come up within 30 s, stops it and exits 2
#       with the log's tail. The caller stops it (OURS_PID) when done.

start_ours() {
  local binary=$1 log=$2 grpc=yes _
  shift 2
  case " $* " in *" --grpc_address none "*) grpc="" ;; esac
  "$binary" "$@" >"$log" 2>&1 &
  OURS_PID=$!
  for _ in $(seq 300); do
    OURS_HTTP=$(sed -n 's/^build --remote_cache=\(http:[^ ]*\)$/\1/p' "$log")
    OURS_GRPC=$(sed -n 's/^build --remote_cache=\(grpc:[^ ]*\)$/\1/p' "$log")
    if [ -n "$OURS_HTTP" ] && { [ -z "$grpc" ] || [ -n "$OURS_GRPC" ]; }; then
      return 0
    fi
    kill -0 "$OURS_PID" 2>/dev/null || break
    sleep 0.1
  done
  { kill "$OURS_PID" && wait "$OURS_PID"; } 2>/dev/null || true
  tail -n 20 "$log" >&2
  echo "${0##*/}: the server ($*) did not start" >&2
  exit 2
}
