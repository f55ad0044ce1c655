#!/usr/bin/env bash
# Evaluates the NixOS module (nixos-modules/bazel-cache.nix) with nixpkgs'
# module system, against stubs of the NixOS options it sets
# (tests/nix/eval-module.nix), and
# prints what it renders: config.yaml, the systemd unit, the firewall ports
# and the assertions that fire, for four configurations. Needs Nix and a
# checkout of nixpkgs.lib (or nixpkgs); nothing is built or downloaded.
#
#   tests/nix/eval-module.sh /path/to/nixpkgs.lib [attribute]
#
# Without a path it explains itself and exits 0, since CI has neither.
set -euo pipefail
cd "$(dirname "$0")/../.."

lib_root="${1:-${NIXPKGS_LIB:-}}"
if [ -z "$lib_root" ]; then
  echo "usage: $0 /path/to/nixpkgs.lib-or-nixpkgs [defaults|s3WithEnvironmentFile|secretsInTheStore|privilegedPortAndOtherDir]" >&2
  echo "skipped: no nixpkgs.lib given (also read from \$NIXPKGS_LIB)" >&2
  exit 0
fi
if [ ! -f "$lib_root/lib/default.nix" ]; then
  echo "error: $lib_root/lib/default.nix does not exist; give the root of a nixpkgs.lib or nixpkgs checkout" >&2
  exit 2
fi
command -v nix-instantiate >/dev/null || { echo "error: nix-instantiate not found (apt-get install nix-bin)" >&2; exit 2; }

attrs=("${@:2}")
[ ${#attrs[@]} -gt 0 ] || attrs=(defaults s3WithEnvironmentFile secretsInTheStore privilegedPortAndOtherDir)
for attr in "${attrs[@]}"; do
  echo "=== $attr"
  # A dummy store: evaluation must not need (or write) a Nix store.
  nix-instantiate --eval --strict --json --option store dummy:// \
    --arg lib "import $(realpath "$lib_root")/lib" \
    -A "$attr" tests/nix/eval-module.nix
  echo
done
