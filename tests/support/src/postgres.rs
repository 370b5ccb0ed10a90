//! A private PostgreSQL server (Debian's, installed by `scripts/setup-test-deps.sh
//! postgres`) in a temp dir on a free loopback port, for the multi-node tests.
//! Stopped (immediate mode) and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ports::free_port;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `pg_ctl -o` options (port, socket dir, settings), for a restart.
    opts: String,
}

/// The newest `/usr/lib/postgresql/N/bin`.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup-test-deps.sh postgres")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Run a PostgreSQL binary; as root, as the `postgres` user (the server refuses root).
fn run_pg(bin: &Path, tool: &str, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    let out = cmd.args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("fhirwall-pg-").tempdir().unwrap();
        if is_root() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap().to_owned();
        run_pg(
            &bin,
            "initdb",
            &["-D", &data_s, "--auth=trust", "--username=postgres", "--no-sync", "-E", "UTF8"],
        );
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            dir.path().display()
        );
        let pg = Postgres { dir, bin, port, opts };
        pg.start_server();
        run_pg(
            &pg.bin,
            "createdb",
            &["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "fhirwall"],
        );
        pg
    }

    fn start_server(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        let args =
            ["-D", data.to_str().unwrap(), "-o", &self.opts, "-l", log.to_str().unwrap(), "-w", "start"];
        run_pg(&self.bin, "pg_ctl", &args);
    }

    /// Stop the server at once (as a crash would: `-m immediate`).
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        run_pg(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    /// Start it again on the same port with the same data.
    pub fn restart(&self) {
        self.start_server();
    }

    /// The `state.url` for fhirwall.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/fhirwall", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
    }
}
