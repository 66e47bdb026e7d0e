//! Helpers shared by the CLI's end-to-end tests.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::process::{Command, Output};

/// A fresh (removed, not created) scratch path for test `name`, unique per test binary and
/// process.
#[allow(dead_code)] // not every test binary uses it
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "peloton-{}-{}-{name}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs the built `peloton` binary.
#[allow(dead_code)] // not every test binary uses it
pub fn peloton<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peloton"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Asserts a clean failure — exit code 1, no panic, one `error: ` line containing `needle` —
/// and returns that line.
#[allow(dead_code)] // not every test binary uses it
pub fn fails<S: AsRef<OsStr> + Debug>(args: &[S], needle: &str) -> String {
    let out = peloton(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should exit 1; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{args:?}: '{needle}' not in: {stderr}"
    );
    lines[0].to_string()
}
