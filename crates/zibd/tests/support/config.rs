//! The config file a host test writes: `[daemon]` (state, spool and socket under the test's
//! root), `[target]` (the bucket at a local endpoint, prefix `backups`) and `[[dataset]]`
//! tables, each key set once (a later value replaces an earlier one). The text keeps the tables
//! in that order, each header on its own line, so a test may still edit it as a user would.

use std::path::Path;

/// A TOML string.
pub fn quoted(s: impl std::fmt::Display) -> String {
    format!("\"{s}\"")
}

#[derive(Debug, Clone)]
pub struct ConfigToml {
    daemon: Vec<(String, String)>,
    target: Vec<(String, String)>,
    datasets: Vec<Vec<(String, String)>>,
}

fn set(table: &mut Vec<(String, String)>, key: &str, value: String) {
    match table.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value,
        None => table.push((key.to_owned(), value)),
    }
}

impl ConfigToml {
    pub fn new(root: &Path, bucket: &str, endpoint: &str) -> Self {
        let r = root.display();
        let mut c = ConfigToml { daemon: Vec::new(), target: Vec::new(), datasets: Vec::new() };
        c = c
            .daemon("state_dir", quoted(format!("{r}/state")))
            .daemon("spool_dir", quoted(format!("{r}/spool")))
            .daemon("socket", quoted(format!("{r}/zibd.sock")));
        c.target("bucket", quoted(bucket))
            .target("endpoint", quoted(endpoint))
            .target("prefix", quoted("backups"))
    }

    /// Sets `[daemon] key = value` (`value` as TOML: strings [`quoted`]).
    pub fn daemon(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.daemon, key, value.to_string());
        self
    }

    /// Sets `[target] key = value`.
    pub fn target(mut self, key: &str, value: impl ToString) -> Self {
        set(&mut self.target, key, value.to_string());
        self
    }

    /// Adds a `[[dataset]]` with this name and schedule.
    pub fn dataset(mut self, name: &str, schedule: &str) -> Self {
        self.datasets
            .push(vec![("name".into(), quoted(name)), ("schedule".into(), quoted(schedule))]);
        self
    }

    /// Sets `key = value` in the last `[[dataset]]`.
    pub fn dataset_key(mut self, key: &str, value: impl ToString) -> Self {
        let ds = self.datasets.last_mut().expect("a [[dataset]] first");
        set(ds, key, value.to_string());
        self
    }

    pub fn render(&self) -> String {
        let lines = |t: &[(String, String)]| {
            t.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>()
        };
        let mut s = format!("[daemon]\n{}\n[target]\n{}", lines(&self.daemon), lines(&self.target));
        for ds in &self.datasets {
            s.push_str(&format!("\n[[dataset]]\n{}", lines(ds)));
        }
        s
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.render()).unwrap();
    }
}
