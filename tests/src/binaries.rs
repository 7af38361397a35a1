//! The workspace's binaries, as `cargo test --workspace` (scripts/test.sh) or
//! `cargo build --workspace --bins` left them. A missing binary is a loud failure, never a skip.

use std::path::PathBuf;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn binary(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target_dir().join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (or the whole suite, scripts/test.sh)",
        path.display()
    );
    path
}

pub fn operator() -> PathBuf {
    binary("dhcpmanager-operator")
}

pub fn apiserver() -> PathBuf {
    binary("dhcpmanager-apiserver")
}
