# `nix develop`: the pinned Rust toolchain (with clippy and rustfmt), Bazel
# and ccache for the end-to-end tests, MinIO as a local S3 server, and the
# Nix linters CI runs.
{ pkgs, craneLib }:

craneLib.devShell {
  packages = [
    pkgs.bazel_7
    pkgs.ccache
    pkgs.minio
    pkgs.minio-client
    pkgs.openssl
    pkgs.cargo-nextest
    pkgs.deadnix
    pkgs.nixpkgs-fmt
  ];
  # The e2e tests run Debian's Bazel 4.2.3 by default; this one is newer.
  shellHook = ''
    echo "bazel-cache dev shell: cargo test --workspace; nix flake check for the VM tests"
  '';
}
