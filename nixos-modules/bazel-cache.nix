# NixOS module: `services.bazel-cache`, the cache as a hardened systemd
# service. The flake (flake/nixos-module.nix) imports this file and sets
# `package` to its own build; used without the flake, set it yourself.
#
# Configuration keys are bazel-remote's (see README.md, "Configuration"):
# `settings` is rendered to config.yaml as is, with typed options for the
# common keys. Secrets never go into `settings` (the rendered file is in the
# world-readable Nix store): S3 keys come from `environmentFile` as
# BAZEL_REMOTE_S3_ACCESS_KEY_ID / BAZEL_REMOTE_S3_SECRET_ACCESS_KEY, and
# files such as `htpasswd_file` are named by a path outside the store.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption optional types;

  cfg = config.services.bazel-cache;
  defaults = import ./defaults.nix;
  yaml = pkgs.formats.yaml { };

  # Unset (null) typed options are left out of config.yaml, so the binary's
  # own defaults apply to them.
  rendered = yaml.generate "config.yaml"
    (lib.filterAttrsRecursive (_: value: value != null) cfg.settings);

  # Validated where it is built: a typo in `settings` fails
  # `nixos-rebuild`, not the service start. check-config never touches
  # `dir`. Credentials promised by `environmentFile` are not here at build
  # time, so placeholders stand in for them; everything else is checked.
  configFile =
    pkgs.runCommand "bazel-cache-config.yaml"
      {
        nativeBuildInputs = [ cfg.package ];
        preferLocalBuild = true;
      }
      ''
        ${lib.optionalString (cfg.environmentFile != null) ''
          export BAZEL_REMOTE_S3_ACCESS_KEY_ID=placeholder-from-environmentFile
          export BAZEL_REMOTE_S3_SECRET_ACCESS_KEY=placeholder-from-environmentFile
        ''}
        bazel-cache check-config --config_file ${rendered}
        cp ${rendered} $out
      '';

  # The TCP port of a bazel-remote listen address (`host:port`, `:port`,
  # `[::]:port`); null for unix:// sockets and a disabled gRPC ("none").
  tcpPort =
    address:
    if address == null || address == "none" || lib.hasPrefix "unix://" address then
      null
    else
      lib.toInt (lib.last (lib.splitString ":" address));

  ports = lib.filter (port: port != null) [
    (tcpPort cfg.settings.http_address)
    (tcpPort cfg.settings.grpc_address)
  ];

  # A secret given as a Nix path is copied into the store, and a store path
  # is readable by every local user: refuse both.
  inStore =
    value:
    value != null && (builtins.isPath value || lib.hasPrefix "${builtins.storeDir}/" (toString value));

  # Binding a port below 1024 needs this one capability, and nothing else does.
  privileged = lib.any (port: port < 1024) ports;
