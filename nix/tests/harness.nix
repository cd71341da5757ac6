# Evaluates one case of nix/tests/cases.nix (or the flake's outputs, case "flake") and returns
# JSON-able data for nix/tests/run.py to assert on.
#
#   nix-instantiate --eval --strict --json nix/tests/harness.nix --argstr case minimal \
#     [--argstr libPath /path/to/nixpkgs/lib]
#
# libPath empty: zib's own evaluator (nix/minilib), as on CI. libPath set: nixpkgs' real lib.
# Either way the module is evaluated by a module system against nix/tests/stubs.nix (strict
# stand-ins of the NixOS options it writes), with `pkgs` stood in by nix/tests/stub-pkgs.nix.
{ case
, libPath ? ""
,
}:
let
  lib = if libPath == "" then import ../minilib else import libPath;
  evaluator = if libPath == "" then "zib-minilib" else "nixpkgs-lib";

  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  # A cross-compiled system: built on x86_64-linux for aarch64-linux.
  crossPkgs = import ./stub-pkgs.nix {
    inherit lib;
    system = "aarch64-linux";
    buildSystem = "x86_64-linux";
  };

  # flake.nix, called with a stand-in nixpkgs input.
  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-nixpkgs-stand-in";
    legacyPackages = lib.genAttrs systems (system: import ./stub-pkgs.nix { inherit lib system; });
  };
  self =
    flakeOutputs
    // {
      outPath = toString ../..;
      inherit (flake) description;
    };
  flakeOutputs = flake.outputs {
    inherit self nixpkgs;
  };
  vmTest = flakeOutputs.checks.x86_64-linux.vm-test.zibTest;
  vmTestConfig = flakeOutputs.checks.x86_64-linux.vm-test.zibTestConfig;

  cases = import ./cases.nix {
    inherit
      lib
      pkgs
      crossPkgs
      flakeOutputs
      vmTest
      ;
  };

  # --- a module case -------------------------------------------------------------------------
  describe =
    v:
    if builtins.isAttrs v && v ? zibRunCommand then
    # (not `outPath`: toJSON prints an attrset with one as that string)
      {
        path = v.outPath;
        runCommand = {
          inherit (v.zibRunCommand) name script;
          env = builtins.mapAttrs (_: describe) v.zibRunCommand.env;
        };
      }
    else if builtins.isAttrs v && v ? zibValue then
      {
        path = v.outPath;
        format = v.zibFormat;
        value = v.zibValue;
      }
    else if builtins.isAttrs v && v ? outPath then
      v.outPath
    else
      v;

  # A case is a list of modules, or { modules; pkgs; expect; } for other pkgs (cross) and
  # values the checks compare with (passed through).
  evalCase =
    case:
    let
      c = if builtins.isList case then { modules = case; } else case;
      eval = lib.evalModules {
        modules = [ ./stubs.nix ] ++ c.modules;
        specialArgs = {
          pkgs = c.pkgs or pkgs;
        };
      };
      cfg = eval.config;
      failed = map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);
    in
    {
      inherit evaluator;
      failedAssertions = failed;
      expect = c.expect or { };
    }
    # As NixOS does: nothing else is built when an assertion fails.
    // lib.optionalAttrs (failed == [ ]) {
      inherit (cfg) warnings;
      unit = cfg.systemd.services.zibd or null;
      services = builtins.attrNames cfg.systemd.services;
      # The other units (the VM test's S3 server): forcing ExecStart forces every package it
      # names, so one that nixpkgs refuses (insecure, see stub-pkgs.nix) fails the case.
      otherUnits = builtins.mapAttrs
        (_: u: {
          inherit (u) description wantedBy after;
          inherit (u) serviceConfig;
        })
        (removeAttrs cfg.systemd.services [ "zibd" ]);
      groups = cfg.users.groups;
      etc = builtins.mapAttrs
        (_: e: {
          inherit (e) mode text;
          source = describe e.source;
        })
        cfg.environment.etc;
      systemPackages = map (p: p.outPath) cfg.environment.systemPackages;
      variables = cfg.environment.variables;
      tmpfiles = cfg.systemd.tmpfiles.rules;
      zfsPackage = cfg.boot.zfs.package.outPath;
      zibPackage = if cfg ? services && cfg.services ? zib then cfg.services.zib.package.outPath else null;
    };

  # --- the flake -----------------------------------------------------------------------------
  flakeSummary =
    let
      pkg = flakeOutputs.packages.x86_64-linux.default;
      args = pkg.zibArgs;
      names = builtins.mapAttrs (_: builtins.attrNames);
      checkArgs = builtins.mapAttrs (_: c: c.zibArgs or null) (
        removeAttrs flakeOutputs.checks.x86_64-linux [ "vm-test" ]
      );
    in
    {
      inherit evaluator;
      inherit (flake) description;
      inputs = builtins.mapAttrs (_: i: i.url or null) flake.inputs;
      packages = names flakeOutputs.packages;
      checks = names flakeOutputs.checks;
      devShells = names flakeOutputs.devShells;
      nixosModules = builtins.attrNames flakeOutputs.nixosModules;
      overlays = builtins.attrNames flakeOutputs.overlays;
      overlayPackage = ((flakeOutputs.overlays.default pkgs pkgs).zib).outPath;
      formatter = flakeOutputs.formatter.x86_64-linux.name or null;
      package = {
        inherit (pkg) name;
        path = pkg.outPath;
        inherit (args) pname version;
        cargoLock = toString args.cargoLock.lockFile;
        cargoLockExists = builtins.pathExists args.cargoLock.lockFile;
        cargoBuildFlags = args.cargoBuildFlags or [ ];
        nativeBuildInputs = map (p: p.name) (args.nativeBuildInputs or [ ]);
        doCheck = args.doCheck or true;
        mainProgram = args.meta.mainProgram or null;
        dontUseCmakeConfigure = args.dontUseCmakeConfigure or false;
      };
      checkPhases = builtins.mapAttrs
        (
          _: a:
            if a == null then
              null
            else
              {
                buildPhase = a.buildPhase or null;
                doCheck = a.doCheck or true;
                nativeBuildInputs = map (p: p.name) (a.nativeBuildInputs or [ ]);
              }
        )
        checkArgs;
      devShell = map (p: p.name) (flakeOutputs.devShells.x86_64-linux.default.zibShell.packages or [ ]);
      vmTest = {
        inherit (vmTest) name testScript;
        nodes = builtins.attrNames vmTest.nodes;
        # As runNixOSTest evaluates it (stub-pkgs.nix): each node's failed assertions, and its
        # packages (forcing them: an insecure one fails here as in nixpkgs).
        evaluated = builtins.mapAttrs
          (_: n: {
            failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) n.assertions);
            systemPackages = map (p: p.outPath) n.environment.systemPackages;
          })
          vmTestConfig.nodes;
      };
    };
in
if case == "flake" then
  flakeSummary
else if case == "list" then
  builtins.attrNames cases
else
  evalCase cases.${case}
