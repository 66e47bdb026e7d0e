//! End-to-end tests of `--transport mpi` under `mpirun` (feature `mpi`). Skipped, with a note,
//! when `mpirun` is not installed; `.ci/run` installs Open MPI so that they run in CI.
//!
//! Every `mpirun` runs under `timeout`, so a hang fails the test instead of stalling CI.
#![cfg(feature = "mpi")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The MPI jobs of this binary's tests share 2 cores. The asynchronous convergence test depends
/// on how the OS schedules its ranks, so it runs alone (write lock) while the others, whose
/// results do not depend on timing, share the machine (read locks). Seen without this: with
/// all seven tests' ranks on 2 cores, a 2-rank async-easgd run ended at 0.56 (bound 0.1) in 2
/// of ~10 runs of the binary; alone it never did (0 of 5).
static JOBS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_machine() -> std::sync::RwLockReadGuard<'static, ()> {
    JOBS.read().unwrap_or_else(|e| e.into_inner())
}

/// The environment every Open MPI run here needs: root allowed, shared memory only, ranks
/// that yield instead of spinning when oversubscribed.
const MPI_ENV: [(&str, &str); 4] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_mpi_yield_when_idle", "1"),
    ("OMPI_MCA_btl", "self,vader"),
];

fn have_mpirun() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: mpirun not found: skipping the MPI test (apt-get install openmpi-bin libopenmpi-dev)");
    }
    found
}

fn peloton() -> &'static str {
    env!("CARGO_BIN_EXE_peloton")
}

/// `timeout 300 mpirun -n N [--oversubscribe] peloton ARGS...` (oversubscribed when there are
/// more ranks than cores: Open MPI refuses that otherwise).
fn mpirun(n: usize, args: &[String]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "mpirun", "-n", &n.to_string()]);
    if n > std::thread::available_parallelism().map_or(1, |c| c.get()) {
        cmd.arg("--oversubscribe");
    }
    cmd.arg(peloton())
        .args(args)
        .envs(MPI_ENV)
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peloton-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--problem",
        "softmax",
        "--steps",
        "40",
        "--quiet",
        "--set",
        "log_every=10",
        "--eval-every",
        "20",
        "--seed",
        "3",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn summary(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// metrics.jsonl without wall-clock fields (the only fields allowed to differ).
fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// What must be identical between a threads run and an MPI run: the final parameters of
/// every worker (checksums of their bits), the centers, the final evaluations, the traffic
/// and every metric record.
fn fingerprint(dir: &Path) -> (Vec<Value>, Value, Vec<Value>) {
    let s = summary(dir);
    assert_eq!(s["status"], "ok", "{}: {s}", dir.display());
    let mut evals = s["final_evals"].clone();
    for e in evals.as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("seconds");
    }
    (
        s["per_worker"].as_array().unwrap().clone(),
        evals,
        metrics(dir),
    )
}

