# NixOS VM test (flake output checks.<system>.vm-test; needs KVM):
#   s3        MinIO, the bucket
#   uploader  a ZFS pool, services.zib backing tank/data up on a 20-second schedule;
#             zibctl status / trigger --wait / pause, reload and stop of the unit
#   restorer  a second ZFS machine with no state and no daemon: `zibd restore` from the bucket
#             alone, then every file is compared with the uploader's by SHA-256.
# The nodes are also evaluated offline (scripts/test.d/nix, cases vm-*), so their zib config
# passes `zibd check-config` and their options exist; the test itself cannot run offline.
{ self }:
let
  accessKey = "zibtest";
  secretKey = "zibtest-secret-key";
  bucket = "zib-backups";

  # Test-only credentials: in the store here, which the module refuses for environmentFile
  # itself (it must be a path outside the store, as /etc/zib/s3.env is; its target is not).
  s3Env = ''
    AWS_ACCESS_KEY_ID=${accessKey}
    AWS_SECRET_ACCESS_KEY=${secretKey}
    AWS_REGION=us-east-1
  '';

  target = {
    inherit bucket;
    endpoint = "http://s3:9000";
    region = "us-east-1";
    force_path_style = true;
    prefix = "vmtest/";
    # MinIO stores every class alike and rejects the archive ones: STANDARD, so the restore
    # reads the chunks directly (the thaw path is covered by the guest tests with moto).
    storage_class = "STANDARD";
    chunk_size = "1MiB";
  };

  zfsMachine = hostId: {
    boot.supportedFilesystems = [ "zfs" ];
    boot.zfs.forceImportRoot = false;
    networking.hostId = hostId;
    virtualisation.emptyDiskImages = [ 1024 ];
    virtualisation.memorySize = 2048;
  };
