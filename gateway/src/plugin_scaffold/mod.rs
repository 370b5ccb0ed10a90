//! `fhirwall plugin new NAME --world policy|matcher`: a plugin crate that
//! builds, and passes its own tests, with one command (`./check.sh`: native
//! unit tests, the WebAssembly component, `fhirwall plugin check`, and
//! `fhirwall plugin test` against its fixtures).
//!
//! The crate depends on this repository's SDK by path (the SDK's bindings
//! are generated from `wit/plugin.wit` beside it), found with `--sdk`, or
//! as `plugins/sdk` above the working directory or above this binary.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The files of a new plugin; `{{name}}`, `{{crate}}`, `{{sdk}}`,
/// `{{fhirwall}}` are filled in.
struct Template {
    files: &'static [(&'static str, &'static str)],
}

const COMMON: &[(&str, &str)] = &[("check.sh", include_str!("check.sh.in")), (".gitignore", "/target\n")];

const POLICY: Template = Template {
    files: &[
        ("Cargo.toml", include_str!("policy/Cargo.toml.in")),
        ("src/lib.rs", include_str!("policy/lib.rs.in")),
        ("fixtures/cases.ndjson", include_str!("policy/cases.ndjson.in")),
        ("README.md", include_str!("policy/README.md.in")),
    ],
};

const MATCHER: Template = Template {
    files: &[
        ("Cargo.toml", include_str!("matcher/Cargo.toml.in")),
        ("src/lib.rs", include_str!("matcher/lib.rs.in")),
        ("fixtures/cases.ndjson", include_str!("matcher/cases.ndjson.in")),
        ("fixtures/members.ndjson", include_str!("matcher/members.ndjson.in")),
        ("README.md", include_str!("matcher/README.md.in")),
    ],
};

/// Write the crate `dir/name`; returns its path.
pub fn new_plugin(name: &str, world: &str, dir: &Path, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.as_bytes()[0].is_ascii_lowercase(),
        "plugin name {name:?}: use lower-case letters, digits and '-', starting with a letter"
    );
    let template = match world {
        "policy" => &POLICY,
        "matcher" => &MATCHER,
        other => anyhow::bail!("--world {other}: use policy or matcher"),
    };
    let sdk = match sdk {
        Some(p) => p.to_path_buf(),
        None => find_sdk().context(
            "cannot find the plugin SDK (plugins/sdk of the fhirwall repository): run this inside the repository or pass --sdk PATH",
        )?,
    };
    let sdk = std::fs::canonicalize(&sdk).with_context(|| format!("--sdk {}", sdk.display()))?;
    anyhow::ensure!(
        sdk.join("Cargo.toml").is_file(),
        "{}: not the plugin SDK (no Cargo.toml)",
        sdk.display()
    );
    let root = dir.join(name);
    anyhow::ensure!(!root.exists(), "{} already exists", root.display());
    let exe = std::env::current_exe().context("locating this fhirwall binary")?;
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string())
            .replace("{{fhirwall}}", &exe.display().to_string())
    };
    for (path, text) in COMMON.iter().chain(template.files) {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, fill(text)).with_context(|| format!("writing {}", target.display()))?;
    }
    make_executable(&root.join("check.sh"))?;
    // The SDK workspace's lockfile pins what the SDK was tested with.
    if let Some(lock) = sdk.parent().map(|p| p.join("Cargo.lock")).filter(|p| p.is_file()) {
        std::fs::copy(&lock, root.join("Cargo.lock")).context("copying the SDK's Cargo.lock")?;
    }
    Ok(root)
}

fn find_sdk() -> Option<PathBuf> {
    let here = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    [here, exe]
        .into_iter()
        .flatten()
        .flat_map(|start| start.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .map(|dir| dir.join("plugins/sdk"))
        .find(|sdk| sdk.join("Cargo.toml").is_file())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).with_context(|| format!("chmod {}", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_policy_crate_and_refuses_bad_names_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
        let root = new_plugin("my-policy", "policy", dir.path(), Some(&sdk)).unwrap();
        let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-policy\""), "{cargo}");
        assert!(cargo.contains("features = [\"policy\"]"), "{cargo}");
        assert!(!cargo.contains("{{"), "{cargo}");
        assert!(std::fs::read_to_string(root.join("check.sh")).unwrap().contains("my_policy.wasm"));
        assert!(new_plugin("my-policy", "policy", dir.path(), Some(&sdk)).is_err());
        assert!(new_plugin("My Policy", "policy", dir.path(), Some(&sdk)).is_err());
        assert!(new_plugin("x", "auth", dir.path(), Some(&sdk)).is_err());
    }
}