/// Every synchronous algorithm, and a few under the compression layer: a 4-rank MPI run ends
/// bit-identical to a 4-thread run.
#[test]
fn mpi_runs_match_threads_bit_for_bit() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("match");
    // Every synchronous algorithm of the registry, each of its test configs, evaluated on
    // its center where it keeps one, else in turn on the average, the leader and every worker.
    let cases: Vec<(String, Vec<String>)> = common::registry_cases(&dir.join("configs"))
        .into_iter()
        .filter(|c| !c.asynchronous)
        .enumerate()
        .map(|(k, c)| {
            let model = if c.has_center {
                "center"
            } else {
                ["average", "leader", "workers"][k % 3]
            };
            let extra = vec![
                "-c".to_string(),
                c.file.display().to_string(),
                "--eval-model".to_string(),
                model.to_string(),
            ];
            (c.label.replace(" #", "-"), extra)
        })
        .collect();
    assert!(
        cases.len() >= 20,
        "the built-in synchronous algorithms' test configs"
    );
    // The compression layer: the same compressed bytes and the same bits on MPI as on threads
    // (per_worker holds both byte counts).
    let compressed: [(&str, &str, &[&str]); 4] = [
        ("all-reduce", "int8", &["compression.block=64"]),
        ("all-reduce", "powersgd", &[]),
        ("lsgd", "bf16", &[]),
        ("sgp", "topk", &["compression.fraction=0.1"]),
    ];
    let mut cases = cases;
    for (algorithm, kind, settings) in compressed {
        let mut extra = vec![
            "--algorithm".to_string(),
            algorithm.to_string(),
            "--set".to_string(),
            format!("compression.kind={kind}"),
        ];
        for s in settings {
            extra.extend(["--set".to_string(), s.to_string()]);
        }
        cases.push((format!("{algorithm}-{kind}"), extra));
    }
    let mut failures = Vec::new();
    for (name, extra) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let extra = extra.as_slice();
        let threads_dir = dir.join(format!("{name}-threads"));
        let mpi_dir = dir.join(format!("{name}-mpi"));
        let out = Command::new(peloton())
            .args(train_args(&threads_dir, extra))
            .args(["--workers", "4"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} threads: {}", text(&out));
        let out = mpirun(4, &train_args(&mpi_dir, extra))
            .args(["--transport", "mpi"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} mpi: {}", text(&out));
        let (t, m) = (fingerprint(&threads_dir), fingerprint(&mpi_dir));
        if t != m {
            failures.push(format!(
                "{name}: threads {:?} vs mpi {:?}",
                t.0.iter()
                    .map(|w| w["params_checksum"].clone())
                    .collect::<Vec<_>>(),
                m.0.iter()
                    .map(|w| w["params_checksum"].clone())
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Two ranks without oversubscription; the MPI run folder says "mpi" and reads like a threads
/// run (records of both workers, in step order).
#[test]
fn two_ranks_write_one_run_folder() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("two");
    let out = mpirun(2, &train_args(&dir.join("run"), &["--algorithm", "lsgd"]))
        .args(["--transport", "mpi"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = dir.join("run");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("kind = \"mpi\"") && config.contains("workers = 2"),
        "{config}"
    );
    let s = summary(&run);
    assert_eq!(s["workers"], 2);
    assert_eq!(s["per_worker"].as_array().unwrap().len(), 2);
    let workers: Vec<u64> = metrics(&run)
        .iter()
        .filter(|r| r["type"] == "worker")
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, [0, 1, 0, 1, 0, 1, 0, 1]);
    // The ranks' streamed records go once metrics.jsonl holds them all.
    assert!(!run.join("ranks").exists());
}

/// A rank that panics mid-run ends the whole job within seconds, with a line naming it; also
/// in an asynchronous run, where rank 0's service thread must not keep the job alive.
#[test]
fn a_panicking_rank_ends_the_job_quickly() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("panic");
    for algorithm in [&[][..], &["--algorithm", "async-easgd"][..]] {
        let mut extra = vec!["--set", "steps=1000000"];
        extra.extend_from_slice(algorithm);
        let args = train_args(&dir.join("run"), &extra);
        let mut child = mpirun(4, &args)
            .args(["--transport", "mpi"])
            .env("PELOTON_MPI_TEST_PANIC", "2:20")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = None;
        let mut lines = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if seen.is_none() && line.contains("rank 2 aborts the MPI job") {
                seen = Some(Instant::now());
            }
            lines.push(line);
        }
        let status = child.wait().unwrap();
        let after = seen.map(|t| t.elapsed());
        let all = format!("{algorithm:?}: {}", lines.join("\n"));
        assert!(!status.success(), "{all}");
        assert!(all.contains("injected by PELOTON_MPI_TEST_PANIC"), "{all}");
        let after = after.unwrap_or_else(|| panic!("no line naming rank 2: {all}"));
        // MPI_Abort takes well under a second here; 5 s is the acceptance bound.
        assert!(
            after < Duration::from_secs(5),
            "ended {after:?} after the panic: {all}"
        );
        // The job died before rank 0 wrote metrics.jsonl; each rank streamed its own records
        // (rank 2 logged step 10 before its panic at step 20).
        let streamed = dir.join("run").join("ranks").join("rank-2.jsonl");
        let streamed = std::fs::read_to_string(&streamed).unwrap_or_default();
        assert!(
            streamed
                .lines()
                .any(|l| l.starts_with("{\"type\":\"worker\",\"step\":10,")),
            "{algorithm:?}: rank 2's records were not streamed: {streamed:?}"
        );
        let _ = std::fs::remove_dir_all(dir.join("run"));
    }
}

/// A rank that arrives 60 s late at a collective, with `watchdog_seconds = 1`, ends the job
/// within seconds: the ranks waiting for it give up with the watchdog's line naming it.
#[test]
fn the_watchdog_ends_a_job_whose_rank_does_not_arrive() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("watchdog");
    let args = train_args(
        &dir.join("run"),
        &["--set", "steps=1000000", "--set", "watchdog_seconds=1"],
    );
    let start = Instant::now();
    let out = mpirun(3, &args)
        .args(["--transport", "mpi"])
        .env("PELOTON_MPI_TEST_SLEEP", "2:20:60")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.lines()
            .any(|l| l.contains("aborts the MPI job: watchdog:")
                && l.contains("for worker(s) 2 that did not arrive")),
        "{all}"
    );
    // The late rank sleeps 60 s: ending well before proves nobody waited for it.
    assert!(took < Duration::from_secs(40), "took {took:?}: {all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ranks that disagree on the experiment (here: the seed, through mpirun's per-rank command
/// lines) stop cleanly with the same error on every rank instead of training or hanging.
#[test]
fn ranks_that_disagree_stop_cleanly() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("disagree");
    let run = dir.join("run");
    let base = train_args(&run, &[]);
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "mpirun", "-n", "1", peloton()])
        .args(&base)
        .args([
            "--transport",
            "mpi",
            "--set",
            "seed=1",
            ":",
            "-n",
            "1",
            peloton(),
        ])
        .args(&base)
        .args(["--transport", "mpi", "--set", "seed=2"])
        .envs(MPI_ENV)
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for rank in 0..2 {
        assert!(
            all.contains(&format!(
                "error: rank {rank}: transport: workers disagree on the experiment"
            )),
            "rank {rank}: {all}"
        );
    }
    assert!(
        !all.contains("panicked") && !all.contains("MPI_ABORT"),
        "{all}"
    );
    assert_eq!(summary(&run)["status"], "failed");
}

