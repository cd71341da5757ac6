//! Secrets never leave the credential chain: zibd run with known fake credentials (the
//! environment's key, secret and session token; a shared credentials file's profile for three
//! runs), then every output a person or a tool sees is searched for them: the logs of each
//! command (text and JSON, up to `ZIB_LOG=trace`), the daemon's log, every control reply
//! (status, version, cost, verify, prune dry run, a failed run's error), the metrics (HTTP and
//! textfile), the notify command's environment, every state, record and spool file, every
//! object in the bucket (manifests and chunks, keys and bytes), and the `Debug` rendering of
//! the config, of the credentials as zibd holds them and of the S3 store. None may hold any of
//! them; the figures are printed.
//!
//! moto does not check signatures, so any credentials are accepted; the fault proxy in front
//! makes one dataset's uploads fail (403), for an error reply and a notification. The test
//! process's own environment is not changed: the in-process store is given the credentials.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use zib_protocol::{Client, Request, Response};
use zib_testkit::{Fault, FaultAction, FaultProxy, Matcher, MotoServer};

mod support;

use support::{ConfigToml, FakeZfs, config::quoted, fake_zfs::SCRIPT as FAKE_ZFS, ok};

const ACCESS_KEY_ID: &str = "AKIAZIBFAKE7KEY4TEST";
const SECRET_ACCESS_KEY: &str = "zibFakeSecret/9f8e7d6c+5b4a3f2e1d0ZIBSECRETKEY";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEZIBFAKESESSIONTOKEN//////////wEaDzib+fake+token==";
/// The pair of the shared credentials file's profile.
const FILE_ACCESS_KEY_ID: &str = "AKIAZIBFILEPROFILE42";
const FILE_SECRET_ACCESS_KEY: &str = "zibFileSecret+0a1b2c3d4e5f/ZIBPROFILESECRET99";

const SECRETS: [&str; 5] =
    [ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, FILE_ACCESS_KEY_ID, FILE_SECRET_ACCESS_KEY];

/// Everything read, by where it came from.
#[derive(Default)]
struct Sources {
    items: Vec<(String, Vec<u8>)>,
}

impl Sources {
    fn add(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.items.push((name.into(), bytes.into()));
    }

    fn add_output(&mut self, name: &str, o: &Output) {
        self.add(format!("{name}: stdout"), o.stdout.clone());
        self.add(format!("{name}: stderr"), o.stderr.clone());
    }

