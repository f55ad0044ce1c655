# The crane build. One `buildDepsOnly` (all of Cargo.lock's dependencies,
# compiled once) is shared by the package and by every cargo check in
# checks.nix, so a change to our code never rebuilds the dependencies.
{ pkgs, craneLib }:

let
  inherit (pkgs) lib;
  root = ../.;
  inherit (lib.fileset) toSource unions;

  # What cargo reads to build the binary, and nothing else: editing Nix
  # files, docs or tests does not rebuild the package. (Cargo checks that
  # every [[bench]] exists, hence benches/.)
  src = toSource {
    inherit root;
    fileset = unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/src")
      (root + "/benches")
    ];
  };

  # The test suite also reads its fixtures, and tests/nix_module.rs the Nix
  # files it checks.
  testSrc = toSource {
    inherit root;
    fileset = unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/src")
      (root + "/benches")
      (root + "/tests")
      (root + "/deploy")
      (root + "/examples")
      (root + "/fuzz")
      (root + "/scripts")
      (root + "/nix")
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

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  bazel-cache = craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    # The tests run in the nextest check, against the same artifacts.
    doCheck = false;
    meta = {
      description = "Bazel remote cache server, drop-in replacement for bazel-remote";
      license = lib.licenses.asl20;
      mainProgram = "bazel-cache";
      platforms = lib.platforms.linux;
    };
  });
in
{
  inherit src testSrc commonArgs cargoArtifacts bazel-cache;
}
