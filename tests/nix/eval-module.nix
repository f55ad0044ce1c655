# Evaluates nixos-modules/bazel-cache.nix with nixpkgs' module system
# against stubs of the NixOS options it sets, without nixpkgs or a Nix
# store: enough to see the rendered config.yaml, the systemd unit and the
# assertions on a machine that cannot build anything. Run through
# tests/nix/eval-module.sh.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs.lib/lib'
{ lib }:

let
  inherit (lib) mkOption types;

  # A derivation as far as the module can tell: an output path to interpolate.
  fakeDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    }
    // extra;

  pkgs = {
    formats.yaml = {}: {
      type = types.attrsOf types.anything;
      # JSON is YAML; the real generator (remarshal) only changes the layout.
      generate = name: value: fakeDrv name { text = builtins.toJSON value; };
    };
    runCommand = name: env: script: fakeDrv name { inherit env script; };
  };

  # The NixOS options the module sets, declared loosely.
  nixosStubs = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
        default = { };
      };
    };
  };

  package = fakeDrv "bazel-cache-0.1.0" { };

  # The module evaluated with `services.bazel-cache` = `settings`, enabled.
  configOf =
    settings:
    (lib.evalModules {
      modules = [
        ../../nixos-modules/bazel-cache.nix
        nixosStubs
        {
          services.bazel-cache = settings // {
            enable = true;
            inherit package;
          };
        }
      ];
      specialArgs = { inherit pkgs; };
    }).config;

  evaluate =
    settings:
    let
      config = configOf settings;
      unit = config.systemd.services.bazel-cache;
    in
    {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      firewall = config.networking.firewall.allowedTCPPorts;
      inherit (unit) serviceConfig wantedBy after wants;
      configYaml = renderedYaml settings;
      # How the rendered file is checked at build time.
      checkScript = config.services.bazel-cache.configFile.script;
    };

  # The config.yaml text the module renders (JSON here, which is YAML).
  renderedYaml =
    settings:
    let
      cfg = (configOf settings).services.bazel-cache;
    in
    builtins.fromJSON
      ((pkgs.formats.yaml { }).generate "config.yaml"
        (lib.filterAttrsRecursive (_: v: v != null) cfg.settings)).text;
in
{
  # What tests/nix/module-defaults.yaml must equal.
  defaultsRendered = renderedYaml { };

  defaults = evaluate { };

  s3WithEnvironmentFile = evaluate {
    openFirewall = true;
    environmentFile = "/run/secrets/bazel-cache.env";
    settings = {
      max_size = 20;
      enable_endpoint_metrics = true;
      s3_proxy = {
        endpoint = "minio.example.org:9000";
        bucket = "bazel-cache";
        bucket_lookup_type = "path";
        disable_ssl = true;
      };
    };
  };

  secretsInTheStore = evaluate {
    environmentFile = "${builtins.storeDir}/11111111111111111111111111111111-bazel-cache.env";
    settings = {
      htpasswd_file = "${builtins.storeDir}/33333333333333333333333333333333-htpasswd";
      tls_key_file = "${builtins.storeDir}/22222222222222222222222222222222-key.pem";
      s3_proxy = {
        endpoint = "s3.example.org";
        bucket = "b";
        secret_access_key = "hunter2";
      };
    };
  };

  privilegedPortAndOtherDir = evaluate {
    openFirewall = true;
    settings = {
      http_address = ":80";
      grpc_address = "none";
      dir = "/srv/bazel-cache";
    };
  };
}
