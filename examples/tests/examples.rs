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

#[test]
fn the_simulator_sweep_prints_every_shape() {
    let out = ok(&run(env!("CARGO_BIN_EXE_simulator_sweep"), &["40"]));
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" x ")).collect();
    assert_eq!(rows.len(), 8, "{out}");
    for row in rows {
        assert_eq!(row.matches('%').count(), 4, "four evaluations: {row}");
    }
}
