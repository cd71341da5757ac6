# Stand-ins for the NixOS options that nixos-module.nix (and the VM test's nodes) write.
#
# Declared as in nixpkgs/nixos, but only the options we use, and every submodule is strict:
# defining an option that is not declared here (a typo such as `serviceConfg`, or an option
# NixOS does not have) fails the evaluation with "The option `...' does not exist", exactly as
# it would on a real NixOS system. Every option has a default so that a whole unit can be
# printed as JSON.
{ config
, lib
, pkgs
, ...
}:
let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-lib.nix: scalars must agree, lists are concatenated.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    description = "systemd option";
    merge =
      loc: defs:
      if lib.any (def: builtins.isList def.value) defs then
        lib.concatMap (def: lib.toList def.value) defs
      else
        lib.mergeEqualOption loc defs;
  };

  strList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  serviceOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      documentation = strList;
      wantedBy = strList;
      requiredBy = strList;
      after = strList;
      before = strList;
      wants = strList;
      requires = strList;
      bindsTo = strList;
      partOf = strList;
      conflicts = strList;
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
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
        type = types.attrsOf unitOption;
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
        type = types.listOf types.unspecified;
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
      };
      script = mkOption {
        type = types.str;
        default = "";
      };
      preStart = mkOption {
        type = types.str;
        default = "";
      };
    };
  };

  # Options the VM test's nodes set besides services.zib; only their shape is checked.
  loose = mkOption {
    type = types.anything;
    default = null;
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    boot.zfs = {
      package = mkOption {
        type = types.package;
        default = pkgs.zfs;
      };
      # Read-only in NixOS: true when "zfs" is in boot.supportedFilesystems.
      enabled = mkOption {
        type = types.bool;
        default =
          let
            fs = config.boot.supportedFilesystems;
          in
          if builtins.isList fs then builtins.elem "zfs" fs else fs.zfs or false;
      };
      forceImportRoot = loose;
      extraPools = loose;
    };
    boot.supportedFilesystems = mkOption {
      type = types.either (types.listOf types.str) (types.attrsOf types.bool);
      default = [ ];
    };

    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
    };
    systemd.tmpfiles.rules = strList;

    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            gid = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
            members = strList;
          };
        }
      );
      default = { };
    };

    # Only set by the VM test's nodes.
    users.users = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    environment.variables = mkOption {
      type = types.attrsOf (types.either types.str (types.listOf types.str));
      default = { };
    };
    environment.etc = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            source = mkOption {
              type = types.nullOr types.path;
              default = null;
            };
            text = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            mode = mkOption {
              type = types.str;
              default = "symlink";
            };
          };
        }
      );
      default = { };
    };

    # Only set by the VM test's nodes.
    networking.hostId = loose;
    networking.firewall.allowedTCPPorts = loose;
    virtualisation = {
      emptyDiskImages = loose;
      memorySize = loose;
      diskSize = loose;
      cores = loose;
    };
  };
}
