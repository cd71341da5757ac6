# zibd and zibctl, built from this repository with nixpkgs' Rust tooling and Cargo.lock
# (every dependency comes from crates.io, so no outputHashes are needed).
{ lib
, stdenv
, rustPlatform
, cmake
,
}:
let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = "zib";
  inherit (cargoToml.workspace.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
      ../config.example.toml
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "--package"
    "zibd"
    "--package"
    "zibctl"
  ];

  # aws-lc-sys (TLS for the AWS SDK) compiles its C sources with the cc crate on Linux
  # (x86_64, aarch64), which needs only stdenv's compiler; it falls back to CMake when that
  # builder is unavailable, so CMake is here for that case, without its configure phase.
  nativeBuildInputs = [ cmake ];
  dontUseCmakeConfigure = true;

  # The workspace's tests include end-to-end tests that need a ZFS guest and S3 servers;
  # the flake's `checks.tests` runs the ones that work in the sandbox.
  doCheck = false;

  # Man pages from the clap definitions (`zibd man DIR`, `zibctl man DIR`): the binaries must
  # run on the build machine, so a cross build goes without them.
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    mkdir -p $out/share/man/man1
    $out/bin/zibd man $out/share/man/man1
    $out/bin/zibctl man $out/share/man/man1
  '';

  meta = {
    description = "Incremental raw ZFS backups to S3 cold storage (Glacier Deep Archive), with restore";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "zibd";
    platforms = lib.platforms.linux;
  };
}
