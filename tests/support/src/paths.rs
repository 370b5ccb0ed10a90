//! Paths: the repository, its fixtures and datasets, the Medplum upstream's
//! directory, and the `fhirwall` binary and target dir of the current test run.

use std::path::{Path, PathBuf};

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    // This crate lives at `tests/support`, two levels below the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .expect("the testkit crate lives two levels below the workspace root (tests/support)")
        .to_path_buf()
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
///
/// `CARGO_BIN_EXE_fhirwall` from the environment when it is set (at run time:
/// this is a library, so cargo's compile-time value for integration tests does not
/// reach it); else `target/<profile>/fhirwall` next to the running test binary's
/// `target/<profile>/deps/`. Cargo builds the binary before it runs the `fhirwall`
/// package's integration tests (the `[[test]]` entries in `gateway/Cargo.toml`).
/// Panics when the binary is not there.
pub fn fhirwall_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_fhirwall") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "CARGO_BIN_EXE_fhirwall is set to {}, which does not exist", bin.display());
        return bin;
    }
    let bin = profile_dir().join(format!("fhirwall{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the fhirwall binary is not at {} (derived from the test executable {}); run the e2e tests \
         with `cargo test -p fhirwall`, which builds it, or set CARGO_BIN_EXE_fhirwall",
        bin.display(),
        current_exe().display()
    );
    bin
}

/// A scratch dir in the target dir shared by the test binaries of one build (what
/// cargo calls `CARGO_TARGET_TMPDIR` for integration tests): `CARGO_TARGET_TMPDIR`
/// from the environment when set, else `target/tmp` (the parent of
/// `target/<profile>/`, as derived by [`fhirwall_bin`], joined with `tmp`).
pub(crate) fn target_tmpdir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_TMPDIR") {
        return PathBuf::from(dir);
    }
    let profile = profile_dir();
    profile.parent().unwrap_or(&profile).join("tmp")
}

/// `target/<profile>/`: the directory of the running executable, or its parent
/// when that is `deps/` (where cargo puts test and bench binaries).
fn profile_dir() -> PathBuf {
    let exe = current_exe();
    let dir = exe.parent().expect("the test executable has a parent directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn current_exe() -> PathBuf {
    std::env::current_exe().expect("the path of the running test executable")
}

/// `p` made absolute against the current directory.
pub(crate) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().expect("current dir").join(p) }
}

/// A fresh temp dir named `{prefix}…`, removed when dropped.
pub(crate) fn test_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("creating a temp dir")
}