    /// Every file under `dir`, recursively (file names too).
    fn add_tree(&mut self, what: &str, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.unwrap().path();
            self.add(format!("{what}: name of {}", p.display()), p.display().to_string());
            if p.is_dir() {
                self.add_tree(what, &p);
            } else if p.is_file() {
                self.add(format!("{what}: {}", p.display()), std::fs::read(&p).unwrap());
            }
        }
    }

    /// (source, secret, the text around its first place) for each secret found.
    fn leaks(&self) -> Vec<(String, &'static str, String)> {
        let mut out = Vec::new();
        for (name, bytes) in &self.items {
            for s in SECRETS {
                if let Some(at) = bytes.windows(s.len()).position(|w| w == s.as_bytes()) {
                    let around =
                        &bytes[at.saturating_sub(200)..(at + s.len() + 80).min(bytes.len())];
                    out.push((name.clone(), s, String::from_utf8_lossy(around).into_owned()));
                }
            }
        }
        out
    }

    fn bytes(&self) -> usize {
        self.items.iter().map(|(_, b)| b.len()).sum()
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Bed {
    /// `zibd ARGS` with the bed's config, the fake credentials and the stand-in zfs.
    fn command(&self, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zibd"));
        c.arg("--config").arg(&self.config).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ZIB_ZFS_BIN", FAKE_ZFS)
            .env("FAKE_ZFS_DIR", self.root.join("zfs"))
            .env("FAKE_ZFS_SIZE", "200000")
            .env("FAKE_ZFS_HEADER", "1")
            .env("ZIB_LOG", "debug");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn zibd(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        self.command(args, env).output().unwrap()
    }
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One plain HTTP/1.0 GET of `/metrics`: the whole answer.
async fn http_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .expect("the metrics endpoint answers")
        .unwrap();
    buf
}

/// A request over the socket: its reply, as Debug and as the wire's JSON.
async fn ask(socket: &Path, r: &Request) -> (Response, String) {
    let mut c = Client::connect(socket).await.unwrap().with_reply_timeout(Duration::from_secs(60));
    let reply = c.call(r).await.unwrap();
    let text = format!("{reply:?}\n{}", serde_json::to_string(&reply).unwrap());
    (reply, text)
}

/// A child process killed on drop (a failed assertion must not leave a zibd running).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_output_state_object_or_debug_rendering_holds_a_credential() {
    let moto = MotoServer::start();
    let bucket = moto.create_bucket("secrets").await;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let config = root.join("zibd.toml");
    let port = free_port();
    let textfile = root.join("node_exporter/zib.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    let events = root.join("events");
    std::fs::create_dir_all(&events).unwrap();
    let script = r#"f="$0/$(date +%s%N)-$ZIB_EVENT"; env > "$f.tmp"; mv "$f.tmp" "$f""#;
    let text = ConfigToml::new(&root, &bucket, &proxy.endpoint())
        .daemon("metrics_listen", quoted(format!("127.0.0.1:{port}")))
        .daemon("metrics_textfile", quoted(textfile.display()))
        .daemon(
            "notify_command",
            format!("[\"/bin/sh\", \"-c\", {script:?}, {:?}]", events.display().to_string()),
        )
        .daemon("notify_timeout_secs", 10)
        .target("storage_class", quoted("STANDARD"))
        .target("chunk_size", 64 * 1024)
        .target("max_attempts", 2)
        .dataset("tank/photos", "0 3 * * *")
        .dataset("tank/denied", "0 3 * * *")
        .render();
    std::fs::write(&config, &text).unwrap();
    std::fs::create_dir_all(root.join("home")).unwrap();
    let bed = Bed { _dir: dir, root: root.clone(), config: config.clone() };
    // tank/denied may not upload: its runs fail with the server's 403.
    proxy.add_fault(
        Fault::new(
            Matcher::put().path_contains("/tank/denied"),
            FaultAction::status(403, "AccessDenied", "Access Denied"),
        )
        .always(),
    );
    let mut src = Sources::default();
    src.add("config file", text.clone());

    // Foreground commands.
    let o = bed.zibd(&["check-config"], &[]);
    ok(&o);
    src.add_output("check-config", &o);
    let o = bed.zibd(&["backup", "tank/photos"], &[]);
    ok(&o);
    src.add_output("backup (ZIB_LOG=debug)", &o);
    let o = bed.zibd(&["backup", "tank/photos"], &[("ZIB_LOG", "trace".into())]);
    ok(&o);
    src.add_output("backup (ZIB_LOG=trace)", &o);
    let o = bed.zibd(&["backup", "tank/photos"], &[("ZIB_LOG_FORMAT", "json".into())]);
    ok(&o);
    src.add_output("backup (JSON log)", &o);
    let o = bed.zibd(&["backup", "tank/denied"], &[]);
    assert!(!o.status.success());
    src.add_output("backup refused by S3", &o);
    // The profile of a shared credentials file instead of the environment's keys.
    let creds = root.join("home/aws-credentials");
    std::fs::write(
        &creds,
        format!(
            "[zib-test]\naws_access_key_id = {FILE_ACCESS_KEY_ID}\naws_secret_access_key = {FILE_SECRET_ACCESS_KEY}\n"
        ),
    )
    .unwrap();
    // aws-config logs the profile it loaded, key ID and all, at info: once with ZIB_LOG unset,
    // at info and at debug.
    for log in [None, Some("info"), Some("debug")] {
        let mut c = bed.command(&["backup", "tank/photos"], &[]);
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", root.join("home/none"))
            .env("AWS_PROFILE", "zib-test");
        match log {
            Some(l) => c.env("ZIB_LOG", l),
            None => c.env_remove("ZIB_LOG"),
        };
        let o = c.output().unwrap();
        ok(&o);
        src.add_output(&format!("backup (credentials file, ZIB_LOG={log:?})"), &o);
    }
    for (name, args) in [
        ("prune --dry-run", &["prune", "tank/photos", "--dry-run"][..]),
        ("prune --dry-run --json", &["prune", "tank/photos", "--dry-run", "--json"][..]),
        ("restore list", &["restore", "list"][..]),
        ("restore list --json", &["restore", "list", "--json"][..]),
        ("restore plan", &["restore", "plan", "--dataset", "tank/photos"][..]),
        ("restore plan --json", &["restore", "plan", "--dataset", "tank/photos", "--json"][..]),
        ("verify", &["verify"][..]),
        ("verify --json", &["verify", "--json"][..]),
        ("cost", &["cost"][..]),
        ("cost --json", &["cost", "--json"][..]),
    ] {
        let o = bed.zibd(args, &[]);
        src.add_output(name, &o);
    }
    // A restore run into a stand-in `zfs receive`, its record and spool in a work dir.
    let zfs = FakeZfs::new();
    let work = root.join("restore-work");
    let o = {
        let mut c = bed.command(
            &[
                "restore",
                "run",
                "--dataset",
                "tank/photos",
                "--to",
                "pool/r",
                "--work-dir",
                work.to_str().unwrap(),
            ],
            &zfs.env(),
        );
        c.output().unwrap()
    };
    ok(&o);
    src.add_output("restore run", &o);
    src.add_tree("restore work dir", &work);
    src.add("zfs receive calls", zfs.calls());

    // The daemon: its log, every control reply, the metrics, a notification.
    let log_path = root.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = bed
        .command(&[], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let socket = root.join("zibd.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::connect(&socket).await.is_err() {
        assert!(Instant::now() < deadline, "the daemon never answered on its socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut replies = 0;
    for r in [Request::Version, Request::Status { dataset: None }] {
        let (_, text) = ask(&socket, &r).await;
        src.add(format!("control reply to {r:?}"), text);
        replies += 1;
    }
    // A run of each dataset, waited for: tank/photos succeeds, tank/denied fails (its error in
    // status, and the failure notification).
    for (ds, success) in [("tank/photos", true), ("tank/denied", false)] {
        let mut c = Client::connect(&socket).await.unwrap();
        let r = Request::Trigger { dataset: ds.into(), wait: true, full: false };
        let done = c
            .stream(&r, Some(Duration::from_secs(60)), |p| {
                src.add(format!("trigger --wait {ds} progress"), format!("{p:?}"))
            })
            .await
            .unwrap();
        assert!(matches!(done, Response::Done { ok, .. } if ok == success), "{ds}: {done:?}");
        let text = format!("{done:?}\n{}", serde_json::to_string(&done).unwrap());
        src.add(format!("trigger --wait {ds} final frame"), text);
        replies += 1;
    }
    let (_, text) = ask(&socket, &Request::Status { dataset: None }).await;
    assert!(text.contains("AccessDenied") || text.contains("Access Denied"), "{text}");
    src.add("control reply to status after the runs", text);
    replies += 1;
    for r in [
        Request::Status { dataset: Some("tank/denied".into()) },
        Request::Cost { dataset: None },
        Request::Verify { dataset: None, deep: false },
        Request::PruneNow { dataset: None, dry_run: true },
        Request::RestoreStatus { id: None },
    ] {
        let (_, text) = ask(&socket, &r).await;
        src.add(format!("control reply to {r:?}"), text);
        replies += 1;
    }
    let scrape = http_get(port).await;
    assert!(scrape.contains("zib_dataset_state"), "{scrape}");
    src.add("metrics endpoint", scrape);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&events).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "no failure notification");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success());
    src.add("metrics textfile", std::fs::read(&textfile).unwrap());
    src.add_tree("notify command environment", &events);
    src.add("daemon log", std::fs::read(&log_path).unwrap());

    // Local files: state (and its journals, locks), spool.
    src.add_tree("state dir", &root.join("state"));
    src.add_tree("spool dir", &root.join("spool"));
    // Every object in the bucket, its key and its bytes.
    let client = moto.client();
    let mut objects = 0;
    for o in zib_testkit::list_all(&client, &bucket).await {
        let key = o.key().unwrap();
        src.add(format!("object key {key}"), key);
        let body = zib_testkit::get_bytes(&client, &bucket, key).await;
        src.add(format!("object {key}"), body);
        objects += 1;
    }
    assert!(objects > 10, "{objects} objects");

    // Debug renderings.
    let cfg = zib_core::Config::load(&config).unwrap();
    src.add("Debug of the config", format!("{cfg:?}\n{cfg:#?}"));
    let keys = aws_sdk_s3::config::Credentials::new(
        ACCESS_KEY_ID,
        SECRET_ACCESS_KEY,
        Some(SESSION_TOKEN.to_owned()),
        None,
        "zib-secrets-test",
    );
    src.add(
        "Debug of the credentials as zibd holds them",
        format!(
            "{:?}",
            zibd::outside::Outside { s3_credentials: Some(keys.clone()), ..Default::default() }
        ),
    );
    let store = zibd::s3::S3Store::from_config(&cfg, Some(&keys)).await;
    // Make the store resolve its credentials (a request), then render it.
    let _ = store.list("backups/").await.unwrap();
    src.add("Debug of the S3 store", format!("{store:?}\n{store:#?}"));

    let leaks = src.leaks();
    println!(
        "secrets: {} sources, {} bytes checked for {} credential values ({} control replies, {objects} objects): {} found",
        src.items.len(),
        src.bytes(),
        SECRETS.len(),
        replies,
        leaks.len()
    );
    assert!(leaks.is_empty(), "credentials found: {leaks:#?}");
    // The search can fail: it finds the file's pair in the credentials file, and the
    // environment's values in the environment every zibd above was started with.
    let mut control = Sources::default();
    control.add("credentials file", std::fs::read(&creds).unwrap());
    let env: String = bed
        .command(&[], &[])
        .get_envs()
        .map(|(k, v)| format!("{}={}\n", k.display(), v.unwrap_or_default().display()))
        .collect();
    control.add("zibd's environment", env);
    let found: Vec<&str> = control.leaks().into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(found.len(), 5, "the search misses credentials: {found:?}");
    assert!(proxy.count(&Matcher::put()) > 10, "the runs did upload");
}
