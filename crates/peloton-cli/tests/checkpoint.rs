//! Checkpoints and `peloton train --resume`: a run killed with SIGKILL at any moment and
//! resumed ends with the same parameters, bit for bit, and the same metrics (wall-clock fields
//! aside) as the run that was never interrupted.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fails, peloton, scratch};

/// The per-worker parameter checksums of a finished run.
fn checksums(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(summary["status"], "ok", "{}", run.display());
    summary["per_worker"]
        .as_array()
        .expect("per_worker")
        .iter()
        .map(|w| w["params_checksum"].as_str().expect("checksum").to_string())
        .collect()
}

/// `metrics.jsonl` without its wall-clock fields, which no two runs share.
fn metrics(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    text.lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).expect("json line");
            v.as_object_mut().expect("object").remove("seconds");
            v.to_string()
        })
        .collect()
}

fn ok(args: &[String]) {
    let out = peloton(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The same run twice — once straight through, once interrupted — must agree exactly.
fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(checksums(a), checksums(b), "final parameters differ");
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "metrics have different lengths");
    for (i, (x, y)) in ma.iter().zip(&mb).enumerate() {
        assert_eq!(x, y, "metrics line {} differs", i + 1);
    }
}

/// Resumes the finished run `source` from its last checkpoint in a copy (summary removed, as
/// if it had been killed after that checkpoint), and checks the copy ends the same way.
fn resume_last_checkpoint_matches(source: &Path, copy: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(source)
        .arg(copy)
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::remove_file(copy.join("summary.json")).expect("summary");
    let manifest = std::fs::read_to_string(copy.join("checkpoints/latest.json")).expect("manifest");
    assert!(manifest.contains("\"step\""), "{manifest}");
    ok(&[
        "train".into(),
        "--resume".into(),
        copy.display().to_string(),
        "--quiet".into(),
    ]);
    assert_same_run(source, copy);
}

/// A 57-step softmax run of `algorithm` on 4 workers into `out`, checkpointed every 7 steps,
/// with `flags` and `--set` `settings`.
fn short_run(out: &Path, algorithm: &str, flags: &[&str], settings: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "train",
        "--problem",
        "softmax",
        "--workers",
        "4",
        "--steps",
        "57",
        "--set",
        "log_every=5",
        "--eval-every",
        "20",
        "--quiet",
        "--set",
        "checkpoint.every=7",
        "--algorithm",
        algorithm,
    ]);
    args.extend(strings(flags));
    for s in settings {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args.push("--out".into());
    args.push(out.display().to_string());
    args
}

