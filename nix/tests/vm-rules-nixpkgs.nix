# vm-rules-nixpkgs: Bazel with a rules_nixpkgs C/C++ toolchain (the design
# document's section 3; tests/e2e/rules-nixpkgs) builds C++ against the
# server; after wiping the output base a second build is served entirely
# from the cache.
#
# The client VM has no network, so everything Bazel and Nix would fetch is
# in its store beforehand:
# - Bazel's modules: the registry snapshot and repository cache of
#   bazel-deps.nix;
# - `@nixpkgs`: the flake's own nixpkgs source; the workspace's nixpkgs.nix
#   asks for it by the NAR hash in flake.lock, which names this store path;
# - the toolchain rules_nixpkgs asks Nix for: cc.nix of the same
#   rules_nixpkgs release, evaluated here with the same arguments, so Nix in
#   the VM finds the output already valid and builds nothing.
# Cannot run where Nix cannot; its closest mirror is the gRPC test of
# tests/clients/e2e_bazel.rs (a C++ build, expunged, rebuilt from cache alone).
{ pkgs, module, bazelDeps, nixpkgs, rules-nixpkgs }:

let
  inherit (bazelDeps) bazel rulesNixpkgsWorkspace;

  # What `nixpkgs_cc_configure(repository = "@nixpkgs")` builds in the VM:
  # cc.nix with ccType "ccTypeDefault" and `import <nixpkgs> { config = { };
  # overlays = [ ]; }`, the same nixpkgs as here.
  ccToolchainInfo = import "${rules-nixpkgs}/toolchains/cc/cc.nix" {
    ccType = "ccTypeDefault";
    ccPkgs = import nixpkgs {
      inherit (pkgs.stdenv.hostPlatform) system;
      config = { };
      overlays = [ ];
    };
  };

  build = remote: bazelDeps.bazelCommand "/root/ws" "build" [
    "--remote_cache=${remote}"
    "--disk_cache="
    "--remote_upload_local_results"
    "//..."
  ];
in
pkgs.testers.runNixOSTest {
  name = "bazel-cache-vm-rules-nixpkgs";

  nodes.server = {
    imports = [ module ];
    services.bazel-cache = {
      enable = true;
      openFirewall = true;
    };
  };

  nodes.client = {
    virtualisation.memorySize = 4096;
    virtualisation.diskSize = 8192;
    virtualisation.additionalPaths = [
      rulesNixpkgsWorkspace
      bazelDeps.registry
      bazelDeps.repositoryCache
      "${nixpkgs}"
      ccToolchainInfo
    ];
    nix.settings = {
      substituters = pkgs.lib.mkForce [ ];
      experimental-features = [ "nix-command" ];
    };
    environment.systemPackages = [ bazel pkgs.curl ];
  };

  testScript = ''
    import re

    def processes(output):
        lines = re.findall(r"INFO: \d+ process(?:es)?(?:: (.*))?\.", output)
        assert lines, f"no process summary in:\n{output}"
        counts = {}
        for part in (lines[-1] or "").split(", "):
            if part:
                n, kind = part.split(" ", 1)
                counts[kind] = counts.get(kind, 0) + int(n)
        return counts

    start_all()
    server.wait_for_unit("bazel-cache.service")
    server.wait_for_open_port(9092)
    client.succeed("${bazelDeps.clientSetup}")
    client.succeed("cp -r --no-preserve=mode ${rulesNixpkgsWorkspace} /root/ws")

    with subtest("the cold build compiles with the nixpkgs toolchain and uploads"):
        out = client.succeed("${build "grpc://server:9092"} 2>&1")
        cold = processes(out)
        assert any(k not in ("internal", "remote cache hit") for k in cold), cold
        client.succeed("/root/ws/bazel-bin/hello | grep -q 'from a nixpkgs toolchain'")
        # The binary was linked by nixpkgs' compiler: its interpreter is
        # nixpkgs' glibc, not the host's.
        client.succeed("${pkgs.patchelf}/bin/patchelf --print-interpreter /root/ws/bazel-bin/hello | grep -q '^/nix/store/'")

    with subtest("a clean rebuild is served entirely from the cache"):
        client.succeed("${bazelDeps.bazelCommand "/root/ws" "clean" [ "--expunge" ]}")
        warm = processes(client.succeed("${build "grpc://server:9092"} 2>&1"))
        ran = {k: n for k, n in warm.items() if k not in ("remote cache hit", "internal")}
        assert not ran, f"actions ran instead of coming from the cache: {warm}"
        assert warm.get("remote cache hit", 0) >= 3, warm
        client.succeed("grep -q 'from a nixpkgs toolchain' /root/ws/bazel-bin/hello_out.txt")
  '';
}
