//! The only place that runs `zfs`. Every command is logged, its stderr kept, its exit status
//! checked. A send stream is only good once the process has exited 0 (zrepl's rule): a stream
//! that ends early is a failure, and nothing is committed from it.

use std::{ffi::OsString, process::Stdio};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use zib_core::{DatasetName, SnapName};

#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed { cmd: String, status: String, stderr: String },
    /// The dataset, snapshot or bookmark named does not exist (classified from zfs's stderr,
    /// which is kept).
    #[error("`{cmd}` failed ({status}): {stderr}")]
    NotFound { cmd: String, status: String, stderr: String },
    #[error("`{cmd}` printed output zib cannot parse: {output:?}")]
    Parse { cmd: String, output: String },
    /// zib refused to run a destructive command on a dataset that is not its own to destroy.
    #[error("refusing to run `{cmd}`: {reason}")]
    Refused { cmd: String, reason: String },
}

/// What `zfs send` sends: always raw (`-w`: an encrypted dataset leaves the host encrypted,
/// and the stream needs no key), `to` a snapshot, incrementally `from` a base when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendArgs {
    pub dataset: DatasetName,
    pub to: SnapName,
    pub from: Option<SendBase>,
}

/// The base of an incremental send: the snapshot itself, or its bookmark once it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBase {
    Snapshot(SnapName),
    Bookmark(SnapName),
}

impl SendArgs {
    /// `-w [-i <base>] ds@to` (also recorded in the manifest).
    pub fn argv(&self) -> Vec<String> {
        let mut args = vec!["-w".to_owned()];
        match &self.from {
            Some(SendBase::Snapshot(s)) => args.extend(["-i".into(), self.dataset.snapshot(s)]),
            Some(SendBase::Bookmark(s)) => args.extend(["-i".into(), self.dataset.bookmark(s)]),
            None => {}
        }
        args.push(self.dataset.snapshot(&self.to));
        args
    }
}

/// How `zfs receive` applies a stream: always resumable (`-s`) and unmounted (`-u`). A stream
/// comes from a bucket, which is not a place to take orders about the host from, so whatever
/// properties it might carry never decide where or whether the dataset mounts or what it
/// shares: `-x sharenfs -x sharesmb` always; without a mountpoint from the user `-x mountpoint
/// -o canmount=noauto` (it inherits its parent's mountpoint and never mounts by itself, not
/// even at the next boot); with one, `-o mountpoint=<mp>` on the full stream (`-x mountpoint`
/// on the incrementals, which keep that local value) and `-x canmount`. zib's own streams
/// carry no properties at all (`zfs send -w` without `-p`/`-R`; [`StreamHeader`] checks that),
/// so these options are the second line, not the first.
///
/// A volume's stream gets none of them: mounts and shares do not apply to volumes, and a
/// `zfs receive` of one dataset's stream refuses `-o`/`-x` of a property that does not apply to
/// its type ("property 'sharenfs' does not apply to datasets of this type"), so with them no
/// volume could be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOptions {
    pub target: DatasetName,
    /// Where the user wants the restored dataset mounted; None: nowhere by itself.
    pub mountpoint: Option<String>,
    /// Whether this is the chain's full stream (the one that creates `target`).
    pub full: bool,
    /// Whether the stream is a volume's ([`StreamHeader::volume`]).
    pub volume: bool,
}

impl ReceiveOptions {
    /// `-s -u -x sharenfs -x sharesmb`, then the mountpoint/canmount pair, then the target; a
    /// volume's: `-s -u` and the target.
    fn argv(&self) -> Vec<String> {
        if self.volume {
            return vec!["-s".into(), "-u".into(), self.target.to_string()];
        }
        let mut args: Vec<String> =
            ["-s", "-u", "-x", "sharenfs", "-x", "sharesmb"].map(Into::into).into();
        match &self.mountpoint {
            Some(mp) if self.full => args.extend([
                "-o".into(),
                format!("mountpoint={mp}"),
                "-x".into(),
                "canmount".into(),
            ]),
            Some(_) => args.extend(["-x", "mountpoint", "-x", "canmount"].map(Into::into)),
            None => args.extend(["-x", "mountpoint", "-o", "canmount=noauto"].map(Into::into)),
        }
        args.push(self.target.to_string());
        args
    }
}

/// The first record of a `zfs send` stream (`DRR_BEGIN` of `dmu_replay_record_t`, in the
/// sender's byte order): enough to tell whether a stream is the one a manifest describes
/// before any of it reaches `zfs receive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// `DMU_SUBSTREAM` (1) for a single dataset's stream; `DMU_COMPOUNDSTREAM` (2) for a
    /// `zfs send -R`/`-p` package, which carries properties (and possibly other datasets).
    pub header_type: u8,
    /// `DMU_BACKUP_FEATURE_*` bits.
    pub features: u32,
    pub to_guid: u64,
    /// 0 for a full stream.
    pub from_guid: u64,
    /// Whether it is a volume's stream (`drr_type` `DMU_OST_ZVOL`), else a filesystem's.
    pub volume: bool,
}

