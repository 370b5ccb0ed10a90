//! The `fhirwall` command line (DESIGN.md "CLI").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fhirwall::config::Config;

/// mimalloc: the proxy allocates and frees many short-lived buffers per
/// request; glibc malloc's bookkeeping showed up at ~8% of CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fhirwall",
    version,
    about = "A CMS-0057-F Provider Access gateway in front of any FHIR R4 server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Zero-setup demo: the built-in sandbox upstream, SQLite state in a temp dir.
    Demo {
        /// Port of the FHIR listener (the admin listener takes the next one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run only the built-in sandbox FHIR server (a test and benchmark upstream).
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Honour the X-Sandbox-Fault / X-Sandbox-Delay-Ms test headers.
        #[arg(long)]
        faults: bool,
        /// Add non-resource noise marked NOISE-SECRET to every Bundle served (gateway leak tests).
        #[arg(long)]
        noise: bool,
        /// Load this NDJSON dataset instead of the built-in one.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    // plugins
    /// Offline batch member matching (tuning, benchmarks): the same plugin and host code as $member-match.
    ///
    /// Members are FHIR Patient and Coverage lines (Coverage.beneficiary -> Patient); queries are HRex
    /// $member-match Parameters lines, each with an `id`. Prints one NDJSON line per query, in order:
    /// {"id":…, "result":"match"|"no-match"|"ambiguous", "member":"Patient/…", "score":…}.
    Match {
        /// The matcher component (.wasm).
        #[arg(long)]
        plugin: PathBuf,
        /// Members: NDJSON of Patient and Coverage resources.
        #[arg(long)]
        members: PathBuf,
        /// Queries: NDJSON of HRex $member-match Parameters, each with an `id`.
        #[arg(long)]
        queries: PathBuf,
        /// Memory cap per instance (MiB).
        #[arg(long, default_value_t = 64)]
        memory_mb: u64,
        /// Deadline per call (ms).
        #[arg(long, default_value_t = 100)]
        timeout_ms: u64,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Why a client would (not) receive a resource: asks the running gateway of FILE
    /// (its admin listener, with the admin token from its token_env) to run the request
    /// as the client, against the live upstream, without returning data.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// A registered client id.
        #[arg(long)]
        client: String,
        /// `Type/id` to explain.
        #[arg(long, conflicts_with = "request", required_unless_present = "request")]
        resource: Option<String>,
        /// A read or search: `GET /fhir/Observation?patient=pat-0001`.
        #[arg(long)]
        request: Option<String>,
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The rotating keys (access-token signing, page-token sealing): list or
    /// rotate them on the running gateway of FILE (its admin listener, with the
    /// admin token from its token_env). Every node takes a rotation within seconds.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// WebAssembly plugin tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The audit log: check its hash chain, find records.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Make a client key pair: a private key (PKCS#8 PEM) and the public JWKS to register.
    Keygen {
        /// The client id (names the files: ID.key.pem, ID.jwks.json).
        #[arg(long)]
        client_id: String,
        /// Directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// RS384 (RSA 3072) or ES384 (P-384).
        #[arg(long, default_value = "RS384")]
        alg: String,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
    /// Sign a client assertion with a private key and fetch an access token (prints the token).
    Token {
        /// The registered client id (iss and sub of the assertion).
        #[arg(long)]
        client_id: String,
        /// The private key (PEM, e.g. from `fhirwall keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The token endpoint, e.g. http://127.0.0.1:8080/auth/token.
        #[arg(long)]
        token_url: String,
        /// Space-separated scopes, e.g. "system/*.read".
        #[arg(long)]
        scope: String,
        /// Signing algorithm (default: from the key: RS384 for RSA, ES384 for P-384).
        #[arg(long)]
        alg: Option<String>,
        /// Print the whole token response as JSON instead of just the token.
        #[arg(long)]
        json: bool,
    },
}

// plugins
#[derive(Subcommand)]
enum PluginCommand {
    /// Run a plugin against fixtures: DIR/cases.ndjson (and DIR/members.ndjson for a matcher).
    Test {
        /// The component (.wasm).
        plugin: PathBuf,
        /// The fixtures directory.
        #[arg(long)]
        fixtures: PathBuf,
        #[command(flatten)]
        limits: PluginLimitArgs,
    },
    /// Scaffold a plugin crate DIR/NAME that builds and passes its own tests with `./check.sh`.
    New {
        /// Crate name: lower-case letters, digits and '-'.
        name: String,
        /// `policy` or `matcher`.
        #[arg(long)]
        world: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin SDK (plugins/sdk of the fhirwall repository); found by itself inside the repository.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Check a plugin: its world, its imports (and what the sandbox grants each), and that it loads and answers within its limits.
    Check {
        /// The component (.wasm).
        plugin: PathBuf,
        #[command(flatten)]
        limits: PluginLimitArgs,
    },
}

#[derive(Args)]
struct PluginLimitArgs {
    /// Memory cap per instance (MiB).
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
    /// Deadline per call (ms).
    #[arg(long, default_value_t = 100)]
    timeout_ms: u64,
}

impl PluginLimitArgs {
    fn limits(&self) -> fhirwall::plugin_cli::Limits {
        fhirwall::plugin_cli::Limits { memory_mb: self.memory_mb, timeout_ms: self.timeout_ms }
    }
}

fn plugin_command(command: PluginCommand) -> ExitCode {
    let result = match command {
        PluginCommand::Test { plugin, fixtures, limits } => {
            fhirwall::plugin_cli::test(&plugin, &fixtures, limits.limits())
        }
        PluginCommand::Check { plugin, limits } => {
            fhirwall::plugin_cli::check(&plugin, limits.limits()).map(|()| true)
        }
        PluginCommand::New { name, world, dir, sdk } => {
            fhirwall::plugin_scaffold::new_plugin(&name, &world, &dir, sdk.as_deref()).map(|root| {
                println!(
                    "created {} ({world} plugin); build and test it with:\n  {}/check.sh",
                    root.display(),
                    root.display()
                );
                true
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fhirwall: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every generation of each key: its state (next, signing, verifying,
    /// retired), kid and times; never the key itself.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Add a generation: published now, signing in a few seconds; the old one
    /// verifies until what it signed has expired. Nobody loses access.
    Rotate {
        #[arg(long)]
        config: PathBuf,
        /// access-token, page-token or all.
        #[arg(long, default_value = "all")]
        purpose: String,
        /// A key leaked: sign with the new generation now and refuse everything
        /// older generations signed (clients must fetch new tokens).
        #[arg(long)]
        revoke_previous: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print it resolved (defaults filled in, paths absolute).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log.
    ///
    /// Checks every record's seq, prev and hash across all files. Exit 0 when
    /// intact; exit 1 naming the first bad seq (edited, removed, reordered or
    /// inserted records, truncated or missing files, an anchored record missing
    /// or different); exit 2 when it cannot run.
    Verify {
        #[command(flatten)]
        dir: AuditDirArgs,
        /// A record known from elsewhere, `SEQ:HASH` (from `GET /admin/audit/head`
        /// or an earlier verify, kept where the gateway host cannot write): the log
        /// must still hold it with that hash. Catches records cut from the end and
        /// chains rewritten with recomputed hashes. Repeatable.
        #[arg(long = "anchor", value_name = "SEQ:HASH")]
        anchors: Vec<fhirwall::audit::verify::Anchor>,
    },
    /// Print the audit lines whose event matches every given filter, as NDJSON.
    Query {
        /// Records naming this patient (`ID` or `Patient/ID`).
        #[arg(long)]
        patient: Option<String>,
        /// Records of requests by this client id.
        #[arg(long)]
        client: Option<String>,
        /// Records at or after this RFC 3339 date or instant (2025-06-30, 2025-06-30T12:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only records with a seq greater than this.
        #[arg(long)]
        after: Option<String>,
        /// Stop after this many lines.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        dir: AuditDirArgs,
    },
}

/// Where the audit log is: `--dir`, or the `audit.dir` of `--config`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct AuditDirArgs {
    /// The audit directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A fhirwall config file; its `audit.dir` is used.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl AuditDirArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match (&self.dir, &self.config) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(config)) => Ok(Config::load(config)?.audit.dir),
            (None, None) => anyhow::bail!("give --dir or --config"),
        }
    }
}

fn audit(command: AuditCommand) -> ExitCode {
    let fail = |e: anyhow::Error| {
        eprintln!("fhirwall: {e:#}");
        ExitCode::from(2)
    };
    match command {
        AuditCommand::Verify { dir, anchors } => {
            let dir = match dir.resolve() {
                Ok(dir) => dir,
                Err(e) => return fail(e),
            };
            match fhirwall::audit::verify::verify_with_anchors(&dir, &anchors) {
                Ok(ok) => {
                    println!(
                        "audit log intact: {} records (seq 1..{}) in {} files, {} anchors held; head {}:{}",
                        ok.records,
                        ok.last_seq,
                        ok.files,
                        anchors.len(),
                        ok.last_seq,
                        ok.head
                    );
                    ExitCode::SUCCESS
                }
                Err(broken) => {
                    eprintln!("audit log BROKEN at {broken}");
                    println!("first bad seq: {}", broken.seq);
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Query { patient, client, since, after, limit, dir } => {
            let run = || -> anyhow::Result<()> {
                let dir = dir.resolve()?;
                let filter = fhirwall::audit::Filter::parse(
                    patient.as_deref(),
                    client.as_deref(),
                    since.as_deref(),
                    after.as_deref(),
                )?;
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                let stats = fhirwall::audit::query::query_dir(&dir, &filter, limit, &mut out)
                    .with_context(|| format!("reading {}", dir.display()))?;
                std::io::Write::flush(&mut out)?;
                if let Some(last) = stats.truncated_at {
                    eprintln!("(--limit reached; continue with --after {last})");
                }
                if stats.unreadable > 0 {
                    eprintln!(
                        "warning: {} unreadable lines skipped; run `fhirwall audit verify`",
                        stats.unreadable
                    );
                }
                Ok(())
            };
            match run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(command) => return audit(command),
        // plugins
        Command::Plugin(command) => return plugin_command(command),
        Command::Match { plugin, members, queries, memory_mb, timeout_ms, threads } => {
            fhirwall::plugin_cli::run_match(
                &plugin,
                &members,
                &queries,
                fhirwall::plugin_cli::Limits { memory_mb, timeout_ms },
                threads.unwrap_or_else(fhirwall::plugin_cli::default_threads),
            )
        }
        Command::Explain { config, client, resource, request, json } => {
            explain(config, client, resource, request, json)
        }
        Command::Keys(KeysCommand::List { config }) => keys(config, http::Method::GET, "/admin/keys".into()),
        Command::Keys(KeysCommand::Rotate { config, purpose, revoke_previous }) => {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("purpose", &purpose)
                .append_pair("revoke_previous", if revoke_previous { "true" } else { "false" })
                .finish();
            keys(config, http::Method::POST, format!("/admin/keys/rotate?{query}"))
        }
        Command::Serve { config } => serve(config),
        Command::Demo { port } => demo(port),
        Command::Sandbox { listen, faults, noise, data } => sandbox(listen, faults, noise, data),
        Command::Config(ConfigCommand::Check { config }) => config_check(config),
        Command::Keygen { client_id, out, alg, force } => keygen(&client_id, &out, &alg, force),
        Command::Token { client_id, key, token_url, scope, alg, json } => {
            token(&client_id, &key, &token_url, &scope, alg.as_deref(), json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fhirwall: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    fhirwall::telemetry::init_logging(false);
    runtime()?.block_on(fhirwall::server::run(config))
}

fn config_check(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    // redact: the policy data (policy.dir over the built-in files) must load too.
    let redactor = fhirwall::redact::Redactor::new(&config.policy).context("policy")?;
    if !redactor.has_programs() {
        eprintln!(
            "warning: Part 2 is on but no Part 2 program is named (policy.part2_programs, \
             part2/programs.toml): records from the payer's SUD programs are classified \
             only by labels and codes"
        );
    }
    // plugins: every component must compile and match its world, as
    // `serve` requires (nothing is written to the compile cache).
    if !config.plugins.is_empty() {
        fhirwall::plugins::Plugins::load(&config.plugins, None).context("plugins")?;
    }
    print!("{}", config.to_toml());
    eprintln!("config ok: {}", config_path.display());
    Ok(())
}

fn sandbox(listen: SocketAddr, faults: bool, noise: bool, data: Option<PathBuf>) -> anyhow::Result<()> {
    fhirwall::telemetry::init_logging(true);
    runtime()?.block_on(async move {
        let sandbox = match data {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                fhirwall::sandbox::Sandbox::from_ndjson(&text)?
            }
            None => fhirwall::sandbox::Sandbox::builtin()?,
        }
        .with_faults(faults)
        .with_noise(noise);
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot bind {listen}"))?;
        let addr = listener.local_addr()?;
        println!("READY http://{addr}/fhir");
        fhirwall::sandbox::serve(listener, std::sync::Arc::new(sandbox), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}

/// `fhirwall keys …`: one admin call; prints the answer (JSON).
fn keys(config: PathBuf, method: http::Method, path_and_query: String) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let (status, body) = runtime()?.block_on(admin_call(&config, method, &path_and_query))?;
    if !(200..300).contains(&status) {
        anyhow::bail!("the gateway answered {status}: {body}");
    }
    println!("{body}");
    Ok(())
}

/// One call to the admin listener of `config`'s gateway, with its admin token.
async fn admin_call(
    config: &Config,
    method: http::Method,
    path_and_query: &str,
) -> anyhow::Result<(u16, String)> {
    let token = std::env::var(&config.admin.token_env)
        .with_context(|| format!("admin.token_env: {} is not set", config.admin.token_env))?;
    let addr = config.admin.listen;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    let url = format!("http://{host}:{}{path_and_query}", addr.port());
    fhirwall::net::call_text(method, &url, &format!("Bearer {token}")).await
}

fn explain(
    config: PathBuf,
    client: String,
    resource: Option<String>,
    request: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("client", &client);
    match (&resource, &request) {
        (Some(r), _) => query.append_pair("resource", r),
        (None, Some(r)) => query.append_pair("request", r),
        (None, None) => anyhow::bail!("give --resource or --request"),
    };
    query.append_pair("format", if json { "json" } else { "text" });
    let path = format!("/admin/explain?{}", query.finish());
    let (status, body) = runtime()?.block_on(admin_call(&config, http::Method::GET, &path))?;
    if !(200..300).contains(&status) {
        anyhow::bail!("the gateway answered {status}: {body}");
    }
    print!("{body}");
    if json {
        println!();
    }
    Ok(())
}

fn demo(port: u16) -> anyhow::Result<()> {
    fhirwall::telemetry::init_logging(true);
    let dir = tempfile::Builder::new().prefix("fhirwall-demo-").tempdir().context("creating a temp dir")?;
    let admin_port = port.checked_add(1).context("--port too large")?;
    let admin_token = match std::env::var("FHIRWALL_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => hex_token(),
    };
    // auth: a demo provider client (Grace Family Medicine) with a fresh key pair.
    let keys = fhirwall::auth::cli::keygen(
        "grace-ehr",
        &dir.path().join("keys"),
        fhirwall::auth::keys::KeyKind::Es384,
        false,
    )?;
    let config_text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
base_url = "http://127.0.0.1:{port}/fhir"
[admin]
listen = "127.0.0.1:{admin_port}"
token_env = "FHIRWALL_ADMIN_TOKEN"
[upstream]
url = "sandbox"
[state]
url = "sqlite://state/fhirwall.db"
[audit]
dir = "audit"
[[clients]]
client_id = "grace-ehr"
organization = "Organization/org-grace"
npi = "1417987256"
jwks_path = "keys/grace-ehr.jwks.json"
scopes = ["system/*.read"]
[policy]
# The demo dataset's substance-use-disorder program (42 CFR Part 2).
part2_programs = ["Organization/org-recovery", "1234567893"]
"#
    );
    // The default matcher, when built (plugins/build.sh), serves
    // $member-match and $provider-member-match; the example request asks for
    // a member grace-ehr is not attributed to (Lucia Ximenez, pat-0004).
    let matcher = std::env::current_dir()?.join("plugins/dist/default_matcher.wasm");
    let config_text = if matcher.is_file() {
        format!(
            "{config_text}[[plugins]]\nname = \"default-matcher\"\nworld = \"matcher\"\npath = {:?}\n",
            matcher.display().to_string()
        )
    } else {
        config_text
    };
    let match_request = dir.path().join("provider-member-match.json");
    std::fs::write(&match_request, DEMO_MATCH_REQUEST)?;
    let config_path = dir.path().join("fhirwall.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::load(&config_path)?;
    let base = format!("http://127.0.0.1:{port}/fhir");
    // Commands name this very binary, so they work as printed from a fresh
    // checkout (`cargo run -- demo` puts no `fhirwall` on PATH).
    let exe = shell_quote(&std::env::current_exe()?.display().to_string());
    let admin = format!("http://127.0.0.1:{admin_port}");
    let key = shell_quote(&keys.key_path.display().to_string());
    let audit = shell_quote(&config.audit.dir.display().to_string());
    let match_request = shell_quote(&match_request.display().to_string());
    let config_file = shell_quote(&config_path.display().to_string());
    let jar = shell_quote(&dir.path().join("console.cookies").display().to_string());
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    let tour = [
        format!("curl -s {base}/metadata | head -c 400; echo"),
        format!("curl -s {base}/.well-known/smart-configuration; echo"),
        format!(
            "TOKEN=$({exe} token --client-id grace-ehr --key {key} --token-url http://127.0.0.1:{port}/auth/token --scope 'system/*.read')"
        ),
        "# v1: a patient on grace's payer roster".into(),
        format!("curl -s {auth} '{base}/Patient/pat-0001'; echo"),
        format!("curl -s {auth} '{base}/ExplanationOfBenefit?patient=Patient/pat-0001&_count=2' | head -c 600; echo"),
        format!("curl -s {auth} '{base}/Patient/pat-0001/Coverage' | head -c 600; echo"),
        "# refused (400): a reverse chain could reveal patients grace may not see".into(),
        format!("curl -s {auth} '{base}/Patient?_has:Observation:patient:code=1'; echo"),
        "# bulk export of grace's roster: kick-off, then the manifest (its file URLs download with the same token)".into(),
        format!(
            "LOC=$(curl -s -D - -o /dev/null {auth} -H 'Prefer: respond-async' '{base}/Group/grp-grace/$export?_type=Patient,Coverage' | sed -n 's/^[Cc]ontent-[Ll]ocation: *//p' | tr -d '\\r'); echo \"$LOC\""
        ),
        format!("sleep 2; curl -s {auth} \"$LOC\"; echo"),
        "# v2: grace attests treating Lucia Ximenez (on no roster of grace's) -> MatchedMembers Group (needs plugins/build.sh)".into(),
        format!(
            "GROUP=$(curl -s {auth} -H 'Content-Type: application/fhir+json' --data @{match_request} '{base}/Group/$provider-member-match' | grep -o '\"id\":\"pmm-[0-9a-f]*\"' | head -n 1 | cut -d'\"' -f4); echo \"MatchedMembers: Group/$GROUP\""
        ),
        "# ... and grace exports that Group: the member it attested treating, nobody else".into(),
        format!(
            "LOC=$(curl -s -D - -o /dev/null {auth} -H 'Prefer: respond-async' \"{base}/Group/$GROUP/\\$export?_type=Patient,Condition\" | sed -n 's/^[Cc]ontent-[Ll]ocation: *//p' | tr -d '\\r'); sleep 2; curl -s {auth} \"$LOC\"; echo"
        ),
        "# a record withheld, and why: a Part 2 (substance-use-disorder) diagnosis of a patient grace may see".into(),
        format!("curl -s -o /dev/null -w '%{{http_code}}\\n' {auth} '{base}/Condition/cond-0009-2'"),
        format!(
            "FHIRWALL_ADMIN_TOKEN={admin_token} {exe} explain --config {config_file} --client grace-ehr --request 'GET /fhir/Condition?patient=pat-0009'"
        ),
        format!(
            "# the audit console: open {admin}/admin/console in a browser and sign in with the admin token; the same per-patient view from the shell:"
        ),
        format!(
            "curl -s -c {jar} -H 'Content-Type: application/json' -d '{{\"token\":\"{admin_token}\"}}' {admin}/admin/console/session >/dev/null; curl -s -b {jar} {admin}/admin/console/api/patients/pat-0009 | head -c 1500; echo"
        ),
        format!("curl -s {admin}/metrics | head -n 5"),
        format!("curl -s -H 'Authorization: Bearer {admin_token}' '{admin}/admin/audit?patient=pat-0001' | head -c 600; echo"),
        format!("{exe} audit verify --dir {audit}"),
    ];
    println!(
        "\nfhirwall demo — gateway on the built-in sandbox (synthetic payer dataset)\n\
         \n  FHIR base   {base}\
         \n  admin API   {admin}  (Authorization: Bearer {admin_token})\
         \n  console     {admin}/admin/console  (sign in with the admin token)\
         \n  state       {}\n\
         \nTry (client grace-ehr; paste the lines in order into one shell):\n",
        dir.path().display(),
    );
    for line in &tour {
        println!("  {line}");
    }
    println!("\nPress Ctrl-C to stop.");
    runtime()?.block_on(fhirwall::server::run_with_admin_token(config, Some(admin_token)))
}

/// `value` as one word for a POSIX shell.
fn shell_quote(value: &str) -> String {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:=@+,".contains(&b)) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// The demo's `$provider-member-match` request: one member grace-ehr treats
/// (name, birth date and address as its EHR has them, no member id: the
/// default matcher wants something beyond name and birth date) with
/// grace's attestation.
const DEMO_MATCH_REQUEST: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"MemberBundle","part":[
{"name":"MemberPatient","resource":{"resourceType":"Patient","id":"ehr-77","name":[{"family":"Ximenez","given":["Lucia"]}],"gender":"female","birthDate":"1947-12-18","address":[{"line":["5540 Chestnut Rd"],"city":"Millbrook","postalCode":"02911"}]}},
{"name":"CoverageToMatch","resource":{"resourceType":"Coverage","status":"active","beneficiary":{"reference":"Patient/ehr-77"},"payor":[{"display":"Fhirwall Example Health Plan"}]}},
{"name":"Consent","resource":{"resourceType":"Consent","status":"active","patient":{"reference":"Patient/ehr-77"},
 "provision":{"type":"permit","period":{"start":"2025-01-01"},"actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},
 "reference":{"identifier":{"system":"http://hl7.org/fhir/sid/us-npi","value":"1417987256"}}}]}}}]}]}"#;

fn hex_token() -> String {
    let bytes: [u8; 16] = rand_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rand_bytes() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut buf).expect("system randomness");
    buf
}

fn keygen(client_id: &str, out: &std::path::Path, alg: &str, force: bool) -> anyhow::Result<()> {
    let kind = fhirwall::auth::cli::parse_key_kind(alg)?;
    let made = fhirwall::auth::cli::keygen(client_id, out, kind, force)?;
    println!(
        "private key  {}  (keep it secret; it never leaves the provider system)",
        made.key_path.display()
    );
    println!("public JWKS  {}  (register it with the payer)", made.jwks_path.display());
    println!("kid          {} ({:?})", made.kid, made.algorithm);
    println!(
        "\nconfig entry for the payer's fhirwall:\n\n[[clients]]\nclient_id = {client_id:?}\norganization = \"Organization/...\"\n\
         npi = \"...\"\njwks_path = {:?}\nscopes = [\"system/*.read\"]",
        made.jwks_path.display().to_string()
    );
    Ok(())
}

fn token(
    client_id: &str,
    key: &std::path::Path,
    token_url: &str,
    scope: &str,
    alg: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let alg = match alg {
        Some(name) => Some(
            name.to_ascii_uppercase()
                .parse::<jsonwebtoken::Algorithm>()
                .map_err(|_| anyhow::anyhow!("--alg {name}: use RS384, ES384, RS256, ES256 or PS384"))?,
        ),
        None => None,
    };
    let response =
        runtime()?.block_on(fhirwall::auth::cli::fetch_token(client_id, key, token_url, scope, alg))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        println!("{}", response["access_token"].as_str().unwrap_or_default());
    }
    Ok(())
}
