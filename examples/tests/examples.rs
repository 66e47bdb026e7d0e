//! Every example is built and run briefly: the user-defined algorithm through peloton's CLI on
//! threads and the simulator (registered, listed, validated, trained, its average kept), and
//! the simulator sweep.

use std::path::PathBuf;
use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("the example starts")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peloton-example-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const GOSSIP: &str = env!("CARGO_BIN_EXE_decaying_gossip_algorithm");

#[test]
fn the_user_algorithm_is_listed_with_its_keys() {
    let list = ok(&run(GOSSIP, &["list"]));
    assert!(list.contains("decaying-gossip"), "{list}");
    assert!(list.contains("keys: weight, decay"), "{list}");
    assert!(
        list.contains("lsgd"),
        "the built-in algorithms are still there"
    );
}

#[test]
fn the_user_algorithm_trains_on_threads_and_the_simulator_alike() {
    let mut finals = Vec::new();
    for transport in ["threads", "sim"] {
        let dir = scratch(transport);
        ok(&run(
            GOSSIP,
            &[
                "train",
                "-q",
                "--problem",
                "softmax",
                "--workers",
                "4",
                "--steps",
                "120",
                "--eval-every",
                "60",
                "--transport",
                transport,
                "--set",
                "algorithm.name=\"decaying-gossip\"",
                "--set",
                "algorithm.decay=0.05",
                "--out",
                dir.to_str().unwrap(),
            ],
        ));
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(
            config.contains("name = \"decaying-gossip\"") && config.contains("decay = 0.05"),
            "{config}"
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["status"], "ok");
        let accuracy = summary["final_evals"][0]["accuracy"].as_f64().unwrap();
        assert!(accuracy > 0.5, "{transport}: accuracy {accuracy}");
        finals.push(summary["final_evals"][0]["loss"].as_f64().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
    // A synchronous algorithm computes the same numbers on every transport.
    assert_eq!(finals[0], finals[1]);
}

/// On MPI too, when this build has it (CI's `--features peloton-cli/mpi`) and `mpirun` is
/// installed: 2 ranks end bit-identical to 2 threads, like the built-in algorithms.
#[test]
fn the_user_algorithm_runs_on_mpi_like_on_threads() {
    let mpirun = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !mpirun {
        eprintln!("note: mpirun not found: skipping");
        return;
    }
    let args = |dir: &PathBuf| -> Vec<String> {
        [
            "train",
            "-q",
            "--problem",
            "softmax",
            "--workers",
            "2",
            "--steps",
            "40",
            "--set",
            "algorithm.name=\"decaying-gossip\"",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect()
    };
    let (threads, mpi) = (scratch("mpi-threads"), scratch("mpi-mpi"));
    ok(&run(
        GOSSIP,
        &args(&threads)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    let out = Command::new("timeout")
        .args(["300", "mpirun", "-n", "2", "--oversubscribe", GOSSIP])
        .args(args(&mpi))
        .args(["--transport", "mpi"])
        .envs([
            ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
            ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
            ("OMPI_MCA_mpi_yield_when_idle", "1"),
            ("OMPI_MCA_btl", "self,vader"),
        ])
        .output()
        .expect("mpirun starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("built without MPI support") {
        eprintln!("note: this build has no MPI transport: skipping");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let checksums = |dir: &PathBuf| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        summary["per_worker"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["params_checksum"].clone())
            .collect()
    };
    assert_eq!(checksums(&threads), checksums(&mpi));
    let _ = std::fs::remove_dir_all(&threads);
    let _ = std::fs::remove_dir_all(&mpi);
}

#[test]
fn the_user_algorithm_refuses_bad_keys_in_one_line() {
    for (set, needle) in [
        (
            "algorithm.weight=1.5",
            "algorithm.weight must be in (0, 1], got 1.5",
        ),
        (
            "algorithm.wieght=0.5",
            "unknown field `wieght`, expected `weight` or `decay`",
        ),
    ] {
        let out = run(
            GOSSIP,
            &[
                "train",
                "-q",
                "--steps",
                "5",
                "--set",
                "algorithm.name=\"decaying-gossip\"",
                "--set",
                set,
                "--print-config",
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{set}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// The burn model trains under LSGD to the blobs' Bayes accuracy (≈ 93%), the same way twice.
#[test]
fn the_burn_model_trains_with_lsgd_reproducibly() {
    let bin = env!("CARGO_BIN_EXE_burn_model_lsgd");
    let first = ok(&run(bin, &[]));
    let evals: Vec<&str> = first.lines().filter(|l| l.contains("accuracy")).collect();
    assert_eq!(evals.len(), 3, "{first}");
    let last = evals[2];
    let accuracy: f64 = last
        .rsplit("accuracy ")
        .next()
        .and_then(|a| a.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert!(accuracy > 85.0, "{first}");
    assert_eq!(first, ok(&run(bin, &[])), "a seed fixes the run");
}

#[test]
fn the_simulator_sweep_prints_every_shape() {
    let out = ok(&run(env!("CARGO_BIN_EXE_simulator_sweep"), &["40"]));
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" x ")).collect();
    assert_eq!(rows.len(), 8, "{out}");
    for row in rows {
        assert_eq!(row.matches('%').count(), 4, "four evaluations: {row}");
    }
}
