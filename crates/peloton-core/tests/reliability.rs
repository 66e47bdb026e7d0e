//! Reliability on the threads transport: divergence handling (a NaN/∞ worker stops the run or
//! is reset to the leader, and never leads), the watchdog (a hang becomes an error naming the
//! workers that did not arrive), and termination of every algorithm on every topology for
//! every worker count from 1 to 17.

mod common;

use std::time::{Duration, Instant};

use common::*;
use peloton_core::algorithms::AlgorithmConfig;
use peloton_core::checkpoint::StateDict;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext, LearnerFactory};
use peloton_core::runner::{run_threads, DivergencePolicy, Event, RunConfig};
use peloton_core::transport::{threads, Communicator, ReduceOp};
use peloton_core::{Error, Result};
use peloton_problems::{ProblemConfig, QuadraticConfig};

/// A quadratic learner whose worker `rank` returns a poisoned mini-batch at its `at`-th
/// gradient (counted from 0): a NaN loss, or a finite loss with an ∞ gradient entry.
struct Poisoned {
    inner: Box<dyn Learner>,
    rank: usize,
    poisoned: Vec<(usize, u64)>,
    gradient_only: bool,
    calls: u64,
}

impl Learner for Poisoned {
    fn layout(&self) -> &ParamLayout {
        self.inner.layout()
    }
    fn init_params(&mut self, params: &mut [f32]) {
        self.inner.init_params(params)
    }
    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        let loss = self.inner.loss_and_grad(params, grad)?;
        let call = self.calls;
        self.calls += 1;
        if self.poisoned.contains(&(self.rank, call)) {
            if self.gradient_only {
                grad[0] = f32::INFINITY;
                return Ok(loss);
            }
            return Ok(f64::NAN);
        }
        Ok(loss)
    }
    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        self.inner.evaluate(params)
    }
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.inner.save_state(state)
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.inner.load_state(state)
    }
}

struct PoisonedFactory {
    problem: ProblemConfig,
    /// (worker, call) pairs that return a poisoned batch.
    poisoned: Vec<(usize, u64)>,
    gradient_only: bool,
}

impl LearnerFactory for PoisonedFactory {
    fn build(&self, ctx: LearnerContext) -> Result<Box<dyn Learner>> {
        Ok(Box::new(Poisoned {
            inner: self.problem.build(ctx)?,
            rank: ctx.rank,
            poisoned: self.poisoned.clone(),
            gradient_only: self.gradient_only,
            calls: 0,
        }))
    }
}

fn quadratic() -> ProblemConfig {
    ProblemConfig::Quadratic(QuadraticConfig {
        dim: 6,
        ..Default::default()
    })
}

fn algorithm(toml_text: &str) -> AlgorithmConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}"))
}

fn poisoned_run(
    policy: DivergencePolicy,
    algo: &str,
    poisoned: Vec<(usize, u64)>,
    gradient_only: bool,
) -> (Result<peloton_core::runner::RunReport>, Vec<Event>) {
    let mut cfg = config(4, 40, algorithm(algo), sgd(0.05));
    cfg.log_every = 1;
    cfg.leader_window = 3;
    cfg.on_divergence = policy;
    let factory = PoisonedFactory {
        problem: quadratic(),
        poisoned,
        gradient_only,
    };
    let mut events = Vec::new();
    let report = run_threads(&cfg, &factory, &mut |e| events.push(e.clone()));
    (report, events)
}

#[test]
fn a_diverged_worker_stops_the_run_by_default_naming_it() {
    for gradient_only in [false, true] {
        let (report, _) = poisoned_run(
            DivergencePolicy::Stop,
            "name = \"lsgd\"",
            vec![(2, 10)],
            gradient_only,
        );
        match report {
            Err(Error::Diverged { worker, step, .. }) => {
                assert_eq!((worker, step), (2, 10), "gradient_only = {gradient_only}")
            }
            other => panic!("expected a divergence error, got {other:?}"),
        }
    }
}

