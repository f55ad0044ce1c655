# `nixosModules.bazel-cache`: nix/module.nix with `package` defaulting to
# this flake's build for the machine's platform.
{ self }:

{ lib, pkgs, ... }:
{
  imports = [ ../nix/module.nix ];
  services.bazel-cache.package =
    lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.bazel-cache;
}