impl StreamHeader {
    /// Bytes [`StreamHeader::parse`] needs: the record header and the begin record up to
    /// `drr_fromguid`.
    pub const LEN: usize = 56;
    const MAGIC: u64 = 0x2F5B_ACBAC;
    const SUBSTREAM: u8 = 1;
    /// `DMU_OST_ZVOL`, the begin record's object set type of a volume (a filesystem's is
    /// `DMU_OST_ZFS`, 2).
    const OST_ZVOL: u32 = 3;
    /// `zfs send -c`, implied by `-w`.
    const FEATURE_COMPRESSED: u32 = 1 << 22;
    /// `zfs send -w` of an encrypted dataset.
    pub const FEATURE_RAW: u32 = 1 << 24;

    /// The header at the start of `bytes`, or why it is not one.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let b = bytes.get(..Self::LEN).ok_or_else(|| {
            format!("it is {} bytes long, too short for a zfs send stream", bytes.len())
        })?;
        let word = |at: usize, big: bool| {
            let w: [u8; 8] = b[at..at + 8].try_into().expect("8 bytes");
            if big { u64::from_be_bytes(w) } else { u64::from_le_bytes(w) }
        };
        let big = match word(8, false) {
            Self::MAGIC => false,
            m if m.swap_bytes() == Self::MAGIC => true,
            _ => return Err("it does not start with a zfs send stream header".into()),
        };
        let word32 = |at: usize| {
            let w: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
            if big { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) }
        };
        let drr_type = word32(0);
        if drr_type != 0 {
            return Err(format!("its first record is of type {drr_type}, not a begin record"));
        }
        let version_info = word(16, big);
        Ok(Self {
            header_type: (version_info & 0b11) as u8,
            features: ((version_info >> 2) & 0x3FFF_FFFF) as u32,
            to_guid: word(40, big),
            from_guid: word(48, big),
            volume: word32(32) == Self::OST_ZVOL,
        })
    }

    /// Whether this is the stream a manifest describes: one dataset's stream (no `-R`/`-p`
    /// package, so no properties), to snapshot `to_guid`, from `from_guid` (None: a full
    /// stream), and made with `zfs send -w` when `raw`. The error says what differs.
    pub fn check(&self, to_guid: &str, from_guid: Option<&str>, raw: bool) -> Result<(), String> {
        if self.header_type != Self::SUBSTREAM {
            return Err("it is a replication package (zfs send -R or -p, carrying properties), not the single raw stream zib sends".into());
        }
        let guid = |g: &str| g.parse::<u64>().ok();
        // An adopted stream whose snapshot was gone at import has no GUID to compare with.
        let unknown = zib_core::legacy::adopt::is_unknown_guid;
        if !unknown(to_guid) && guid(to_guid) != Some(self.to_guid) {
            return Err(format!(
                "it is a stream of snapshot GUID {}, the manifest says {to_guid}",
                self.to_guid
            ));
        }
        match from_guid {
            None if self.from_guid != 0 => {
                return Err(format!(
                    "it is an incremental from GUID {}, the manifest says a full stream",
                    self.from_guid
                ));
            }
            Some(f) if self.from_guid == 0 => {
                return Err(format!(
                    "it is a full stream, the manifest says an incremental from {f}"
                ));
            }
            Some(f) if !unknown(f) && guid(f) != Some(self.from_guid) => {
                return Err(format!(
                    "it is a stream from GUID {}, the manifest says from {f}",
                    self.from_guid
                ));
            }
            _ => {}
        }
        if raw && self.features & (Self::FEATURE_COMPRESSED | Self::FEATURE_RAW) == 0 {
            return Err("it was not sent raw (no zfs send -w), but the manifest says it was".into());
        }
        Ok(())
    }
}

/// Facts about one snapshot or bookmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    /// Short name (after `@` or `#`).
    pub name: String,
    pub guid: String,
    pub createtxg: u64,
    /// Unix seconds.
    pub creation: i64,
}

/// The user hold tag zib puts on the snapshot it sends, from before the send until the
/// manifest is committed (or the run failed). zib releases only holds with this tag.
pub const SEND_HOLD: &str = "zib-send";

