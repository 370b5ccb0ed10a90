//! A guarded upstream (tests/clients/upstream_guard.py, Python with PyJWT and
//! cryptography, independent of fhirwall): an OAuth 2.0 token endpoint and
//! a reverse proxy in front of a real upstream that admits only its live
//! access tokens, optionally over TLS demanding a client certificate.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::paths::{repo_root, test_tempdir};
use crate::ports::free_port;
use crate::process::{Proc, spawn_until_ready};
use crate::pyjwt::python;

pub struct UpstreamGuard {
    _proc: Proc,
    origin: String,
    _dir: tempfile::TempDir,
}

impl UpstreamGuard {
    /// Start the guard proxying to `target` (an origin such as
    /// `http://127.0.0.1:4000`) with `upstream_guard.py` flags `args`.
    pub fn start(target: &str, args: &[&str]) -> UpstreamGuard {
        let dir = test_tempdir("fhirwall-guard-");
        let port = free_port().to_string();
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/clients/upstream_guard.py"))
            .args(["--listen-port", &port, "--target", target])
            .args(args);
        let log = dir.path().join("guard.log");
        let (proc, origin) = spawn_until_ready("upstream guard", cmd, log, Duration::from_secs(60));
        UpstreamGuard { _proc: proc, origin, _dir: dir }
    }

    /// `https://127.0.0.1:PORT` or `http://…`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.origin)
    }

    /// Write a CA for the server, one for clients and one nobody trusts,
    /// with a server certificate for 127.0.0.1 and client certificates
    /// (`client.crt`/`.key` from the client CA, `stranger.crt`/`.key` from
    /// the other) into `dir`.
    pub fn make_certs(dir: &Path) {
        let status = Command::new(python())
            .arg(repo_root().join("tests/clients/upstream_guard.py"))
            .arg("--make-certs")
            .arg(dir)
            .status()
            .expect("upstream_guard.py --make-certs");
        assert!(status.success(), "upstream_guard.py --make-certs failed");
    }
}
