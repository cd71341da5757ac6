{
  description = "zib: incremental raw ZFS backups to S3 cold storage, with restore from the bucket alone";

  # No flake.lock is committed (it cannot be produced offline where this was written): the first
  # `nix flake lock` (or any `nix build`/`nix flake check`) creates it; commit it then.
  # nixos-unstable: the workspace needs rustc >= 1.95.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # ZFS and zibd are Linux-only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (
        _system: pkgs: rec {
          zib = pkgs.callPackage ./nix/package.nix { };
          default = zib;
        }
      );

      overlays.default = final: _prev: {
        zib = final.callPackage ./nix/package.nix { };
      };

      # The module with its package defaulting to this flake's build; for a cross-compiled
      # system, the build-time config check runs this flake's build for the build machine.
      nixosModules.default =
        { lib, pkgs, ... }:
        let
          inherit (pkgs.stdenv) buildPlatform hostPlatform;
        in
        {
          imports = [ ./nixos-module.nix ];
          services.zib.package = lib.mkDefault self.packages.${hostPlatform.system}.default;
          services.zib.checkConfigPackage = lib.mkIf (!(buildPlatform.canExecute hostPlatform)) (
            lib.mkDefault (self.packages.${buildPlatform.system}.default or null)
          );
        };
      nixosModules.zib = self.nixosModules.default;

      checks = forAllSystems (
        system: pkgs:
          let
            zib = self.packages.${system}.default;
          in
          {
            package = zib;

            # Fails on clippy's correctness and suspicious groups only (likely bugs); the
            # others (style, complexity, perf, and rustc's own warnings) are reported as warnings.
            # Not `-D warnings`: this runs with whatever clippy the user's nixpkgs has (1.98 or
            # newer on nixos-unstable), and each release adds lints, so a nixpkgs bump would fail
            # `nix flake check` for style. The full `-D warnings` gate is scripts/test.d/lint,
            # with the workspace's pinned toolchain.
            clippy = zib.overrideAttrs (old: {
              pname = "zib-clippy";
              nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ pkgs.clippy ];
              buildPhase = ''
                runHook preBuild
                cargo clippy --offline --workspace --all-targets -- \
                  -W clippy::all -D clippy::correctness -D clippy::suspicious
                runHook postBuild
              '';
              installPhase = "touch $out";
              doCheck = false;
            });

            # Unit tests of every crate. The integration tests need a ZFS guest and S3 servers:
            # scripts/test runs those, and vm-test covers the installed service.
            tests = zib.overrideAttrs (_old: {
              pname = "zib-tests";
              doCheck = true;
              cargoTestFlags = [
                "--workspace"
                "--lib"
                "--bins"
              ];
            });

            # Three machines: an S3 server (moto), a ZFS host backing up on a schedule, and a
            # second ZFS host restoring from the bucket alone. Needs KVM.
            vm-test = pkgs.testers.runNixOSTest (import ./nix/vm-test.nix { inherit self; });
          }
      );

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
            packages = [
              pkgs.cargo
              pkgs.rustc
              pkgs.clippy
              pkgs.rustfmt
              pkgs.rust-analyzer
              pkgs.nixpkgs-fmt
              pkgs.deadnix
            ];
          };
        }
      );

      formatter = forAllSystems (_system: pkgs: pkgs.nixpkgs-fmt);
    };
}
