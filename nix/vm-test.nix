# NixOS VM test (flake output checks.<system>.vm-test; needs KVM):
#   s3        moto's S3 server, the bucket (set up and listed with awscli2)
#   uploader  a ZFS pool, services.zib backing tank/data up on a 20-second schedule;
#             zibctl status / trigger --wait / pause, reload and stop of the unit
#   restorer  a second ZFS machine with no state and no daemon: `zibd restore` from the bucket
#             alone, thawing every DEEP_ARCHIVE chunk first, then every file is compared with
#             the uploader's by SHA-256.
#
# The S3 server is moto (nixpkgs: python3Packages.moto with its `server` extra), not MinIO, which
# nixpkgs marks insecure (meta.knownVulnerabilities: abandoned upstream, to be removed for
# 26.05), and which runNixOSTest's read-only pkgs refuse to evaluate; nor Garage, the other
# maintained S3 server in nixpkgs, which ignores storage classes and answers RestoreObject with
# 501. moto stores DEEP_ARCHIVE objects as archived (an unrestored GET is refused with
# InvalidObjectState) and implements RestoreObject and the x-amz-restore header, so this test
# covers the thaw of a real restore. moto keeps the objects in memory, which is fine for the
# few MiB here.
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
    # Archived in moto as in AWS: the restore must thaw every chunk before reading it.
    storage_class = "DEEP_ARCHIVE";
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
      let
        # moto_server needs moto's `server` extra (flask, flask-cors); `s3` adds what its S3
        # backend imports (pyyaml, py-partiql-parser).
        moto = pkgs.python3.withPackages (
          ps: [ ps.moto ] ++ ps.moto.optional-dependencies.server ++ ps.moto.optional-dependencies.s3
        );
      in
      {
        # As scripts/testbed/s3-servers starts it, on every address: the other machines reach it
        # as http://s3:9000. Any access key is accepted; the state is in memory.
        systemd.services.moto = {
          description = "moto S3 server for the zib VM test";
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ];
          serviceConfig = {
            ExecStart = "${moto}/bin/moto_server -H 0.0.0.0 -p 9000";
            DynamicUser = true;
            Restart = "on-failure";
          };
        };
        environment.systemPackages = [
          pkgs.awscli2
          pkgs.curl
        ];
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
    import re

    # awscli2 against moto on the s3 machine.
    aws = (
        "AWS_ACCESS_KEY_ID=${accessKey} AWS_SECRET_ACCESS_KEY=${secretKey} AWS_DEFAULT_REGION=us-east-1 "
        "aws --endpoint-url http://127.0.0.1:9000"
    )

    def objects(prefix="${target.prefix}"):
        out = json.loads(s3.succeed(f"{aws} s3api list-objects-v2 --bucket ${bucket} --prefix {prefix} --output json"))
        return out.get("Contents", [])

    def status(machine, dataset="tank/data"):
        out = json.loads(machine.succeed("zibctl status --json"))
        for d in out["datasets"]:
            if d["dataset"] == dataset:
                return d
        raise Exception(f"{dataset} not in zibctl status: {out}")

    checksums = "cd {} && find . -type f -print0 | sort -z | xargs -0 sha256sum"

    start_all()

    with subtest("the S3 server (moto) and its bucket"):
        s3.wait_for_unit("moto.service")
        s3.wait_for_open_port(9000)
        s3.wait_until_succeeds(f"{aws} s3api list-buckets", timeout=60)
        s3.succeed(f"{aws} s3api create-bucket --bucket ${bucket}")

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
        print(s3.succeed(f"{aws} s3 ls --recursive s3://${bucket}/${target.prefix}"))

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

    with subtest("the chunks are archived (DEEP_ARCHIVE), the manifests are not"):
        objs = objects()
        chunks = [o for o in objs if not o["Key"].endswith(".manifest.json")]
        manifests = [o for o in objs if o["Key"].endswith(".manifest.json")]
        assert chunks and manifests, objs
        assert all(o["StorageClass"] == "DEEP_ARCHIVE" for o in chunks), chunks
        assert all(o["StorageClass"] == "STANDARD" for o in manifests), manifests
        # Unreadable until thawed, as in AWS (GetObject itself: `aws s3 cp` would skip an
        # archived object with a warning instead of asking).
        out = s3.fail(f"{aws} s3api get-object --bucket ${bucket} --key '{chunks[0]['Key']}' /tmp/chunk 2>&1")
        assert "InvalidObjectState" in out, out
        # Slow thaws: each stays in progress for the next 2 requests on its key, so the restore
        # polls (moto's manual state transition, as crates/zib-testkit uses it).
        s3.succeed(
            "curl -sf -X POST http://127.0.0.1:9000/moto-api/state-manager/set-transition "
            "-d '{\"model_name\":\"s3::keyrestore\",\"transition\":{\"progression\":\"manual\",\"times\":2}}'"
        )

    with subtest("restore on another machine from the bucket alone, thawing every chunk"):
        restorer.wait_for_unit("multi-user.target")
        restorer.succeed("zpool create -O mountpoint=none backup /dev/vdb")
        # Thaw tier and short poll intervals: a test-sized wait, not the 60 s .. 15 min default.
        out = restorer.succeed(
            "set -a && . /etc/zib/s3.env && set +a && "
            "zibd --config /etc/zib/restore.toml restore run --to backup/restored --dataset tank/data"
            " --tier bulk --days 1 --poll-initial-secs 1 --poll-max-secs 2"
        )
        print(out)
        m = re.search(r"(\d+) chunks, \d+ bytes; (\d+) thaw requests sent, (\d+) polls", out)
        assert m, out
        nchunks, thaws, polls = map(int, m.groups())
        # Every chunk of the chain was archived: each was thawed, and waited for at least once.
        assert nchunks > 0 and thaws == nchunks and polls >= thaws, out
        restorer.succeed("zfs set mountpoint=/restored backup/restored")
        restorer.succeed("zfs mount backup/restored || mountpoint -q /restored")
        want = uploader.succeed(checksums.format("/tank/data"))
        got = restorer.succeed(checksums.format("/restored"))
        assert want == got, f"restored files differ:\n{want}\n---\n{got}"
        assert "./more.bin" in got and "./dir/later.txt" in got, got
  '';
}