/// Runs `zfs`: `zfs` on PATH by default; [`Zfs::from_env`] (the binaries' choice) honours
/// `ZIB_ZFS_BIN`; [`Zfs::with_bin`] names another binary (a stand-in in tests), and
/// [`Zfs::env`] gives it environment variables of its own.
#[derive(Debug, Clone)]
pub struct Zfs {
    bin: OsString,
    /// Whether `bin` was named (not `zfs` on PATH): `zpool` is then looked for beside it.
    named: bool,
    env: Vec<(OsString, OsString)>,
}

impl Default for Zfs {
    fn default() -> Self {
        Self { bin: "zfs".into(), named: false, env: Vec::new() }
    }
}

fn render(args: &[&str]) -> String {
    let mut s = String::from("zfs");
    for a in args {
        s.push(' ');
        if a.contains(' ') { s.push_str(&format!("'{a}'")) } else { s.push_str(a) }
    }
    s
}

impl Zfs {
    /// The binary `ZIB_ZFS_BIN` names, else `zfs` on PATH: what `zibd` runs.
    pub fn from_env() -> Self {
        match std::env::var_os("ZIB_ZFS_BIN") {
            Some(bin) => Self::with_bin(bin),
            None => Self::default(),
        }
    }

    /// Runs `bin` instead of `zfs` on PATH.
    pub fn with_bin(bin: impl Into<OsString>) -> Self {
        Self { bin: bin.into(), named: true, env: Vec::new() }
    }

