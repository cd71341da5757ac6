# NixOS module for zibd, the zib daemon: incremental raw `zfs send` backups to S3 cold storage.
#
#   imports = [ zib.nixosModules.default ];        # flake; or import ./nixos-module.nix
#   services.zib = {
#     enable = true;
#     environmentFile = "/run/secrets/zib.env";      # AWS_ACCESS_KEY_ID=... (never in the store)
#     settings = {
#       target.bucket = "my-zfs-backups";
#       dataset = [ { name = "tank/photos"; schedule = "0 3 * * *"; } ];
#     };
#   };
#
# `settings` mirrors config.example.toml one to one (the [daemon] and [target] tables, and a
# list for the [[dataset]] tables). The common keys are typed; any other key is passed through
# as-is, and zibd itself rejects unknown keys: the generated file is checked with
# `zibd check-config` while the system is built, so a typo fails `nixos-rebuild`, not the
# service.
{ config
, lib
, options
, pkgs
, ...
}:
let
  inherit (lib)
    mkIf
    mkOption
    types
    literalExpression
    ;

  cfg = config.services.zib;
  opt = options.services.zib;
  settingsFormat = pkgs.formats.toml { };

  runtimeDir = "/run/zibd";
  defaultSocket = "${runtimeDir}/zibd.sock";
  defaultStateDir = "/var/lib/zib";
  defaultSpoolDir = "/var/cache/zib";
  # A stable path, so that a changed config is a reload (SIGHUP) rather than a restart, which
  # would interrupt a running upload: see reloadTriggers below.
  etcConfigPath = "/etc/zib/zibd.toml";

  storageClasses = [
    "STANDARD"
    "STANDARD_IA"
    "ONEZONE_IA"
    "INTELLIGENT_TIERING"
    "GLACIER_IR"
    "GLACIER"
    "DEEP_ARCHIVE"
  ];

  useSettings = cfg.configFile == null;
  # True when the user defined `settings` at all (the option's own default has priority 1500).
  settingsGiven = opt.settings.highestPrio < 1500;
  # The assertions about settings only apply (and only evaluate them) when they are used.
  checkSettings = useSettings && settingsGiven;

  # TOML has no null: unset typed options are left out of the file (zibd applies its defaults).
  stripNulls =
    v:
    if builtins.isAttrs v && !(lib.isDerivation v) then
      lib.mapAttrs (_: stripNulls) (lib.filterAttrs (_: x: x != null) v)
    else if builtins.isList v then
      map stripNulls v
    else
      v;

  finalSettings = stripNulls cfg.settings;

  generatedConfigFile = settingsFormat.generate "zibd.toml" finalSettings;

  # The build-time check, as zhaofengli/attic's module does it: the system does not build if
  # zibd rejects its config (exit 78 with the file, line and key). zibd check-config reads only
  # the file: no credentials, network, ZFS or state are needed. It runs on the build machine,
  # so with zibd built for the build platform (checkConfigPackage): for a cross-compiled system
  # cfg.package would not run there. Without one, the file is used unchecked, with a warning.
  checkedConfigFile =
    if cfg.checkConfigPackage == null then
      generatedConfigFile
    else
      pkgs.runCommand "zibd-checked.toml"
        {
          configFile = generatedConfigFile;
          preferLocalBuild = true;
        }
        ''
          ${cfg.checkConfigPackage}/bin/zibd check-config "$configFile"
          cp "$configFile" "$out"
        '';

  # Whether the build machine runs the host's binaries: a native build (or, say, x86_64
  # building for i686), where cfg.package itself can check the file.
  inherit (pkgs.stdenv) buildPlatform hostPlatform;
  buildRunsHost = buildPlatform.canExecute hostPlatform;
  # The package option left at its own default (priority 1500): its build-platform variant is
  # then known, pkgs.buildPackages' zib (the overlay's) or this repository's, built for it.
  packageIsDefault = opt.package.highestPrio >= 1500;

  configPath = if useSettings then etcConfigPath else "${cfg.configFile}";

  daemonSettings = cfg.settings.daemon;
  socketPath = if useSettings then daemonSettings.socket else defaultSocket;
  # With configFile the module cannot see shutdown_timeout_secs: zibd's default (30) is assumed;
  # set systemd.services.zibd.serviceConfig.TimeoutStopSec above a larger one.
  shutdownTimeout = if useSettings then daemonSettings.shutdown_timeout_secs else 30;

  # State and spool directories other than the defaults (which StateDirectory= and
  # CacheDirectory= manage) must be created and made writable explicitly.
  extraDirs = lib.optionals useSettings (
    lib.filter (d: d != defaultStateDir && d != defaultSpoolDir) [
      daemonSettings.state_dir
      daemonSettings.spool_dir
    ]
  );

  # Key names that look like credentials: those belong in environmentFile, never in the
  # (world-readable) Nix store.
  secretLike = [
    "secret"
    "password"
    "access_key"
    "session_token"
    "credential"
  ];
  keyNames =
    v:
    if builtins.isAttrs v then
      lib.concatMap (n: [ n ] ++ keyNames v.${n}) (builtins.attrNames v)
    else if builtins.isList v then
      lib.concatMap keyNames v
    else
      [ ];
  secretKeys = lib.filter
    (
      n: lib.any (s: builtins.match ".*${s}.*" (lib.toLower n) != null) secretLike
    )
    (keyNames finalSettings);

  # systemd's command-line quoting (not the shell's): "..." with C escapes, %% and $$.
  escapeSystemdArg =
    arg:
    let
      s = toString arg;
    in
    if builtins.match "[[:alnum:]_./:=,+@-]+" s != null then
      s
    else
      "\""
      + builtins.replaceStrings [ "\\" "\"" "\n" "%" "$" ] [ "\\\\" "\\\"" "\\n" "%%" "$$" ] s
      + "\"";
  execLine = args: lib.concatStringsSep " " (map escapeSystemdArg args);

  zibd = "${cfg.package}/bin/zibd";

  withFreeform = options: {
    freeformType = settingsFormat.type;
    inherit options;
  };
  nullOrOption =
    type: description:
    mkOption {
      type = types.nullOr type;
      default = null;
      inherit description;
    };
