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

/// One registered algorithm's test config (see `Registration::test_configs`), written as a
/// config file for `peloton train -c`.
#[allow(dead_code)] // not every test binary uses it
pub struct RegistryCase {
    /// "name #i": the algorithm and which of its test configs.
    pub label: String,
    pub name: &'static str,
    pub asynchronous: bool,
    pub has_center: bool,
    /// The config file: the `[algorithm]` table, and a Nesterov-momentum optimizer (momentum
    /// 0.9) where the algorithm asks for one.
    pub file: std::path::PathBuf,
}

/// Every registered algorithm's test configs, as config files in `dir`: the suites that
/// iterate them check a new algorithm because it is registered, not because a list names it.
#[allow(dead_code)] // not every test binary uses it
pub fn registry_cases(dir: &std::path::Path) -> Vec<RegistryCase> {
    use peloton_core::algorithms::{registry, AlgorithmConfig};
    use peloton_core::optim::OptimizerConfig;
    #[derive(serde::Serialize)]
    struct File<'a> {
        algorithm: &'a AlgorithmConfig,
        #[serde(skip_serializing_if = "Option::is_none")]
        optimizer: Option<toml::Table>,
    }
    std::fs::create_dir_all(dir).expect("scratch dir");
    let mut cases = Vec::new();
    for entry in registry::registered() {
        for (i, algorithm) in entry.test_configs().iter().enumerate() {
            let optimizer = if algorithm
                .validate(4, 0, &OptimizerConfig::default())
                .is_ok()
            {
                None
            } else {
                let mut table = toml::Table::new();
                table.insert("momentum".into(), toml::Value::Float(0.9));
                table.insert("nesterov".into(), toml::Value::Boolean(true));
                Some(table)
            };
            let label = format!("{} #{i}", entry.name);
            let file = dir.join(format!("{}-{i}.toml", entry.name));
            let text = toml::to_string(&File {
                algorithm,
                optimizer,
            })
            .expect("a config writes");
            std::fs::write(&file, text).expect("config file");
            cases.push(RegistryCase {
                label,
                name: entry.name,
                asynchronous: entry.asynchronous,
                has_center: entry.has_center,
                file,
            });
        }
    }
    cases
}
