# vm-basic: a server with `services.bazel-cache` and a client with Bazel 7.
# The client builds tests/e2e/bazel-workspace (a 5 MiB output, an empty
# output, C++ compiled and then run as a tool) against the server over HTTP
# and over gRPC; after wiping its output base every cacheable action must be
# a remote cache hit. /status, /metrics and gRPC health answer, and the
# service restarts with its index intact.
# Mirrored where Nix cannot run by tests/clients/e2e_bazel.rs (Bazel over
# HTTP and gRPC, cold then all hits, restart) and tests/deploy/nix_module.rs
# (the module's configuration: probes and restart).
{ pkgs, module, bazelDeps }:

let
  inherit (bazelDeps) bazel basicWorkspace;
  # Every target but the cc_test: a test action needs the coverage tools
  # Bazel would download, and the VM has no network.
  targets = [ "--" "//..." "-//:greet_test" ];
  build = remote: bazelDeps.bazelCommand "/root/ws" "build" ([
    "--remote_cache=${remote}"
    "--disk_cache="
    "--remote_upload_local_results"
    "--incompatible_strict_action_env"
    "--repo_env=CC=${pkgs.stdenv.cc}/bin/cc"
  ] ++ targets);
in
pkgs.testers.runNixOSTest {
  name = "bazel-cache-vm-basic";

  nodes.server = {
    imports = [ module ];
    services.bazel-cache = {
      enable = true;
      openFirewall = true;
      settings.max_size = 2;
    };
  };

  nodes.client = {
    virtualisation.memorySize = 4096;
    virtualisation.diskSize = 8192;
    virtualisation.additionalPaths = [
      basicWorkspace
      bazelDeps.registry
      bazelDeps.repositoryCache
      pkgs.stdenv.cc
    ];
    environment.systemPackages = [ bazel pkgs.curl pkgs.jq pkgs.grpc-health-probe ];
  };

  testScript = ''
    import json
    import re

    def processes(output):
        """{'remote cache hit': 7, 'internal': 5, ...} from Bazel's summary line."""
        lines = re.findall(r"INFO: \d+ process(?:es)?(?:: (.*))?\.", output)
        assert lines, f"no process summary in:\n{output}"
        counts = {}
        for part in (lines[-1] or "").split(", "):
            if part:
                n, kind = part.split(" ", 1)
                counts[kind] = counts.get(kind, 0) + int(n)
        return counts

    def fresh_workspace():
        client.succeed("rm -rf /root/ws /root/bazel-root; cp -r --no-preserve=mode ${basicWorkspace} /root/ws")

    def build(remote):
        return client.succeed("${build "REMOTE"} 2>&1".replace("REMOTE", remote))

    def expunge():
        client.succeed("${bazelDeps.bazelCommand "/root/ws" "clean" [ "--expunge" ]}")

    def status():
        return json.loads(client.succeed("curl -sf http://server:8080/status"))

    def cold_then_all_hits(remote):
        fresh_workspace()
        cold = processes(build(remote))
        assert cold.get("remote cache hit", 0) == 0 or remote.startswith("grpc"), cold
        expunge()
        warm = processes(build(remote))
        ran = {k: n for k, n in warm.items() if k not in ("remote cache hit", "internal")}
        assert not ran, f"actions ran instead of coming from {remote}: {warm}"
        assert warm.get("remote cache hit", 0) >= 5, warm
        out = client.succeed("cat /root/ws/bazel-bin/hello_out.txt")
        assert out.strip(), "hello_out.txt is empty"
        client.succeed("test $(stat -c %s /root/ws/bazel-bin/big.txt) = 5242880")

    start_all()
    client.succeed("${bazelDeps.clientSetup}")

    with subtest("the unit is a hardened notify service and became ready"):
        server.wait_for_unit("bazel-cache.service")
        server.wait_for_open_port(8080)
        server.wait_for_open_port(9092)
        assert server.succeed("systemctl show -P Type bazel-cache").strip() == "notify"
        assert server.succeed("systemctl show -P DynamicUser bazel-cache").strip() == "yes"
        print(server.succeed("systemd-analyze security bazel-cache.service | tail -1"))

    with subtest("/status, /metrics and gRPC health answer"):
        st = status()
        assert st["MaxSize"] == 2 * 1024**3, st
        client.succeed("curl -sf http://server:8080/metrics | grep -q '^bazel_remote_disk_cache_entries'")
        client.succeed("grpc-health-probe -addr=server:9092")

    with subtest("HTTP: a cold build uploads, a clean rebuild is all cache hits"):
        cold_then_all_hits("http://server:8080")

    with subtest("gRPC: a clean rebuild is all cache hits"):
        cold_then_all_hits("grpc://server:9092")

    with subtest("the service restarts with its index intact"):
        before = status()["NumFiles"]
        assert before > 0
        server.succeed("systemctl restart bazel-cache")
        server.wait_for_unit("bazel-cache.service")
        server.wait_for_open_port(8080)
        assert status()["NumFiles"] == before
        expunge()
        warm = processes(build("http://server:8080"))
        ran = {k: n for k, n in warm.items() if k not in ("remote cache hit", "internal")}
        assert not ran, f"after the restart actions ran: {warm}"
  '';
}
