//! End-to-end tests of the `peloton` binary: real runs, and bad inputs that must end with one
//! clear line on stderr and a non-zero exit, never a panic, never a damaged file.

mod common;

use common::{fails, peloton, scratch};
use std::path::PathBuf;

#[test]
fn bad_inputs_end_with_one_clear_line() {
    let q = ["train", "-q", "--steps", "20", "--print-config"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        q.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails(
        &with(&["--set", "algorithm.lambda=-0.5"]),
        "algorithm.lambda must be in [0, 1], got -0.5",
    );
    fails(
        &with(&["--set", "algorithm.tau=0"]),
        "algorithm.tau must be at least 1",
    );
    fails(
        &with(&["--set", "algorithm.lambda_global=0.1"]),
        "algorithm.lambda_global needs more than one group",
    );
    fails(&with(&["--algorithm", "lsgdd"]), "unknown variant `lsgdd`");
    fails(
        &with(&["--set", "algorithm.lamda=0.1"]),
        "unknown field `lamda`",
    );
    fails(&with(&["--set", "wrokers=3"]), "unknown field `wrokers`");
    fails(
        &with(&["--workers", "6", "--set", "algorithm.group_size=4"]),
        "not divisible by algorithm.group_size (4)",
    );
    fails(&with(&["--workers", "0"]), "workers must be at least 1");
    fails(&with(&["--lr", "-1"]), "optimizer.lr must be positive");
    fails(
        &with(&["--eval-model", "center"]),
        "needs an algorithm with a center",
    );
    fails(&with(&["--algorithm", "eamsgd"]), "Nesterov");
    fails(
        &with(&[
            "--problem",
            "softmax",
            "--workers",
            "8",
            "--set",
            "problem.train_samples=4",
        ]),
        "some shards would be empty",
    );
    fails(
        &["train", "-c", "/nonexistent/peloton.toml"],
        "cannot read config file /nonexistent/peloton.toml",
    );
    fails(
        &["bench", "--models", "lenet", "--device", "gpu"],
        "unknown device 'gpu'",
    );
    #[cfg(not(feature = "torch"))]
    fails(
        &[
            "bench",
            "--models",
            "lenet",
            "--device",
            "torch",
            "--repeats",
            "1",
        ],
        "needs peloton built with the `torch` feature",
    );
}

#[test]
fn a_bad_config_file_names_the_line() {
    let dir = scratch("badfile");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("exp.toml");
    std::fs::write(
        &file,
        "workers = 4\n\n[optimizer]\nlr = 0.1\nmomentun = 0.9\n",
    )
    .unwrap();
    let line = fails(
        &["train", "-c", file.to_str().unwrap()],
        "line 5: unknown field `momentun`",
    );
    assert!(line.contains("exp.toml"));
}

#[test]
fn a_diverging_problem_stops_the_run_with_a_message() {
    let dir = scratch("diverge");
    fails(
        &[
            "train",
            "-q",
            "--problem",
            "quadratic",
            "--lr",
            "50",
            "--steps",
            "300",
            "--out",
            dir.to_str().unwrap(),
        ],
        "diverged at step",
    );
    // The run folder records the failure.
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(
        summary.contains("\"status\": \"failed\"") && summary.contains("diverged"),
        "{summary}"
    );
}

#[test]
fn a_run_writes_its_folder_and_never_overwrites_one() {
    let dir = scratch("run");
    let out = peloton(&[
        "train",
        "-q",
        "--workers",
        "3",
        "--steps",
        "60",
        "--eval-every",
        "30",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(
        config.contains("workers = 3") && config.contains("name = \"lsgd\""),
        "{config}"
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    // start + 2 log points (every 50 and the last step, 60; step 30 is an eval point) …
    let workers = metrics
        .lines()
        .filter(|l| l.contains("\"type\":\"worker\""))
        .count();
    let evals = metrics
        .lines()
        .filter(|l| l.contains("\"type\":\"eval\""))
        .count();
    assert_eq!((workers, evals), (3 * 3, 2), "{metrics}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "ok");
    assert!(summary["final_evals"][0]["accuracy"].as_f64().unwrap() > 0.2);

    // The same folder again is refused, and the first run's files are untouched.
    fails(
        &[
            "train",
            "-q",
            "--steps",
            "10",
            "--out",
            dir.to_str().unwrap(),
        ],
        "already exists and is not empty",
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        config
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        metrics
    );
}

#[test]
fn the_same_seed_gives_the_same_metrics_file() {
    let strip = |text: String| -> Vec<String> {
        // Wall-clock fields aside.
        text.lines()
            .map(|l| l.split(",\"seconds\"").next().unwrap().to_string())
            .collect()
    };
    let mut files = Vec::new();
    for k in 0..2 {
        let dir = scratch(&format!("seed{k}"));
        let out = peloton(&[
            "train",
            "-q",
            "--workers",
            "4",
            "--steps",
            "80",
            "--set",
            "algorithm.group_size=2",
            "--seed",
            "7",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        files.push(strip(
            std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        ));
    }
    assert_eq!(files[0], files[1]);
}

#[test]
fn help_and_list_describe_everything() {
    let help = String::from_utf8(peloton(&["train", "--help"]).stdout).unwrap();
    for flag in [
        "--config",
        "--algorithm",
        "--workers",
        "--set",
        "--out",
        "--seed",
        "--eval-model",
    ] {
        assert!(help.contains(flag), "train --help lacks {flag}");
    }
    let list = String::from_utf8(peloton(&["list"]).stdout).unwrap();
    for name in [
        "lsgd",
        "easgd",
        "eamsgd",
        "all-reduce",
        "local-sgd",
        "independent",
        "quadratic",
        "softmax",
        "double-well",
        "matrix-completion",
        "powersgd",
        "randomk",
    ] {
        assert!(list.contains(name), "list lacks {name}");
    }
}

#[test]
fn broken_dataset_files_are_one_line_errors_and_leave_no_run_folder() {
    let dir = scratch("mnist-broken");
    std::fs::create_dir_all(&dir).unwrap();
    // A truncated images file: the header promises 5 images of 28×28, 100 bytes follow.
    let mut images = Vec::new();
    for word in [0x0803u32, 5, 28, 28] {
        images.extend_from_slice(&word.to_be_bytes());
    }
    images.extend_from_slice(&[0u8; 100]);
    std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
    let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 5];
    labels.extend_from_slice(&[1, 2, 3, 4, 5]);
    std::fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    let out = scratch("mnist-broken-run");
    let d = dir.display().to_string();
    let o = out.display().to_string();
    let line = fails(
        &[
            "train",
            "-q",
            "--dataset",
            "mnist",
            "--data-dir",
            &d,
            "-o",
            &o,
        ],
        "truncated",
    );
    assert!(line.contains("train-images-idx3-ubyte"), "{line}");
    assert!(!out.exists(), "a failed load must not leave a run folder");
    fails(
        &["train", "-q", "--dataset", "mnist", "--print-config"],
        "needs data.dir",
    );
    fails(
        &[
            "train",
            "-q",
            "--model",
            "vgg16",
            "--dataset",
            "synthetic",
            "-o",
            &o,
        ],
        "vgg16 takes 32×32",
    );
    fails(
        &["train", "-q", "--model", "resnet21", "--print-config"],
        "unknown variant `resnet21`",
    );
    #[cfg(not(feature = "torch"))]
    fails(
        &["train", "-q", "--device", "torch", "--print-config"],
        "needs peloton built with the `torch` feature",
    );
    // burn's LibTorch device, retired for peloton-torch's.
    fails(
        &["train", "-q", "--device", "tch", "--print-config"],
        "unknown variant `tch`, expected one of `flex`, `torch`, `torch-cuda`",
    );
    fails(
        &[
            "train",
            "-q",
            "--problem",
            "quadratic",
            "--model",
            "mlp",
            "--print-config",
        ],
        "not both",
    );
}

/// The decentralized algorithms run a real network (LeNet-5 on synthetic images) on 8 workers
/// from a TOML file, each with its own schedule; decentralized metrics reach the run folder.
#[test]
fn decentralized_algorithms_train_a_network_from_toml() {
    let sections = [
        ("sgp", "name = \"sgp\"\nschedule = { kind = \"exponential\", peers = 1 }"),
        (
            "d-psgd",
            "name = \"d-psgd\"\nschedule = { kind = \"bipartite\" }\nvariant = \"combine-while-computing\"",
        ),
        ("matcha", "name = \"matcha\"\nbudget = 0.5\ngraph = { kind = \"erdos-renyi\", p = 0.5 }"),
        ("al-dsgd", "name = \"al-dsgd\""),
    ];
    for (name, algorithm) in sections {
        let dir = scratch(&format!("decentralized-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("experiment.toml");
        std::fs::write(
            &file,
            format!(
                "workers = 8\nsteps = 6\nlog_every = 3\n\n[eval]\nmodel = \"workers\"\n\n\
                 [model]\nname = \"lenet\"\n\n[data]\nbatch_size = 8\ntest_samples = 40\n\n\
                 [algorithm]\n{algorithm}\n"
            ),
        )
        .unwrap();
        let run = dir.join("run");
        let out = peloton(&[
            "train",
            "-q",
            "-c",
            file.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["status"], "ok", "{name}");
        assert_eq!(
            summary["final_evals"].as_array().unwrap().len(),
            8,
            "{name}"
        );
        let links = summary["per_worker"][0]["links"].as_array().unwrap();
        assert!(!links.is_empty(), "{name}: worker 0 reports no links");
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"peers\":"), "{name}: no peer counts");
        assert!(
            metrics.contains("\"consensus\":"),
            "{name}: no consensus distance"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn topology_show_prints_the_matcha_schedule() {
    let out = peloton(&[
        "topology", "show", "--graph", "er", "--n", "8", "--seed", "0", "--budget", "0.5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "matchings (",
        "p = ",
        "alpha = ",
        "spectral gap",
        "round 0:",
    ] {
        assert!(
            stdout.contains(needle),
            "'{needle}' missing from:\n{stdout}"
        );
    }
    // The probabilities respect the budget: Σp ≤ 0.5·M.
    let probabilities: Vec<f64> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split("p = ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(!probabilities.is_empty());
    let sum: f64 = probabilities.iter().sum();
    assert!(sum <= 0.5 * probabilities.len() as f64 + 1e-3, "{sum}");
}

#[test]
fn bad_topologies_are_one_line_errors() {
    fails(
        &["topology", "show", "--graph", "hypercube", "--n", "6"],
        "power-of-two",
    );
    fails(
        &["topology", "show", "--graph", "er", "--budget", "1.5"],
        "budget",
    );
    fails(
        &[
            "train",
            "-q",
            "--print-config",
            "--algorithm",
            "d-psgd",
            "--workers",
            "7",
            "--set",
            "algorithm.schedule.kind=bipartite",
        ],
        "even",
    );
    fails(
        &[
            "train",
            "-q",
            "--print-config",
            "--algorithm",
            "matcha",
            "--set",
            "algorithm.graph.kind=moebius",
        ],
        "moebius",
    );
}

/// A simulated run writes its cost report and trace; being virtual, even its times repeat,
/// so two runs give byte-identical metrics and traces.
#[test]
fn simulated_runs_repeat_exactly_and_write_a_trace() {
    let run = |name: &str| -> PathBuf {
        let dir = scratch(name);
        let out = peloton(&[
            "train",
            "-q",
            "--problem",
            "softmax",
            "--algorithm",
            "sgp",
            "--workers",
            "8",
            "--steps",
            "40",
            "--cluster",
            "ethernet-1g",
            "--set",
            "transport.cluster.compute.sigma=0.2",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    };
    let (a, b) = (run("sim-a"), run("sim-b"));
    for file in ["metrics.jsonl", "trace.json"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs"
        );
    }
    let sim: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("sim.json")).unwrap()).unwrap();
    assert!(sim["simulated_seconds"].as_f64().unwrap() > 40.0 * 0.05 * 0.5);
    assert_eq!(sim["workers"].as_array().unwrap().len(), 8);
    assert!(sim["messages"].as_u64().unwrap() >= 8 * 40);
    let config = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(
        config.contains("kind = \"sim\"") && config.contains("bandwidth_gbps = 1.0"),
        "{config}"
    );
    for dir in [a, b] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn bad_clusters_are_one_line_errors() {
    let base = [
        "train",
        "-q",
        "--print-config",
        "--problem",
        "softmax",
        "--workers",
        "8",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails(&with(&["--cluster", "no-such-cluster"]), "neither a preset");
    fails(
        &with(&["--transport", "sim", "--set", "transport.cluster.nodes=3"]),
        "does not match the 8 workers",
    );
    fails(
        &with(&[
            "--transport",
            "sim",
            "--set",
            "transport.cluster.inter.bandwidth_gbps=-1",
        ]),
        "bandwidth_gbps",
    );
    fails(
        &with(&[
            "--transport",
            "sim",
            "--set",
            "transport.cluster.compute.tflops=10",
        ]),
        "flops_per_step and tflops",
    );
    fails(&with(&["--transport", "carrier-pigeon"]), "carrier-pigeon");
    fails(
        &[
            "train",
            "-q",
            "--problem",
            "softmax",
            "--steps",
            "5",
            "--calibrate",
            "3",
        ],
        "only applies to the simulator",
    );
}

/// `--calibrate` measures real steps and writes the measured seconds into the run's config.
#[test]
fn calibration_writes_the_measured_step_time() {
    let dir = scratch("calibrate");
    let out = peloton(&[
        "train",
        "--problem",
        "softmax",
        "--workers",
        "2",
        "--steps",
        "10",
        "--transport",
        "sim",
        "--calibrate",
        "3",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("calibrated:"));
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let seconds: f64 = config
        .lines()
        .skip_while(|l| !l.contains("[transport.cluster.compute]"))
        .find_map(|l| l.strip_prefix("seconds = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds > 0.0 && seconds != 0.05, "{seconds}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `peloton run` trains every combination of a sweep's grid, reports per group, and resumes:
/// a second invocation keeps the finished runs.
#[test]
fn a_sweep_runs_its_grid_reports_and_resumes() {
    let dir = scratch("sweep");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("base.toml"),
        "workers = 4\nsteps = 20\nlog_every = 10\n[eval]\nevery = 10\n[problem]\nkind = \"softmax\"\n",
    )
    .unwrap();
    let out = dir.join("runs");
    let sweep = dir.join("sweep.toml");
    std::fs::write(
        &sweep,
        format!(
            "base = \"base.toml\"\nout = {:?}\n[grid]\ncluster = [\"ethernet-1g\", \"infiniband-100g\"]\n\"algorithm.name\" = [\"lsgd\", \"sgp\"]\n[report]\ngroup_by = \"cluster\"\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let first = peloton(&["run", sweep.to_str().unwrap()]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("[4/4] sgp-infiniband-100g"), "{stdout}");
    for run in [
        "lsgd-ethernet-1g",
        "lsgd-infiniband-100g",
        "sgp-ethernet-1g",
        "sgp-infiniband-100g",
    ] {
        assert!(out.join(run).join("sim.json").exists(), "{run}");
    }
    for report in ["report-ethernet-1g", "report-infiniband-100g"] {
        let summary = std::fs::read_to_string(out.join(report).join("summary.md")).unwrap();
        assert!(
            summary.contains("| lsgd |") && summary.contains("| sgp |"),
            "{summary}"
        );
    }
    let second = peloton(&["run", sweep.to_str().unwrap()]);
    assert!(second.status.success());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout)
            .matches("already done")
            .count(),
        4
    );
    std::fs::write(
        &sweep,
        "base = \"base.toml\"\n[grid]\n\"algorithm.nam\" = [\"lsgd\"]\n",
    )
    .unwrap();
    fails(&["run", sweep.to_str().unwrap()], "algorithm");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the LibTorch build, `--device torch` trains end to end through the CLI: the run folder,
/// its metrics and summary, as on `flex`.
#[cfg(feature = "torch")]
#[test]
fn a_run_on_libtorch_trains_and_writes_its_run_folder() {
    let dir = scratch("torch-run");
    let out = peloton(&[
        "train",
        "-q",
        "--device",
        "torch",
        "--workers",
        "2",
        "--steps",
        "60",
        "--eval-every",
        "30",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "ok", "{summary}");
    let accuracy = summary["final_evals"][0]["accuracy"].as_f64().unwrap();
    // LeNet-5 on generated images, 60 steps of batch 32 on 2 workers: well above chance (10%).
    assert!(accuracy > 0.3, "accuracy {accuracy}");
    let _ = std::fs::remove_dir_all(&dir);
}
