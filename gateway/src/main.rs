//! The `fhirwall` command line (DESIGN.md "CLI").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fhirwall::config::Config;

#[derive(Parser)]
#[command(name = "fhirwall", version, about = "A CMS-0057-F Provider Access gateway in front of any FHIR R4 server")]
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
        /// Load this NDJSON dataset instead of the built-in one.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print it resolved (defaults filled in, paths absolute).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Demo { port } => demo(port),
        Command::Sandbox { listen, faults, data } => sandbox(listen, faults, data),
        Command::Config(ConfigCommand::Check { config }) => config_check(config),
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
    print!("{}", config.to_toml());
    eprintln!("config ok: {}", config_path.display());
    Ok(())
}

fn sandbox(listen: SocketAddr, faults: bool, data: Option<PathBuf>) -> anyhow::Result<()> {
    fhirwall::telemetry::init_logging(true);
    runtime()?.block_on(async move {
        let sandbox = match data {
            Some(path) => {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                fhirwall::sandbox::Sandbox::from_ndjson(&text)?
            }
            None => fhirwall::sandbox::Sandbox::builtin()?,
        }
        .with_faults(faults);
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

fn demo(port: u16) -> anyhow::Result<()> {
    fhirwall::telemetry::init_logging(true);
    let dir = tempfile::Builder::new().prefix("fhirwall-demo-").tempdir().context("creating a temp dir")?;
    let admin_port = port.checked_add(1).context("--port too large")?;
    let admin_token = match std::env::var("FHIRWALL_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => hex_token(),
    };
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
"#
    );
    let config_path = dir.path().join("fhirwall.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::load(&config_path)?;
    let base = format!("http://127.0.0.1:{port}/fhir");
    println!(
        "\nfhirwall demo — gateway on the built-in sandbox (synthetic payer dataset)\n\
         \n  FHIR base   {base}\
         \n  admin API   http://127.0.0.1:{admin_port}  (Authorization: Bearer {admin_token})\
         \n  state       {}\n\
         \nTry:\
         \n  curl -s {base}/metadata | head -c 400; echo\
         \n  curl -s '{base}/Patient/pat-0001'\
         \n  curl -s '{base}/ExplanationOfBenefit?patient=Patient/pat-0001&_count=2'\
         \n  curl -s '{base}/Patient/pat-0001/Coverage'\
         \n  curl -s '{base}/Patient?_has:Observation:patient:code=1'   # refused: 400\
         \n  curl -s http://127.0.0.1:{admin_port}/metrics | head\
         \n\nPress Ctrl-C to stop.\n",
        dir.path().display()
    );
    runtime()?.block_on(fhirwall::server::run_with_admin_token(config, Some(admin_token)))
}

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
