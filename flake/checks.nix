# `nix flake check`: the cargo checks (all on the one shared
# `cargoArtifacts`), the Nix linters CI also runs, and the NixOS VM tests.
{ self, pkgs, craneLib, build, nixpkgs, rules-nixpkgs }:

let
  inherit (pkgs) lib;
  inherit (build) commonArgs cargoArtifacts testSrc bazel-cache bazel-cache-bench;
  testArgs = commonArgs // {
    src = testSrc;
    inherit cargoArtifacts;
  };
  module = self.nixosModules.bazel-cache;
  bazelDeps = import ../nix/tests/bazel-deps.nix { inherit pkgs lib; };
in
{
  inherit bazel-cache bazel-cache-bench;

  clippy = craneLib.cargoClippy (testArgs // {
    cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
  });

  rustfmt = craneLib.cargoFmt { src = testSrc; };

  # The suite in the build sandbox, minus what needs tools nixpkgs lacks or
  # the sandbox forbids: nextest's `sandbox` profile (.config/nextest.toml,
  # which says why) leaves out the `clients` and `s3` test binaries,
  # `s3_tls`, and the tests in `privileged` modules.
  nextest = craneLib.cargoNextest (testArgs // {
    nativeBuildInputs = [
      pkgs.nix
      pkgs.procps
      pkgs.openssl
      pkgs.curl
      pkgs.apacheHttpd # htpasswd
    ];
    preCheck = ''
      export HOME=$(mktemp -d)
    '';
    cargoNextestExtraArgs = "--workspace --profile sandbox";
  });

  nix-lint = pkgs.runCommand "bazel-cache-nix-lint"
    {
      nativeBuildInputs = [ pkgs.deadnix pkgs.nixpkgs-fmt ];
    } ''
    cd ${self}
    deadnix --fail .
    nixpkgs-fmt --check .
    touch $out
  '';

  vm-basic = import ../nix/tests/vm-basic.nix { inherit pkgs module bazelDeps; };
  vm-s3 = import ../nix/tests/vm-s3.nix { inherit pkgs module; };
  vm-rules-nixpkgs = import ../nix/tests/vm-rules-nixpkgs.nix {
    inherit pkgs module bazelDeps nixpkgs rules-nixpkgs;
  };
}
