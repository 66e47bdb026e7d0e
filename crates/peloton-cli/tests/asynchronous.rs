//! End-to-end runs of the asynchronous algorithms through the binary: `--slowdown`, steps per
//! worker and stopped workers in summary.json, and bad inputs.

mod common;

use common::{fails, peloton, scratch};

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// A simulated asynchronous LSGD run with a 5× slower worker: the slow worker takes fewer of
/// the run's N × steps, and the records carry the total work and leader churn.
#[test]
fn a_slowed_worker_takes_fewer_steps_and_records_say_so() {
    let dir = scratch("slow");
    let out = peloton(&[
        "train",
        "-q",
        "--problem",
        "softmax",
        "--algorithm",
        "async-lsgd",
        "--workers",
        "4",
        "--steps",
        "100",
        "--cluster",
        "ethernet-10g",
        "--slowdown",
        "3=5",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&dir);
    let steps: Vec<u64> = s["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["steps"].as_u64().unwrap())
        .collect();
    assert_eq!(steps.iter().sum::<u64>(), 400, "{steps:?}");
    assert!(steps[3] < steps[0], "{steps:?}");
    assert!(s["leader_changes"].as_u64().is_some());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"work\":"),
        "worker records carry the total work"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stop fault in the simulator: asynchronous EASGD finishes and summary.json names the
/// stopped worker and when it stopped.
#[test]
fn a_stopped_worker_is_reported() {
    let dir = scratch("stop");
    let out = peloton(&[
        "train",
        "-q",
        "--problem",
        "quadratic",
        "--algorithm",
        "async-easgd",
        "--workers",
        "4",
        "--steps",
        "100",
        "--transport",
        "sim",
        "--eval-model",
        "center",
        "--set",
        "transport.cluster.faults=[{worker=2, at=0.5, kind=\"stop\"}]",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&dir);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["stopped"][0]["worker"], 2);
    assert!(s["stopped"][0]["at_seconds"].as_f64().unwrap() >= 0.5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_asynchronous_inputs_end_with_one_clear_line() {
    let q = ["train", "-q", "--steps", "20", "--print-config"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        q.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails(&with(&["--slowdown", "3"]), "expected WORKER=FACTOR");
    fails(&with(&["--slowdown", "1=0.5"]), "expected WORKER=FACTOR");
    fails(
        &with(&["--slowdown", "9=2"]),
        "fault for worker 9 but the run has 4 workers",
    );
    fails(
        &with(&["--algorithm", "ad-psgd", "--workers", "3"]),
        "ad-psgd needs an even number of workers",
    );
    fails(
        &with(&["--algorithm", "async-easgd", "--set", "algorithm.servers=0"]),
        "algorithm.servers must be at least 1",
    );
    fails(
        &with(&["--algorithm", "async-eamsgd"]),
        "async-eamsgd needs a Nesterov-momentum local optimizer",
    );
}