in
{
  name = "zib";

  nodes = {
    s3 =
      { pkgs, ... }:
      {
        services.minio = {
          enable = true;
          rootCredentialsFile = "/etc/minio.env";
        };
        environment.etc."minio.env".text = ''
          MINIO_ROOT_USER=${accessKey}
          MINIO_ROOT_PASSWORD=${secretKey}
        '';
        environment.systemPackages = [ pkgs.minio-client ];
        networking.firewall.allowedTCPPorts = [ 9000 ];
      };

    uploader =
      { lib, pkgs, ... }:
      {
        imports = [
          self.nixosModules.default
          (zfsMachine "8425e349")
        ];
        environment.etc."zib/s3.env" = {
          text = s3Env;
          mode = "0600";
        };
        environment.systemPackages = [ pkgs.jq ];
        users.users.alice = {
          isNormalUser = true;
          extraGroups = [ "zib" ];
        };
        users.users.bob.isNormalUser = true;
        services.zib = {
          enable = true;
          environmentFile = "/etc/zib/s3.env";
          settings = {
            inherit target;
            daemon.shutdown_timeout_secs = 20;
            dataset = [
              {
                name = "tank/data";
                # Six fields: seconds first.
                schedule = "*/20 * * * * *";
                keep_snapshots = 2;
              }
            ];
          };
        };
        # Started by the test script once the pool exists.
        systemd.services.zibd.wantedBy = lib.mkForce [ ];
      };

    restorer =
      { pkgs, ... }:
      {
        imports = [ (zfsMachine "a1b2c3d4") ];
        environment.systemPackages = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
        environment.etc."zib/s3.env" = {
          text = s3Env;
          mode = "0600";
        };
        # Only the target: no datasets, no state, nothing from the uploader but the bucket.
        environment.etc."zib/restore.toml".text = ''
          [target]
          bucket = "${bucket}"
          endpoint = "${target.endpoint}"
          region = "${target.region}"
          force_path_style = true
          prefix = "${target.prefix}"
          storage_class = "${target.storage_class}"
        '';
      };
  };

  testScript = ''
    import json

    def status(machine, dataset="tank/data"):
        out = json.loads(machine.succeed("zibctl status --json"))
        for d in out["datasets"]:
            if d["dataset"] == dataset:
                return d
        raise Exception(f"{dataset} not in zibctl status: {out}")

    checksums = "cd {} && find . -type f -print0 | sort -z | xargs -0 sha256sum"

    start_all()

    with subtest("the S3 server and its bucket"):
        s3.wait_for_unit("minio.service")
        s3.wait_for_open_port(9000)
        s3.wait_until_succeeds("mc alias set local http://127.0.0.1:9000 ${accessKey} ${secretKey}", timeout=60)
        s3.succeed("mc mb local/${bucket}")

    with subtest("a pool with data on the uploader"):
        uploader.wait_for_unit("multi-user.target")
        uploader.succeed(
            "zpool create -O mountpoint=/tank tank /dev/vdb",
            "zfs create tank/data",
            "head -c 3000000 /dev/urandom > /tank/data/random.bin",
            "seq 1 200000 > /tank/data/numbers.txt",
            "mkdir -p /tank/data/dir/sub && echo hello > /tank/data/dir/sub/hello.txt",
        )

    with subtest("the unit starts (Type=notify), hardened as declared"):
        # Type=notify: systemctl start returns once zibd has sent READY=1 (socket bound).
        uploader.succeed("systemctl start zibd.service")
        uploader.succeed("test -S /run/zibd/zibd.sock")
        uploader.succeed("test \"$(stat -c '%a %G' /run/zibd)\" = '750 zib'")
        uploader.succeed("test \"$(systemctl show -p Type --value zibd.service)\" = notify")
        # CapBnd: CAP_SYS_ADMIN (bit 21) only.
        uploader.succeed(
            "grep -x 'CapBnd:\t0000000000200000' /proc/$(systemctl show -p MainPID --value zibd.service)/status"
        )
        uploader.succeed("test -d /var/lib/zib && test -d /var/cache/zib")
        uploader.succeed("zibd check-config /etc/zib/zibd.toml")
        print(uploader.succeed("systemd-analyze security zibd.service || true"))

    with subtest("the schedule backs up by itself"):
        uploader.wait_until_succeeds(
            "zibctl status --json | jq -e '.datasets[] | select(.dataset == \"tank/data\") | .last_success != null'",
            timeout=300,
        )
        print(uploader.succeed("zibctl status"))
        s3.succeed("mc ls --recursive local/${bucket}/vmtest/ | grep -q .")

    with subtest("zibctl: trigger --wait runs an incremental; group members only"):
        uploader.succeed(
            "dd if=/dev/urandom of=/tank/data/more.bin bs=1M count=2",
            "echo later > /tank/data/dir/later.txt",
        )
        uploader.succeed("zibctl trigger --wait tank/data")
        uploader.succeed("su - alice -c 'zibctl status'")
        uploader.succeed("su - alice -c 'zibctl trigger --wait tank/data'")
        uploader.fail("su - bob -c 'zibctl trigger tank/data'")
        # Nothing changes after this point: every later snapshot has the same files.
        uploader.succeed("zibctl pause")
        assert status(uploader)["chain_length"] >= 2, status(uploader)

    with subtest("reload and stop"):
        uploader.succeed("systemctl reload zibd.service")
        uploader.succeed("zibctl status")
        uploader.succeed("systemctl stop zibd.service")
        uploader.succeed("test \"$(systemctl show -p Result --value zibd.service)\" = success")

    with subtest("restore on another machine from the bucket alone"):
        restorer.wait_for_unit("multi-user.target")
        restorer.succeed("zpool create -O mountpoint=none backup /dev/vdb")
        restorer.succeed(
            "set -a && . /etc/zib/s3.env && set +a && "
            "zibd --config /etc/zib/restore.toml restore run --to backup/restored --dataset tank/data"
        )
        restorer.succeed("zfs set mountpoint=/restored backup/restored")
        restorer.succeed("zfs mount backup/restored || mountpoint -q /restored")
        want = uploader.succeed(checksums.format("/tank/data"))
        got = restorer.succeed(checksums.format("/restored"))
        assert want == got, f"restored files differ:\n{want}\n---\n{got}"
        assert "./more.bin" in got and "./dir/later.txt" in got, got
  '';
}
