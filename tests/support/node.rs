//! The Node.js originals, installed from npm into `target/e2e-npm/` once (under a file
//! lock, so parallel tests share one install) for tests that compare with them. Needs
//! `node` and `npm` on PATH and the npm registry; a test that needs them fails with a
//! clear message when they are missing rather than skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Installs `package@version` (if not there yet) and returns its directory.
pub fn npm_package(package: &str, version: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/e2e-npm")
        .join(format!("{package}@{version}").replace('/', "+"));
    std::fs::create_dir_all(&root).expect("create target/e2e-npm");
    let lock = std::fs::File::create(root.join(".install.lock")).expect("install lock");
    lock.lock().expect("lock the npm install");
    let installed = root.join("node_modules").join(package);
    if !installed.join("package.json").exists() {
        std::fs::write(root.join("package.json"), "{\"private\":true}\n").unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error", &format!("{package}@{version}")])
            .current_dir(&root)
            .output()
            .unwrap_or_else(|e| panic!("npm is needed to install {package}@{version} for this test: {e}"));
        assert!(
            out.status.success(),
            "npm install {package}@{version} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    installed
}

/// `node` on PATH (the system Node, 20 on our machines).
pub fn node() -> PathBuf {
    let out = Command::new("node").arg("--version").output().expect("node is needed for this test");
    assert!(out.status.success(), "node --version failed");
    PathBuf::from("node")
}
