# The crane build. One `buildDepsOnly` (the dependencies of every workspace
# member, compiled once) is shared by the packages and by every cargo check
# in checks.nix, so a change to our code never rebuilds the dependencies.
{ pkgs, craneLib }:

let
  inherit (pkgs) lib;
  root = ../.;
  inherit (lib.fileset) toSource unions;

  # What cargo reads to build the binaries, and nothing else: editing Nix
  # files, docs or tests does not rebuild the packages. The workspace is the
  # server (the root package) and its crates under crates/. (Cargo checks
  # that every [[bench]] exists, hence benches/.)
  src = toSource {
    inherit root;
    fileset = unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/src")
      (root + "/crates")
      (root + "/benches")
    ];
  };

  # The test suite also reads its fixtures, tests/deploy the deployment kit
  # and the Nix files it checks, and nextest its profiles
  # (.config/nextest.toml).
  testSrc = toSource {
    inherit root;
    fileset = unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/.config/nextest.toml")
      (root + "/src")
      (root + "/crates")
      (root + "/benches")
      (root + "/tests")
      (root + "/deploy")
      (root + "/examples")
      (root + "/fuzz")
      (root + "/scripts")
      (root + "/nix")
      (root + "/nixos-modules")
      (root + "/flake")
      (root + "/flake.nix")
      (root + "/flake.lock")
    ];
  };

  commonArgs = {
    inherit src;
    inherit (craneLib.crateNameFromCargoToml { inherit src; }) pname version;
    strictDeps = true;
  };

  # Every member's dependencies (and dev-dependencies, for the checks).
  cargoArtifacts = craneLib.buildDepsOnly (commonArgs // {
    cargoExtraArgs = "--locked --workspace";
  });

  bazel-cache = craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    cargoExtraArgs = "--locked --package bazel-cache";
    # The tests run in the nextest check, against the same artifacts.
    doCheck = false;
    meta = {
      description = "Bazel remote cache server, drop-in replacement for bazel-remote";
      license = lib.licenses.asl20;
      mainProgram = "bazel-cache";
      platforms = lib.platforms.linux;
    };
  });

  # The load generator (crates/bench) on its own: `bazel-cache bench` without
  # the server, for measuring any cache (bazel-remote, a CI's cache, ...).
  bazel-cache-bench = craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    pname = "bazel-cache-bench";
    cargoExtraArgs = "--locked --package bazel-cache-bench";
    doCheck = false;
    meta = {
      description = "Load generator for any Bazel remote cache (HTTP or REAPI v2 gRPC)";
      license = lib.licenses.asl20;
      mainProgram = "bazel-cache-bench";
      platforms = lib.platforms.linux;
    };
  });
in
{
  inherit src testSrc commonArgs cargoArtifacts bazel-cache bazel-cache-bench;
}