    /// The same, with `key=value` in the environment of every command it runs.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .stdin(Stdio::null());
        c
    }

    /// Runs a short command to completion and returns its stdout.
    async fn run(&self, args: &[&str]) -> Result<String, ZfsError> {
        let cmd = render(args);
        tracing::debug!(%cmd, "running");
        let out = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| ZfsError::Spawn { cmd: cmd.clone(), source })?;
        if !out.status.success() {
            return Err(failed(
                cmd,
                out.status.to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn snapshot(&self, ds: &DatasetName, snap: &SnapName) -> Result<(), ZfsError> {
        self.run(&["snapshot", &ds.snapshot(snap)]).await.map(drop)
    }

    pub async fn bookmark(&self, ds: &DatasetName, snap: &SnapName) -> Result<(), ZfsError> {
        self.run(&["bookmark", &ds.snapshot(snap), &ds.bookmark(snap)]).await.map(drop)
    }

    pub async fn destroy_snapshot(
        &self,
        ds: &DatasetName,
        snap: &SnapName,
    ) -> Result<(), ZfsError> {
        self.run(&["destroy", &ds.snapshot(snap)]).await.map(drop)
    }

    pub async fn destroy_bookmark(
        &self,
        ds: &DatasetName,
        snap: &SnapName,
    ) -> Result<(), ZfsError> {
        self.run(&["destroy", &ds.bookmark(snap)]).await.map(drop)
    }

    /// Puts zib's user hold ([`SEND_HOLD`]) on `ds@snap`, so nothing can destroy the snapshot
    /// while it is being sent. Already held by zib (a crashed run's hold): reused.
    pub async fn hold_for_send(&self, ds: &DatasetName, snap: &SnapName) -> Result<(), ZfsError> {
        if !self.send_holds(ds, std::slice::from_ref(snap)).await?.is_empty() {
            return Ok(());
        }
        self.run(&["hold", SEND_HOLD, &ds.snapshot(snap)]).await.map(drop)
    }

    /// Releases zib's user hold on `ds@snap`; other holds stay.
    pub async fn release_send_hold(
        &self,
        ds: &DatasetName,
        snap: &SnapName,
    ) -> Result<(), ZfsError> {
        self.run(&["release", SEND_HOLD, &ds.snapshot(snap)]).await.map(drop)
    }

    /// Which of `snaps` (snapshots of `ds`) carry zib's user hold: one `zfs holds` for all.
    pub async fn send_holds(
        &self,
        ds: &DatasetName,
        snaps: &[SnapName],
    ) -> Result<Vec<SnapName>, ZfsError> {
        if snaps.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = snaps.iter().map(|s| ds.snapshot(s)).collect();
        let mut args = vec!["holds", "-H"];
        args.extend(full.iter().map(String::as_str));
        let out = self.run(&args).await?;
        let held = parse_holds(&out, ds)
            .ok_or_else(|| ZfsError::Parse { cmd: render(&args), output: out.clone() })?;
        Ok(held.into_iter().filter(|(_, tag)| tag == SEND_HOLD).map(|(s, _)| s).collect())
    }

    /// Whether the dataset exists.
    pub async fn dataset_exists(&self, ds: &str) -> Result<bool, ZfsError> {
        match self.run(&["list", "-H", "-o", "name", ds]).await {
            Ok(_) => Ok(true),
            Err(ZfsError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The filesystems and volumes of the tree at `root` (itself included, never snapshots):
    /// `zfs list -H -p -r -t filesystem,volume -o name`. Each name passes [`DatasetName`]
    /// first: one that does not (or is not inside `root`) is never run with, and is returned
    /// in [`Descendants::refused`] with the reason. `NotFound` when `root` does not exist.
    pub async fn list_descendants(&self, root: &DatasetName) -> Result<Descendants, ZfsError> {
        let args =
            ["list", "-H", "-p", "-r", "-t", "filesystem,volume", "-o", "name", root.as_str()];
        let out = self.run(&args).await?;
        Ok(parse_descendants(&out, root))
    }

    /// Snapshots (`kind = "snapshot"`) or bookmarks (`"bookmark"`) of exactly this dataset,
    /// oldest first.
    pub async fn list(&self, ds: &DatasetName, kind: &str) -> Result<Vec<SnapInfo>, ZfsError> {
        let args = [
            "list",
            "-H",
            "-p",
            "-d",
            "1",
            "-t",
            kind,
            "-o",
            "name,guid,createtxg,creation",
            "-s",
            "createtxg",
            ds.as_str(),
        ];
        let out = self.run(&args).await?;
        let sep = if kind == "bookmark" { '#' } else { '@' };
        parse_list(&out, sep)
            .ok_or_else(|| ZfsError::Parse { cmd: render(&args), output: out.clone() })
    }

    /// The snapshot `ds@snap`, if it exists.
    pub async fn snapshot_info(
        &self,
        ds: &DatasetName,
        snap: &SnapName,
    ) -> Result<Option<SnapInfo>, ZfsError> {
        Ok(self.list(ds, "snapshot").await?.into_iter().find(|s| s.name == snap.as_str()))
    }

    /// The bookmark `ds#snap`, if it exists.
    pub async fn bookmark_info(
        &self,
        ds: &DatasetName,
        snap: &SnapName,
    ) -> Result<Option<SnapInfo>, ZfsError> {
        Ok(self.list(ds, "bookmark").await?.into_iter().find(|s| s.name == snap.as_str()))
    }

    /// `zfs send -nvP <args>`: the estimated stream size, for progress.
    pub async fn send_estimate(&self, args: &SendArgs) -> Result<u64, ZfsError> {
        let args = args.argv();
        let mut full: Vec<&str> = vec!["send", "-nvP"];
        full.extend(args.iter().map(String::as_str));
        let out = self.run(&full).await?;
        out.lines()
            .rev()
            .find_map(|l| l.strip_prefix("size\t").and_then(|n| n.trim().parse().ok()))
            .ok_or_else(|| ZfsError::Parse { cmd: render(&full), output: out })
    }

    /// Starts `zfs send <args>` with stdout piped. Call [`SendStream::finish`] after reading
    /// everything: only its Ok makes the stream good.
    pub fn send(&self, args: &SendArgs) -> Result<SendStream, ZfsError> {
        let args = args.argv();
        let mut full: Vec<&str> = vec!["send"];
        full.extend(args.iter().map(String::as_str));
        let cmd = render(&full);
        tracing::info!(%cmd, "starting send");
        let mut child = self
            .command(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ZfsError::Spawn { cmd: cmd.clone(), source })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = collect_stderr(&mut child);
        Ok(SendStream { cmd, child, stdout: Some(stdout), stderr })
    }

    /// Starts `zfs receive -s -u ...` with stdin piped.
    pub fn receive(&self, opts: &ReceiveOptions) -> Result<ReceiveSink, ZfsError> {
        let args = opts.argv();
        let mut full: Vec<&str> = vec!["receive"];
        full.extend(args.iter().map(String::as_str));
        let cmd = render(&full);
        tracing::info!(%cmd, "starting receive");
        let mut child = self
            .command(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ZfsError::Spawn { cmd: cmd.clone(), source })?;
        let stdin = child.stdin.take().expect("piped");
        // A larger pipe than the default 64 KiB: the restore writes its verified chunks in
        // pieces of a MiB, and each fill of a small pipe is a switch to the receive and back.
        // Best effort (the kernel's pipe-max-size may be lower).
        let _ = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&stdin),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(RECEIVE_PIPE_BYTES),
        );
        let stderr = collect_stderr(&mut child);
        Ok(ReceiveSink { cmd, child, stdin: Some(stdin), stderr })
    }

    /// Value of one property (`-H -p`), e.g. `receive_resume_token`; None when "-".
    pub async fn get_property(&self, name: &str, prop: &str) -> Result<Option<String>, ZfsError> {
        let out = self.run(&["get", "-H", "-p", "-o", "value", prop, name]).await?;
        let v = out.trim();
        Ok(if v.is_empty() || v == "-" { None } else { Some(v.to_owned()) })
    }

    /// Bytes written to `ds` since its snapshot `since` (the `written@<snapshot>` property);
    /// None when zfs has no value (the snapshot is gone: `NotFound` or "-").
    pub async fn written_since(
        &self,
        ds: &DatasetName,
        since: &SnapName,
    ) -> Result<Option<u64>, ZfsError> {
        self.sync_pool(ds.pool()).await;
        let prop = format!("written@{since}");
        let v = match self.get_property(ds.as_str(), &prop).await {
            Ok(v) => v,
            Err(ZfsError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        v.map(|v| {
            v.parse().map_err(|_| ZfsError::Parse {
                cmd: render(&["get", "-H", "-p", "-o", "value", &prop, ds.as_str()]),
                output: v,
            })
        })
        .transpose()
    }

    /// `zpool sync POOL`, best effort: `written` counts only what a committed transaction
    /// group holds, so without it the last seconds' writes (up to a txg interval, 5 s by
    /// default) are missed and a run right after them would be taken for an idle one.
    async fn sync_pool(&self, pool: &str) {
        let Some(bin) = self.zpool_bin() else { return };
        let out = Command::new(&bin)
            .args(["sync", pool])
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .output();
        match out.await {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!(
                pool,
                stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                "zpool sync failed; the last seconds' writes may not count as changes"
            ),
            Err(e) => {
                tracing::warn!(pool, error = %e, "cannot run zpool sync; the last seconds' writes may not count as changes")
            }
        }
    }

    /// `ZIB_ZPOOL_BIN`; beside a named zfs binary (`ZIB_ZFS_BIN`, [`Zfs::with_bin`]; none
    /// there: a stand-in zfs with no pool to sync); else `zpool` on PATH.
    fn zpool_bin(&self) -> Option<OsString> {
        if let Some(b) = std::env::var_os("ZIB_ZPOOL_BIN") {
            return Some(b);
        }
        if self.named {
            let p = std::path::Path::new(&self.bin).with_file_name("zpool");
            return p.exists().then(|| p.into_os_string());
        }
        Some("zpool".into())
    }

    /// `zfs receive -A`: discards the partial state an interrupted `zfs receive -s` left.
    pub async fn abort_partial_receive(&self, target: &DatasetName) -> Result<(), ZfsError> {
        self.run(&["receive", "-A", target.as_str()]).await.map(drop)
    }

    /// `zfs load-key -L <location>`; `location` is a URL (`file:///path`, `prompt`).
    pub async fn load_key(&self, ds: &DatasetName, location: &str) -> Result<(), ZfsError> {
        self.run(&["load-key", "-L", location, ds.as_str()]).await.map(drop)
    }

    pub async fn mount(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        self.run(&["mount", ds.as_str()]).await.map(drop)
    }

    /// `zfs destroy -r` of a restore drill's throwaway dataset, and of nothing else: a name
    /// that is not `<parent>/zib-drill-<id>` is refused before any command runs.
    pub async fn destroy_drill_dataset(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        let args = ["destroy", "-r", ds.as_str()];
        if !zib_core::drill::is_drill_target(ds) {
            return Err(ZfsError::Refused {
                cmd: render(&args),
                reason: format!(
                    "{ds} is not a restore drill's dataset (<parent>/{}<id>)",
                    zib_core::drill::DRILL_PREFIX
                ),
            });
        }
        self.run(&args).await.map(drop)
    }
}

/// The datasets of a tree, as [`Zfs::list_descendants`] found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descendants {
    /// The root and its descendants, in zfs's order.
    pub names: Vec<DatasetName>,
    /// Lines that are no dataset name zib accepts (or not inside the root), and why.
    pub refused: Vec<String>,
}

fn parse_descendants(out: &str, root: &DatasetName) -> Descendants {
    let mut d = Descendants::default();
    let inside = format!("{root}/");
    for line in out.lines().filter(|l| !l.is_empty()) {
        match DatasetName::new(line) {
            Ok(n) if n == *root || n.as_str().starts_with(&inside) => d.names.push(n),
            Ok(n) => d.refused.push(format!("{n} is not inside {root}")),
            Err(e) => d.refused.push(e.to_string()),
        }
    }
    d
}

/// A failed command's error: [`ZfsError::NotFound`] when zfs says the thing named does not exist.
fn failed(cmd: String, status: String, stderr: String) -> ZfsError {
    if stderr.contains("does not exist") {
        ZfsError::NotFound { cmd, status, stderr }
    } else {
        ZfsError::Failed { cmd, status, stderr }
    }
}

/// Reads a child's stderr in the background, keeping the last 64 KiB.
fn collect_stderr(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let mut err = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = err.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 128 * 1024 {
                buf.drain(..buf.len() - 64 * 1024);
            }
        }
        String::from_utf8_lossy(&buf).trim().to_owned()
    })
}

async fn finish_child(
    cmd: &str,
    child: &mut Child,
    stderr: &mut tokio::task::JoinHandle<String>,
) -> Result<(), ZfsError> {
    let status =
        child.wait().await.map_err(|source| ZfsError::Spawn { cmd: cmd.to_owned(), source })?;
    let stderr = (&mut *stderr).await.unwrap_or_default();
    if status.success() {
        if !stderr.is_empty() {
            tracing::debug!(cmd, %stderr, "zfs stderr");
        }
        Ok(())
    } else {
        Err(failed(cmd.to_owned(), status.to_string(), stderr))
    }
}

/// A running `zfs send`. Dropping it kills the process.
#[derive(Debug)]
pub struct SendStream {
    cmd: String,
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: tokio::task::JoinHandle<String>,
}

impl SendStream {
    pub fn stdout(&mut self) -> &mut ChildStdout {
        self.stdout.as_mut().expect("stdout taken only by finish")
    }
    /// Waits for the process; Ok only if it exited 0. Call after reading to EOF.
    pub async fn finish(mut self) -> Result<(), ZfsError> {
        drop(self.stdout.take());
        finish_child(&self.cmd, &mut self.child, &mut self.stderr).await
    }
}

/// The pipe to a `zfs receive`: the kernel's default pipe-max-size.
const RECEIVE_PIPE_BYTES: i32 = 1 << 20;

/// A running `zfs receive`. Dropping it kills the process.
#[derive(Debug)]
pub struct ReceiveSink {
    cmd: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: tokio::task::JoinHandle<String>,
}

impl ReceiveSink {
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("stdin taken only by finish")
    }
    /// Closes stdin and waits; Ok only if the receive exited 0.
    pub async fn finish(mut self) -> Result<(), ZfsError> {
        drop(self.stdin.take());
        finish_child(&self.cmd, &mut self.child, &mut self.stderr).await
    }

    /// Stops a receive that must not commit: kills it before its input is closed (so it never
    /// sees an end of stream) and waits until it has exited, so that when the caller reports
    /// the failure no `zfs receive` is still running. `zfs receive -s` keeps what it got as
    /// partial state, which the next run aborts.
    pub async fn abort(mut self) {
        let _ = self.child.start_kill();
        let status = self.child.wait().await;
        drop(self.stdin.take());
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        tracing::debug!(cmd = %self.cmd, ?status, %stderr, "receive stopped");
    }
}

