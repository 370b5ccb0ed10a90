//! The gateway under test: [`GatewayConfig`] says what goes into its config and temp
//! dir, [`Gateway::start`] runs `fhirwall serve` on free ports and waits until it is
//! ready; provider clients are registered and get tokens with fhirwall's own CLI
//! ([`GatewayConfig::client`], [`Gateway::token`]); [`assert_config_refused`] checks
//! that a bad config is refused.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{Resp, join_url, request};
use crate::paths::{fhirwall_bin, test_tempdir};
use crate::ports::{free_port, raw_http_get};
use crate::process::{Proc, open_log, send_sigterm};

/// How long the gateway may take until `GET /readyz` answers 200.
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Gateway::start`] writes into the gateway's config.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `[upstream] url`: an upstream's [`Upstream::base_url`](crate::Upstream::base_url), or `"sandbox"`.
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
        // The request-rate limits are off: tests drive one client far
        // harder than a provider system would; the tests of the limits
        // set their own (extra_toml merges key by key).
        let base = format!(
            r#"[server]
listen = "{listen}"
base_url = "http://{listen}/fhir"
client_requests_per_s = 0
organization_requests_per_s = 0

[auth]
token_requests_per_s = 0

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
        let mut proc = Proc::new("fhirwall gateway", child, None, self.log_path.clone());

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
        // Secrets and member data never reach the log (issue 15): checked
        // for every gateway every test starts.
        if !std::thread::panicking()
            && let Some((needle, line)) = crate::log_scan::find_secret(&self.log(), &self.admin_token)
        {
            let needle: String = needle.chars().take(6).collect();
            panic!("the gateway log holds a secret or member data ({needle}…) on this line:\n{line}");
        }
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

/// Every line of the audit log in `dir`: its `*.ndjson` files in name order
/// (oldest first), each line as written.
pub fn audit_lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}
