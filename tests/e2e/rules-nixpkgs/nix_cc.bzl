"""A module extension that makes nixpkgs' C/C++ compiler a Bazel toolchain.

rules_nixpkgs_cc has no module extension of its own: `nixpkgs_cc_configure`
is a WORKSPACE macro. Called from an extension with `register = False` it
only defines the repositories; MODULE.bazel then names them in `use_repo`
and registers `@nixpkgs_config_cc_toolchains//:all` itself.
"""

load("@rules_nixpkgs_cc//:cc.bzl", "nixpkgs_cc_configure")

def _nix_cc_impl(_module_ctx):
    nixpkgs_cc_configure(
        name = "nixpkgs_config_cc",
        # stdenv.cc of the nixpkgs pinned in //:flake.lock.
        repository = "@nixpkgs",
        register = False,
    )

nix_cc = module_extension(implementation = _nix_cc_impl)
