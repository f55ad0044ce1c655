"""A module extension that makes nixpkgs' python3 a Bazel Python toolchain.

Like nix_cc.bzl: `nixpkgs_python_configure` is a WORKSPACE macro; called
from an extension with `register = False` it only defines the repositories,
and MODULE.bazel registers `@nixpkgs_python_toolchain//:toolchain`.
"""

load("@rules_nixpkgs_python//:python.bzl", "nixpkgs_python_configure")

def _nix_python_impl(_module_ctx):
    nixpkgs_python_configure(
        name = "nixpkgs_python_toolchain",
        python3_attribute_path = "python3",
        repository = "@nixpkgs",
        register = False,
    )

nix_python = module_extension(implementation = _nix_python_impl)