/// `zfs holds -H` output (`ds@snap<TAB>tag<TAB>time`): each hold on a snapshot of `ds`.
fn parse_holds(out: &str, ds: &DatasetName) -> Option<Vec<(SnapName, String)>> {
    let mut holds = Vec::new();
    for l in out.lines().filter(|l| !l.is_empty()) {
        let mut f = l.split('\t');
        let (name, tag) = (f.next()?, f.next()?);
        let (d, snap) = name.rsplit_once('@')?;
        if d == ds.as_str() {
            holds.push((SnapName::new(snap).ok()?, tag.to_owned()));
        }
    }
    Some(holds)
}

fn parse_list(out: &str, sep: char) -> Option<Vec<SnapInfo>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?;
            let short = name.rsplit_once(sep)?.1.to_owned();
            let guid = f.next()?.to_owned();
            let createtxg = f.next()?.parse().ok()?;
            let creation = f.next()?.parse().ok()?;
            guid.bytes().all(|b| b.is_ascii_digit()).then_some(SnapInfo {
                name: short,
                guid,
                createtxg,
                creation,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_checked_names_inside_the_root() {
        let root = DatasetName::new("tank/docker").unwrap();
        let out =
            "tank/docker\ntank/docker/web\ntank/docker/we$b\ntank/dockerx\ntank/docker/a b\n\n";
        let d = parse_descendants(out, &root);
        let names: Vec<&str> = d.names.iter().map(DatasetName::as_str).collect();
        assert_eq!(names, ["tank/docker", "tank/docker/web", "tank/docker/a b"]);
        assert_eq!(d.refused.len(), 2, "{:?}", d.refused);
        assert!(d.refused[0].contains("tank/docker/we$b") && d.refused[0].contains("'$'"));
        assert!(d.refused[1].contains("tank/dockerx is not inside tank/docker"));
    }

    #[test]
    fn parses_zfs_list() {
        let out = "tank/a@zib-1\t123\t10\t1700000000\ntank/a@x y\t456\t12\t1700000100\n";
        let v = parse_list(out, '@').unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[1],
            SnapInfo {
                name: "x y".into(),
                guid: "456".into(),
                createtxg: 12,
                creation: 1700000100
            }
        );
        assert!(parse_list("tank/a@s\tnot-a-guid\t1\t2\n", '@').is_none());
        assert!(parse_list("garbage\n", '@').is_none());
        assert_eq!(parse_list("", '@').unwrap(), vec![]);
    }

    /// A stand-in `zfs` that runs `script` whatever its arguments: tests the wrapper, not ZFS.
    fn fake(script: &str) -> (tempfile::TempDir, Zfs) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("zfs");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, Zfs::with_bin(p))
    }

    #[test]
    fn parses_zfs_holds() {
        let ds = DatasetName::new("tank/a").unwrap();
        let out = "tank/a@zib-1\tzib-send\tWed Dec  2 04:00 2026\ntank/a@zib-1\ttheirs\tWed Dec  2 04:01 2026\n";
        let v = parse_holds(out, &ds).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].0.as_str(), v[0].1.as_str()), ("zib-1", "zib-send"));
        assert_eq!(v[1].1, "theirs");
        assert_eq!(parse_holds("tank/b@x\tzib-send\tt\n", &ds).unwrap(), vec![]);
        assert!(parse_holds("garbage\n", &ds).is_none());
        assert_eq!(parse_holds("", &ds).unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_failing_command_keeps_stderr_and_status() {
        let (_d, z) = fake("echo oops >&2; exit 3");
        let e = z.run(&["list"]).await.unwrap_err().to_string();
        assert!(
            e.contains("oops") && e.contains("exit status: 3") && e.contains("zfs list"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_send_that_dies_midway_is_a_failure() {
        let (_d, z) = fake("printf abc; echo 'broken pipe' >&2; exit 1");
        let mut s = z.send(&send_a_s()).unwrap();
        let mut buf = Vec::new();
        s.stdout().read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"abc");
        let e = s.finish().await.unwrap_err().to_string();
        assert!(e.contains("broken pipe"), "{e}");
        let (_d, z) = fake("printf abc");
        let mut s = z.send(&send_a_s()).unwrap();
        s.stdout().read_to_end(&mut buf).await.unwrap();
        s.finish().await.unwrap();
    }

    #[tokio::test]
    async fn estimates_parse_the_size_line() {
        let (_d, z) = fake("printf 'full\\ttank/a@s\\t1000\\nsize\\t123456\\n'");
        assert_eq!(z.send_estimate(&send_a_s()).await.unwrap(), 123456);
    }

    fn send_a_s() -> SendArgs {
        SendArgs {
            dataset: DatasetName::new("tank/a").unwrap(),
            to: SnapName::new("s").unwrap(),
            from: None,
        }
    }

    #[test]
    fn send_and_receive_arguments() {
        assert_eq!(send_a_s().argv(), ["-w", "tank/a@s"]);
        let inc = |from| SendArgs { from: Some(from), ..send_a_s() };
        let base = SnapName::new("b").unwrap();
        assert_eq!(
            inc(SendBase::Snapshot(base.clone())).argv(),
            ["-w", "-i", "tank/a@b", "tank/a@s"]
        );
        assert_eq!(inc(SendBase::Bookmark(base)).argv(), ["-w", "-i", "tank/a#b", "tank/a@s"]);
    }

    /// Issue 11 #11: whatever a stream carries, it neither mounts anywhere by itself nor
    /// shares anything; a mountpoint comes from the user only.
    #[test]
    fn receive_arguments_keep_the_streams_properties_off_the_host() {
        let target = DatasetName::new("pool/r").unwrap();
        let base = ["-s", "-u", "-x", "sharenfs", "-x", "sharesmb"];
        let r = |mountpoint: Option<&str>, full| ReceiveOptions {
            target: target.clone(),
            mountpoint: mountpoint.map(Into::into),
            full,
            volume: false,
        };
        for full in [true, false] {
            assert_eq!(
                r(None, full).argv(),
                [&base[..], &["-x", "mountpoint", "-o", "canmount=noauto", "pool/r"]].concat()
            );
        }
        assert_eq!(
            r(Some("/mnt/r"), true).argv(),
            [&base[..], &["-o", "mountpoint=/mnt/r", "-x", "canmount", "pool/r"]].concat()
        );
        assert_eq!(
            r(Some("/mnt/r"), false).argv(),
            [&base[..], &["-x", "mountpoint", "-x", "canmount", "pool/r"]].concat()
        );
        // A volume: none of them apply, and zfs receive refuses them for one dataset's stream.
        for (mp, full) in [(None, true), (Some("/mnt/r"), true), (None, false)] {
            assert_eq!(
                ReceiveOptions { volume: true, ..r(mp, full) }.argv(),
                ["-s", "-u", "pool/r"]
            );
        }
    }

    /// A begin record as `zfs send` writes it (little- or big-endian).
    fn header(big: bool, hdrtype: u64, features: u64, to: u64, from: u64) -> Vec<u8> {
        header_of(big, hdrtype, features, to, from, 2)
    }

    /// [`header`] of a stream of object set type `ost` (2 a filesystem's, 3 a volume's).
    fn header_of(big: bool, hdrtype: u64, features: u64, to: u64, from: u64, ost: u32) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let w64 = |v: u64| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut b = Vec::new();
        b.extend(w32(0)); // DRR_BEGIN
        b.extend(w32(0)); // payload length
        b.extend(w64(0x2F5B_ACBAC));
        b.extend(w64(hdrtype | (features << 2)));
        b.extend(w64(1_700_000_000)); // creation time
        b.extend(w32(ost)); // DMU_OST_ZFS or DMU_OST_ZVOL
        b.extend(w32(0)); // flags
        b.extend(w64(to));
        b.extend(w64(from));
        b.extend([0u8; 256]); // drr_toname
        b
    }

    /// Issue 11 #11: a stream is passed to `zfs receive` only if its header is what the
    /// manifest says: one raw stream of the named snapshots, not a package with properties.
    #[test]
    fn stream_headers_must_match_their_manifest() {
        let compressed = 1 << 22;
        let raw = (1 << 24) | compressed;
        for big in [false, true] {
            let h = StreamHeader::parse(&header(big, 1, raw, 7, 0)).unwrap();
            assert_eq!((h.header_type, h.features, h.to_guid, h.from_guid), (1, raw as u32, 7, 0));
            assert!(!h.volume);
            let v = StreamHeader::parse(&header_of(big, 1, raw, 7, 0, 3)).unwrap();
            assert!(v.volume, "a volume's stream");
            v.check("7", None, true).unwrap();
            h.check("7", None, true).unwrap();
            let inc = StreamHeader::parse(&header(big, 1, compressed, u64::MAX, 5)).unwrap();
            inc.check("18446744073709551615", Some("5"), true).unwrap();
        }
        let err = |b: Vec<u8>, to: &str, from: Option<&str>| {
            StreamHeader::parse(&b).and_then(|h| h.check(to, from, true)).unwrap_err()
        };
        assert!(err(header(false, 2, raw, 7, 0), "7", None).contains("-R or -p"));
        assert!(err(header(false, 1, raw, 8, 0), "7", None).contains("GUID 8"));
        assert!(err(header(false, 1, raw, 7, 3), "7", None).contains("incremental from GUID 3"));
        assert!(err(header(false, 1, raw, 7, 3), "7", Some("4")).contains("from 4"));
        assert!(err(header(false, 1, raw, 7, 0), "7", Some("4")).contains("a full stream"));
        assert!(err(header(false, 1, 0, 7, 0), "7", None).contains("not sent raw"));
        assert!(err(vec![0u8; 300], "7", None).contains("header"));
        assert!(err(header(false, 1, raw, 7, 0)[..40].to_vec(), "7", None).contains("too short"));
        let mut not_begin = header(false, 1, raw, 7, 0);
        not_begin[0] = 5;
        assert!(err(not_begin, "7", None).contains("type 5"));
        // Without -w in the manifest, a plain stream is what it says.
        StreamHeader::parse(&header(false, 1, 0, 7, 0)).unwrap().check("7", None, false).unwrap();
        // An adopted legacy snapshot that was gone at import has no GUID to compare; the
        // full/incremental and raw checks still apply.
        let unknown = zib_core::legacy::adopt::unknown_guid("backup0");
        let inc = StreamHeader::parse(&header(false, 1, raw, 8, 7)).unwrap();
        inc.check("8", Some(&unknown), true).unwrap();
        StreamHeader::parse(&header(false, 1, raw, 7, 0))
            .unwrap()
            .check(&unknown, None, true)
            .unwrap();
        assert!(err(header(false, 1, raw, 8, 0), "8", Some(&unknown)).contains("a full stream"));
        assert!(err(header(false, 1, 0, 7, 0), &unknown, None).contains("not sent raw"));
    }

    #[tokio::test]
    async fn does_not_exist_is_not_found_with_stderr_kept() {
        let (_d, z) = fake("echo \"cannot open 'tank/x': dataset does not exist\" >&2; exit 1");
        let e = z.run(&["list", "tank/x"]).await.unwrap_err();
        assert!(matches!(e, ZfsError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("tank/x': dataset does not exist"), "{e}");
        assert!(!z.dataset_exists("tank/x").await.unwrap());
        let (_d, z) = fake("echo 'permission denied' >&2; exit 1");
        assert!(matches!(z.run(&["list"]).await.unwrap_err(), ZfsError::Failed { .. }));
    }
}
