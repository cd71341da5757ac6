//! Adapter: the metrics file for node exporter's textfile collector
//! (`daemon.metrics_textfile`). Replaced atomically (a temp file beside it, renamed over it),
//! so the collector never reads half a file; readable by all (mode 0644: node exporter runs as
//! its own user, and the metrics hold no secrets).

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::path_error::{PathError, io_err};

/// How often the file is rewritten between runs (it shows the seconds to the next run).
pub const REFRESH: Duration = Duration::from_secs(60);

/// Writes `render()` to `path` at once, after every run (`run_ended` changes) and every
/// [`REFRESH`], until `stop`. A failure is logged (once until the next success) and tried
/// again next time.
pub fn spawn_writer(
    path: PathBuf,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    mut run_ended: watch::Receiver<u64>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    tracker.spawn(async move {
        let mut failing = false;
        loop {
            let text = render();
            let p = path.clone();
            let r = tokio::task::spawn_blocking(move || write(&p, &text)).await;
            match r {
                Ok(Ok(())) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot write the metrics textfile (daemon.metrics_textfile); trying again after the next run");
                }
                _ => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                r = run_ended.changed() => if r.is_err() { return },
                () = tokio::time::sleep(REFRESH) => {}
            }
        }
    });
}

/// Writes `text` to `path` atomically.
pub fn write(path: &Path, text: &str) -> Result<(), PathError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Not *.prom: the collector skips it while it is being written.
    let tmp = path.with_extension("prom.tmp");
    crate::state_store::remove_stale(&tmp).map_err(io_err("cannot remove stale", &tmp))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)
        .map_err(io_err("cannot create", &tmp))?;
    // Whatever the umask: node exporter must read it.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("cannot set the mode of", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err("cannot write", &tmp))?;
    f.sync_all().map_err(io_err("cannot fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err("cannot rename into place", path))?;
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zib.prom");
        std::fs::write(path.with_extension("prom.tmp"), "stale from a crash").unwrap();
        write(&path, "a 1\n").unwrap();
        write(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("zib.prom")]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let e = write(Path::new("/nonexistent-zib-dir/zib.prom"), "x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent-zib-dir/zib.prom.tmp"), "{e}");
    }
}
