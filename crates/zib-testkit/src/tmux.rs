//! A real terminal for tests of what a command draws on one: a private tmux server (its socket
//! in the test's own directory, no user config) with one session, killed on drop, and the
//! pane's text read back.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

#[derive(Debug)]
pub struct Tmux {
    dir: PathBuf,
    server: String,
    session: String,
}

impl Tmux {
    /// Starts session `session` of a tmux server named `server` (socket under `dir`), a
    /// `width` x `height` pane running `command`.
    pub fn start(
        dir: &Path,
        server: &str,
        session: &str,
        size: (u16, u16),
        command: &[&str],
    ) -> Tmux {
        let t = Tmux { dir: dir.to_owned(), server: server.into(), session: session.into() };
        let (w, h) = (size.0.to_string(), size.1.to_string());
        let mut args = vec!["new-session", "-d", "-s", session, "-x", &w, "-y", &h];
        args.extend_from_slice(command);
        let out = t.run(&args);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    /// `tmux -L SERVER ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new("tmux")
            .env("TMUX_TMPDIR", &self.dir)
            .env_remove("TMUX")
            .arg("-L")
            .arg(&self.server)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux is installed (scripts/testbed/setup's apt plan)")
    }

    /// The pane's text; with `escapes`, its colours as SGR escape codes.
    pub fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", &self.session];
        if escapes {
            args.push("-e");
        }
        let out = self.run(&args);
        assert!(out.status.success(), "capture-pane: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends keys to the pane (`C-c`, text).
    pub fn send_keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", &self.session, keys]);
        assert!(out.status.success(), "send-keys: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `display-message -p FORMAT` of the pane (e.g. `#{cursor_flag}`).
    pub fn display(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", &self.session, format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
