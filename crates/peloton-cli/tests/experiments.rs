//! Every sweep in `experiments/` runs in miniature (seconds: tiny budgets, and generated data
//! instead of MNIST/CIFAR-10, so no dataset is needed) through `peloton run`, writes its
//! report, and — where it is cheap to check — shows the paper's qualitative claim:
//!
//! * toy-symmetry and matrix completion: LGD's final objective is below EAGD's;
//! * the leader is a stationary point of the original objective at convergence: its
//!   gradient norm is below 1e-4 (exact gradients, so nothing but float rounding remains).
//!
//! Everything is seeded; no assertion depends on time.

mod common;

use common::{fails, peloton, scratch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn experiment(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../experiments")
        .join(format!("{name}.toml"))
}

/// `peloton run experiments/NAME.toml --out DIR --set …`; returns stdout.
fn run_sweep(name: &str, out: &Path, sets: &[&str]) -> String {
    let mut args = vec![
        "run".to_string(),
        experiment(name).display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let result = peloton(&args);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{name}: {stderr}");
    String::from_utf8_lossy(&result.stdout).to_string()
}

/// The last evaluation of every worker: worker → (objective, gradient norm).
fn final_worker_evals(run: &Path) -> BTreeMap<usize, (f64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    let mut last = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "eval" && v["model"] == "worker" {
            let w = v["worker"].as_u64().unwrap() as usize;
            let loss = v["loss"].as_f64().unwrap();
            let grad = v["grad_norm"].as_f64().unwrap_or(f64::NAN);
            last.insert(w, (loss, grad));
        }
    }
    assert!(!last.is_empty(), "{}: no worker evaluations", run.display());
    last
}

fn best(evals: &BTreeMap<usize, (f64, f64)>) -> (f64, f64) {
    evals
        .values()
        .copied()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}

fn assert_files(dir: &Path, files: &[&str]) {
    for f in files {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
}

/// Generated images in place of a real dataset, tiny enough for seconds.
const SYNTHETIC_CIFAR: [&str; 6] = [
    "data.dataset=synthetic",
    "data.synthetic.channels=3",
    "data.synthetic.size=32",
    "data.synthetic.train=512",
    "data.synthetic.test=64",
    "data.batch_size=4",
];

#[test]
fn toy_symmetry_the_leader_ends_at_a_minimum_and_eagd_at_the_saddle() {
    let out = scratch("toy");
    run_sweep("toy-symmetry", &out, &[]);
    let lgd = final_worker_evals(&out.join("lgd"));
    let eagd = final_worker_evals(&out.join("eagd"));
    // Every LGD worker reaches a minimum (f = 0); every EAGD worker sits on the saddle
    // (f = ¼), where the elastic force keeps it.
    for (w, (f, _)) in &lgd {
        assert!(*f < 1e-8, "LGD worker {w}: f = {f}");
    }
    for (w, (f, _)) in &eagd {
        assert!((f - 0.25).abs() < 1e-4, "EAGD worker {w}: f = {f}");
    }
    let (leader_f, leader_grad) = best(&lgd);
    assert!(leader_f < best(&eagd).0);
    assert!(leader_grad < 1e-4, "the leader's ‖∇f‖ = {leader_grad}");
    assert_files(
        &out.join("report"),
        &[
            "summary.md",
            "trajectories.svg",
            "worker_error_vs_steps.svg",
            "best_worker_vs_steps.svg",
        ],
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn matrix_completion_lgd_beats_eagd_and_its_leader_is_stationary() {
    let out = scratch("mc");
    // d = 1000 → 200 and fewer steps: the same shape of problem in a second; the gradient
    // grows with 1/|Ω|, so the step size shrinks with the observed entries.
    run_sweep(
        "matrix-completion",
        &out,
        &[
            "problem.d=200",
            "problem.observed=0.25",
            "optimizer.lr=20",
            "steps=100",
        ],
    );
    for r in [1, 10] {
        let lgd = final_worker_evals(&out.join(format!("lgd-{r}")));
        let eagd = final_worker_evals(&out.join(format!("eagd-{r}")));
        let (l, _) = best(&lgd);
        let (e, _) = best(&eagd);
        assert!(l < e, "rank {r}: LGD best {l} vs EAGD best {e}");
        assert_files(
            &out.join(format!("report-{r}")),
            &["summary.md", "best_worker_vs_steps.svg"],
        );
    }
    // Rank 1 converges within the budget: the leader is a stationary point of f.
    let (f, grad) = best(&final_worker_evals(&out.join("lgd-1")));
    assert!(
        f < 1e-6 && grad < 1e-4,
        "LGD rank 1 leader: f = {f}, ‖∇f‖ = {grad}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn cifar_sweeps_run_in_miniature_on_both_cluster_sizes() {
    for model in ["cnn7", "resnet20"] {
        let out = scratch(model);
        let mut sets = SYNTHETIC_CIFAR.to_vec();
        sets.extend(["time_budget=0.03", "eval.every=2", "log_every=1"]);
        let stdout = run_sweep(&format!("cifar10-{model}"), &out, &sets);
        assert!(stdout.contains("[8/8]"), "{stdout}");
        for w in [4, 16] {
            let report = out.join(format!("report-{w}"));
            assert_files(&report, &["summary.md", "test_error_vs_time.svg"]);
            let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
            for alg in ["lsgd", "easgd", "all-reduce", "sgp"] {
                assert!(summary.contains(&format!("| {alg} |")), "{summary}");
            }
            assert!(summary.contains("| sim |"), "simulated time: {summary}");
        }
        let _ = std::fs::remove_dir_all(out);
    }
}

#[test]
fn the_cifar_full_budget_resolves() {
    // --full is checked, not run: every configuration of the long budget must validate.
    for model in ["cnn7", "resnet20"] {
        let args = [
            "run".to_string(),
            experiment(&format!("cifar10-{model}"))
                .display()
                .to_string(),
            "--full".into(),
            "--dry-run".into(),
        ];
        let result = peloton(&args);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(String::from_utf8_lossy(&result.stdout).contains("full budget"));
    }
}

#[test]
fn leader_identity_moves_between_workers() {
    let out = scratch("leader");
    let mut sets = SYNTHETIC_CIFAR.to_vec();
    sets.extend(["time_budget=0.25", "eval.every=0"]);
    run_sweep("leader-identity", &out, &sets);
    let report = out.join("report");
    assert_files(
        &report,
        &["summary.md", "leader_vs_steps.svg", "leader_counts.svg"],
    );
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(summary.contains("## Leaders"), "{summary}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn sgp_vs_allreduce_plots_time_per_epoch_against_the_node_count() {
    let out = scratch("sgp");
    run_sweep(
        "sgp-vs-allreduce",
        &out,
        &[
            "data.dataset=synthetic",
            "data.synthetic.train=2048",
            "data.synthetic.test=64",
            "model.hidden=[16]",
        ],
    );
    let report = out.join("report");
    assert_files(
        &report,
        &["summary.md", "sweep_time.svg", "sweep_error.svg"],
    );
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(summary.contains("## Against workers"), "{summary}");
    // One epoch of 2048 samples: all-reduce's simulated time per epoch exceeds SGP's at 32
    // nodes (a ring all-reduce sends 2(N−1)/N of the model, SGP one copy to one peer).
    let seconds = |run: &str| {
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(run).join("summary.json")).unwrap(),
        )
        .unwrap();
        s["seconds"].as_f64().unwrap()
    };
    assert!(seconds("all-reduce-32") > seconds("sgp-32"));
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn aldsgd_budget_sweeps_three_algorithms_over_budgets() {
    let out = scratch("aldsgd");
    let stdout = run_sweep(
        "aldsgd-budget",
        &out,
        &[
            "data.dataset=synthetic",
            "data.synthetic.train=512",
            "data.synthetic.test=64",
            "data.batch_size=16",
        ],
    );
    assert!(stdout.contains("[11/11]"), "{stdout}");
    assert!(out.join("al-dsgd-0.1").is_dir() && out.join("matcha-1.0").is_dir());
    assert_files(
        &out.join("report"),
        &["summary.md", "sweep_error.svg", "sweep_time.svg"],
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn lsgd_mnist_runs_three_algorithms_on_threads() {
    let out = scratch("lsgd-mnist");
    run_sweep(
        "lsgd-mnist",
        &out,
        &[
            "data.dataset=synthetic",
            "data.synthetic.train=512",
            "data.synthetic.test=64",
            "epochs=0.5",
            "eval.every=4",
        ],
    );
    let summary = std::fs::read_to_string(out.join("report").join("summary.md")).unwrap();
    for alg in ["lsgd", "easgd", "all-reduce"] {
        assert!(summary.contains(&format!("| {alg} |")), "{summary}");
    }
    let _ = std::fs::remove_dir_all(out);
}

/// Mean bytes sent per worker of a finished run.
fn bytes_sent(run: &Path) -> f64 {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("json");
    let workers = summary["per_worker"].as_array().expect("per_worker");
    workers
        .iter()
        .map(|w| w["bytes_sent"].as_f64().expect("bytes_sent"))
        .sum::<f64>()
        / workers.len() as f64
}

/// experiments/compression.toml in miniature: its 19 runs, the plots against bytes, and the
/// byte ratios its table shows (÷2 for 16-bit floats, about ÷4 for int8, ÷20 and more for
/// top-1% and PowerSGD).
#[test]
fn compression_sweeps_every_kind_and_cuts_the_bytes() {
    let out = scratch("compression");
    let stdout = run_sweep(
        "compression",
        &out,
        &[
            "data.dataset=synthetic",
            "data.synthetic.train=512",
            "data.synthetic.test=64",
            "data.batch_size=4",
            "steps=6",
            "eval.every=3",
            "log_every=3",
        ],
    );
    assert!(stdout.contains("[19/19]"), "{stdout}");
    assert_files(
        &out.join("report"),
        &[
            "summary.md",
            "test_error_vs_time.svg",
            "test_error_vs_bytes.svg",
        ],
    );
    let ratio = |kind: &str| {
        bytes_sent(&out.join("all-reduce-none"))
            / bytes_sent(&out.join(format!("all-reduce-{kind}")))
    };
    for (kind, low, high) in [
        ("fp16", 1.95, 2.05),
        ("bf16", 1.95, 2.05),
        ("int8", 3.5, 4.0),
        ("topk", 20.0, 100.0),
        ("powersgd", 20.0, 100.0),
    ] {
        let r = ratio(kind);
        assert!((low..=high).contains(&r), "{kind}: ÷{r}");
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn sweep_options_fail_with_one_line() {
    let toy = experiment("toy-symmetry").display().to_string();
    fails(&["run", &toy, "--full"], "no [full] section");
    fails(&["run", &toy, "--set", "steps=0"], "steps");
    fails(&["run", &toy, "--set", "nonsense"], "KEY=VALUE");
}

/// experiments/precision.toml in miniature on LibTorch: its four runs (fp32 and bf16 +
/// channels-last, at equal wall clock and at equal steps) train and are reported side by side.
#[cfg(feature = "torch")]
#[test]
fn precision_compares_fp32_with_the_fast_settings_on_libtorch() {
    let out = scratch("precision");
    let mut sets = SYNTHETIC_CIFAR.to_vec();
    sets.extend(["steps=3", "time_budget=120", "eval.every=3", "log_every=1"]);
    let stdout = run_sweep("precision", &out, &sets);
    assert!(stdout.contains("[4/4]"), "{stdout}");
    let report = out.join("report");
    assert_files(&report, &["summary.md", "test_error_vs_time.svg"]);
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    for variant in ["fp32-600s", "fast-600s", "fp32-400-steps", "fast-400-steps"] {
        assert!(summary.contains(variant), "{variant}: {summary}");
    }
    let _ = std::fs::remove_dir_all(out);
}

/// Without LibTorch the sweep is refused with the feature's one-line error.
#[cfg(not(feature = "torch"))]
#[test]
fn precision_needs_the_torch_feature() {
    let args = [
        "run".to_string(),
        experiment("precision").display().to_string(),
        "--dry-run".into(),
    ];
    fails(&args, "needs peloton built with the `torch` feature");
}
