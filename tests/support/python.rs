//! A Python venv with one requirement installed (the official MCP Python SDK, in the
//! tests that use it), created once per target directory under `target/tmp/<name>` and
//! shared by parallel tests and test processes through a file lock. No skip: if the venv
//! or pip fails, the test fails and says why (python3 with venv and PyPI are needed).

use std::path::PathBuf;
use std::process::Command;

/// The venv's python, creating `target/tmp/<name>` with `requirement` installed on first
/// use (or when the installed requirement differs). Panics with the reason on failure.
pub fn python_with(name: &str, requirement: &str) -> PathBuf {
    make(name, requirement).unwrap_or_else(|e| panic!("{e}"))
}

fn make(name: &str, requirement: &str) -> Result<PathBuf, String> {
    let base = crate::target_tmp();
    let base = base.as_path();
    std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let dir = base.join(name);
    let python = dir.join("bin").join("python");
    let marker = dir.join("e2e-installed");
    let lock = std::fs::File::create(base.join(format!("{name}.lock"))).map_err(|e| format!("venv lock: {e}"))?;
    lock.lock().map_err(|e| format!("venv lock: {e}"))?;
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == requirement) && python.exists() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let host_python = std::env::var("E2E_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(&host_python)
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run `{host_python} -m venv`: {e} (python3 with venv is needed)"))?;
    if !out.status.success() {
        return Err(format!(
            "`{host_python} -m venv {}` failed ({}); on Debian install python3-venv:\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", requirement])
        .output()
        .map_err(|e| format!("cannot run pip in {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pip could not install `{requirement}` into {}: {}; is the package registry reachable? \
             These tests need it and do not skip.\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&marker, requirement).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(python)
}
