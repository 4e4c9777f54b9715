//! Where the tests find the tools and binaries they run: the real `helm`
//! (`SLUICE_HELM`, installed by scripts/test), the chart, and this
//! workspace's binaries.

use std::path::{Path, PathBuf};

/// The `helm` binary named by `SLUICE_HELM`; panics with how to get it.
pub fn helm() -> PathBuf {
    match std::env::var_os("SLUICE_HELM") {
        Some(p) => PathBuf::from(p),
        None => {
            panic!("SLUICE_HELM is not set: run the tests with scripts/test, which installs helm")
        }
    }
}

/// `charts/sluice` of this checkout.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice")
}

/// The workspace binary `name` in the directory of `beside` (another
/// binary of the same build, e.g. a test's `CARGO_BIN_EXE_*`): a workspace
/// `cargo test` builds every binary there. Run on its own, a test target
/// gets it built here when it is missing; an existing one is used as it is,
/// so build the workspace's binaries first when the product code changed.
pub fn workspace_binary(beside: &Path, name: &str) -> PathBuf {
    let path = beside.with_file_name(name);
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--bin", name])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {name}");
    }
    assert!(path.is_file(), "no {name} at {}", path.display());
    path
}
