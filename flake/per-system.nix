# All outputs of one system, assembled from the files beside this one.
{ self, nixpkgs, crane, rust-overlay, rules-nixpkgs, system }:

let
  pkgs = import nixpkgs {
    inherit system;
    overlays = [ rust-overlay.overlays.default ];
  };
  # Cargo.toml's rust-version; clippy and rustfmt come with the default profile.
  toolchain = pkgs.rust-bin.stable."1.95.0".default;
  craneLib = (crane.mkLib pkgs).overrideToolchain (_: toolchain);

  build = import ./packages.nix { inherit pkgs craneLib; };
  inherit (build) bazel-cache bazel-cache-bench;
in
{
  packages = {
    inherit bazel-cache bazel-cache-bench;
    default = bazel-cache;
    oci-image = import ./oci-image.nix { inherit pkgs bazel-cache; };
    # The deployment kit's dashboard, so a NixOS Grafana can provision it
    # from the same revision as the server whose metrics it reads.
    grafana-dashboard = pkgs.runCommand "bazel-cache-grafana-dashboard" { } ''
      mkdir -p $out
      cp ${../deploy/grafana/bazel-cache.json} $out/bazel-cache.json
    '';
  };

  # `nix run .#bazel-cache`: no configuration needed; serves
  # ~/.cache/bazel-cache (5 GiB) on :8080 (HTTP) and :9092 (gRPC) and prints
  # the .bazelrc lines that use it.
  # `nix run .#bazel-cache-bench -- <URL> [OPTIONS]`: load any Bazel remote
  # cache (http(s):// or grpc(s)://) and report throughput and latencies.
  apps = rec {
    bazel-cache = {
      type = "app";
      program = "${bazel-cache}/bin/bazel-cache";
      meta.description = "Run a local Bazel remote cache and print the .bazelrc lines for it";
    };
    bazel-cache-bench = {
      type = "app";
      program = "${bazel-cache-bench}/bin/bazel-cache-bench";
      meta.description = "Measure a Bazel remote cache (HTTP or gRPC) under a configurable load";
    };
    default = bazel-cache;
  };

  checks = import ./checks.nix { inherit self pkgs craneLib build nixpkgs rules-nixpkgs; };

  devShells.default = import ./devshell.nix { inherit pkgs craneLib; };

  formatter = pkgs.nixpkgs-fmt;
}
