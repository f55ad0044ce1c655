#!/usr/bin/env bash
# The whole test suite in one command (CI runs it through .ci/run). On a
# fresh Debian 12 machine it first installs what is missing, skipping what
# is already there, then runs, stopping at the first failure:
#
#   1. cargo fmt --all -- --check
#   2. cargo clippy --workspace --all-targets --locked -- -D warnings
#   3. the Nix files (flake.nix, flake/, nix/, nixos-modules/, tests/nix/):
#      every one parses, deadnix finds no unused binding, nixpkgs-fmt --check
#   4. every cargo-fuzz target for FUZZ_SECONDS (default 20) from its seed
#      corpus (scripts/fuzz.sh)
#   5. cargo test --workspace --locked: every test binary (tests/<group>/,
#      see .config/nextest.toml for what each needs)
#
#   scripts/test.sh                      # everything
#   FUZZ_SECONDS=60 scripts/test.sh      # fuzz longer
#
# Needs root, or sudo, for apt-get; and root for the test that mounts a
# tmpfs (api `limits::privileged::`; CI runs as root). Cost on 2 cores,
# from scratch: a few minutes of installs, ~6 min for the instrumented fuzz
# build, the test suite ~10 min.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# Where `cargo install` puts the tools below, so they are found (and not
# installed again) even when it is not on the caller's PATH.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# ----------------------------------------------------------------- install

missing=()
command -v bazel >/dev/null 2>&1 || missing+=(bazel-bootstrap)      # Bazel 4.2.3: tests/clients
command -v ccache >/dev/null 2>&1 || missing+=(ccache)               # ccache's layout=bazel remote storage: tests/clients
command -v chromium >/dev/null 2>&1 || missing+=(chromium)           # the browser of tests/clients/web_browser.rs
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver) # its WebDriver server
command -v gcc >/dev/null 2>&1 || missing+=(build-essential)         # the C/C++ the clients compile; cargo install
command -v openssl >/dev/null 2>&1 || missing+=(openssl)             # certificates for the TLS tests
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)      # htpasswd entries: tests/api/auth.rs
command -v curl >/dev/null 2>&1 || missing+=(curl)                   # the HTTPS client of tests/api/auth.rs
command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)     # Debian's Nix 2.8: step 3, tests/deploy/nix_module.rs
if [ ${#missing[@]} -gt 0 ]; then
  sudo_=""
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq "${missing[@]}"
fi

# The toolchain's own linters, where rustup manages it.
if command -v rustup >/dev/null 2>&1; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

# A real S3 server that checks SigV4 signatures, for tests/s3 and
# tests/s3_tls.rs. (0.14.1: newer releases need a newer rustc than this
# toolchain.)
command -v s3s-fs >/dev/null 2>&1 || cargo install s3s-fs@0.14.1 --locked --features binary
# The Nix linters (these versions build with this toolchain).
command -v deadnix >/dev/null 2>&1 || cargo install deadnix@1.3.1 --locked
command -v nixpkgs-fmt >/dev/null 2>&1 || cargo install nixpkgs-fmt@1.3.0 --locked
# cargo fuzz (0.13.2 builds on rustc 1.95).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz@0.13.2 --locked

# ------------------------------------------------------------------- check

echo "=== cargo fmt"
cargo fmt --all -- --check

echo "=== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# What of the Nix appliance can be checked without nixpkgs or a binary
# cache: Debian's Nix parses every .nix file (with a dummy store: no Nix
# store, channels or NIX_PATH needed), deadnix finds unused bindings,
# nixpkgs-fmt checks the formatting. (tests/deploy/nix_module.rs also
# evaluates nixos-modules/defaults.nix with that Nix.)
echo "=== Nix files"
mapfile -t nix_files < <(find . -type d \( -name target -o -name .git -o -name 'bazel-*' \) -prune -o -name '*.nix' -type f -print | sort)
for f in "${nix_files[@]}"; do
  nix-instantiate --option store dummy:// --parse "$f" >/dev/null
done
deadnix --fail "${nix_files[@]}"
nixpkgs-fmt --check "${nix_files[@]}"

# Fuzzing (fuzz/): every target for a short, bounded time from its
# committed seed corpus; a crash fails the run. cargo fuzz passes
# nightly-only compiler flags (-Zsanitizer=address); with only the stable
# toolchain, scripts/fuzz.sh sets RUSTC_BOOTSTRAP=1, which makes stable
# rustc accept them.
echo "=== fuzzing"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

echo "=== cargo test"
cargo test --workspace --locked
