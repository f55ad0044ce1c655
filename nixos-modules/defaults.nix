# The settings the NixOS module renders into config.yaml when
# `services.bazel-cache.settings` is left alone. Plain Nix with no function
# and no nixpkgs, so CI (Debian's Nix, no channels) can evaluate it with
# `nix-instantiate --eval --strict --json nixos-modules/defaults.nix` and
# tests/deploy/nix_module.rs can check that tests/nix/module-defaults.yaml,
# the copy fed to `bazel-cache check-config`, is still what the module
# renders.
{
  # Always explicit: a systemd service has no HOME, and without `dir` the
  # binary would refuse to start ("neither XDG_CACHE_HOME nor HOME is set").
  # This is the unit's StateDirectory.
  dir = "/var/lib/bazel-cache";
  # GiB, as in bazel-remote.
  max_size = 5;
  http_address = "0.0.0.0:8080";
  grpc_address = "0.0.0.0:9092";
  # journald stamps every line already.
  log_timezone = "none";
}
