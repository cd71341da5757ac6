#!/usr/bin/env python3
"""Offline checks of flake.nix, nixos-module.nix, nix/ and contrib/systemd (run by scripts/test.d/nix).

Every .nix file must parse; nixos-module.nix is evaluated by a module system (zib's minilib on CI,
nixpkgs' real lib too when NIXPKGS_LIB points at its lib/ directory) against strict stand-ins of
the NixOS options it writes, for the configurations in nix/tests/cases.nix, and the resulting unit
is asserted on; the rendered TOML must read back to the settings and pass `zibd check-config`
(target/debug/zibd, or $ZIBD_BIN); flake.nix is called with a stand-in nixpkgs; the contrib unit
is compared with the module's and verified by systemd-analyze. Then every seeded fault in
nix/tests/faults.py is applied to a copy of the tree and the same checks must fail.

Prints one line per check and, last, "N passed, N failed".
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
import faults as fault_defs  # noqa: E402

NIX_ENV = dict(os.environ, NIX_CONFIG="build-users-group =")

HARDENING = {
    "CapabilityBoundingSet": ["CAP_SYS_ADMIN"],
    "NoNewPrivileges": True,
    "ProtectSystem": "strict",
    "ProtectHome": True,
    "PrivateTmp": True,
    "PrivateDevices": False,
    "DevicePolicy": "closed",
    "DeviceAllow": ["/dev/zfs rw"],
    "ProtectKernelTunables": True,
    "ProtectKernelModules": True,
    "ProtectKernelLogs": True,
    "ProtectControlGroups": True,
    "ProtectClock": True,
    "ProtectHostname": True,
    "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
    "RestrictNamespaces": True,
    "RestrictRealtime": True,
    "RestrictSUIDSGID": True,
    "LockPersonality": True,
    "MemoryDenyWriteExecute": True,
    "SystemCallArchitectures": "native",
}

# Directives that must agree between the module's unit and contrib/systemd/zibd.service.
CONTRIB_SAME = [
    "Type", "NotifyAccess", "Restart", "RestartSec", "RestartPreventExitStatus", "WatchdogSec",
    "KillMode", "UMask", "RuntimeDirectory", "RuntimeDirectoryMode", "StateDirectory",
    "StateDirectoryMode", "CacheDirectory", "CacheDirectoryMode", "ProtectProc", "RemoveIPC",
    "SystemCallFilter", "SystemCallErrorNumber",
] + list(HARDENING)
SPLIT_KEYS = {"CapabilityBoundingSet", "RestrictAddressFamilies", "SystemCallFilter"}


# ---------------------------------------------------------------------------------------------
# TOML rendering (what pkgs.formats.toml's json2toml does, for the values the module produces)

class TomlError(Exception):
    pass


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(k):
    return k if BARE_KEY.fullmatch(k) else toml_str(k)


def toml_str(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append("\\u%04X" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_inline(v, where):
    if v is None:
        raise TomlError(f"{where}: null has no TOML representation (json2toml fails on it)")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return {True: "inf", False: "-inf"}[v > 0] if v == v else "nan"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_inline(x, f"{where}[{i}]") for i, x in enumerate(v)) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_inline(x, f'{where}.{k}')}" for k, x in v.items()) + " }"
    raise TomlError(f"{where}: cannot render {type(v).__name__}")


def is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def render_toml(value):
    if not isinstance(value, dict):
        raise TomlError("the top level must be a table")
    lines = []

    def table(path, d):
        for k, v in d.items():
            if not isinstance(v, dict) and not is_table_array(v):
                lines.append(f"{toml_key(k)} = {toml_inline(v, '.'.join(path + [k]))}")
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append("")
                lines.append("[" + ".".join(toml_key(p) for p in path + [k]) + "]")
                table(path + [k], v)
            elif is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append("[[" + ".".join(toml_key(p) for p in path + [k]) + "]]")
                    table(path + [k], item)

    table([], value)
    return "\n".join(lines).lstrip("\n") + "\n"


def find_nulls(v, where="settings"):
    if v is None:
        return [where]
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in find_nulls(x, f"{where}.{k}")]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in find_nulls(x, f"{where}[{i}]")]
    return []


# ---------------------------------------------------------------------------------------------
# systemd command lines

def split_exec(line):
    """Splits a systemd command line into words and undoes its escaping (%%, $$, quotes, C
    escapes). Raises ValueError on a lone specifier or variable, which would be expanded."""
    words, i, n = [], 0, len(line)
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", " ": " "}
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        buf, quote = [], None
        while i < n:
            c = line[i]
            if quote is None and c in " \t":
                break
            if c in "\"'" and quote is None and not buf:
                quote = c
            elif quote is not None and c == quote:
                quote = None
                i += 1
                break
            elif c == "\\":
                i += 1
                if i >= n or line[i] not in escapes:
                    raise ValueError(f"bad escape in {line!r}")
                buf.append(escapes[line[i]])
            else:
                buf.append(c)
            i += 1
        if quote is not None:
            raise ValueError(f"unterminated quote in {line!r}")
        raw = "".join(buf)
        out, j = [], 0
        while j < len(raw):
            c = raw[j]
            if c in "%$":
                if j + 1 < len(raw) and raw[j + 1] == c:
                    out.append(c)
                    j += 2
                    continue
                raise ValueError(f"unescaped {c} in {raw!r} would be expanded by systemd")
            out.append(c)
            j += 1
        words.append("".join(out))
    return words


# ---------------------------------------------------------------------------------------------

class Suite:
    def __init__(self, root, lib_path, zibd, verbose=True):
        self.root = root
        self.lib_path = lib_path
        self.zibd = zibd
        self.verbose = verbose
        self.results = []
        self.tmp = tempfile.mkdtemp(prefix="zib-nix-checks-")

    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        if self.verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"\n       {detail}" if detail and not ok else ""),
                  flush=True)
        return ok

    def nix_eval(self, path, args):
        cmd = ["nix-instantiate", "--eval", "--strict", "--json", path]
        for k, v in args.items():
            cmd += ["--argstr", k, v]
        p = subprocess.run(cmd, capture_output=True, text=True, env=NIX_ENV)
        if p.returncode == 0:
            return True, json.loads(p.stdout)
        return False, p.stderr

    def harness(self, case, lib=""):
        return self.nix_eval(os.path.join(self.root, "nix/tests/harness.nix"), {"case": case, "libPath": lib})

    # --- zibd check-config ----------------------------------------------------------------
    def zibd_available(self):
        return self.zibd and os.path.isfile(self.zibd) and os.access(self.zibd, os.X_OK)

    def run_check_script(self, source, rendered_path, runnable=None):
        """Runs the module's build-time check (the runCommand script) with the store paths it
        names mapped to the real zibd and the rendered TOML. Returns (exit code, output).
        runnable: the packages (store paths) built for the build machine, for a cross-compiled
        case; a zibd of any other one cannot run there (Exec format error)."""
        rc = source["runCommand"]
        script = rc["script"]
        pkg_dir = os.path.join(self.tmp, "pkg")
        os.makedirs(os.path.join(pkg_dir, "bin"), exist_ok=True)
        link = os.path.join(pkg_dir, "bin", "zibd")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(self.zibd), link)
        pkg_paths = set(re.findall(r"(/nix/store/[^/\s\"']+)/bin/zibd", script))
        for p in pkg_paths:
            if runnable is not None and p not in runnable:
                return 126, f"{p}/bin/zibd: cannot execute binary file: Exec format error (not built for the build machine)"
        for p in pkg_paths:
            script = script.replace(p, pkg_dir)
        if "/nix/store/" in script:
            return 127, f"unmapped store path left in the script: {script!r}"
        env = dict(os.environ)
        for k, v in rc["env"].items():
            if isinstance(v, dict) and "value" in v:
                env[k] = rendered_path
            elif isinstance(v, bool):
                env[k] = "1" if v else ""
            else:
                env[k] = str(v)
        out = os.path.join(self.tmp, "out-" + os.path.basename(rendered_path))
        env["out"] = out
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env)
        if p.returncode == 0 and not os.path.isfile(out):
            return 1, "the check script did not write $out"
        return p.returncode, (p.stdout + p.stderr).strip()

    def zibd_check_file(self, path):
        p = subprocess.run([self.zibd, "check-config", path], capture_output=True, text=True)
        return p.returncode, (p.stdout + p.stderr).strip()


def common_unit_checks(s, name, r, group="zib", env_file=None, config_path="/etc/zib/zibd.toml",
                       shutdown=30, zfs=None):
    u = r.get("unit")
    if not s.check(f"{name}: the zibd service exists", u is not None, str(r.get("failedAssertions"))):
        return
    sc = u["serviceConfig"]
    s.check(f"{name}: Type=notify", sc.get("Type") == "notify", sc.get("Type"))
    pkg = r["zibPackage"]
    try:
        words = split_exec(sc.get("ExecStart", ""))
    except ValueError as e:
        words = []
        s.check(f"{name}: ExecStart parses as a systemd command line", False, str(e))
    s.check(f"{name}: ExecStart runs the package's zibd with --config {config_path}",
            words[:3] == [f"{pkg}/bin/zibd", "--config", config_path], sc.get("ExecStart"))
    reload = sc.get("ExecReload") or []
    s.check(f"{name}: ExecReload sends SIGHUP to the main process",
            any(re.search(r"/bin/kill -HUP \$MAINPID$", x) for x in reload), reload)
    s.check(f"{name}: WatchdogSec is set", bool(sc.get("WatchdogSec")), sc.get("WatchdogSec"))
    try:
        stop = int(sc.get("TimeoutStopSec"))
    except (TypeError, ValueError):
        stop = -1
    s.check(f"{name}: TimeoutStopSec ({sc.get('TimeoutStopSec')}) exceeds shutdown_timeout_secs ({shutdown})",
            stop > shutdown, sc.get("TimeoutStopSec"))
    s.check(f"{name}: RestartPreventExitStatus=78 (EX_CONFIG)", sc.get("RestartPreventExitStatus") == "78")
    s.check(f"{name}: RuntimeDirectory=zibd mode 0750, StateDirectory=zib, CacheDirectory=zib",
            (sc.get("RuntimeDirectory"), sc.get("RuntimeDirectoryMode"), sc.get("StateDirectory"),
             sc.get("CacheDirectory")) == ("zibd", "0750", "zib", "zib"),
            {k: sc.get(k) for k in ("RuntimeDirectory", "RuntimeDirectoryMode", "StateDirectory", "CacheDirectory")})
    s.check(f"{name}: Group={group} and the group exists", sc.get("Group") == group and group in r["groups"],
            (sc.get("Group"), list(r["groups"])))
    bad = {k: (sc.get(k), v) for k, v in HARDENING.items()
           if (sorted(sc.get(k)) if isinstance(v, list) and isinstance(sc.get(k), list) else sc.get(k))
           != (sorted(v) if isinstance(v, list) else v)}
    s.check(f"{name}: hardening as declared", not bad, f"(got, want): {bad}")
    s.check(f"{name}: requires and is after zfs.target",
            "zfs.target" in u["requires"] and "zfs.target" in u["after"], (u["requires"], u["after"]))
    s.check(f"{name}: wants and is after network-online.target",
            "network-online.target" in u["wants"] and "network-online.target" in u["after"])
    if zfs is not None:
        s.check(f"{name}: path is boot.zfs.package", u["path"] == [zfs], (u["path"], zfs))
    s.check(f"{name}: EnvironmentFile", sc.get("EnvironmentFile") == env_file, (sc.get("EnvironmentFile"), env_file))
    s.check(f"{name}: the package (zibctl) is in environment.systemPackages", pkg in r["systemPackages"])


def settings_checks(s, name, r, expect_check_ok=True, want_settings=None, runnable=None):
    """The config file: built by a check derivation, linked at /etc/zib/zibd.toml, TOML that
    reads back to the settings, accepted (or rejected) by zibd check-config."""
    etc = r["etc"].get("zib/zibd.toml")
    if not s.check(f"{name}: /etc/zib/zibd.toml comes from the check derivation",
                   etc and isinstance(etc["source"], dict) and "runCommand" in etc["source"], etc):
        return
    src = etc["source"]
    script = src["runCommand"]["script"]
    s.check(f"{name}: the derivation runs `zibd check-config` on the generated file",
            re.search(r'/bin/zibd check-config "?\$configFile"?', script) is not None, script)
    s.check(f"{name}: a config change reloads instead of restarting (reloadTriggers)",
            r["unit"]["reloadTriggers"] == [src["path"]], r["unit"]["reloadTriggers"])
    gen = [v for v in src["runCommand"]["env"].values() if isinstance(v, dict) and v.get("format") == "toml"]
    if not s.check(f"{name}: the file is generated with pkgs.formats.toml", len(gen) == 1):
        return
    value = gen[0]["value"]
    nulls = find_nulls(value)
    rendered_path = os.path.join(s.tmp, f"{name}-{len(s.results)}.toml")
    try:
        text = render_toml(value)
        back = tomllib.loads(text)
        ok = back == value
        s.check(f"{name}: the rendered TOML reads back to the settings", ok and not nulls,
                f"nulls: {nulls}" if nulls else f"{back} != {value}")
    except (TomlError, tomllib.TOMLDecodeError) as e:
        s.check(f"{name}: the rendered TOML reads back to the settings", False, str(e))
        text = None
    if want_settings is not None:
        missing = diff_subset(want_settings, value)
        s.check(f"{name}: every setting given reaches the file", not missing, missing)
    if text is None:
        return
    with open(rendered_path, "w") as f:
        f.write(text)
    what = "accepts" if expect_check_ok else "rejects (exit 78)"
    label = f"{name}: zibd check-config {what} the generated file (build-time check)"
    if not s.zibd_available():
        s.check(label, False, f"no zibd binary at {s.zibd}: build it (cargo build -p zibd) first")
        return
    code, out = s.run_check_script(src, rendered_path, runnable)
    s.check(label, code == 0 if expect_check_ok else code == 78, f"exit {code}: {out[-600:]}")


def diff_subset(want, got, where="settings"):
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{where}: {got!r}"]
        return [m for k, v in want.items() for m in diff_subset(v, got.get(k, KeyError), f"{where}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got!r}"]
        return [m for i, (a, b) in enumerate(zip(want, got)) for m in diff_subset(a, b, f"{where}[{i}]")]
    return [] if want == got and type(want) is type(got) else [f"{where}: want {want!r}, got {got!r}"]


ASSERTION_CASES = {
    "both-settings-and-file": "either settings or configFile, not both",
    "neither-settings-nor-file": "set services.zib.settings",
    "socket-outside-runtime-dir": "must be under /run/zibd/",
    "socket-group-mismatch": "socket_group (wheel) must equal services.zib.group",
    "secret-in-settings": "must not hold credentials (aws_secret_access_key)",
    "environment-file-in-store": "is in the Nix store",
    "environment-file-relative": "must be an absolute path",
    "no-zfs": "needs ZFS",
}

ERROR_CASES = {
    "misspelled-option": "The option `services.zib.enviromentFile' does not exist",
    "environment-file-path-literal": "services.zib.environmentFile' is not of type",
    "shutdown-timeout-out-of-range": "services.zib.settings.daemon.shutdown_timeout_secs' is not of type",
    "unknown-storage-class": "services.zib.settings.target.storage_class' is not of type",
    "missing-bucket": "services.zib.settings.target.bucket' was accessed but has no value defined",
    "multi-line-description": "systemd.services.zibd.description' is not of type",
    "unknown-unit-type": "systemd.services.zibd.serviceConfig' is not of type",
}


def module_checks(s, lib=""):
    ok, cases = s.harness("list", lib)
    if not s.check("cases.nix lists the cases", ok, cases):
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        futs = {c: ex.submit(s.harness, c, lib) for c in cases + ["flake"]}
        res = {c: f.result() for c, f in futs.items()}
    evaluator = "nixpkgs-lib" if lib else "zib-minilib"

    def get(case):
        ok, r = res[case]
        if not s.check(f"{case}: evaluates", ok, (r or "")[-800:] if not ok else ""):
            return None
        s.check(f"{case}: evaluated by {evaluator}", r.get("evaluator") == evaluator, r.get("evaluator"))
        return r

    for case, want in ASSERTION_CASES.items():
        r = get(case)
        if r is not None:
            fa = r["failedAssertions"]
            s.check(f"{case}: the assertion fires", any(want in m for m in fa), fa)
    for case, want in ERROR_CASES.items():
        ok, r = res[case]
        s.check(f"{case}: evaluation fails with “{want}”", not ok and want in r,
                json.dumps(r)[:300] if ok else r[-500:])

    r = get("minimal")
    if r:
        s.check("minimal: no failed assertions", r["failedAssertions"] == [], r["failedAssertions"])
        common_unit_checks(s, "minimal", r, env_file="/run/secrets/zib.env", zfs=r["zfsPackage"])
        s.check("minimal: wanted by multi-user.target", r["unit"]["wantedBy"] == ["multi-user.target"])
        settings_checks(s, "minimal", r, want_settings={
            "daemon": {"socket": "/run/zibd/zibd.sock", "socket_group": "zib", "state_dir": "/var/lib/zib",
                       "spool_dir": "/var/cache/zib", "shutdown_timeout_secs": 30},
            "target": {"bucket": "my-zfs-backups"},
            "dataset": [{"name": "tank/photos", "schedule": "0 3 * * *"}]})

    r = get("full")
    if r:
        ok, flake = res["flake"]
        common_unit_checks(s, "full", r, group="backup", env_file="/run/secrets/zib.env", shutdown=120,
                           zfs=r["zfsPackage"])
        s.check("full: path follows boot.zfs.package (zfs_unstable)",
                r["unit"]["path"] == [r["zfsPackage"]] and "2.4.0-unstable" in r["zfsPackage"], r["unit"]["path"])
        sc = r["unit"]["serviceConfig"]
        extra = ["--log-filter", "zibd=debug,info", "two words", "100%", "$HOME", 'quote"d']
        try:
            words = split_exec(sc["ExecStart"])
        except ValueError as e:
            words = str(e)
        s.check("full: extraArgs reach ExecStart intact (systemd quoting)", words[3:] == extra if isinstance(words, list) else False,
                f"{sc['ExecStart']!r} -> {words!r}")
        s.check("full: a non-default state_dir is created and writable",
                "d /srv/zib/state 0700 root root - -" in r["tmpfiles"] and sc.get("ReadWritePaths") == ["/srv/zib/state"],
                (r["tmpfiles"], sc.get("ReadWritePaths")))
        s.check("full: zibctl is told about a non-default socket",
                r["variables"].get("ZIBCTL_SOCKET") == "/run/zibd/control.sock", r["variables"])
        settings_checks(s, "full", r, want_settings={
            "daemon": {"socket": "/run/zibd/control.sock", "socket_group": "backup", "state_dir": "/srv/zib/state",
                       "shutdown_timeout_secs": 120, "max_concurrent_jobs": 3, "timezone": "local"},
            "target": {"bucket": "my-zfs-backups", "region": "eu-central-1", "endpoint": "http://127.0.0.1:9000",
                       "force_path_style": True, "prefix": "zib/", "storage_class": "DEEP_ARCHIVE",
                       "chunk_size": "64MiB", "max_spooled_chunks": 2, "max_attempts": 8},
            "dataset": [
                {"name": "tank/photos", "schedule": "0 3 * * *", "snapshot_prefix": "zib", "keep_snapshots": 3},
                {"name": "tank/home", "schedule": "0 */6 * * *", "jitter_secs": 600, "storage_class": "GLACIER_IR",
                 "chunk_size": 67108864, "prefix": "home/"}]})

    r = get("config-file")
    if r:
        common_unit_checks(s, "config-file", r, config_path="/etc/zib/custom.toml", shutdown=30, zfs=r["zfsPackage"])
        sc = r["unit"]["serviceConfig"]
        pkg = r["zibPackage"]
        s.check("config-file: ExecStartPre checks the file when the service starts",
                sc.get("ExecStartPre") == f"{pkg}/bin/zibd check-config /etc/zib/custom.toml", sc.get("ExecStartPre"))
        s.check("config-file: no generated /etc/zib/zibd.toml", "zib/zibd.toml" not in r["etc"], list(r["etc"]))

    r = get("merged")
    if r:
        src = r["etc"]["zib/zibd.toml"]["source"]
        gen = [v for v in src["runCommand"]["env"].values() if isinstance(v, dict) and "value" in v]
        names = sorted(d["name"] for d in gen[0]["value"]["dataset"]) if gen else []
        s.check("merged: [[dataset]] lists from two modules are concatenated",
                names == ["tank/home", "tank/photos"], names)

    r = get("overrides")
    if r and r.get("unit"):
        sc = r["unit"]["serviceConfig"]
        s.check("overrides: plain definitions override WatchdogSec and TimeoutStopSec",
                (sc.get("WatchdogSec"), sc.get("TimeoutStopSec")) == ("5min", "10min"),
                (sc.get("WatchdogSec"), sc.get("TimeoutStopSec")))

    r = get("disabled")
    if r:
        s.check("disabled: enable = false adds no service, group, file or package",
                r["unit"] is None and r["services"] == [] and r["groups"] == {} and r["etc"] == {}
                and r["systemPackages"] == [], {k: r[k] for k in ("services", "groups", "etc", "systemPackages")})

    r = get("flake-module")
    if r and flake_ok(res):
        pkg = res["flake"][1]["package"]["path"]
        s.check("flake-module: the package defaults to the flake's own", r["zibPackage"] == pkg, (r["zibPackage"], pkg))
        common_unit_checks(s, "flake-module", r, zfs=r["zfsPackage"])

    for case in ("cross", "cross-flake-module"):
        r = get(case)
        if r:
            e = r["expect"]
            src = (r["etc"].get("zib/zibd.toml") or {}).get("source")
            script = src["runCommand"]["script"] if isinstance(src, dict) and "runCommand" in src else ""
            s.check(f"{case}: the build-time check runs zibd built for the build machine, not the host's",
                    f"{e['buildZib']}/bin/zibd " in script and e["hostZib"] not in script, (script, e))
            s.check(f"{case}: the unit runs the host's zibd", r["zibPackage"] == e["hostZib"], (r["zibPackage"], e))
            s.check(f"{case}: no warnings", r["warnings"] == [], r["warnings"])
            settings_checks(s, case, r, runnable={e["buildZib"]})
    r = get("cross-custom-package")
    if r:
        src = (r["etc"].get("zib/zibd.toml") or {}).get("source")
        s.check("cross-custom-package: without a build-platform zibd the file is linked unchecked",
                isinstance(src, dict) and "runCommand" not in src and src.get("format") == "toml", src)
        s.check("cross-custom-package: a warning says the config is not checked and how to fix it",
                any("not checked while the system is built" in w and "checkConfigPackage" in w for w in r["warnings"]),
                r["warnings"])

    for case, rejects in (("unknown-key", "max_atempts"), ("bad-schedule", "61 * * * *")):
        r = get(case)
        if r:
            settings_checks(s, case, r, expect_check_ok=False)

    r = get("example-config")
    if r:
        with open(os.path.join(s.root, "config.example.toml"), "rb") as f:
            example = tomllib.load(f)
        settings_checks(s, "example-config", r, want_settings=example)

    r = get("vm-uploader")
    if r:
        s.check("vm-uploader: no failed assertions (ZFS with networking.hostId)", r["failedAssertions"] == [],
                r["failedAssertions"])
    if r and not r["failedAssertions"]:
        common_unit_checks(s, "vm-uploader", r, env_file="/etc/zib/s3.env", shutdown=20, zfs=r["zfsPackage"])
        s.check("vm-uploader: the test starts zibd itself (wantedBy forced empty)", r["unit"]["wantedBy"] == [])
        settings_checks(s, "vm-uploader", r)
    r = get("vm-restorer")
    if r:
        s.check("vm-restorer: no failed assertions (ZFS with networking.hostId)", r["failedAssertions"] == [],
                r["failedAssertions"])
    if r and not r["failedAssertions"]:
        text = (r["etc"].get("zib/restore.toml") or {}).get("text")
        flake_pkg = res["flake"][1]["package"]["path"] if flake_ok(res) else None
        s.check("vm-restorer: no zibd service, the flake's zib installed",
                r["unit"] is None and flake_pkg in r["systemPackages"], (r["services"], r["systemPackages"]))
        label = "vm-restorer: zibd check-config accepts its restore.toml"
        if text is None:
            s.check(label, False, "no /etc/zib/restore.toml text")
        elif not s.zibd_available():
            s.check(label, False, f"no zibd binary at {s.zibd}")
        else:
            path = os.path.join(s.tmp, "restore.toml")
            with open(path, "w") as f:
                f.write(text)
            code, out = s.zibd_check_file(path)
            s.check(label, code == 0, f"exit {code}: {out[-400:]}")
    r = get("vm-s3")
    if r:
        moto = r["otherUnits"].get("moto") or {}
        try:
            words = split_exec((moto.get("serviceConfig") or {}).get("ExecStart", ""))
        except ValueError as e:
            words = [str(e)]
        m = re.fullmatch(r"/nix/store/[^/]+-python3-[^/+]*-env\+([^/]*)/bin/moto_server", words[0] if words else "")
        env = set(m.group(1).split("+")) if m else set()
        s.check("vm-s3: the S3 server is moto_server on 0.0.0.0:9000, started at boot",
                m is not None and words[1:] == ["-H", "0.0.0.0", "-p", "9000"]
                and moto.get("wantedBy") == ["multi-user.target"], moto)
        s.check("vm-s3: moto_server's Python has moto with its server extra (flask, flask-cors)",
                {"moto", "flask", "flask-cors"} <= env, sorted(env))
        s.check("vm-s3: awscli2 is installed for bucket setup and listing",
                any(re.search(r"-awscli2-[0-9]", p) for p in r["systemPackages"]), r["systemPackages"])

    if flake_ok(res):
        flake_checks(s, res["flake"][1])
    else:
        s.check("flake: evaluates with a stand-in nixpkgs", False, res["flake"][1][-800:])
    return res


def flake_ok(res):
    return res["flake"][0]


def flake_checks(s, f):
    s.check("flake: evaluates with a stand-in nixpkgs", True)
    s.check("flake: nixpkgs input is nixos-unstable", f["inputs"].get("nixpkgs") == "github:NixOS/nixpkgs/nixos-unstable",
            f["inputs"])
    systems = {"x86_64-linux", "aarch64-linux"}
    s.check("flake: packages.<system>.default for x86_64-linux and aarch64-linux",
            set(f["packages"]) == systems and all("default" in v for v in f["packages"].values()), f["packages"])
    s.check("flake: checks package, clippy, tests and vm-test on every system",
            set(f["checks"]) == systems and all({"package", "clippy", "tests", "vm-test"} <= set(v) for v in f["checks"].values()),
            f["checks"])
    s.check("flake: nixosModules.default, overlays.default, devShells.default",
            "default" in f["nixosModules"] and "default" in f["overlays"]
            and all("default" in v for v in f["devShells"].values()), (f["nixosModules"], f["overlays"], f["devShells"]))
    p = f["package"]
    with open(os.path.join(s.root, "Cargo.toml"), "rb") as fh:
        cargo = tomllib.load(fh)
    s.check("flake: the package is zib at the workspace version",
            (p["pname"], p["version"]) == ("zib", cargo["workspace"]["package"]["version"]), (p["pname"], p["version"]))
    s.check("flake: cargoLock.lockFile is the repository's Cargo.lock",
            p["cargoLockExists"] and os.path.realpath(p["cargoLock"]) == os.path.realpath(os.path.join(s.root, "Cargo.lock")),
            p["cargoLock"])
    s.check("flake: builds both zibd and zibctl",
            p["cargoBuildFlags"] == ["--package", "zibd", "--package", "zibctl"], p["cargoBuildFlags"])
    s.check("flake: cmake available to aws-lc-sys without its configure phase",
            any(n.startswith("cmake") for n in p["nativeBuildInputs"]) and p["dontUseCmakeConfigure"], p)
    s.check("flake: the overlay's zib is the package", f["overlayPackage"] == p["path"], f["overlayPackage"])
    cp = f["checkPhases"]
    clippy_phase = (cp.get("clippy") or {}).get("buildPhase") or ""
    clippy_args = clippy_phase.replace("\\\n", " ").split()
    s.check("flake: the clippy check runs cargo clippy, denying clippy::correctness and clippy::suspicious",
            "cargo clippy" in clippy_phase and all(
                "clippy::" + g in clippy_args and clippy_args[clippy_args.index("clippy::" + g) - 1] == "-D"
                for g in ("correctness", "suspicious"))
            and any(n.startswith("clippy") for n in cp["clippy"]["nativeBuildInputs"]), cp.get("clippy"))
    # A newer clippy (nixpkgs moves on) must not fail users' `nix flake check` for style.
    denied = [clippy_args[i + 1] for i, a in enumerate(clippy_args[:-1]) if a in ("-D", "--deny", "-F", "--forbid")]
    s.check("flake: the clippy check denies no open-ended lint set (warnings, clippy::all, style, pedantic, ...)",
            clippy_phase and all(d in ("clippy::correctness", "clippy::suspicious") for d in denied), denied)
    s.check("flake: the tests check runs the tests", cp.get("tests") and cp["tests"]["doCheck"] is True, cp.get("tests"))
    vm = f["vmTest"]
    s.check("flake: vm-test has the machines s3, uploader and restorer",
            sorted(vm["nodes"]) == ["restorer", "s3", "uploader"], vm["nodes"])
    bad = {n: e["failedAssertions"] for n, e in vm["evaluated"].items() if e["failedAssertions"]}
    s.check("flake: vm-test evaluates as runNixOSTest does, no node with a failed assertion",
            sorted(vm["evaluated"]) == ["restorer", "s3", "uploader"] and not bad, bad or vm["evaluated"])
    script = vm["testScript"]
    for what in ("zibctl status", "zibctl trigger --wait", "restore run", "--to ", "sha256sum",
                 "systemctl reload zibd", "CapBnd", "DEEP_ARCHIVE", "InvalidObjectState",
                 "--poll-initial-secs", "thaw requests sent", "aws --endpoint-url"):
        s.check(f"flake: vm-test script uses {what!r}", what in script)
    try:
        compile(script, "vm-test testScript", "exec")
        err = ""
    except SyntaxError as e:
        err = f"{e.msg} at line {e.lineno}: {e.text!r}"
    s.check("flake: vm-test script is valid Python (as the test driver runs it)", not err, err)
    s.check("flake: vm-test uses neither MinIO (insecure in nixpkgs) nor mc (archived)",
            "minio" not in script.lower() and "mc " not in script, script[:200])


def contrib_checks(s, minimal):
    path = os.path.join(s.root, "contrib/systemd/zibd.service")
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        s.check("contrib: zibd.service exists", False, str(e))
        return
    sections, cur = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), {})
            continue
        k, _, v = line.partition("=")
        cur.setdefault(k.strip(), []).append(v.strip())
    svc = sections.get("Service", {})
    unit = sections.get("Unit", {})

    def one(k):
        v = svc.get(k)
        return v[-1] if v else None

    s.check("contrib: Type=notify", one("Type") == "notify", one("Type"))
    s.check("contrib: ExecStart=/usr/local/bin/zibd --config /etc/zib/zibd.toml",
            one("ExecStart") == "/usr/local/bin/zibd --config /etc/zib/zibd.toml", one("ExecStart"))
    s.check("contrib: ExecReload checks the config, then sends SIGHUP",
            svc.get("ExecReload") == ["/usr/local/bin/zibd check-config /etc/zib/zibd.toml", "/bin/kill -HUP $MAINPID"],
            svc.get("ExecReload"))
    s.check("contrib: Group=zib, as in contrib/systemd/zib.sysusers",
            one("Group") == "zib" and os.path.isfile(os.path.join(s.root, "contrib/systemd/zib.sysusers")))
    s.check("contrib: credentials from an EnvironmentFile", (one("EnvironmentFile") or "").lstrip("-") == "/etc/zib/zibd.env")
    s.check("contrib: Requires/After zfs.target, Wants/After network-online.target",
            "zfs.target" in " ".join(unit.get("Requires", [])) and "network-online.target" in " ".join(unit.get("Wants", []))
            and {"zfs.target", "network-online.target"} <= set(" ".join(unit.get("After", [])).split()), unit)
    s.check("contrib: WantedBy=multi-user.target", sections.get("Install", {}).get("WantedBy") == ["multi-user.target"])
    if minimal and minimal.get("unit"):
        sc = minimal["unit"]["serviceConfig"]

        def norm(k, v):
            if v is None:
                return None
            vals = v if isinstance(v, list) else [v]
            out = []
            for x in vals:
                if isinstance(x, bool):
                    out.append("yes" if x else "no")
                elif k in SPLIT_KEYS:
                    out += str(x).split()
                else:
                    out.append({"true": "yes", "false": "no"}.get(str(x), str(x)))
            return sorted(out) if k in SPLIT_KEYS or k == "DeviceAllow" else out

        diff = {k: (norm(k, svc.get(k)), norm(k, sc.get(k))) for k in CONTRIB_SAME
                if norm(k, svc.get(k)) != norm(k, sc.get(k))}
        s.check("contrib: the same directives and hardening as the NixOS module", not diff,
                f"(contrib, module): {diff}")
    # systemd's own parser: unknown keys, bad values.
    analyze = shutil.which("systemd-analyze")
    if not s.check("contrib: systemd-analyze is installed", analyze):
        return
    d = os.path.join(s.tmp, "unit")
    os.makedirs(d, exist_ok=True)
    fake = os.path.join(d, "zibd")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    upath = os.path.join(d, "zibd.service")
    with open(upath, "w") as f:
        f.write(text.replace("/usr/local/bin/zibd", fake))
    p = subprocess.run([analyze, "verify", upath], capture_output=True, text=True)
    out = (p.stdout + p.stderr).strip()
    s.check("contrib: systemd-analyze verify finds nothing to complain about", p.returncode == 0 and not out, out)


def parse_checks(s):
    files = nix_files(s.root)
    s.check("there are .nix files to parse", len(files) >= 8, files)

    def parse(f):
        return f, subprocess.run(["nix-instantiate", "--parse", f], capture_output=True, text=True, env=NIX_ENV)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        for f, p in ex.map(parse, files):
            s.check(f"parses: {os.path.relpath(f, s.root)}", p.returncode == 0, p.stderr.strip()[-400:])


def nix_files(root):
    files = []
    for dp, dns, fns in os.walk(root):
        dns[:] = [d for d in dns if d not in (".git", "target", "node_modules", ".testbed")]
        files += [os.path.join(dp, f) for f in fns if f.endswith(".nix")]
    return sorted(files)


def lint_checks(s):
    tools = os.environ.get("ZIB_NIX_TOOLS", "/opt/zib-nix-tools")
    files = nix_files(s.root)
    for label, cmd in (("nixpkgs-fmt --check (the flake's formatter)", ["nixpkgs-fmt", "--check"]),
                       ("deadnix --fail (no unused bindings or arguments)", ["deadnix", "--fail"])):
        exe = os.path.join(tools, "bin", cmd[0])
        if not s.check(f"lint: {cmd[0]} is installed", os.access(exe, os.X_OK), exe):
            continue
        p = subprocess.run([exe] + cmd[1:] + files, capture_output=True, text=True)
        s.check(f"lint: {label}", p.returncode == 0, (p.stdout + p.stderr).strip()[-800:])


def conformance_checks(s, lib):
    golden_path = os.path.join(s.root, "nix/tests/conformance.golden.json")
    with open(golden_path) as f:
        golden = json.load(f)
    for label, lp in [("zib-minilib", "")] + ([("nixpkgs-lib", lib)] if lib else []):
        ok, r = s.nix_eval(os.path.join(s.root, "nix/tests/conformance.nix"), {"libPath": lp})
        if not s.check(f"conformance ({label}): evaluates", ok, r if not ok else ""):
            continue
        for k in sorted(golden["cases"]):
            s.check(f"conformance ({label}): {k} as nixpkgs' lib", r.get(k) == golden["cases"][k],
                    f"got {r.get(k)}, nixpkgs' lib gave {golden['cases'][k]}")


def run_suite(root, lib, zibd, verbose=True):
    s = Suite(root, lib, zibd, verbose)

    def guarded(label, fn, *a):
        try:
            return fn(s, *a)
        except Exception as e:  # a crash of the checks is a failed check, not a crash of the suite
            s.check(f"{label}: the checks ran to the end", False, f"{type(e).__name__}: {e}")
            return None

    try:
        guarded("parse", parse_checks)
        guarded("lint", lint_checks)
        guarded("conformance", conformance_checks, lib)
        res = guarded("module", module_checks, "") or {}
        minimal = res.get("minimal", (False, None))
        guarded("contrib", contrib_checks, minimal[1] if minimal[0] else None)
        if lib:
            # The same harness with nixpkgs' real lib: the same checks, and byte-identical JSON.
            print(f"--- the same harness with nixpkgs' lib at {lib}", flush=True)
            res_real = guarded("module (nixpkgs' lib)", module_checks, lib) or {}
            for case in sorted(res):
                a, b = res[case], res_real.get(case, (None, None))
                if a[0] and b[0]:
                    strip = lambda d: {k: v for k, v in d.items() if k != "evaluator"} if isinstance(d, dict) else d  # noqa: E731
                    s.check(f"{case}: minilib and nixpkgs' lib give identical JSON", strip(a[1]) == strip(b[1]))
                else:
                    s.check(f"{case}: minilib and nixpkgs' lib agree that it fails", a[0] == b[0])
    finally:
        shutil.rmtree(s.tmp, ignore_errors=True)
    return s.results


def copy_tree(root, dest):
    for item in fault_defs.TREE:
        src = os.path.join(root, item)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, item), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, item)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, item))


def run_fault(root, zibd, fault):
    d = tempfile.mkdtemp(prefix="zib-fault-")
    try:
        copy_tree(root, d)
        path = os.path.join(d, fault["file"])
        with open(path) as f:
            text = f.read()
        if text.count(fault["old"]) != 1:
            return False, f"the fault's text occurs {text.count(fault['old'])} times in {fault['file']} (want 1): update faults.py"
        with open(path, "w") as f:
            f.write(text.replace(fault["old"], fault["new"]))
        results = run_suite(d, "", zibd, verbose=False)
        failed = [n for n, ok, _ in results if not ok]
        want = re.compile(fault["caught_by"])
        hit = [n for n in failed if want.search(n)]
        if hit:
            return True, f"caught by {len(failed)} check(s), e.g. {hit[0]!r}"
        if failed:
            return False, f"failed only unexpected checks: {failed[:3]}"
        return False, "NOT caught: every check passed"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.abspath(os.path.join(HERE, "../..")))
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--update-golden", action="store_true", help="record nixpkgs' lib's conformance output (needs NIXPKGS_LIB)")
    args = ap.parse_args()
    root = args.root
    lib = os.environ.get("NIXPKGS_LIB", "")
    zibd = os.environ.get("ZIBD_BIN") or os.path.join(root, "target/debug/zibd")
    t0 = time.time()

    if args.update_golden:
        if not lib:
            sys.exit("--update-golden needs NIXPKGS_LIB=/path/to/nixpkgs/lib")
        s = Suite(root, lib, zibd)
        ok, r = s.nix_eval(os.path.join(root, "nix/tests/conformance.nix"), {"libPath": lib})
        if not ok:
            sys.exit(r)
        rev = os.environ.get("NIXPKGS_LIB_REV", "unknown")
        with open(os.path.join(root, "nix/tests/conformance.golden.json"), "w") as f:
            json.dump({"recorded_with": f"nixpkgs lib {rev}", "cases": r}, f, indent=1, sort_keys=True)
            f.write("\n")
        print("updated nix/tests/conformance.golden.json")
        return

    print(f"evaluator: zib-minilib (nix/minilib)" + (f"; also nixpkgs' lib at {lib}" if lib else
          " (set NIXPKGS_LIB=/path/to/nixpkgs/lib to run the same harness with nixpkgs' real lib too)"))
    print(f"zibd for check-config: {zibd}" + ("" if os.path.isfile(zibd) else " (MISSING: those checks fail)"))
    results = run_suite(root, lib, zibd)

    if not args.no_faults:
        print("--- seeded faults: each must make the checks fail", flush=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
            futs = [(f, ex.submit(run_fault, root, zibd, f)) for f in fault_defs.FAULTS]
            for f, fut in futs:
                ok, detail = fut.result()
                name = f"seeded fault caught: {f['name']}"
                results.append((name, ok, detail))
                print(f"{'ok  ' if ok else 'FAIL'} {name}\n       {detail}", flush=True)

    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"--- nix checks took {time.time() - t0:.1f} s")
    if failed:
        print("failed:")
        for n, ok, d in results:
            if not ok:
                print(f"  {n}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