in
{
  options.services.bazel-cache = {
    enable = mkEnableOption "bazel-cache, a Bazel remote cache server (HTTP and gRPC)";

    package = mkOption {
      type = types.package;
      description = "The bazel-cache package. The flake's module sets its own build.";
    };

    settings = mkOption {
      default = { };
      description = ''
        config.yaml, with bazel-remote's keys (`bazel-cache --help` lists them
        all). Keys without a typed option below are passed through unchecked
        here and validated by `bazel-cache check-config` at build time.
      '';
      example = lib.literalExpression ''
        {
          max_size = 100;
          s3_proxy = {
            endpoint = "minio.example.org:9000";
            bucket = "bazel-cache";
            bucket_lookup_type = "path";
          };
        }
      '';
      type = types.submodule {
        freeformType = yaml.type;
        options = {
          dir = mkOption {
            type = types.strMatching "/.*";
            default = defaults.dir;
            description = ''
              Where blobs and the index live. The default is the unit's
              StateDirectory; another directory must exist and is made
              writable for the service.
            '';
          };
          max_size = mkOption {
            type = types.either types.ints.positive (types.addCheck types.float (size: size > 0));
            default = defaults.max_size;
            description = "Largest size of the disk cache in GiB (fractions allowed).";
          };
          http_address = mkOption {
            type = types.str;
            default = defaults.http_address;
            description = "HTTP listener: `[host]:port` or `unix:///path.sock`. Also serves /status and /metrics.";
          };
          grpc_address = mkOption {
            type = types.str;
            default = defaults.grpc_address;
            description = ''gRPC listener: `[host]:port`, `unix:///path.sock`, or `"none"`.'';
          };
          log_timezone = mkOption {
            type = types.enum [ "UTC" "local" "none" ];
            default = defaults.log_timezone;
            description = ''Timestamps in log lines; `"none"` because journald adds its own.'';
          };
          access_log_level = mkOption {
            type = types.nullOr (types.enum [ "none" "all" ]);
            default = null;
            description = ''One log line per request (`"all"`, the binary's default) or none.'';
          };
          enable_endpoint_metrics = mkOption {
            type = types.nullOr types.bool;
            default = null;
            description = "Per-request latency histograms on /metrics (the design's latency alert needs them).";
          };
          htpasswd_file = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "HTTP basic authentication users; a path outside the Nix store.";
          };
          s3_proxy = mkOption {
            default = null;
            description = ''
              A shared S3/MinIO bucket behind the local disk cache. Keys go in
              `environmentFile`, not here.
            '';
            type = types.nullOr (
              types.submodule {
                freeformType = yaml.type;
                options = {
                  endpoint = mkOption {
                    type = types.str;
                    description = "`host:port` of the S3 server.";
                  };
                  bucket = mkOption {
                    type = types.str;
                    description = "Bucket name.";
                  };
                  prefix = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                    description = "Prefix of the object keys in the bucket.";
                  };
                  auth_method = mkOption {
                    type = types.enum [ "access_key" "aws_credentials_file" "iam_role" ];
                    default = "access_key";
                    description = "How to authenticate; `access_key` reads the keys from the environment.";
                  };
                  disable_ssl = mkOption {
                    type = types.nullOr types.bool;
                    default = null;
                    description = "Plain HTTP to the S3 server (an in-cluster MinIO).";
                  };
                  bucket_lookup_type = mkOption {
                    type = types.nullOr (types.enum [ "auto" "dns" "path" ]);
                    default = null;
                    description = "Virtual-host (`dns`) or `path` addressing; MinIO wants `path`.";
                  };
                };
              }
            );
          };
        };
      };
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/bazel-cache.env";
      description = ''
        A file of `NAME=value` lines read by systemd as root before the
        service starts, for secrets: `BAZEL_REMOTE_S3_ACCESS_KEY_ID`,
        `BAZEL_REMOTE_S3_SECRET_ACCESS_KEY`, or any other `BAZEL_REMOTE_*`
        setting. Must be outside the Nix store.
      '';
    };

    configFile = mkOption {
      type = types.package;
      readOnly = true;
      description = ''
        The config.yaml the service runs with, rendered from `settings` and
        checked with `bazel-cache check-config` when it is built (for other
        tools, e.g. a container running the same configuration).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP ports of `http_address` and `grpc_address`.";
    };
  };

  config = lib.mkMerge [
    { services.bazel-cache.configFile = configFile; }
    (mkIf cfg.enable {
      assertions = [
        {
          assertion = !inStore cfg.environmentFile;
          message = "services.bazel-cache.environmentFile must not be in the Nix store (it holds secrets, and the store is world-readable); give a path such as /run/secrets/bazel-cache.env.";
        }
        {
          assertion = !inStore cfg.settings.htpasswd_file;
          message = "services.bazel-cache.settings.htpasswd_file must not be in the Nix store (password hashes would be world-readable).";
        }
        {
          assertion = !inStore (cfg.settings.tls_key_file or null);
          message = "services.bazel-cache.settings.tls_key_file must not be in the Nix store (the private key would be world-readable).";
        }
        {
          assertion =
            cfg.settings.s3_proxy == null
            || (cfg.settings.s3_proxy.secret_access_key or null) == null;
          message = "services.bazel-cache.settings.s3_proxy.secret_access_key would be written to the world-readable Nix store; put BAZEL_REMOTE_S3_SECRET_ACCESS_KEY in services.bazel-cache.environmentFile instead.";
        }
      ];

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall ports;

      systemd.services.bazel-cache = {
        description = "bazel-cache, Bazel remote cache";
        documentation = [ "https://github.com/buchgr/bazel-remote#usage" ];
        wantedBy = [ "multi-user.target" ];
        # S3 and DNS need the network; a disk-only cache starts without it.
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];

        serviceConfig = {
          # The server notifies READY=1 once the store is open and both
          # listeners are bound, and STOPPING=1 while requests drain.
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${lib.getExe' cfg.package "bazel-cache"} --config_file=${configFile}";
          EnvironmentFile = optional (cfg.environmentFile != null) cfg.environmentFile;
          Restart = "on-failure";
          RestartSec = 2;
          # Requests get 30 s to drain after SIGTERM, queued S3 uploads up to
          # 15 s more while they progress; the index is then closed cleanly
          # (5 s at most) so the next start skips recovery.
          TimeoutStopSec = 60;
          LimitNOFILE = 65536;

          DynamicUser = true;
          StateDirectory = "bazel-cache";
          StateDirectoryMode = "0700";
          # For unix:// listeners.
          RuntimeDirectory = "bazel-cache";
          ReadWritePaths = optional (cfg.settings.dir != defaults.dir) cfg.settings.dir;
          UMask = "0077";

          # Hardening: the server needs its directory, its sockets and the
          # network, nothing else.
          CapabilityBoundingSet = if privileged then "CAP_NET_BIND_SERVICE" else "";
          AmbientCapabilities = if privileged then "CAP_NET_BIND_SERVICE" else "";
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          DevicePolicy = "closed";
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          ProcSubset = "pid";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RemoveIPC = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
          SystemCallErrorNumber = "EPERM";
        };
      };
    })
  ];
}
