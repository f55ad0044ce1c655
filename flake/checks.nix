# `nix flake check`: the cargo checks (all on the one shared
# `cargoArtifacts`), the Nix linters CI also runs, and the NixOS VM tests.
{ self, pkgs, craneLib, build, nixpkgs, rules-nixpkgs }:

let
  inherit (pkgs) lib;
  inherit (build) commonArgs cargoArtifacts testSrc bazel-cache;
  testArgs = commonArgs // {
    src = testSrc;
    inherit cargoArtifacts;
  };
  module = self.nixosModules.bazel-cache;
  bazelDeps = import ../nix/tests/bazel-deps.nix { inherit pkgs lib; };
in
{
  inherit bazel-cache;

  clippy = craneLib.cargoClippy (testArgs // {
    cargoClippyExtraArgs = "--all-targets -- --deny warnings";
  });

  rustfmt = craneLib.cargoFmt { src = testSrc; };

  # The suite in the build sandbox, minus what needs tools nixpkgs lacks or
  # the sandbox forbids: Debian's Bazel 4.2.3 (e2e_bazel and the example
  # checks in deploy; Bazel 7 runs in the VM tests instead), s3s-fs, the
  # SigV4-checking S3 server (the s3 tests and the deploy/metrics tests that
  # start one; vm-s3 covers the proxy against MinIO), and mounting a tmpfs
  # (the disk-full test needs root).
  nextest = craneLib.cargoNextest (testArgs // {
    nativeBuildInputs = [
      pkgs.ccache
      pkgs.nix
      pkgs.procps
      pkgs.openssl
      pkgs.curl
      pkgs.apacheHttpd # htpasswd
    ];
    preCheck = ''
      export HOME=$(mktemp -d)
    '';
    cargoNextestExtraArgs = lib.escapeShellArgs [
      "--no-fail-fast"
      "-E"
      ("not (binary(e2e_bazel) | binary(s3) | binary(s3_client) | binary(s3_tls)"
        + " | test(vm_s3_mirror) | test(a_full_disk_gives_507_keeps_serving_reads_and_recovers)"
        + " | (binary(deploy) & (test(server::probes_and_ports_match_what_the_server_serves)"
        + " | test(monitoring::alerts_and_dashboard_query_only_exported_metrics)))"
        + " | (binary(metrics) & (test(the_design_alert_rules_find_their_metrics) | test(s3_requests_hits_misses_and_the_upload_queue))))")
    ];
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
