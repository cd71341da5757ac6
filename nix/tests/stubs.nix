# Stand-ins for the NixOS options that nixos-module.nix (and the VM test's nodes) write.
#
# Declared as in nixpkgs/nixos, but only the options we use, and every submodule is strict:
# defining an option that is not declared here (a typo such as `serviceConfg`, or an option
# NixOS does not have) fails the evaluation with "The option `...' does not exist", exactly as
# it would on a real NixOS system. Every option has a default so that a whole unit can be
# printed as JSON.
#
# Each declaration says which nixpkgs file it mirrors, and at which revision it was read (with
# the search tools of Dec 2026; the stored copies are not the newest: "NixOS/nixpkgs@<rev>" is a
# commit of NixOS/nixpkgs, "later copy" a newer stored version of the same file whose commit the
# index does not name, recognisable by what it contains). Types are the real ones; defaults
# are the real ones where they are plain values. Where a declaration is NOT read from nixpkgs,
# it says so.
{ config
, lib
, pkgs
, ...
}:
let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-unit-options.nix (NixOS/nixpkgs@515c8fb59bc1 and a later copy with
  # upheldBy/notSocketActivated/enableStrictShellChecks, which agree on everything below):
  # scalars must agree, lists are concatenated.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      if lib.any (def: builtins.isList def.value) defs then
        lib.concatMap (def: lib.toList def.value) defs
      else
        lib.mergeEqualOption loc defs;
  };

  # nixos/lib/systemd-lib.nix (NixOS/nixpkgs@6f03be6bc825): a type for options that take a unit
  # name; "multi-user" without ".target" is refused.
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # systemd-unit-options.nix's checkService (systemd-lib.nix's checkUnitConfig and
  # assertValueOneOf): Type= and Restart= must be known values; "notify-reload" is in the later
  # copy. A bad value fails the type check of serviceConfig.
  checkService =
    attrs:
    let
      strip = v: if builtins.isAttrs v && builtins.elem (v._type or "") [ "override" "if" ] then v.content else v;
      oneOf = name: values: !(attrs ? ${name}) || builtins.elem (strip attrs.${name}) values;
    in
    oneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ]
    && oneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ];

  unitNames = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };

  # systemd-unit-options.nix: sharedOptions, commonUnitOptions, stage2CommonUnitOptions,
  # serviceOptions and stage2ServiceOptions, the ones the module and the VM test set or read.
  serviceOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wantedBy = unitNames;
      requiredBy = unitNames;
      after = unitNames;
      before = unitNames;
      wants = unitNames;
      requires = unitNames;
      bindsTo = unitNames;
      partOf = unitNames;
      conflicts = unitNames;
      path = mkOption {
        type = types.listOf (types.oneOf [
          types.package
          types.str
        ]);
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [
          types.str
          types.path
          types.package
        ]));
        default = { };
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
        apply = v: if builtins.isList v then v else [ v ];
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };

  # NOT read from nixpkgs here: options only the VM test's nodes set, whose shape this harness
  # does not check (nixos/modules/virtualisation/qemu-vm.nix, nixos/modules/services/networking/
  # firewall.nix, nixos/modules/config/users-groups.nix).
  loose = mkOption {
    type = types.anything;
    default = null;
  };
in
{
  options = {
    # nixos/modules/misc/assertions.nix: NOT read here (its long-standing declarations).
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # nixos/modules/tasks/filesystems/zfs.nix (a later copy: enableUnstable removed, default
    # pkgs.zfs; NixOS/nixpkgs@a623be9d17ee is older and made package read-only).
    boot.zfs = {
      package = mkOption {
        type = types.package;
        default = pkgs.zfs;
      };
      # Read-only in NixOS: inInitrd || inSystem, from boot.supportedFilesystems.zfs.
      enabled = mkOption {
        type = types.bool;
        default = config.boot.supportedFilesystems.zfs or false;
      };
      forceImportRoot = mkOption {
        type = types.bool;
        default = true;
      };
      extraPools = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
    };
    # nixos/modules/tasks/filesystems.nix (a later copy): attrNamesToTrue, a list of names or an
    # attribute set of booleans.
    boot.supportedFilesystems = mkOption {
      type = types.coercedTo (types.listOf types.str) (names: lib.genAttrs names (_: true)) (
        types.attrsOf types.bool
      );
      default = { };
    };

    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
    };
    # nixos/modules/system/boot/systemd/tmpfiles.nix: NOT read here.
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # nixos/modules/config/users-groups.nix (NixOS/nixpkgs@b69a0b599fef listed, NOT read here):
    # gid and members as long declared.
    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            gid = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
            members = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
          };
        }
      );
      default = { };
    };

    # Only set by the VM test's nodes (see `loose`).
    users.users = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };

    # nixos/modules/config/system-path.nix: NOT read here (a list of packages).
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    # nixos/modules/config/shells-environment.nix: NOT read here; narrower than nixpkgs' (which
    # also takes ints, paths and null): the module sets strings only.
    environment.variables = mkOption {
      type = types.attrsOf (types.either types.str (types.listOf types.str));
      default = { };
    };
    # nixos/modules/system/etc/etc.nix (a later copy): text is lines, source a path set from
    # text when that is given (there with mkDerivedConfig and pkgs.writeText), mode a string.
    environment.etc = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              source = mkOption {
                type = types.path;
              };
              mode = mkOption {
                type = types.str;
                default = "symlink";
              };
            };
            config.source = lib.mkIf (config.text != null) (
              lib.mkDefault (pkgs.writeText ("etc-" + builtins.replaceStrings [ "/" ] [ "-" ] name) config.text)
            );
          }
        )
      );
      default = { };
    };

    # nixos/modules/tasks/network-interfaces.nix (NixOS/nixpkgs@577cb341b446; the same in later
    # copies): null or a string, which an assertion wants as 8 hexadecimal digits.
    networking.hostId = mkOption {
      type = types.nullOr types.str;
      default = null;
    };
    networking.firewall.allowedTCPPorts = loose;
    virtualisation = {
      emptyDiskImages = loose;
      memorySize = loose;
      diskSize = loose;
      cores = loose;
    };
  };

  config.assertions = [
    # network-interfaces.nix
    {
      assertion =
        config.networking.hostId == null
        || (builtins.stringLength config.networking.hostId == 8 && builtins.match "[0-9a-fA-F]*" config.networking.hostId != null);
      message = "Invalid value given to the networking.hostId option.";
    }
    # zfs.nix, in test VMs too: a node with ZFS and no hostId does not build.
    {
      assertion = !config.boot.zfs.enabled || config.networking.hostId != null;
      message = "ZFS requires networking.hostId to be set";
    }
  ];
}
