# `packages.oci-image`: the design document's Deployment runs it unchanged
# (section 2.2): non-root uid/gid 1000, `args = ["--config_file=/etc/bazel-remote/config.yaml"]`
# appended to the entrypoint, the cache in /data (an emptyDir), ports 8080
# (HTTP, /status, /metrics) and 9092 (gRPC, health), CA certificates for TLS
# to S3. Nothing else: no shell, no package manager.
#
#   nix build .#oci-image && ./result | docker load     # or: | podman load
#   docker tag bazel-cache:<version> registry.example.org/bazel-cache:<version>
#   docker push registry.example.org/bazel-cache:<version>
#   # without a Docker daemon:
#   ./result | gzip --fast | skopeo copy docker-archive:/dev/stdin docker://registry.example.org/bazel-cache:<version>
{ pkgs, bazel-cache }:

pkgs.dockerTools.streamLayeredImage {
  name = "bazel-cache";
  tag = bazel-cache.version;
  # /etc/ssl/certs/ca-bundle.crt and ca-certificates.crt, where the S3
  # client (rustls with the platform's roots) looks on Linux.
  contents = [ pkgs.cacert ];
  fakeRootCommands = ''
    mkdir -p data etc/bazel-remote tmp
    chown 1000:1000 data
    chmod 1777 tmp
  '';
  config = {
    User = "1000:1000";
    Entrypoint = [ "${bazel-cache}/bin/bazel-cache" ];
    # There is no HOME in the image, so the default `dir` would be refused:
    # without arguments the image serves /data. The Deployment's `args`
    # replace this, and its ConfigMap sets `dir: /data`.
    Cmd = [ "--dir=/data" ];
    WorkingDir = "/data";
    Env = [ "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt" ];
    ExposedPorts = {
      "8080/tcp" = { };
      "9092/tcp" = { };
    };
    Volumes."/data" = { };
    Labels = {
      "org.opencontainers.image.title" = "bazel-cache";
      "org.opencontainers.image.description" = bazel-cache.meta.description;
      "org.opencontainers.image.version" = bazel-cache.version;
      "org.opencontainers.image.licenses" = "Apache-2.0";
    };
  };
}
