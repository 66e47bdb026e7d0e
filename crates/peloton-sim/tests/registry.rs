//! Registry-driven suites: every registered algorithm — built-in or added later — is checked
//! by being registered, on each of its test configs ([`Registration::test_configs`]: the
//! default and the variants its file declares), with 4 workers:
//!
//! * **termination and convergence** on a noisy quadratic, on the simulator with one worker
//!   three times slower than the others, and on threads;
//! * **transports agree**: a synchronous algorithm ends with the same parameters, losses and
//!   byte counts on threads and on the simulator;
//! * **determinism**: the same seed gives the same events and parameters on the simulator, bit
//!   for bit (asynchronous algorithms included), and another seed gives other numbers.
//!
//! Exact resume and MPI ≡ threads iterate the registry too (crates/peloton-cli/tests/checkpoint.rs
//! and mpi.rs).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::equal_speed;
use peloton_core::algorithms::registry::registered;
use peloton_core::algorithms::{AlgorithmConfig, Registration};
use peloton_core::external::{Attach, ExternalLoops, LoopHandle, Next, Reply, Request};
use peloton_core::learner::{LearnerContext, LearnerFactory};
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{run_threads_with_faults, EvalModel, Event, RunConfig, RunReport};
use peloton_problems::{ProblemConfig, QuadraticConfig};
use peloton_sim::{run_sim, ClusterConfig, ComputeModel};

const WORKERS: usize = 4;

/// Every registered algorithm's test configs, each with a local optimizer it accepts: plain
/// SGD, or Nesterov momentum where the algorithm asks for it (EAMSGD).
fn cases() -> Vec<(String, AlgorithmConfig, OptimizerConfig)> {
    let sgd = OptimizerConfig {
        lr: 0.1,
        ..Default::default()
    };
    let nesterov = OptimizerConfig {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    };
    let mut cases = Vec::new();
    for entry in registered() {
        let configs = entry.test_configs();
        assert!(!configs.is_empty(), "{} has no test config", entry.name);
        for (i, algorithm) in configs.into_iter().enumerate() {
            let optimizer = [&sgd, &nesterov]
                .into_iter()
                .find(|o| algorithm.validate(WORKERS, 1, o).is_ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{} test config {i} is invalid for {WORKERS} workers: {}",
                        entry.name,
                        algorithm.validate(WORKERS, 1, &sgd).unwrap_err()
                    )
                })
                .clone();
            cases.push((format!("{} #{i}", entry.name), algorithm, optimizer));
        }
    }
    cases
}

fn quadratic() -> ProblemConfig {
    ProblemConfig::Quadratic(QuadraticConfig {
        dim: 10,
        noise: 0.2,
        ..Default::default()
    })
}

fn run_config(algorithm: &AlgorithmConfig, optimizer: &OptimizerConfig, seed: u64) -> RunConfig {
    RunConfig {
        workers: WORKERS,
        seed,
        steps: Some(300),
        log_every: 50,
        eval_every: 100,
        eval_model: EvalModel::Workers,
        consensus: false,
        optimizer: optimizer.clone(),
        algorithm: algorithm.clone(),
        ..Default::default()
    }
}