#[test]
fn reset_to_leader_puts_the_diverged_worker_on_the_leader_and_it_never_leads() {
    for (algo, gradient_only) in [
        ("name = \"lsgd\"\ntau = 4", false),
        ("name = \"lsgd\"\ntau = 4", true),
        ("name = \"all-reduce\"", false),
        ("name = \"easgd\"", true),
        ("name = \"d-psgd\"", false),
    ] {
        let (report, events) = poisoned_run(
            DivergencePolicy::ResetToLeader,
            algo,
            vec![(2, 10), (1, 25)],
            gradient_only,
        );
        let report = report.unwrap_or_else(|e| panic!("{algo}: {e}"));
        let resets: Vec<(u64, usize, usize)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Diverged {
                    step,
                    worker,
                    reset_to,
                    ..
                } => Some((*step, *worker, *reset_to)),
                _ => None,
            })
            .collect();
        assert_eq!(resets.len(), 2, "{algo}: {resets:?}");
        assert_eq!((resets[0].0, resets[0].1), (11, 2), "{algo}");
        assert_eq!((resets[1].0, resets[1].1), (26, 1), "{algo}");
        assert!(
            resets.iter().all(|r| r.1 != r.2),
            "reset to itself: {resets:?}"
        );
        // The NaN never reached anyone's parameters (all-reduce would spread it to all).
        for w in &report.workers {
            assert!(
                w.params.iter().all(|x| x.is_finite()),
                "{algo}: worker {}",
                w.rank
            );
        }
        // LSGD: the leader elected right after a reset is never the reset worker (its metric
        // is NaN for K = 3 steps).
        if algo.contains("lsgd") {
            for e in &events {
                if let Event::Worker(r) = e {
                    for &(at, worker, _) in &resets {
                        if r.step >= at && r.step < at + 3 {
                            assert_ne!(r.leader, Some(worker), "{algo}: step {}", r.step);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn when_every_worker_diverges_there_is_nobody_to_reset_to() {
    let (report, _) = poisoned_run(
        DivergencePolicy::ResetToLeader,
        "name = \"lsgd\"",
        (0..4).map(|w| (w, 7)).collect(),
        false,
    );
    assert!(
        matches!(report, Err(Error::Diverged { step: 7, .. })),
        "{report:?}"
    );
}

#[test]
fn reset_to_leader_is_refused_for_asynchronous_algorithms() {
    let mut cfg = config(4, 10, algorithm("name = \"async-easgd\""), sgd(0.1));
    cfg.on_divergence = DivergencePolicy::ResetToLeader;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("needs a synchronous algorithm"), "{err}");
}

#[test]
fn the_watchdog_names_the_worker_missing_from_a_collective() {
    let comms = threads::world_with_options(3, &[], Some(Duration::from_millis(200)));
    let start = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    if c.rank() == 2 {
                        // Hung (or just far too slow) before the collective.
                        std::thread::sleep(Duration::from_millis(800));
                    }
                    c.all_reduce(&mut [1.0f32; 4], ReduceOp::Sum)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(start.elapsed() < Duration::from_secs(30));
    let timeouts: Vec<&Error> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| matches!(e, Error::Timeout { .. }))
        .collect();
    assert!(!timeouts.is_empty(), "{results:?}");
    for e in timeouts {
        match e {
            Error::Timeout { missing, .. } => assert_eq!(missing, &vec![2]),
            _ => unreachable!(),
        }
        assert!(
            e.to_string().contains("worker(s) 2 that did not arrive"),
            "{e}"
        );
    }
    // The late worker finds the run aborted instead of waiting for ever.
    assert!(
        matches!(results[2], Err(Error::Aborted { .. })),
        "{:?}",
        results[2]
    );
}

#[test]
fn the_watchdog_names_the_sender_a_receive_waits_for() {
    let comms = threads::world_with_options(2, &[], Some(Duration::from_millis(100)));
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                s.spawn(move || {
                    if c.rank() == 0 {
                        // Worker 1 never sends: a protocol bug that would hang for ever.
                        c.recv(1, 7, &mut [0.0f32; 3])
                    } else {
                        std::thread::sleep(Duration::from_millis(400));
                        Ok(())
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    match &results[0] {
        Err(e @ Error::Timeout { missing, .. }) => {
            assert_eq!(missing, &vec![1]);
            assert!(e.to_string().contains("a receive (tag 7)"), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// Every algorithm's TOML variants over the topologies it takes.
fn algorithm_variants() -> Vec<String> {
    let graphs = [
        "{ kind = \"ring\" }",
        "{ kind = \"torus\" }",
        "{ kind = \"hypercube\" }",
        "{ kind = \"complete\" }",
        "{ kind = \"star\" }",
        "{ kind = \"exponential\" }",
        "{ kind = \"erdos-renyi\", p = 0.5 }",
        "{ kind = \"regular\", degree = 3 }",
    ];
    let mut schedules: Vec<String> = Vec::new();
    for g in graphs {
        schedules.push(format!("{{ kind = \"static\", graph = {g} }}"));
        schedules.push(format!("{{ kind = \"matchings\", graph = {g} }}"));
        schedules.push(format!(
            "{{ kind = \"matcha\", graph = {g}, budget = 0.5 }}"
        ));
    }
    schedules.push("{ kind = \"exponential\" }".into());
    schedules.push("{ kind = \"bipartite\" }".into());
    schedules.push(
        "{ kind = \"rotation\", copies = 2, base = { kind = \"matcha\", graph = { kind = \"ring\" } } }"
            .into(),
    );
    let mut v: Vec<String> = [
        "name = \"independent\"",
        "name = \"all-reduce\"",
        "name = \"local-sgd\"\nperiod = 3",
        "name = \"local-sgd\"\nperiod = 2\nwarmup_steps = 3\ngroup_size = 2",
        "name = \"easgd\"",
        "name = \"eamsgd\"",
        "name = \"lsgd\"",
        "name = \"lsgd\"\ngroup_size = 2",
        "name = \"lsgd\"\ngroup_size = 3\ntau_global = 4",
        "name = \"layered-sgd\"\ngroup_size = 2",
        "name = \"slowmo\"",
        "name = \"async-lsgd\"",
        "name = \"async-easgd\"\nservers = 2",
        "name = \"async-eamsgd\"",
        "name = \"ad-psgd\"",
        "name = \"sgp\"\nschedule = { kind = \"exponential\" }\noverlap = true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for sched in &schedules {
        v.push(format!("name = \"d-psgd\"\nschedule = {sched}"));
        v.push(format!("name = \"sgp\"\nschedule = {sched}"));
        v.push(format!("name = \"al-dsgd\"\nschedule = {sched}"));
    }
    for g in graphs {
        v.push(format!("name = \"matcha\"\ngraph = {g}"));
    }
    v
}

/// No deadlock anywhere: every algorithm × topology × N ∈ 1..=17 either runs to the end or is
/// refused up front with a config error — never a hang (the watchdog turns one into an error,
/// which fails this test) and never any other error.
#[test]
fn every_algorithm_on_every_topology_terminates_for_1_to_17_workers() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig {
        dim: 3,
        batch_size: 1,
        ..Default::default()
    });
    let start = Instant::now();
    let (mut ran, mut refused) = (0, 0);
    for text in algorithm_variants() {
        let algo: AlgorithmConfig = match toml::from_str(&text) {
            Ok(a) => a,
            Err(e) => panic!("{text}: {e}"),
        };
        for n in 1..=17 {
            let mut cfg: RunConfig = config(n, 6, algo.clone(), sgd(0.05));
            cfg.log_every = 3;
            cfg.eval_every = 3;
            cfg.watchdog = Some(20.0);
            if algo.name() == "eamsgd" || algo.name() == "async-eamsgd" {
                cfg.optimizer.momentum = 0.9;
                cfg.optimizer.nesterov = true;
            }
            if let Err(e) = cfg.validate() {
                assert!(matches!(e, Error::Config(_)), "{text} n={n}: {e}");
                refused += 1;
                continue;
            }
            match run_threads(&cfg, &problem, &mut |_| {}) {
                Ok(report) => {
                    assert_eq!(report.workers.len(), n);
                    ran += 1;
                }
                // Some topologies only fail when built for this N (a torus of a prime, a
                // hypercube of a non-power of two): a clear config error, not a hang.
                Err(Error::Config(_)) => refused += 1,
                Err(e) => panic!("{text} n={n}: {e}"),
            }
        }
    }
    println!(
        "{ran} runs completed, {refused} refused as invalid, in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(ran > 1000, "only {ran} runs completed");
}

/// A `stop` fault on threads: a synchronous algorithm cannot go on without the worker, so the
/// run ends cleanly with an error naming it (the others are aborted, not left waiting).
#[test]
fn an_injected_stop_ends_a_synchronous_threads_run_naming_the_worker() {
    use peloton_core::runner::run_threads_with_faults;
    use peloton_core::transport::{Fault, FaultKind};
    for algo in [
        "name = \"all-reduce\"",
        "name = \"lsgd\"",
        "name = \"d-psgd\"",
    ] {
        // Slow steps (worker 0 is 1 ms → ×20) so the stop lands mid-run.
        let faults = [
            Fault {
                worker: 2,
                at: 0.05,
                kind: FaultKind::Stop,
                factor: 1.0,
            },
            Fault {
                worker: 0,
                at: 0.0,
                kind: FaultKind::Slow,
                factor: 20.0,
            },
        ];
        let cfg = config(4, 100_000, algorithm(algo), sgd(0.05));
        let start = Instant::now();
        let err = run_threads_with_faults(&cfg, &faults, &quadratic(), &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, Error::Stopped { worker: 2, .. }),
            "{algo}: {err}"
        );
        assert!(err.to_string().contains("worker 2 stopped"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(60), "{algo}");
    }
}
