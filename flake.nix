{
  description = "bazel-cache: a Bazel remote cache server, drop-in for bazel-remote (package, OCI image, NixOS module, VM tests)";

  # Everything per system lives in flake/: packages.nix (one crane
  # buildDepsOnly shared by the packages, bazel-cache and bazel-cache-bench,
  # and every check), oci-image.nix, checks.nix (clippy, rustfmt, nextest,
  # the NixOS VM tests), devshell.nix; the NixOS module is
  # nixos-modules/bazel-cache.nix, wrapped by flake/nixos-module.nix, and
  # its VM tests are nix/tests/.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
    # The exact Rust the project is developed with (Cargo.toml's
    # rust-version), whatever rustc the nixpkgs release carries.
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    # The release rules_nixpkgs_cc is taken from in the vm-rules-nixpkgs
    # workspace: its cc.nix builds the toolchain the VM's Bazel asks Nix for,
    # prebuilt here because the VM has no network.
    rules-nixpkgs = {
      url = "github:tweag/rules_nixpkgs/v0.13.0";
      flake = false;
    };
  };

  outputs = { self, nixpkgs, crane, rust-overlay, rules-nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      perSystem = nixpkgs.lib.genAttrs systems (
        system: import ./flake/per-system.nix { inherit self nixpkgs crane rust-overlay rules-nixpkgs system; }
      );
      output = name: nixpkgs.lib.mapAttrs (_: outputs: outputs.${name}) perSystem;
    in
    {
      packages = output "packages";
      apps = output "apps";
      checks = output "checks";
      devShells = output "devShells";
      formatter = output "formatter";

      nixosModules = rec {
        bazel-cache = import ./flake/nixos-module.nix { inherit self; };
        default = bazel-cache;
      };

      overlays.default = final: _prev: {
        bazel-cache = self.packages.${final.stdenv.hostPlatform.system}.bazel-cache;
      };
    };
}
