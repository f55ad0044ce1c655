# vm-s3: two bazel-cache servers, each with its own disk, sharing one MinIO
# bucket (nixpkgs' services.minio). A blob written through one is read
# through the other. The S3 keys reach the servers only through the
# module's environmentFile, written at run time (never in the Nix store).
# Mirrored where Nix cannot run by tests/s3/nix_module.rs
# (vm_s3_mirror_two_replicas_share_a_bucket_with_credentials_from_the_environment)
# and tests/s3/s3.rs, against s3s-fs.
{ pkgs, module }:

let
  accessKey = "bazelcache";
  secretKey = "vm-test-secret-key";
  cacheNode = {
    imports = [ module ];
    services.bazel-cache = {
      enable = true;
      openFirewall = true;
      environmentFile = "/run/bazel-cache.env";
      settings = {
        max_size = 1;
        s3_proxy = {
          endpoint = "minio:9000";
          bucket = "bazel-cache";
          bucket_lookup_type = "path";
          disable_ssl = true;
        };
      };
    };
    # Started by the test once the credentials file exists.
    systemd.services.bazel-cache.wantedBy = pkgs.lib.mkForce [ ];
    environment.systemPackages = [ pkgs.curl pkgs.jq ];
  };
in
pkgs.testers.runNixOSTest {
  name = "bazel-cache-vm-s3";

  nodes.minio = {
    services.minio = {
      enable = true;
      # MinIO's own root credentials; a test value, fine in the store.
      rootCredentialsFile = pkgs.writeText "minio-root-credentials" ''
        MINIO_ROOT_USER=${accessKey}
        MINIO_ROOT_PASSWORD=${secretKey}
      '';
    };
    networking.firewall.allowedTCPPorts = [ 9000 ];
    environment.systemPackages = [ pkgs.minio-client ];
  };
  nodes.a = cacheNode;
  nodes.b = cacheNode;

  testScript = ''
    import json

    start_all()
    with subtest("MinIO has the bucket"):
        minio.wait_for_unit("minio.service")
        minio.wait_for_open_port(9000)
        minio.succeed(
            "mc alias set local http://localhost:9000 ${accessKey} ${secretKey}",
            "mc mb local/bazel-cache",
        )

    for node in (a, b):
        node.succeed(
            "umask 077; printf 'BAZEL_REMOTE_S3_ACCESS_KEY_ID=${accessKey}\\nBAZEL_REMOTE_S3_SECRET_ACCESS_KEY=${secretKey}\\n' > /run/bazel-cache.env",
            "systemctl start bazel-cache",
        )
        node.wait_for_unit("bazel-cache.service")
        node.wait_for_open_port(8080)

    def status(node):
        return json.loads(node.succeed("curl -sf http://localhost:8080/status"))

    with subtest("a blob written through a reaches the bucket"):
        a.succeed("head -c 300000 /dev/urandom > /tmp/blob")
        digest = a.succeed("sha256sum /tmp/blob | cut -d' ' -f1").strip()
        a.succeed(f"curl -sf -X PUT --data-binary @/tmp/blob http://localhost:8080/cas/{digest}")
        a.wait_until_succeeds(
            "curl -sf http://localhost:8080/status | jq -e '.Backend.UploadsDone >= 1'", timeout=60
        )
        minio.succeed(f"mc ls --recursive local/bazel-cache | grep -q {digest}")

    with subtest("b, with an empty disk, serves it from the bucket"):
        assert status(b)["NumFiles"] == 0
        b.succeed(f"curl -sf -o /tmp/blob http://a:8080/cas/{digest}")
        b.succeed(f"curl -sf -o /tmp/through-b http://localhost:8080/cas/{digest}")
        b.succeed("cmp /tmp/blob /tmp/through-b")
        st = status(b)
        assert st["NumFiles"] == 1, st
        assert st["Backend"]["Hits"] >= 1, st

    with subtest("the secret is not in the unit"):
        a.fail("grep -r ${secretKey} /etc/systemd/system/bazel-cache.service")
        a.fail("systemctl cat bazel-cache | grep -q ${secretKey}")
  '';
}
