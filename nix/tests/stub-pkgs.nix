# A stand-in for nixpkgs' `pkgs`, good enough to evaluate nixos-module.nix, nix/package.nix,
# nix/vm-test.nix and flake.nix without nixpkgs. Derivations are plain attrsets with
# `type = "derivation"` and a made-up store path; builders record their arguments under
# `zib*` attributes so that the harness can assert on them (and run the config check script).
#
# buildSystem: the build machine's platform, for a cross-compiled set (pkgs.buildPackages is then
# the stand-in for that platform). Store paths depend on the platform a package is built for.
{ lib
, system ? "x86_64-linux"
, buildSystem ? system
,
}:
let
  storePath =
    name:
    "${builtins.storeDir}/${builtins.substring 0 32 (builtins.hashString "sha256" "${system}:${name}")}-${name}";

  # lib/systems' platform.canExecute, for the two systems here: a platform runs its own binaries.
  platform = sys: {
    system = sys;
    isLinux = true;
    canExecute = other: other.system == sys;
  };

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

  # A package nixpkgs marks insecure: as nixpkgs' check-meta.nix does, its meta can be read but
  # anything that would build or reference it (outPath, drvPath) refuses to evaluate. The nodes
  # of runNixOSTest get a read-only pkgs, so no node can permit it (permittedInsecurePackages).
  insecurePackage =
    pname: version: knownVulnerabilities:
    let
      refuse = throw "Refusing to evaluate package '${pname}-${version}' in nix/tests/stub-pkgs.nix because it is marked as insecure. Known issues: ${lib.concatStringsSep "; " knownVulnerabilities}";
    in
    simplePackage pname version
    // {
      outPath = refuse;
      drvPath = refuse;
      meta = { inherit knownVulnerabilities; };
    };

  # python3.withPackages: a made-up environment whose store path names the packages in it
  # (sorted), so that the harness can see what a service's interpreter carries.
  pythonEnv =
    packages:
    let
      names = builtins.sort builtins.lessThan (lib.unique (map (p: p.pname) packages));
      name = "python3-3.13.0-env+${lib.concatStringsSep "+" names}";
    in
    drv name {
      zibPythonPackages = names;
    };

  pythonPackage =
    pname: version: extra:
    simplePackage pname version // extra;

  python3Packages = rec {
    flask = pythonPackage "flask" "3.1.1" { };
    flask-cors = pythonPackage "flask-cors" "6.0.1" { };
    pyyaml = pythonPackage "pyyaml" "6.0.2" { };
    py-partiql-parser = pythonPackage "py-partiql-parser" "0.6.1" { };
    # As in nixpkgs' pkgs/development/python-modules/moto/default.nix (moto 5.2): the extras of
    # upstream's pyproject as `optional-dependencies` (only the two this project uses, with a
    # subset of their members).
    moto = pythonPackage "moto" "5.2.2" {
      optional-dependencies = {
        server = [
          flask
          flask-cors
          pyyaml
          py-partiql-parser
        ];
        s3 = [
          pyyaml
          py-partiql-parser
        ];
      };
    };
  };

  self = {
    inherit lib system;
    stdenv = {
      hostPlatform = platform system;
      buildPlatform = platform buildSystem;
    };
    # The packages built for (and run on) the build machine.
    buildPackages = if buildSystem == system then self else import ./stub-pkgs.nix { inherit lib; system = buildSystem; };

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
    # Marked insecure in nixpkgs (pkgs/by-name/mi/minio/package.nix, 2026): kept here so that a
    # VM test using it fails as it does on nixpkgs. `minio-client` (mc, archived upstream) is
    # deliberately absent: a node using it fails with "attribute 'minio-client' missing".
    minio = insecurePackage "minio" "2025-10-15T17-29-55Z" [
      "CVE-2026-40344: MinIO has an Unauthenticated Object Write via Missing Signature Verification in Unsigned-Trailer Uploads"
      "minio has been abandoned by upstream and security issues won't be fixed. Users should migrate to alternatives such as Garage, SeaweedFS, or Ceph. S3-compatible clients such as rclone can be used to move data."
    ];
    awscli2 = simplePackage "awscli2" "2.27.0";
    curl = simplePackage "curl" "8.14.1";
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
    python3 = simplePackage "python3" "3.13.0" // {
      pkgs = python3Packages;
      withPackages = f: pythonEnv (f python3Packages);
    };
    inherit python3Packages;

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

    # pkgs/build-support/testers/default.nix (a later copy): runNixOSTest evaluates the test
    # module with nixos/lib/testing's options, the nodes with `node.pkgs = pkgsLinux`, a
    # read-only pkgs. Declared here as in nixos/lib/testing/name.nix (NixOS/nixpkgs@ed550988ac25),
    # testScript.nix (@f0c61c2d3236) and nodes.nix (@5b19d6957a86), where a node's type is the
    # NixOS configuration type: here the stand-in options (stubs.nix), with this pkgs. An
    # undeclared attribute of the test (a typo, an option of another test framework) fails.
    testers.runNixOSTest =
      test:
      let
        eval = lib.evalModules {
          modules = [
            {
              options = {
                name = lib.mkOption { type = lib.types.str; };
                nodes = lib.mkOption {
                  type = lib.types.lazyAttrsOf (
                    lib.types.submoduleWith {
                      modules = [ ./stubs.nix ];
                      specialArgs.pkgs = self;
                    }
                  );
                };
                testScript = lib.mkOption {
                  type = lib.types.either lib.types.str (lib.types.functionTo lib.types.str);
                };
              };
            }
            test
          ];
        };
        inherit (eval) config;
      in
      drv "vm-test-run-${config.name}" {
        zibTest = test;
        zibTestConfig = config;
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
