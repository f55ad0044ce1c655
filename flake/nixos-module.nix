# `nixosModules.bazel-cache`: nixos-modules/bazel-cache.nix with `package`
# defaulting to this flake's build for the machine's platform.
{ self }:

{ lib, pkgs, ... }:
{
  imports = [ ../nixos-modules/bazel-cache.nix ];
  services.bazel-cache.package =
    lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.bazel-cache;
}