/// A rank that cannot start (here: an invalid setting on rank 1 only) stops every rank
/// cleanly: its own error on that rank, a pointer to it on the others.
#[test]
fn a_rank_that_cannot_start_stops_every_rank() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("cannot-start");
    let run = dir.join("run");
    let base = train_args(&run, &[]);
    let out = Command::new("timeout")
        .args(["120", "mpirun", "-n", "1", peloton()])
        .args(&base)
        .args(["--transport", "mpi", ":", "-n", "1", peloton()])
        .args(&base)
        .args(["--transport", "mpi", "--set", "steps=0"])
        .envs(MPI_ENV)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("rank 1: invalid config: steps must be at least 1"),
        "{all}"
    );
    assert!(
        all.contains("rank 0: transport: rank 1 could not start"),
        "{all}"
    );
    assert!(!all.contains("MPI_ABORT"), "{all}");
    assert_eq!(summary(&run)["status"], "failed");
}

/// Every asynchronous algorithm runs to completion on MPI (rank 0's service thread serving the
/// counters and the parameter server), with 2 ranks and with 4 oversubscribed ones, spends
/// exactly the run's budget of N × steps, and converges like the threads runs of
/// `peloton-sim/tests/asynchronous.rs` (same problems, steps and bounds: quadratic below 0.1,
/// softmax below 0.9, judged on EASGD's center and on the best worker's own model). Runs are
/// not bit-identical to threads runs: how the work splits follows the OS scheduler.
#[test]
fn asynchronous_algorithms_run_and_converge_on_mpi() {
    let _machine = JOBS.write().unwrap_or_else(|e| e.into_inner());
    if !have_mpirun() {
        return;
    }
    let easgd = [
        "--algorithm",
        "async-easgd",
        "--lr",
        "0.1",
        "--set",
        "algorithm.tau=2",
        "--eval-model",
        "center",
    ];
    let easgd_sharded = [&easgd[..], &["--set", "algorithm.servers=2"]].concat();
    // Its pushes compressed: they travel to rank 0's service as int8 words, which the service
    // decodes before adding. With error feedback: without it, a worker near the optimum pushes
    // nearly the same small difference every time, and its rounding error, the same every time
    // too, adds up in the center (0.32 instead of 0.001 once).
    let easgd_int8 = [
        &easgd[..],
        &[
            "--set",
            "compression.kind=int8",
            "--set",
            "compression.block=16",
            "--set",
            "compression.error_feedback=true",
        ],
    ]
    .concat();
    let algorithms: &[(&str, &[&str])] = &[
        (
            "async-lsgd",
            &[
                "--algorithm",
                "async-lsgd",
                "--lr",
                "0.1",
                "--set",
                "algorithm.tau=4",
                "--set",
                "algorithm.lambda=0.2",
                "--eval-model",
                "workers",
            ],
        ),
        ("async-easgd", &easgd_sharded),
        ("async-easgd-int8", &easgd_int8),
        (
            "async-eamsgd",
            &[
                "--algorithm",
                "async-eamsgd",
                "--set",
                "algorithm.tau=2",
                "--lr",
                "0.02",
                "--set",
                "optimizer.momentum=0.9",
                "--set",
                "optimizer.nesterov=true",
                "--eval-model",
                "center",
            ],
        ),
        (
            "ad-psgd",
            &[
                "--algorithm",
                "ad-psgd",
                "--lr",
                "0.1",
                "--eval-model",
                "workers",
            ],
        ),
    ];
    let problems: &[(&str, &[&str], u64, f64)] = &[
        (
            "quadratic",
            &["--set", "problem.dim=10", "--set", "problem.noise=0.2"],
            1500,
            0.1,
        ),
        (
            "softmax",
            &[
                "--set",
                "problem.classes=4",
                "--set",
                "problem.features=6",
                "--set",
                "problem.train_samples=400",
                "--set",
                "problem.test_samples=200",
                "--set",
                "problem.batch_size=8",
            ],
            1000,
            0.9,
        ),
    ];
    let dir = scratch("async");
    let mut failures = Vec::new();
    for n in [2usize, 4] {
        for (name, algorithm) in algorithms {
            for (problem, settings, steps, bound) in problems {
                let case = format!("{n} ranks, {name}, {problem}");
                let run = dir.join(format!("{name}-{problem}-{n}"));
                let mut args: Vec<String> = [
                    "train",
                    "--quiet",
                    "--transport",
                    "mpi",
                    "--problem",
                    problem,
                    "--steps",
                    &steps.to_string(),
                    "--seed",
                    "11",
                    "--set",
                    "log_every=100",
                    "--out",
                    run.to_str().unwrap(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(
                    settings
                        .iter()
                        .chain(algorithm.iter())
                        .map(|s| s.to_string()),
                );
                let started = Instant::now();
                let out = mpirun(n, &args).output().unwrap();
                if !out.status.success() {
                    failures.push(format!("{case}: {}", text(&out)));
                    continue;
                }
                let s = summary(&run);
                let workers = s["per_worker"].as_array().unwrap();
                let total: u64 = workers.iter().map(|w| w["steps"].as_u64().unwrap()).sum();
                let best = s["final_evals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["loss"].as_f64().unwrap())
                    .fold(f64::INFINITY, f64::min);
                eprintln!(
                    "{case}: best final loss {best:.4}, steps per worker {:?}, {:.1} s",
                    workers
                        .iter()
                        .map(|w| w["steps"].as_u64().unwrap())
                        .collect::<Vec<_>>(),
                    started.elapsed().as_secs_f64()
                );
                // Every rank reaches the counters through the same service thread, so every
                // rank does part of the work (rank 0 once took all of it, see services.rs).
                let idle = workers.iter().any(|w| w["steps"].as_u64() == Some(0));
                if s["status"] != "ok" || workers.len() != n || total != n as u64 * steps || idle {
                    failures.push(format!(
                        "{case}: status {}, {} workers, {total} steps (budget {}), a worker without steps: {idle}",
                        s["status"],
                        workers.len(),
                        n as u64 * steps
                    ));
                }
                // NaN (a diverged run) fails too.
                if best.is_nan() || best >= *bound {
                    failures.push(format!("{case}: ends at {best}, bound {bound}"));
                }
                if name.ends_with("int8") {
                    // Per push: the quadratic's 10 values as 10 bytes plus 8 for their one
                    // block, 5 words against 10 (÷2); the softmax's 28: 11 words (÷2.5).
                    let ratio = s["compression"]["ratio"].as_f64().unwrap_or(0.0);
                    if ratio < 1.6 {
                        failures.push(format!("{case}: compression ratio {ratio}"));
                    }
                }
                if name.starts_with("async-ea") {
                    // Every worker read the same final center (taken after every push).
                    let centers: Vec<&Value> =
                        workers.iter().map(|w| &w["center_checksum"]).collect();
                    if centers.iter().any(|c| *c != centers[0] || c.is_null()) {
                        failures.push(format!("{case}: centers {centers:?}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A synchronous MPI run whose job dies (a rank panics: `MPI_Abort`) and is resumed with
/// `mpirun … peloton train --resume RUN_DIR` ends like the run that never died: every
/// worker's parameters, the final evaluations, the traffic and every metrics line. Each rank
/// writes its own checkpoint file and its events so far (rank 0 writes the metrics only at
/// the end); rank 0 commits a checkpoint once every rank's files are there.
#[test]
fn an_mpi_run_whose_job_died_resumes_exactly() {
    let _machine = shared_machine();
    if !have_mpirun() {
        return;
    }
    let dir = scratch("resume");
    let extra = [
        "--transport",
        "mpi",
        "--algorithm",
        "lsgd",
        "--set",
        "optimizer.momentum=0.9",
        "--set",
        "checkpoint.every=7",
    ];
    let reference = dir.join("reference");
    let out = mpirun(4, &train_args(&reference, &extra)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let interrupted = dir.join("interrupted");
    let out = mpirun(4, &train_args(&interrupted, &extra))
        .env("PELOTON_MPI_TEST_PANIC", "2:30")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the job should have died: {}",
        text(&out)
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(interrupted.join("checkpoints/latest.json"))
            .unwrap_or_else(|e| panic!("no checkpoint was committed ({e}): {}", text(&out))),
    )
    .unwrap();
    let step = manifest["step"].as_u64().unwrap();
    assert!((7..=28).contains(&step), "{manifest}");
    assert!(!interrupted.join("summary.json").exists() || summary(&interrupted)["status"] != "ok");

    let resume: Vec<String> = [
        "train",
        "--resume",
        &interrupted.display().to_string(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = mpirun(4, &resume).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fingerprint(&reference),
        fingerprint(&interrupted),
        "resumed from step {step}"
    );
    println!("the job died after step 30 was reached; resumed from step {step}");
    let _ = std::fs::remove_dir_all(&dir);
}
