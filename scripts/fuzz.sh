#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, all targets)
#
# Each target starts from its seed corpus in fuzz/corpus/<target>/ (kept in
# the repository, read-only here) and writes what it discovers to a
# scratch directory, so runs never grow the committed corpus; set
# FUZZ_KEEP_CORPUS=1 to merge the inputs that reach new coverage into
# fuzz/corpus (keep it small: a few hundred files per target at most).
# A crash stops the script with libFuzzer's report; the input is saved
# under fuzz/artifacts/<target>/.
#
# cargo fuzz needs nightly-only compiler flags (-Zsanitizer=address, ...).
# This project's toolchain is stable 1.95 and CI machines cannot fetch
# another, so the script sets RUSTC_BOOTSTRAP=1, which lets the stable
# compiler accept them (checked with cargo-fuzz 0.13.2 on rustc 1.95).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

export RUSTC_BOOTSTRAP=1
# One instrumented build for all targets (release, debug assertions, ASan).
cargo fuzz build

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "=== fuzzing $target for ${seconds}s"
  mkdir -p "$scratch/$target" "corpus/$target"
  log="$scratch/$target.log"
  # -rss_limit_mb: ASan's shadow memory counts towards RSS.
  if ! cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz target $target failed; reproduce with:" \
      "(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target artifacts/$target/<file>)" >&2
    exit 1
  fi
  grep -E '^(INFO: seed corpus|#[0-9]+ +DONE|Done [0-9]+ runs|stat::(number_of_executed_units|new_units_added|peak_rss_mb))' "$log" || true
  if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
    # libFuzzer's merge adds only inputs that reach new coverage and leaves
    # the existing (named, hand-written) seeds as they are.
    cargo fuzz run "$target" "corpus/$target" "$scratch/$target" -- -merge=1 >"$log" 2>&1 ||
      { tail -n 40 "$log" >&2; exit 1; }
  fi
done
echo "fuzzing done: ${#targets[@]} target(s), ${seconds}s each, no crash"
