//! Third-party Python tools of the tests, each in its own venv outside the
//! repository (made by `scripts/setup-test-deps.sh STEP` from a pinned
//! requirements file in tests/clients/).

use std::path::PathBuf;
use std::process::Command;

/// `bin` of the venv `venv`, running `setup-test-deps.sh step` first when
/// the venv is missing or does not match its requirements file.
pub fn tool(venv: &str, requirements: &str, step: &str, bin: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let dir = cache.join("fhirwall-test-clients").join(venv);
    let wanted = std::fs::read(crate::paths::repo_root().join("tests/clients").join(requirements)).unwrap();
    if std::fs::read(dir.join("requirements.installed")).ok().as_deref() != Some(wanted.as_slice()) {
        let status = Command::new("bash")
            .arg(crate::paths::repo_root().join("scripts/setup-test-deps.sh"))
            .arg(step)
            .status()
            .unwrap_or_else(|e| panic!("running scripts/setup-test-deps.sh {step}: {e}"));
        assert!(status.success(), "scripts/setup-test-deps.sh {step} failed");
    }
    dir.join("bin").join(bin)
}

/// smart-fetch (PyPI), the third-party Bulk Data client of the export tests.
pub fn smart_fetch() -> PathBuf {
    tool("smart-fetch-venv", "smart-fetch-requirements.txt", "bulk_client", "smart-fetch")
}

/// moto's S3 server.
pub fn moto_server() -> PathBuf {
    tool("s3-venv", "s3-requirements.txt", "s3", "moto_server")
}

/// Python with fhir.resources, the R4 structure validator (tests/clients/validate_fhir.py).
pub fn fhir_validator_python() -> PathBuf {
    tool("validator-venv", "validator-requirements.txt", "validator", "python")
}
