# Bazel, its workspaces and their module dependencies for the VM tests,
# whose machines have no network.
#
# - `registry`: the Bazel Central Registry at a fixed commit, so module
#   resolution reads `file://` from the store instead of bcr.bazel.build.
# - `repositoryCache`: every archive Bazel downloads for the two workspaces
#   (rules_cc, platforms, rules_java's toolchain definitions, rules_nixpkgs,
#   ...), fetched by Bazel itself in one fixed-output derivation, as nixpkgs'
#   own Bazel packaging does. Its hash cannot be known before that first
#   fetch: see `repositoryCacheHash` below.
# - `basicWorkspace`: tests/e2e/bazel-workspace (written for Debian's Bazel
#   4.2.3 and its WORKSPACE file) plus a MODULE.bazel, for Bazel 7's Bzlmod.
# - `rulesNixpkgsWorkspace`: tests/e2e/rules-nixpkgs with its flake.lock link
#   resolved.
{ pkgs, lib }:

let
  bazel = pkgs.bazel_7;

  registry = pkgs.fetchFromGitHub {
    owner = "bazelbuild";
    repo = "bazel-central-registry";
    # 2025-09-04; has rules_nixpkgs_core 0.13.0, its newest release.
    rev = "722299976c97e5191045c8016b7c8532189fc3f6";
    hash = "sha256-hi5BKI94am2LCXD93GBeT0gsODxGeSsd0OrhTwpNAgM=";
  };

  # The NAR hash of `repositoryCache`'s output. A fixed-output derivation's
  # hash is only known once it has been built with network access, which
  # the machine this flake was written on had not: the first
  # `nix build .#checks.<system>.vm-basic` prints "got: sha256-..."; put that
  # here. The archives are sources, the same on every Linux platform.
  repositoryCacheHash = lib.fakeHash;

  # Bazel 4.2.3 reads the fixture's WORKSPACE (local stand-ins for the
  # repositories its WORKSPACE suffix downloads); Bazel 7 ignores it with
  # --noenable_workspace and resolves these modules instead.
  basicModule = pkgs.writeText "MODULE.bazel" ''
    module(name = "bazel_cache_e2e")

    bazel_dep(name = "rules_cc", version = "0.1.1")
  '';

  basicWorkspace = pkgs.runCommand "bazel-cache-e2e-workspace" { } ''
    cp -r ${../../tests/e2e/bazel-workspace} $out
    chmod -R u+w $out
    cp ${basicModule} $out/MODULE.bazel
  '';

  rulesNixpkgsWorkspace = pkgs.runCommand "bazel-cache-rules-nixpkgs-workspace" { } ''
    cp -rL ${../../tests/e2e/rules-nixpkgs} $out
    chmod -R u+w $out
  '';

  # Flags both VM tests and the fetch below pass to every Bazel command.
  commonFlags = [
    "--registry=file://${registry}"
    "--noenable_workspace"
    "--lockfile_mode=off"
    # Actions run unsandboxed in the VM; the cache keys do not depend on it.
    "--spawn_strategy=local"
    "--color=no"
    "--curses=no"
  ];

  repositoryCache = pkgs.stdenv.mkDerivation {
    name = "bazel-cache-vm-tests-repository-cache";
    dontUnpack = true;
    nativeBuildInputs = [ bazel pkgs.cacert ];
    # Analysis of every target fetches exactly what a build needs. For the
    # rules_nixpkgs workspace the Nix toolchain cannot be configured in a
    # build sandbox (no Nix store to write to), so its registration is
    # dropped here and the build analysed with Bazel's own C++ toolchain:
    # the downloaded modules are the same (rules_nixpkgs' repositories are
    # produced by Nix, not downloaded).
    buildPhase = ''
      runHook preBuild
      export HOME=$(mktemp -d)
      mkdir cache
      fetch() {
        cp -r --no-preserve=mode "$1" ws
        (cd ws && bazel --batch --output_user_root="$HOME/root" build --nobuild \
          ${lib.escapeShellArgs commonFlags} --repository_cache="$PWD/cache" //...)
        chmod -R u+w ws "$HOME/root" && rm -rf ws "$HOME/root"
      }
      fetch ${basicWorkspace}
      cp -r --no-preserve=mode ${rulesNixpkgsWorkspace} rn
      sed -i '/nixpkgs_config_cc_toolchains/d' rn/MODULE.bazel
      fetch rn
      runHook postBuild
    '';
    # Only the downloads: content-addressed files, identical wherever and
    # whenever they were fetched.
    installPhase = ''
      mkdir -p $out
      cp -r cache/content_addressable $out/
    '';
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = repositoryCacheHash;
    impureEnvVars = lib.fetchers.proxyImpureEnvVars;
  };

  # A shell function for the VM test scripts: `bazel_in <workspace copy>
  # <command> <flags...>` with the offline registry and a writable copy of
  # the repository cache (Bazel writes to it).
  clientSetup = ''
    cp -r --no-preserve=mode ${repositoryCache} /root/repository-cache
  '';
  bazelCommand = workspace: command: flags:
    "cd ${workspace} && bazel --batch --output_user_root=/root/bazel-root ${command} "
    + lib.escapeShellArgs (commonFlags ++ [ "--repository_cache=/root/repository-cache" ] ++ flags);
in
{
  inherit bazel registry repositoryCache basicWorkspace rulesNixpkgsWorkspace clientSetup bazelCommand;
}