in
{
  options.services.zib = {
    enable = lib.mkEnableOption "zibd, incremental ZFS backups to S3 cold storage";

    package = mkOption {
      type = types.package;
      default = pkgs.zib or (pkgs.callPackage ./nix/package.nix { });
      defaultText = literalExpression "pkgs.zib (or this repository's nix/package.nix)";
      description = "The zib package (zibd and zibctl).";
    };

    checkConfigPackage = mkOption {
      type = types.nullOr types.package;
      default =
        if buildRunsHost then
          cfg.package
        else if packageIsDefault then
          pkgs.buildPackages.zib or (pkgs.buildPackages.callPackage ./nix/package.nix { })
        else
          null;
      defaultText = literalExpression ''
        if the build platform can execute the host's binaries then config.services.zib.package
        else if package is left at its default then pkgs.buildPackages.zib (or this repository's nix/package.nix, built for the build platform)
        else null
      '';
      description = ''
        The zib package whose zibd checks the generated config file (`zibd check-config`) while
        the system is built, on the build machine: zibd built for the build platform. The same as
        `package` unless the system is cross-compiled; then the build platform's variant of
        it (the flake's module sets its own). `null` skips the check, with a warning.
      '';
    };

    settings = mkOption {
      description = ''
        zibd's configuration, rendered to TOML (see config.example.toml for every key). Typed
        options cover the common keys; other keys are passed through and checked by
        `zibd check-config` at build time. Mutually exclusive with `configFile`.
        Credentials do not go here: use `environmentFile`.
      '';
      default = { };
      example = literalExpression ''
        {
          target = { bucket = "my-zfs-backups"; region = "eu-central-1"; };
          dataset = [
            { name = "tank/photos"; schedule = "0 3 * * *"; }
            { name = "tank/home"; schedule = "0 */6 * * *"; jitter_secs = 600; }
          ];
        }
      '';
      type = types.submodule (withFreeform {
        daemon = mkOption {
          description = "The [daemon] table.";
          default = { };
          type = types.submodule (withFreeform {
            socket = mkOption {
              type = types.str;
              default = defaultSocket;
              description = "Control socket; must be under ${runtimeDir}/ (the unit's RuntimeDirectory).";
            };
            socket_group = mkOption {
              type = types.str;
              default = cfg.group;
              defaultText = literalExpression "config.services.zib.group";
              description = "Group allowed to use zibctl's mutating commands; must equal services.zib.group.";
            };
            state_dir = mkOption {
              type = types.str;
              default = defaultStateDir;
              description = "Per-dataset state files and locks.";
            };
            spool_dir = mkOption {
              type = types.str;
              default = defaultSpoolDir;
              description = "Where chunks are spooled before upload.";
            };
            shutdown_timeout_secs = mkOption {
              type = types.ints.between 1 3600;
              default = 30;
              description = "Time running uploads get on stop; the unit's TimeoutStopSec is 30 s more.";
            };
            max_concurrent_jobs = nullOrOption (types.ints.between 1 64) "Backup jobs that may run at once.";
            timezone = nullOrOption
              (types.enum [
                "UTC"
                "local"
              ]) "Time zone of the cron schedules.";
          });
        };
        target = mkOption {
          description = "The [target] table: where backups go.";
          default = { };
          type = types.submodule (withFreeform {
            bucket = mkOption {
              type = types.str;
              example = "my-zfs-backups";
              description = "The S3 bucket (required).";
            };
            region = nullOrOption types.str "S3 region (zibd's default: us-east-1).";
            endpoint = nullOrOption types.str "Endpoint of an S3-compatible store (Garage, Ceph RGW, ...).";
            prefix = nullOrOption types.str "Key prefix of every object zib writes.";
            storage_class = nullOrOption (types.enum storageClasses) "Storage class of the data chunks.";
            chunk_size = nullOrOption (types.either types.ints.positive types.str) "Chunk size: bytes, or a string with a unit (\"64MiB\").";
          });
        };
        dataset = mkOption {
          description = "The [[dataset]] tables, one per dataset to back up.";
          default = [ ];
          type = types.listOf (
            types.submodule (withFreeform {
              name = mkOption {
                type = types.str;
                example = "tank/photos";
                description = "The ZFS dataset.";
              };
              schedule = mkOption {
                type = types.str;
                example = "0 3 * * *";
                description = "Cron schedule (5 fields, or 6-7 with seconds first, or @daily ...).";
              };
            })
          );
        };
      });
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/etc/zib/zibd.toml";
      description = ''
        An existing zibd config file, instead of `settings`. It is checked with
        `zibd check-config` when the service starts (ExecStartPre), not at build time. zibd's
        defaults for the socket and directories must be kept (the unit is built for them), and
        TimeoutStopSec assumes the default shutdown_timeout_secs (30).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/zib.env";
      description = ''
        A file outside the Nix store with the S3 credentials as environment variables
        (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN), read by systemd
        (EnvironmentFile=). A string, not a path, so that it is never copied to the store.
      '';
    };

    group = mkOption {
      type = types.str;
      default = "zib";
      description = ''
        Group whose members may use zibctl's mutating commands (trigger, pause, ...); read-only
        ones (status, version) are open to anyone who can reach the socket directory. The
        daemon runs with this group, so its socket gets it without CAP_CHOWN.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra command-line arguments for `zibd`.";
    };
  };

  config = mkIf cfg.enable {
    warnings = lib.optional (useSettings && cfg.checkConfigPackage == null) "services.zib: the generated /etc/zib/zibd.toml is not checked while the system is built: the build platform (${buildPlatform.system}) cannot run services.zib.package (built for ${hostPlatform.system}). Set services.zib.checkConfigPackage to the same zib built for ${buildPlatform.system}; until then zibd reports a bad config only when the service starts.";

    assertions = [
      {
        assertion = !(cfg.configFile != null && settingsGiven);
        message = "services.zib: set either settings or configFile, not both.";
      }
      {
        assertion = cfg.configFile != null || settingsGiven;
        message = "services.zib: set services.zib.settings (at least target.bucket and one dataset) or services.zib.configFile.";
      }
      {
        assertion = !checkSettings || lib.hasPrefix "${runtimeDir}/" socketPath;
        message = "services.zib.settings.daemon.socket must be under ${runtimeDir}/ (the unit's RuntimeDirectory; everything else is read-only to zibd), got ${socketPath}.";
      }
      {
        assertion = !checkSettings || daemonSettings.socket_group == cfg.group;
        message = "services.zib.settings.daemon.socket_group (${daemonSettings.socket_group}) must equal services.zib.group (${cfg.group}): zibd runs with that group and has no CAP_CHOWN to give its socket another one.";
      }
      {
        assertion = !checkSettings || secretKeys == [ ];
        message = "services.zib.settings must not hold credentials (${lib.concatStringsSep ", " secretKeys}): the generated file is world-readable in the Nix store. Put AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in services.zib.environmentFile.";
      }
      {
        assertion = cfg.environmentFile == null || lib.hasPrefix "/" cfg.environmentFile;
        message = "services.zib.environmentFile must be an absolute path, got ${toString cfg.environmentFile}.";
      }
      {
        assertion = cfg.environmentFile == null || !(lib.hasPrefix "${builtins.storeDir}/" cfg.environmentFile);
        message = "services.zib.environmentFile is in the Nix store, which is world-readable: keep credentials outside it (e.g. /run/secrets/zib.env, mode 0600).";
      }
      {
        assertion = config.boot.zfs.enabled;
        message = "services.zib needs ZFS: add \"zfs\" to boot.supportedFilesystems.";
      }
    ];

    users.groups.${cfg.group} = { };

    # zibctl for everyone, zibd for `zibd restore` / `zibd backup` by hand.
    environment.systemPackages = [ cfg.package ];

    environment.etc."zib/zibd.toml" = mkIf useSettings { source = checkedConfigFile; };

    # zibctl's default is /run/zibd/zibd.sock; tell it about another name.
    environment.variables = mkIf (socketPath != defaultSocket) { ZIBCTL_SOCKET = socketPath; };

    systemd.tmpfiles.rules = map (d: "d ${d} 0700 root root - -") extraDirs;

    systemd.services.zibd = {
      description = "zib: incremental ZFS backups to S3 cold storage";
      wantedBy = [ "multi-user.target" ];
      # ZFS pools must be imported and mounted; the network is wanted, not required: zibd
      # retries S3 with backoff, and a failed wait-online must not stop the schedule.
      requires = [ "zfs.target" ];
      wants = [ "network-online.target" ];
      after = [
        "zfs.target"
        "network-online.target"
      ];
      # The zfs command that matches the running kernel module.
      path = [ config.boot.zfs.package ];

      # A new config is a reload (zibd re-reads it on SIGHUP, keeping running jobs); only a new
      # package (ExecStart) restarts the service.
      reloadTriggers = lib.optional useSettings checkedConfigFile;

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStartPre = mkIf (!useSettings) (execLine [
          zibd
          "check-config"
          configPath
        ]);
        ExecStart = execLine (
          [
            zibd
            "--config"
            configPath
          ]
          ++ cfg.extraArgs
        );
        # Refuse a reload that would be rejected anyway, with the error in `systemctl reload`.
        ExecReload = [
          (execLine [
            zibd
            "check-config"
            configPath
          ])
          "${pkgs.coreutils}/bin/kill -HUP $MAINPID"
        ];
        Restart = "on-failure";
        RestartSec = "30s";
        # EX_CONFIG: restarting cannot fix an invalid config.
        RestartPreventExitStatus = "78";
        WatchdogSec = lib.mkDefault "60s";
        # zibd stops its uploads within shutdown_timeout_secs; systemd only steps in after.
        TimeoutStopSec = lib.mkDefault (toString (shutdownTimeout + 30));
        # SIGTERM to zibd alone: it stops its own `zfs send` children at a safe point.
        KillMode = "mixed";
        EnvironmentFile = mkIf (cfg.environmentFile != null) cfg.environmentFile;

        # Runs as root: `zfs snapshot`, `zfs send` and `zfs destroy` of its own snapshots need
        # the /dev/zfs ioctls, which OpenZFS allows only with CAP_SYS_ADMIN (or `zfs allow`
        # delegation, which cannot grant everything zib does). Root here is a uid, not
        # omnipotence: the capability bounding set below is the only privilege it keeps.
        Group = cfg.group;
        UMask = "0027";
        RuntimeDirectory = "zibd";
        RuntimeDirectoryMode = "0750";
        StateDirectory = "zib";
        StateDirectoryMode = "0700";
        CacheDirectory = "zib";
        CacheDirectoryMode = "0700";
        ReadWritePaths = mkIf (extraDirs != [ ]) extraDirs;

        # Capabilities, smallest set that works:
        #   CAP_SYS_ADMIN     the /dev/zfs ioctls (snapshot, send, bookmark, destroy) and the
        #                     umount of a snapshot that was automounted under .zfs/snapshot.
        # Not needed, so dropped:
        #   CAP_DAC_OVERRIDE  /dev/zfs is 0666; the state, spool and runtime directories are
        #                     created by systemd for this unit (owner root, group services.zib.group);
        #                     the config and the environment file are read by systemd or are
        #                     world-readable store paths.
        #   CAP_CHOWN         the socket is created with the daemon's own group (Group= above),
        #                     so chown to it is allowed to the owner; hence the assertion that
        #                     settings.daemon.socket_group equals services.zib.group.
        #   CAP_FOWNER        zibd only chmods files it owns (the socket).
        CapabilityBoundingSet = [ "CAP_SYS_ADMIN" ];
        NoNewPrivileges = true;

        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        # PrivateDevices would hide /dev/zfs: allow exactly that device instead.
        PrivateDevices = false;
        DevicePolicy = "closed";
        DeviceAllow = [ "/dev/zfs rw" ];
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        # @mount: `zfs destroy` unmounts a snapshot that someone browsed under .zfs/snapshot.
        SystemCallFilter = [
          "@system-service"
          "@mount"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
