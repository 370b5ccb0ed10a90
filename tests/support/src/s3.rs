//! An S3-compatible object store for the export tests: moto's server
//! (PyPI `moto[server]`, installed into its own venv by
//! `scripts/setup-test-deps.sh s3`) on a free loopback port, with one bucket.
//! Stopped on drop.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ports::{free_port, wait_for_port};
use crate::process::Proc;

pub struct S3Server {
    _proc: Proc,
    _dir: tempfile::TempDir,
    port: u16,
    bucket: String,
}

impl S3Server {
    /// Start moto and create `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let dir = tempfile::Builder::new().prefix("fhirwall-s3-").tempdir().unwrap();
        let port = free_port();
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(crate::venvs::moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto_server");
        let proc = Proc::new("moto S3 server", child, None, log_path);
        wait_for_port(("127.0.0.1", port), Duration::from_secs(30));
        // Unsigned bucket creation: moto accepts it.
        let created = raw_http(port, "PUT", &format!("/{bucket}"));
        assert!(created.starts_with("HTTP/1.1 200"), "creating the bucket: {created}");
        S3Server { _proc: proc, _dir: dir, port, bucket: bucket.to_owned() }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `[export]` TOML that points fhirwall at this bucket (under
    /// `prefix`); credentials come from the environment ([`S3Server::env`]).
    pub fn export_toml(&self, prefix: &str) -> String {
        format!(
            "storage = \"s3://{}/{prefix}\"\ns3_endpoint = \"{}\"\ns3_allow_http = true\n",
            self.bucket,
            self.endpoint()
        )
    }

    /// The credentials moto accepts, as environment variables for fhirwall.
    pub fn env() -> [(&'static str, &'static str); 2] {
        [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")]
    }

    /// Every object key in the bucket (an unsigned ListObjects, which moto allows).
    pub fn keys(&self) -> Vec<String> {
        let text = raw_http(self.port, "GET", &format!("/{}?list-type=2&max-keys=100000", self.bucket));
        text.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect()
    }
}

/// One HTTP/1.1 request without a body over a fresh connection; the whole
/// response as text.
fn raw_http(port: u16, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to moto");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("reading moto's answer");
    out
}