#[test]
fn every_synchronous_algorithm_resumes_exactly() {
    let dir = scratch("every-algorithm");
    // Every synchronous algorithm of the registry, each of its test configs (the variants
    // each algorithm's file declares carry its state across steps: centers, anchors,
    // push-sum weights, slow momentum), with momentum as the optimizer's state.
    let cases: Vec<_> = common::registry_cases(&dir.join("configs"))
        .into_iter()
        .filter(|c| !c.asynchronous)
        .collect();
    assert!(
        cases.len() >= 20,
        "the built-in synchronous algorithms' test configs"
    );
    for (i, case) in cases.iter().enumerate() {
        let source = dir.join(format!("{i}-{}", case.name));
        let file = case.file.display().to_string();
        ok(&short_run(
            &source,
            case.name,
            &["-c", &file],
            &["optimizer.momentum=0.9"],
        ));
        resume_last_checkpoint_matches(&source, &dir.join(format!("{i}-{}-resumed", case.name)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Compression keeps state across steps — every stream's error-feedback residual, random-k's
/// message count, PowerSGD's warm-started factors — and a resumed run ends exactly like the
/// uninterrupted one, on threads and on the simulator (an asynchronous AD-PSGD worker
/// answering its peers through the layer at the cut).
#[test]
fn compressed_runs_resume_exactly() {
    let dir = scratch("compressed");
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            "all-reduce",
            &["compression.kind=topk", "compression.fraction=0.1"],
            &[],
        ),
        ("all-reduce", &["compression.kind=powersgd"], &[]),
        (
            "d-psgd",
            &["compression.kind=randomk", "compression.fraction=0.2"],
            &[],
        ),
        (
            "lsgd",
            &[
                "compression.kind=int8",
                "compression.block=16",
                "compression.error_feedback=true",
            ],
            &["--transport", "sim"],
        ),
        (
            "ad-psgd",
            &["compression.kind=topk"],
            &["--transport", "sim"],
        ),
    ];
    for (i, (algorithm, settings, flags)) in cases.into_iter().enumerate() {
        let source = dir.join(format!("{i}-{algorithm}"));
        let mut all = vec!["optimizer.momentum=0.9"];
        all.extend(settings);
        ok(&short_run(&source, algorithm, flags, &all));
        let summary = std::fs::read_to_string(source.join("summary.json")).expect("summary");
        let summary: serde_json::Value = serde_json::from_str(&summary).expect("json");
        let ratio = summary["compression"]["ratio"].as_f64().unwrap_or(0.0);
        assert!(ratio > 1.5, "{algorithm} {settings:?}: ratio {ratio}");
        resume_last_checkpoint_matches(&source, &dir.join(format!("{i}-{algorithm}-resumed")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every asynchronous algorithm on the simulator, and synchronous ones whose messages or
/// clocks the simulator carries across the cut, resume exactly: parameters, every metrics
/// line including its virtual time, and the simulator's report.
#[test]
fn simulated_runs_resume_exactly_synchronous_and_asynchronous() {
    let dir = scratch("sim-algorithms");
    // Every algorithm of the registry, each of its test configs.
    let cases = common::registry_cases(&dir.join("configs"));
    assert!(cases.len() >= 27, "the built-in algorithms' test configs");
    // Two nodes, so messages queue on NICs; noisy compute, so clocks drift apart.
    let simulator = [
        "--transport",
        "sim",
        "--set",
        "transport.cluster.workers_per_node=2",
        "--set",
        "transport.cluster.compute.sigma=0.5",
    ];
    for (i, case) in cases.iter().enumerate() {
        let algorithm = case.name;
        let source = dir.join(format!("{i}-{algorithm}"));
        let file = case.file.display().to_string();
        let flags: Vec<&str> = simulator.iter().copied().chain(["-c", &file]).collect();
        ok(&short_run(&source, algorithm, &flags, &[]));
        let copy = dir.join(format!("{i}-{algorithm}-resumed"));
        resume_last_checkpoint_matches(&source, &copy);
        // Virtual times too, and the simulator's totals (the trace restarts at a resume).
        let raw = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert_eq!(
            raw(&source),
            raw(&copy),
            "{algorithm}: virtual times differ"
        );
        let report = |run: &Path| {
            let text = std::fs::read_to_string(run.join("sim.json")).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            for key in ["wall_seconds", "events_per_second", "trace_events"] {
                v.as_object_mut().unwrap().remove(key);
            }
            v
        };
        assert_eq!(
            report(&source),
            report(&copy),
            "{algorithm}: sim.json differs"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 9-step ResNet-20 run on 2 workers with BatchNorm and momentum, checkpointed every 4
/// steps, with `extra` flags, resumed from its last checkpoint in a copy; returns the run
/// folder's config.toml.
fn network_resumes_exactly(name: &str, extra: &[&str]) -> String {
    let dir = scratch(name);
    let source = dir.join("resnet");
    let mut args = strings(&[
        "train",
        "--model",
        "resnet20",
        "--workers",
        "2",
        "--steps",
        "9",
        "--batch-size",
        "8",
        "--quiet",
        "--set",
        "checkpoint.every=4",
        "--set",
        "data.synthetic.size=12",
        "--set",
        "data.synthetic.train=64",
        "--set",
        "data.synthetic.test=16",
        "--set",
        "optimizer.momentum=0.9",
    ]);
    args.extend(strings(extra));
    args.push("--out".into());
    args.push(source.display().to_string());
    ok(&args);
    let config = std::fs::read_to_string(source.join("config.toml")).expect("config");
    resume_last_checkpoint_matches(&source, &dir.join("resumed"));
    let _ = std::fs::remove_dir_all(&dir);
    config
}

#[test]
fn a_network_with_batch_norm_and_momentum_resumes_exactly() {
    network_resumes_exactly("network", &[]);
}

/// The same on LibTorch in bf16 with channels-last activations: the flat buffer, the
/// optimizer state and the BatchNorm statistics are fp32 and checkpointed as in fp32, so the
/// resumed run ends bit for bit like the uninterrupted one.
#[cfg(feature = "torch")]
#[test]
fn a_bf16_channels_last_run_on_libtorch_resumes_exactly() {
    let config = network_resumes_exactly(
        "network-bf16",
        &[
            "--device",
            "torch",
            "--set",
            "model.precision=\"bf16\"",
            "--set",
            "model.memory_format=\"channels-last\"",
        ],
    );
    assert!(config.contains("precision = \"bf16\""), "{config}");
}

/// The acceptance test: SIGKILL at 20 random points of a run, resuming each time; the end is
/// the uninterrupted run's, bit for bit (threads transport, a synchronous algorithm).
#[test]
fn killed_twenty_times_and_resumed_ends_bit_for_bit_like_the_uninterrupted_run() {
    killed_twenty_times_and_resumed(
        "sigkill",
        &["--algorithm", "lsgd", "--set", "optimizer.momentum=0.9"],
    );
}

/// The same for an asynchronous algorithm on the simulator: the cuts, the simulator's clocks,
/// queues and counters, and a passive AD-PSGD worker answering its peers at the cut.
#[test]
fn asynchronous_run_on_the_simulator_killed_twenty_times_ends_bit_for_bit() {
    killed_twenty_times_and_resumed(
        "sigkill-async",
        &[
            "--algorithm",
            "ad-psgd",
            "--transport",
            "sim",
            "--set",
            "optimizer.momentum=0.9",
            "--set",
            "transport.cluster.compute.sigma=0.3",
        ],
    );
}

/// Runs a 4-worker, 3000-step softmax run with `settings` once straight through, then again
/// killed with SIGKILL at 20 random points and resumed each time, and compares the two.
fn killed_twenty_times_and_resumed(name: &str, settings: &[&str]) {
    let dir = scratch(name);
    let run = |out: &Path| {
        let mut args = strings(&[
            "train",
            "--problem",
            "softmax",
            "--workers",
            "4",
            "--steps",
            "3000",
            "--set",
            "log_every=50",
            "--quiet",
            "--set",
            "checkpoint.every=10",
        ]);
        args.extend(strings(settings));
        args.push("--out".into());
        args.push(out.display().to_string());
        args
    };
    let reference = dir.join("reference");
    let start = Instant::now();
    ok(&run(&reference));
    let full = start.elapsed();

    // Kill points uniform in [0, T/25] of the uninterrupted run's time T: each attempt
    // progresses less than T/25, so 20 kills never reach the end, and a kill may land
    // anywhere: during start-up, a step, a checkpoint write or a commit.
    let interrupted = dir.join("interrupted");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let startup = {
        let t = Instant::now();
        let _ = Command::new(env!("CARGO_BIN_EXE_peloton"))
            .arg("--version")
            .output();
        t.elapsed()
    };
    let mut kills = 0;
    let mut first = true;
    let mut steps_seen = Vec::new();
    while kills < 20 {
        // A kill that landed after the run wrote its summary leaves nothing to resume.
        if interrupted.join("summary.json").exists() {
            break;
        }
        let args = if first {
            // What a start-up killed before the config left (a temporary file at most).
            let _ = std::fs::remove_dir_all(&interrupted);
            run(&interrupted)
        } else {
            strings(&[
                "train",
                "--resume",
                &interrupted.display().to_string(),
                "--quiet",
            ])
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_peloton"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // After the process's start-up (half a second for a LibTorch build, which loads its
        // libraries), so that kills land in the run and not all before it.
        let delay = startup + full.saturating_sub(startup).mul_f64(next() / 25.0);
        std::thread::sleep(delay);
        match child.try_wait().expect("wait") {
            Some(status) => {
                // Finished before the kill: only possible on a machine much faster than the
                // reference run was; the end must still be right.
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                assert!(status.success(), "attempt failed: {err}");
                break;
            }
            None => {
                child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
                child.wait().expect("reaped");
                kills += 1;
            }
        }
        // A kill during start-up, before the run folder has its config (a LibTorch build
        // spends half a second loading its libraries), leaves nothing to resume: start again.
        first = !interrupted.join("config.toml").exists();
        if let Ok(m) = std::fs::read_to_string(interrupted.join("checkpoints/latest.json")) {
            let v: serde_json::Value = serde_json::from_str(&m).expect("manifest is whole JSON");
            steps_seen.push(v["step"].as_u64().expect("step"));
        }
    }
    // Progress was made and kept across kills.
    assert!(
        steps_seen.windows(2).all(|w| w[0] <= w[1]),
        "{steps_seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while !interrupted.join("summary.json").exists() {
        assert!(Instant::now() < deadline, "the resumed run did not finish");
        if interrupted.join("config.toml").exists() {
            ok(&strings(&[
                "train",
                "--resume",
                &interrupted.display().to_string(),
                "--quiet",
            ]));
        } else {
            let _ = std::fs::remove_dir_all(&interrupted);
            ok(&run(&interrupted));
        }
    }
    println!(
        "{kills} kills; committed checkpoint steps seen after each: {steps_seen:?}; uninterrupted run {:.2} s",
        full.as_secs_f64()
    );
    assert_same_run(&reference, &interrupted);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_what_it_cannot_continue() {
    let dir = scratch("refusals");
    let base = |out: &Path, every: &str| {
        let mut a = strings(&[
            "train",
            "--problem",
            "softmax",
            "--workers",
            "2",
            "--steps",
            "30",
            "--quiet",
            "--set",
        ]);
        a.push(format!("checkpoint.every={every}"));
        a.push("--out".into());
        a.push(out.display().to_string());
        a
    };
    let resume = |run: &Path| strings(&["train", "--resume", &run.display().to_string()]);

    // A finished run.
    let done = dir.join("done");
    ok(&base(&done, "10"));
    fails(&resume(&done), "finished already");

    // A run without checkpoints.
    let plain = dir.join("plain");
    ok(&base(&plain, "0"));
    std::fs::remove_file(plain.join("summary.json")).unwrap();
    fails(&resume(&plain), "without checkpoints");

    // Not a run folder.
    fails(&resume(&dir.join("nowhere")), "needs a run folder");

    // A corrupted worker file: the checksum names it.
    let corrupt = dir.join("corrupt");
    ok(&base(&corrupt, "10"));
    std::fs::remove_file(corrupt.join("summary.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(corrupt.join("checkpoints/latest.json")).unwrap(),
    )
    .unwrap();
    let step = manifest["step"].as_u64().unwrap();
    let file = corrupt.join(format!("checkpoints/step-{step:010}/worker-1.ckpt"));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let metrics_before = std::fs::read(corrupt.join("metrics.jsonl")).unwrap();
    fails(&resume(&corrupt), "checksum mismatch");
    // Refusing touched nothing the run had written.
    assert_eq!(
        std::fs::read(corrupt.join("metrics.jsonl")).unwrap(),
        metrics_before
    );
    assert!(file.exists());

    // Damaged metrics before the checkpoint's length: refused before a byte is cut.
    let damaged = dir.join("damaged");
    ok(&base(&damaged, "10"));
    std::fs::remove_file(damaged.join("summary.json")).unwrap();
    let metrics = damaged.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let first = text.lines().next().unwrap().len();
    let garbage = "#".repeat(first) + &text[first..];
    std::fs::write(&metrics, &garbage).unwrap();
    fails(&resume(&damaged), "metrics.jsonl line 1 is not JSON");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), garbage);
    // A manifest whose length ends inside a record.
    std::fs::write(&metrics, &text).unwrap();
    let latest = damaged.join("checkpoints/latest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    m["metrics_bytes"] = serde_json::json!(first as u64 + 5);
    std::fs::write(&latest, m.to_string()).unwrap();
    fails(&resume(&damaged), "end inside a record");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), text);

    // A checkpoint from another config: config.toml edited after the fact.
    let edited = dir.join("edited");
    ok(&base(&edited, "10"));
    std::fs::remove_file(edited.join("summary.json")).unwrap();
    let config = std::fs::read_to_string(edited.join("config.toml")).unwrap();
    std::fs::write(
        edited.join("config.toml"),
        config.replace("seed = 0", "seed = 1"),
    )
    .unwrap();
    fails(&resume(&edited), "changed since the checkpoint");

    // Another run's worker files dropped into this run's checkpoint.
    let other = dir.join("other");
    let mut args = base(&other, "10");
    args.extend(strings(&["--seed", "5"]));
    ok(&args);
    let mine = dir.join("mine");
    ok(&base(&mine, "10"));
    std::fs::remove_file(mine.join("summary.json")).unwrap();
    let step_dir = format!("checkpoints/step-{:010}", 20);
    std::fs::copy(
        other.join(&step_dir).join("worker-0.ckpt"),
        mine.join(&step_dir).join("worker-0.ckpt"),
    )
    .unwrap();
    fails(&resume(&mine), "another configuration");

    // Asynchronous checkpoints need the simulator (threads cannot reproduce the interleaving).
    fails(
        &strings(&[
            "train",
            "--problem",
            "softmax",
            "--algorithm",
            "async-easgd",
            "--set",
            "checkpoint.every=5",
        ]),
        "need the simulator",
    );
    // --resume takes the folder's own config (clap refuses the mix, with its usage text).
    let out = peloton(&strings(&["train", "--resume", "x", "--steps", "5"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records reach `metrics.jsonl` as they are made: a run killed with SIGKILL after its first
/// log point has that record on disk (a buffered writer kept everything until the end).
#[test]
fn a_killed_run_keeps_its_records_up_to_the_kill() {
    for (name, extra) in [("threads", None), ("sim", Some("ethernet-10g"))] {
        let dir = scratch(&format!("streamed-{name}"));
        let mut args = strings(&[
            "train",
            "--steps",
            "100",
            "--set",
            "log_every=25",
            "--quiet",
            "--out",
        ]);
        args.push(dir.display().to_string());
        if let Some(cluster) = extra {
            args.extend(strings(&["--cluster", cluster]));
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_peloton"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let metrics = dir.join("metrics.jsonl");
        let start = Instant::now();
        // The steps of the worker records on disk when the first one shows up.
        let first_seen = loop {
            let text = std::fs::read_to_string(&metrics).unwrap_or_default();
            let steps: Vec<u64> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["type"] == "worker")
                .filter_map(|v| v["step"].as_u64())
                .collect();
            if !steps.is_empty() {
                break steps;
            }
            if dir.join("summary.json").exists() || start.elapsed() > Duration::from_secs(300) {
                break Vec::new();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        // Records come every 25 steps; a writer that holds them back shows them all at once,
        // at the end (under its 8 KiB buffer: 16 records).
        let last = first_seen.iter().copied().max();
        assert!(
            matches!(last, Some(step) if step < 100),
            "{name}: the records reached the file only at the end (steps seen first: {first_seen:?})"
        );
        let text = std::fs::read_to_string(&metrics).expect("metrics.jsonl");
        assert!(text.ends_with('\n'), "{name}: a record was cut");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON lines");
            assert!(v["type"].is_string());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
