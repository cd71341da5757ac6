# A stand-in for nixpkgs' `pkgs`, good enough to evaluate nixos-module.nix, nix/package.nix,
# nix/vm-test.nix and flake.nix without nixpkgs. Derivations are plain attrsets with
# `type = "derivation"` and a made-up store path; builders record their arguments under
# `zib*` attributes so that the harness can assert on them (and run the config check script).
{ lib
, system ? "x86_64-linux"
,
}:
let
  storePath =
    name: "${builtins.storeDir}/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";

  drv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = storePath name;
      drvPath = storePath "${name}.drv";
      meta = { };
    }
    // extra;

  simplePackage =
    pname: version:
    drv "${pname}-${version}" {
      inherit pname version;
    };

  self = {
    inherit lib system;
    stdenv = {
      hostPlatform = {
        inherit system;
        isLinux = true;
      };
      buildPlatform.system = system;
    };

    callPackage =
      fn: overrides:
      let
        f = if builtins.isFunction fn then fn else import fn;
        auto = builtins.intersectAttrs (builtins.functionArgs f) self;
      in
      f (auto // overrides);

    # The stand-in ZFS userland: `zfs` is what boot.zfs.package defaults to; zfs_unstable and
    # zfs_2_3 let a case check that the unit's path follows boot.zfs.package.
    zfs = simplePackage "zfs-user" "2.3.4";
    zfs_unstable = simplePackage "zfs-user" "2.4.0-unstable";
    zfs_2_3 = simplePackage "zfs-user" "2.3.4";
    coreutils = simplePackage "coreutils" "9.7";
    util-linux = simplePackage "util-linux" "2.41";
    minio = simplePackage "minio" "2025-01-01";
    minio-client = simplePackage "minio-client" "2025-01-01";
    awscli2 = simplePackage "awscli2" "2.27.0";
    cmake = simplePackage "cmake" "4.1.0";
    perl = simplePackage "perl" "5.40.0";
    clippy = simplePackage "clippy" "1.95.0";
    rustfmt = simplePackage "rustfmt" "1.95.0";
    rust-analyzer = simplePackage "rust-analyzer" "2026-01-01";
    cargo = simplePackage "cargo" "1.95.0";
    rustc = simplePackage "rustc" "1.95.0";
    nixpkgs-fmt = simplePackage "nixpkgs-fmt" "1.3.0";
    deadnix = simplePackage "deadnix" "1.2.1";
    jq = simplePackage "jq" "1.8.0";
    python3 = simplePackage "python3" "3.13.0";

    formats.toml =
      {}:
      {
        type =
          let
            t = lib.types;
            valueType =
              t.oneOf [
                t.bool
                t.int
                t.float
                t.str
                t.path
                (t.attrsOf valueType)
                (t.listOf valueType)
              ]
              // {
                description = "TOML value";
              };
          in
          valueType;
        # The real one runs remarshal's json2toml at build time; here the value is kept so
        # the harness can render and check it.
        generate =
          name: value:
          drv name {
            zibFormat = "toml";
            zibValue = value;
          };
      };

    runCommand =
      name: env: script:
      drv name {
        zibRunCommand = {
          inherit name env script;
        };
      };
    runCommandLocal = self.runCommand;

    writeText =
      name: text:
      drv name {
        zibText = text;
      };
    writeShellScript =
      name: text:
      drv name {
        zibText = text;
      };

    mkShell = args: drv "nix-shell" { zibShell = args; };

    testers.runNixOSTest =
      test:
      drv "vm-test-run-${test.name or "test"}" {
        zibTest = test;
      };

    rustPlatform.buildRustPackage =
      args:
      let
        self' = drv "${args.pname}-${args.version}" {
          inherit (args) pname version;
          zibArgs = args;
          overrideAttrs =
            f:
            self.rustPlatform.buildRustPackage (
              args // (if builtins.isFunction f then f args else f)
            );
          passthru = args.passthru or { };
          meta = args.meta or { };
        };
      in
      self';
  };
in
self
