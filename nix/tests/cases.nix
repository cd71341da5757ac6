# The configurations the offline checks evaluate. Each case is a list of NixOS modules (on top
# of nix/tests/stubs.nix); what is expected of each is in nix/tests/run.py.
{ lib
, pkgs
, crossPkgs
, flakeOutputs
, vmTest
, ...
}:
let
  module = ../../nixos-module.nix;
  zib = pkgs.callPackage ../package.nix { };

  # NixOS's ZFS module requires a host ID (stubs.nix mirrors its assertion).
  zfsHost = {
    boot.supportedFilesystems = [ "zfs" ];
    networking.hostId = "8425e349";
  };

  minimalSettings = {
    target.bucket = "my-zfs-backups";
    dataset = [
      {
        name = "tank/photos";
        schedule = "0 3 * * *";
      }
    ];
  };

  enabled = extra: [
    module
    zfsHost
    {
      services.zib = {
        enable = true;
        package = zib;
      };
    }
    extra
  ];
in
{
  # --- configurations that must evaluate ----------------------------------------------------
  minimal = enabled {
    services.zib.settings = minimalSettings;
    services.zib.environmentFile = "/run/secrets/zib.env";
  };

  # Every key of config.example.toml, typed or free-form, plus a non-default group, ZFS
  # package, state directory and socket name, and arguments that need systemd quoting.
  full = enabled {
    boot.zfs.package = pkgs.zfs_unstable;
    services.zib = {
      group = "backup";
      environmentFile = "/run/secrets/zib.env";
      extraArgs = [
        "--log-filter"
        "zibd=debug,info"
        "two words"
        "100%"
        "$HOME"
        "quote\"d"
      ];
      settings = {
        daemon = {
          socket = "/run/zibd/control.sock";
          state_dir = "/srv/zib/state";
          spool_dir = "/var/cache/zib";
          shutdown_timeout_secs = 120;
          max_concurrent_jobs = 3;
          timezone = "local";
        };
        target = {
          bucket = "my-zfs-backups";
          region = "eu-central-1";
          endpoint = "http://127.0.0.1:9000";
          force_path_style = true;
          prefix = "zib/";
          storage_class = "DEEP_ARCHIVE";
          chunk_size = "64MiB";
          max_spooled_chunks = 2;
          max_attempts = 8;
        };
        dataset = [
          {
            name = "tank/photos";
            schedule = "0 3 * * *";
            snapshot_prefix = "zib";
            keep_snapshots = 3;
          }
          {
            name = "tank/home";
            schedule = "0 */6 * * *";
            jitter_secs = 600;
            storage_class = "GLACIER_IR";
            chunk_size = 67108864;
            prefix = "home/";
          }
        ];
      };
    };
  };

  # config.example.toml, every documented key, given as settings.
  example-config = enabled {
    services.zib.settings = builtins.fromTOML (builtins.readFile ../../config.example.toml);
  };

  # An existing file instead of settings: no build-time check, ExecStartPre checks it.
  config-file = enabled {
    services.zib.configFile = "/etc/zib/custom.toml";
  };

  # Settings spread over two modules merge as NixOS options do.
  merged = enabled {
    imports = [
      {
        services.zib.settings.dataset = [
          {
            name = "tank/home";
            schedule = "@daily";
          }
        ];
      }
    ];
    services.zib.settings = minimalSettings;
  };

  # A user's plain definitions override the module's defaults for the watchdog and stop timeout.
  overrides = enabled {
    services.zib.settings = minimalSettings;
    systemd.services.zibd.serviceConfig = {
      WatchdogSec = "5min";
      TimeoutStopSec = "10min";
    };
  };

  disabled = [
    module
    zfsHost
    {
      services.zib.settings = minimalSettings;
    }
  ];

  # The flake's module: the package defaults to the flake's own.
  flake-module = [
    flakeOutputs.nixosModules.default
    zfsHost
    {
      services.zib.enable = true;
      services.zib.settings = minimalSettings;
    }
  ];

  # Cross-compiled systems (built on x86_64-linux for aarch64-linux): the build-time check must
  # run zibd built for the build machine, never the host's.
  cross = {
    pkgs = crossPkgs;
    modules = [
      module
      zfsHost
      {
        services.zib.enable = true;
        services.zib.settings = minimalSettings;
      }
    ];
    expect = {
      hostZib = (crossPkgs.callPackage ../package.nix { }).outPath;
      buildZib = (crossPkgs.buildPackages.callPackage ../package.nix { }).outPath;
    };
  };
  cross-flake-module = {
    pkgs = crossPkgs;
    modules = [
      flakeOutputs.nixosModules.default
      zfsHost
      {
        services.zib.enable = true;
        services.zib.settings = minimalSettings;
      }
    ];
    expect = {
      hostZib = flakeOutputs.packages.aarch64-linux.default.outPath;
      buildZib = flakeOutputs.packages.x86_64-linux.default.outPath;
    };
  };
  # A package of the user's own: its build-platform variant is unknown, so no check, a warning.
  cross-custom-package = {
    pkgs = crossPkgs;
    modules = [
      module
      zfsHost
      {
        services.zib.enable = true;
        services.zib.package = crossPkgs.callPackage ../package.nix { };
        services.zib.settings = minimalSettings;
      }
    ];
  };

  # The VM test's machines, as configured there.
  vm-uploader = [ vmTest.nodes.uploader ];
  vm-restorer = [ vmTest.nodes.restorer ];
  vm-s3 = [ vmTest.nodes.s3 ];

  # --- assertions that must fire ----------------------------------------------------------------
  both-settings-and-file = enabled {
    services.zib.settings = minimalSettings;
    services.zib.configFile = "/etc/zib/custom.toml";
  };
  neither-settings-nor-file = enabled { };
  socket-outside-runtime-dir = enabled {
    services.zib.settings = minimalSettings // {
      daemon.socket = "/tmp/zibd.sock";
    };
  };
  socket-group-mismatch = enabled {
    services.zib.settings = minimalSettings // {
      daemon.socket_group = "wheel";
    };
  };
  secret-in-settings = enabled {
    services.zib.settings = minimalSettings // {
      target = {
        bucket = "my-zfs-backups";
        aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
      };
    };
  };
  environment-file-in-store = enabled {
    services.zib.settings = minimalSettings;
    services.zib.environmentFile = "${builtins.storeDir}/0c8m4b7hq2jq1n8a2w1x6k3g4z5y6v7u-zib.env";
  };
  environment-file-relative = enabled {
    services.zib.settings = minimalSettings;
    services.zib.environmentFile = "secrets/zib.env";
  };
  no-zfs = [
    module
    {
      services.zib = {
        enable = true;
        package = zib;
        settings = minimalSettings;
      };
    }
  ];

  # --- evaluation errors that must happen -----------------------------------------------------
  # Real NixOS option types (stubs.nix): a unit description is one line, Type= a known value.
  multi-line-description = enabled {
    services.zib.settings = minimalSettings;
    systemd.services.zibd.description = lib.mkForce "two\nlines";
  };
  unknown-unit-type = enabled {
    services.zib.settings = minimalSettings;
    systemd.services.zibd.serviceConfig.Type = lib.mkForce "notify-socket";
  };
  misspelled-option = enabled {
    services.zib.settings = minimalSettings;
    services.zib.enviromentFile = "/run/secrets/zib.env";
  };
  # A path literal would be copied into the world-readable store: refused by the type.
  environment-file-path-literal = enabled {
    services.zib.settings = minimalSettings;
    services.zib.environmentFile = ./cases.nix;
  };
  shutdown-timeout-out-of-range = enabled {
    services.zib.settings = minimalSettings // {
      daemon.shutdown_timeout_secs = 0;
    };
  };
  unknown-storage-class = enabled {
    services.zib.settings = minimalSettings // {
      target = {
        bucket = "my-zfs-backups";
        storage_class = "DEEP_GLACIER";
      };
    };
  };
  missing-bucket = enabled {
    services.zib.settings.dataset = minimalSettings.dataset;
  };

  # --- evaluate, but zibd check-config must reject the file (the build would fail) -----------
  unknown-key = enabled {
    services.zib.settings = minimalSettings // {
      target = {
        bucket = "my-zfs-backups";
        max_atempts = 3;
      };
    };
  };
  bad-schedule = enabled {
    services.zib.settings = minimalSettings // {
      dataset = [
        {
          name = "tank/photos";
          schedule = "61 * * * *";
        }
      ];
    };
  };
}