/// Worker 3 computes three times slower than the others; compute times jitter.
fn straggler() -> ClusterConfig {
    ClusterConfig {
        workers_per_node: 2,
        compute: ComputeModel {
            seconds: 0.01,
            speeds: vec![1.0, 1.0, 1.0, 3.0],
            sigma: 0.2,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn simulate(config: &RunConfig) -> (RunReport, Vec<String>) {
    let mut events = Vec::new();
    let (report, _, _) = run_sim(config, &straggler(), &quadratic(), &mut |e: &Event| {
        events.push(format!("{e:?}"))
    })
    .unwrap_or_else(|e| panic!("{}: {e}", config.algorithm.name()));
    (report, events)
}

/// Every worker's own model ends close to the optimum: the excess objective f(x) − f*
/// starts around 5 and constant-step SGD with σ = 0.2 hovers around 1e-3 of it.
fn assert_converged(label: &str, transport: &str, report: &RunReport) {
    assert_eq!(report.final_evals.len(), WORKERS, "{label} on {transport}");
    for e in &report.final_evals {
        assert!(
            e.eval.loss < 0.05,
            "{label} on {transport}: worker {:?} ends at f − f* = {}",
            e.worker,
            e.eval.loss
        );
    }
}

/// `config` on threads. An asynchronous algorithm's workers run as machines of equal speed
/// ([`equal_speed`]): else the OS may give one thread thousands of steps in a time slice while
/// another keeps its initial model and pulls its peers back toward it at the end.
fn on_threads(label: &str, config: &RunConfig) -> RunReport {
    let faults = if config.algorithm.is_async() {
        equal_speed(config.workers)
    } else {
        Vec::new()
    };
    run_threads_with_faults(config, &faults, &quadratic(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{label} on threads: {e}"))
}

#[test]
fn every_registered_algorithm_terminates_and_converges_on_every_transport() {
    for (label, algorithm, optimizer) in cases() {
        let config = run_config(&algorithm, &optimizer, 1);
        let (sim, _) = simulate(&config);
        assert_converged(&label, "the simulator", &sim);
        let threads = on_threads(&label, &config);
        if !algorithm.is_async() {
            assert_converged(&label, "threads", &threads);
            // Time does not change what a synchronous algorithm computes.
            for (a, b) in threads.workers.iter().zip(&sim.workers) {
                assert_eq!(a.params, b.params, "{label}: worker {}", a.rank);
                assert_eq!(a.losses, b.losses, "{label}: worker {}", a.rank);
                assert_eq!(a.stats, b.stats, "{label}: worker {} byte counts", a.rank);
            }
        } else {
            // Asynchronous: the whole budget of N × steps is spent, however it splits.
            for (transport, report) in [("the simulator", &sim), ("threads", &threads)] {
                let steps: u64 = report.workers.iter().map(|w| w.steps).sum();
                assert_eq!(steps, WORKERS as u64 * 300, "{label} on {transport}");
            }
            assert_converged(&label, "threads", &threads);
        }
    }
}

#[test]
fn every_registered_algorithm_is_reproducible_bit_for_bit() {
    for (label, algorithm, optimizer) in cases() {
        let (a, events_a) = simulate(&run_config(&algorithm, &optimizer, 7));
        let (b, events_b) = simulate(&run_config(&algorithm, &optimizer, 7));
        assert_eq!(events_a, events_b, "{label}: events differ");
        for (x, y) in a.workers.iter().zip(&b.workers) {
            assert_eq!(x.params, y.params, "{label}: worker {}", x.rank);
        }
        let (c, _) = simulate(&run_config(&algorithm, &optimizer, 8));
        assert_ne!(
            a.workers[0].params, c.workers[0].params,
            "{label}: another seed, the same numbers"
        );
    }
}

#[test]
fn every_builtin_algorithm_has_a_test_config_and_keys_it_lists() {
    let names: Vec<&str> = registered().iter().map(|e: &Registration| e.name).collect();
    assert_eq!(names.len(), 17, "{names:?}");
    assert!(
        cases().len() >= 16 + 7,
        "the variants the algorithms declare"
    );
}

/// The compression layer under every registered algorithm: fp16 on every message role (a
/// 10-value model: blockwise 8-bit's per-block header would outweigh what it saves). Each algorithm still terminates and converges on both transports, a synchronous one
/// ends with the same numbers and byte counts on both, and every algorithm with model-sized
/// messages sends fewer bytes than without compression.
#[test]
fn every_registered_algorithm_runs_under_the_compression_layer() {
    let fp16: peloton_compression::CompressionConfig = toml::from_str("kind = \"fp16\"").unwrap();
    for (label, algorithm, optimizer) in cases() {
        let plain = run_config(&algorithm, &optimizer, 1);
        let config = RunConfig {
            compression: fp16.clone(),
            ..plain.clone()
        };
        let (sim, _) = simulate(&config);
        let (uncompressed, _) = simulate(&plain);
        let compressed: u64 = sim
            .workers
            .iter()
            .map(|w| w.compression.expect("the layer's counters").operations)
            .sum();
        // CHOCO compresses its own messages; independent SGD sends nothing. (Asynchronous
        // EASGD's parameter-server pushes are compressed, its pulls exact.)
        let exempt = ["independent", "choco-sgd"];
        if exempt.contains(&algorithm.name()) {
            assert_eq!(compressed, 0, "{label}");
        } else {
            assert!(compressed > 0, "{label}: nothing was compressed");
            let bytes = |r: &RunReport| r.workers.iter().map(|w| w.stats.bytes_sent).sum::<u64>();
            assert!(
                bytes(&sim) < bytes(&uncompressed),
                "{label}: {} bytes compressed, {} without",
                bytes(&sim),
                bytes(&uncompressed)
            );
        }
        let threads = on_threads(&label, &config);
        if algorithm.is_async() {
            let best = |r: &RunReport| {
                r.final_evals
                    .iter()
                    .map(|e| e.eval.loss)
                    .fold(f64::INFINITY, f64::min)
            };
            // Who ends best depends on how the work split (by virtual time in the simulator,
            // by the OS on threads, with every worker at equal speed: see `on_threads`).
            for (transport, report) in [("the simulator", &sim), ("threads", &threads)] {
                assert!(
                    best(report) < 0.05,
                    "{label}: f − f* = {} on {transport}",
                    best(report)
                );
            }
        } else {
            assert_converged(&label, "the simulator, compressed", &sim);
            for (a, b) in threads.workers.iter().zip(&sim.workers) {
                assert_eq!(a.params, b.params, "{label}: worker {}", a.rank);
                assert_eq!(a.stats, b.stats, "{label}: worker {} byte counts", a.rank);
                assert_eq!(a.compression, b.compression, "{label}: worker {}", a.rank);
            }
        }
    }
}

/// A training loop outside peloton whose model keeps memory of its own (a GPU's, in real
/// use): it runs the quadratic's learner on its private copy and steps its own optimizer, and
/// peloton's buffers see the model only through the copies the runner asks for.
fn mirrored_loop(
    handle: LoopHandle,
    config: &RunConfig,
    copies: &AtomicU64,
) -> peloton_core::Result<()> {
    let mut learner = quadratic().build(LearnerContext {
        rank: handle.rank(),
        workers: config.workers,
        seed: config.seed,
    })?;
    let layout = learner.layout().clone();
    let mut x = vec![0.0; layout.len()];
    learner.init_params(&mut x);
    let mut g = vec![0.0; layout.len()];
    let mut optimizer = config.optimizer.init(&layout);
    let buffers = handle.attach(Attach {
        layout,
        initial: x.clone(),
        owns_optimizer: true,
        steps_per_epoch: learner.steps_per_epoch(),
        state: Vec::new(),
        mirrored: true,
    })?;
    let mut other = vec![0.0; x.len()];
    while let Next::Request(request) = handle.next()? {
        let reply = match request {
            Request::Gradient { .. } => Reply::Loss(learner.loss_and_grad(&x, &mut g)?),
            Request::OptimizerStep { lr } => {
                optimizer.step(&mut x, &mut g, lr);
                Reply::Done
            }
            Request::ClearOptimizer => {
                optimizer.clear();
                Reply::Done
            }
            Request::Evaluate { own: true } => Reply::Evaluation(learner.evaluate(&x)?),
            Request::Evaluate { own: false } => {
                buffers.eval.read(&mut other);
                Reply::Evaluation(learner.evaluate(&other)?)
            }
            Request::ToHost(which) => {
                copies.fetch_add(1, Ordering::Relaxed);
                if which.params {
                    buffers.params.write(&x);
                }
                if which.grad {
                    buffers.grad.write(&g);
                }
                Reply::Done
            }
            Request::FromHost(which) => {
                copies.fetch_add(1, Ordering::Relaxed);
                if which.params {
                    buffers.params.read(&mut x);
                }
                if which.grad {
                    buffers.grad.read(&mut g);
                }
                Reply::Done
            }
            Request::SaveState | Request::LoadState => {
                return Err(peloton_core::Error::Config("no checkpoints here".into()))
            }
        };
        handle.reply(reply)?;
    }
    Ok(())
}

/// Every registered algorithm tells the runner which buffers its hooks touch at each step
/// (`Algorithm::touches`), so that a model on a GPU is copied only there. Saying too little
/// would hand a hook stale values: with a loop that keeps its model to itself between the
/// copies, every algorithm must give the same run, bit for bit, as the learner inside
/// peloton — on the simulator, so asynchronous algorithms too, with the consensus distance,
/// evaluations and records reading the model along the way.
#[test]
fn every_registered_algorithm_gives_the_same_run_with_a_mirrored_model() {
    for (label, algorithm, optimizer) in cases() {
        let config = RunConfig {
            consensus: true,
            steps: Some(60),
            log_every: 10,
            eval_every: 20,
            ..run_config(&algorithm, &optimizer, 3)
        };
        let (inside, _) = simulate(&config);
        let loops = ExternalLoops::new(0..WORKERS);
        let copies = AtomicU64::new(0);
        let outside = std::thread::scope(|s| {
            for r in 0..WORKERS {
                let (handle, config, copies) = (loops.handle(r).unwrap(), &config, &copies);
                s.spawn(move || {
                    if let Err(e) = mirrored_loop(handle.clone(), config, copies) {
                        handle.leave(Some(e.to_string()));
                    }
                });
            }
            let report = run_sim(&config, &straggler(), &loops, &mut |_| {});
            loops.close();
            report
        })
        .unwrap_or_else(|e| panic!("{label}: {e}"))
        .0;
        for (a, b) in outside.workers.iter().zip(&inside.workers) {
            assert_eq!(a.params, b.params, "{label}: worker {}", a.rank);
            assert_eq!(a.losses, b.losses, "{label}: worker {}", a.rank);
        }
        let evals = |r: &RunReport| -> Vec<_> {
            r.final_evals
                .iter()
                .map(|e| (e.step, e.worker, e.eval.clone()))
                .collect()
        };
        assert_eq!(evals(&outside), evals(&inside), "{label}");
        assert!(
            copies.load(Ordering::Relaxed) > 0,
            "{label}: no copy at all"
        );
    }
}
