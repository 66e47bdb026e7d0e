//! The core engine's acceptance tests (issue: core engine), on the threads transport with the
//! analytic problems.

mod common;

use common::*;
use peloton_core::algorithms::{
    AlgorithmConfig, AllReduceConfig, EasgdConfig, IndependentConfig, LocalSgdConfig, LsgdConfig,
};
use peloton_core::learner::{Learner, LearnerContext, LearnerFactory};
use peloton_core::optim::{LrSchedule, OptimizerConfig};
use peloton_core::runner::{run_threads, EvalModel, Event, RunConfig};
use peloton_core::Error;
use peloton_problems::{
    double_well, DoubleWellConfig, ProblemConfig, QuadraticConfig, SoftmaxConfig,
};

fn small_softmax(batch_size: usize) -> SoftmaxConfig {
    SoftmaxConfig {
        classes: 5,
        features: 8,
        train_samples: 800,
        test_samples: 200,
        batch_size,
        ..Default::default()
    }
}

/// All-reduce SGD on N workers with batch b equals single-worker SGD on the union of their
/// batches (N·b samples), up to float reassociation: the mean of N batch means is summed in
/// another order than one mean over N·b samples. Tolerance: 1e-5 absolute on parameters of
/// size ~1 after 60 steps (observed differences are ~1e-7).
#[test]
fn all_reduce_sgd_equals_single_worker_sgd_on_the_union_batch() {
    for n in [2, 3, 4] {
        let (b, steps, lr) = (8, 60, 0.5f32);
        let problem = small_softmax(b);
        let cfg = config(n, steps, AlgorithmConfig::new(AllReduceConfig {}), sgd(lr));
        let report = run(&cfg, &ProblemConfig::Softmax(problem.clone()));

        // The reference: one process, N samplers drawing exactly what the workers drew.
        let mut samplers: Vec<_> = (0..n)
            .map(|rank| {
                problem.build(LearnerContext {
                    rank,
                    workers: n,
                    seed: cfg.seed,
                })
            })
            .collect();
        let len = samplers[0].layout().len();
        let mut x = vec![0.0f32; len];
        samplers[0].init_params(&mut x);
        let mut g = vec![0.0f32; len];
        for _ in 0..steps {
            let union: Vec<usize> = samplers.iter_mut().flat_map(|s| s.sample_batch()).collect();
            assert_eq!(union.len(), n * b);
            samplers[0].loss_and_grad_on(&x, &union, &mut g);
            x.iter_mut().zip(&g).for_each(|(p, g)| *p -= lr * g);
        }
        for w in &report.workers {
            let diff = max_abs_diff(&w.params, &x);
            assert!(diff < 1e-5, "n = {n}, worker {}: max |Δ| = {diff}", w.rank);
            assert_eq!(
                w.params, report.workers[0].params,
                "all-reduce keeps workers identical"
            );
        }
    }
}

/// LSGD with λ = 0 is N independent SGD runs, bit for bit, and worker 1 equals a
/// single-process SGD loop on worker 1's data stream.
#[test]
fn lsgd_with_zero_lambda_is_independent_sgd() {
    let problem = ProblemConfig::Softmax(small_softmax(16));
    let n = 4;
    let lsgd = AlgorithmConfig::new(LsgdConfig {
        lambda: 0.0,
        tau: 2,
        ..Default::default()
    });
    let opt = OptimizerConfig {
        lr: 0.3,
        momentum: 0.9,
        ..Default::default()
    };
    let a = run(&config(n, 40, lsgd, opt.clone()), &problem);
    let b = run(
        &config(
            n,
            40,
            AlgorithmConfig::new(IndependentConfig {}),
            opt.clone(),
        ),
        &problem,
    );
    for (x, y) in a.workers.iter().zip(&b.workers) {
        assert_eq!(x.params, y.params);
        assert_eq!(x.losses, y.losses);
    }
    // By hand: worker 1 starts from worker 0's initialization and steps on its own stream.
    let mut w0 = problem
        .build(LearnerContext {
            rank: 0,
            workers: n,
            seed: 42,
        })
        .unwrap();
    let mut w1 = problem
        .build(LearnerContext {
            rank: 1,
            workers: n,
            seed: 42,
        })
        .unwrap();
    let mut x = vec![0.0f32; w1.layout().len()];
    w0.init_params(&mut x);
    let mut g = vec![0.0f32; x.len()];
    let mut sgd = opt.init(w1.layout());
    for step in 0..40 {
        w1.loss_and_grad(&x, &mut g).unwrap();
        sgd.step(&mut x, &mut g, opt.lr_at(step, 0.0));
    }
    assert_eq!(a.workers[1].params, x);
}

/// The LSGD paper's "curse of symmetry" (ALGORITHMS.md §1.6): workers start in pairs on
/// both sides of the saddle of ¼(x₀²−1)² + ½x₁². LGD (exact gradients and losses) ends at a
/// minimum (f = 0); synchronous EAGD with the same strength is dragged to the saddle (f = ¼),
/// because the elastic force ρ = α/η = 2 exceeds the well's curvature.
#[test]
fn lgd_escapes_the_saddle_that_traps_eagd() {
    let problem = ProblemConfig::DoubleWell(DoubleWellConfig::default());
    let mut cfg = config(4, 400, AlgorithmConfig::new(IndependentConfig {}), sgd(0.1));
    cfg.sync_init = false;
    cfg.leader_window = 1;
    cfg.algorithm = AlgorithmConfig::new(LsgdConfig {
        tau: 1,
        lambda: 0.2,
        ..Default::default()
    });
    let lgd = run(&cfg, &problem);
    cfg.algorithm = AlgorithmConfig::new(EasgdConfig {
        tau: Some(1),
        alpha: Some(0.2),
        beta: None,
    });
    let eagd = run(&cfg, &problem);

    let lgd_f: Vec<f64> = lgd
        .workers
        .iter()
        .map(|w| double_well::objective(&w.params))
        .collect();
    let eagd_f: Vec<f64> = eagd
        .workers
        .iter()
        .map(|w| double_well::objective(&w.params))
        .collect();
    let center_f = double_well::objective(eagd.workers[0].center.as_ref().unwrap());
    println!("final objective per worker: LGD {lgd_f:?}, EAGD {eagd_f:?} (EAGD center {center_f})");
    for f in &lgd_f {
        assert!(*f < 1e-6, "LGD worker not at a minimum: {lgd_f:?}");
    }
    // All LGD workers end in the leader's well (the same minimum, not mirrored ones).
    let x0: Vec<f32> = lgd.workers.iter().map(|w| w.params[0]).collect();
    assert!(
        x0.iter()
            .all(|v| (v - x0[0]).abs() < 1e-3 && v.abs() > 0.99),
        "{x0:?}"
    );
    for f in eagd_f.iter().chain([&center_f]) {
        assert!(
            (f - 0.25).abs() < 1e-4,
            "EAGD should sit at the saddle (f = 0.25): {eagd_f:?}"
        );
    }
}

fn algorithms_for(n: usize) -> Vec<(AlgorithmConfig, OptimizerConfig)> {
    let cosine = |lr| OptimizerConfig {
        lr,
        schedule: LrSchedule::Cosine {
            total_steps: 600,
            min_factor: 0.0,
        },
        ..Default::default()
    };
    let mut algos = vec![
        (AlgorithmConfig::new(AllReduceConfig {}), cosine(0.5)),
        (
            AlgorithmConfig::new(LocalSgdConfig {
                period: 4,
                ..Default::default()
            }),
            cosine(0.5),
        ),
        (
            AlgorithmConfig::new(LocalSgdConfig {
                period: 8,
                warmup_steps: 100,
                group_size: None,
            }),
            cosine(0.5),
        ),
        (AlgorithmConfig::new(EasgdConfig::default()), cosine(0.5)),
        (
            AlgorithmConfig::new(peloton_core::algorithms::EamsgdConfig {
                easgd: EasgdConfig::default(),
            }),
            OptimizerConfig {
                momentum: 0.9,
                nesterov: true,
                ..cosine(0.05)
            },
        ),
        (AlgorithmConfig::new(LsgdConfig::default()), cosine(0.5)),
        (
            AlgorithmConfig::new(LsgdConfig {
                prox: 0.1,
                ..Default::default()
            }),
            cosine(0.5),
        ),
    ];
    if n.is_multiple_of(2) && n > 2 {
        algos.push((
            AlgorithmConfig::new(LsgdConfig {
                group_size: Some(2),
                tau_global: Some(8),
                lambda_global: Some(0.2),
                prox_global: Some(0.05),
                ..Default::default()
            }),
            cosine(0.5),
        ));
    }
    algos
}

/// Every algorithm converges to the quadratic's optimum for N ∈ {1, 2, 4, 7}: every worker's
/// excess objective f(x) − f* ends below 2e-3 (it starts around 5; with σ = 0.2 and b = 8 the
/// gradient noise leaves single-worker SGD about 3e-4 above the optimum after the cosine decay).
#[test]
fn every_algorithm_converges_on_the_quadratic() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig {
        dim: 10,
        noise: 0.2,
        ..Default::default()
    });
    for n in [1, 2, 4, 7] {
        for (algorithm, optimizer) in algorithms_for(n) {
            let name = format!("{algorithm:?}");
            let mut cfg = config(n, 600, algorithm, optimizer);
            cfg.eval_model = EvalModel::Workers;
            let report = run(&cfg, &problem);
            assert_eq!(report.final_evals.len(), n);
            for e in &report.final_evals {
                assert!(
                    e.eval.loss < 2e-3,
                    "N = {n}, {name}: worker {:?} ends at f − f* = {}",
                    e.worker,
                    e.eval.loss
                );
            }
        }
    }
}

/// Same config and seed → bit-identical parameters, per-step losses and metrics (wall-clock
/// fields aside), on a multi-leader run that exercises sub-groups, elections and pulls.
#[test]
fn same_seed_same_run_bit_for_bit() {
    let problem = ProblemConfig::Softmax(small_softmax(8));
    let mut cfg = config(
        6,
        120,
        AlgorithmConfig::new(LsgdConfig {
            group_size: Some(3),
            tau: 2,
            tau_global: Some(6),
            ..Default::default()
        }),
        OptimizerConfig {
            lr: 0.2,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            ..Default::default()
        },
    );
    cfg.log_every = 10;
    cfg.eval_every = 30;
    cfg.consensus = true;
    let strip = |events: Vec<Event>| -> Vec<Event> {
        events
            .into_iter()
            .map(|e| match e {
                Event::Worker(mut r) => {
                    r.seconds = 0.0;
                    Event::Worker(r)
                }
                Event::Eval(mut r) => {
                    r.seconds = 0.0;
                    Event::Eval(r)
                }
                other => other,
            })
            .collect()
    };
    let (a, ea) = run_with_events(&cfg, &problem);
    let (b, eb) = run_with_events(&cfg, &problem);
    for (x, y) in a.workers.iter().zip(&b.workers) {
        assert_eq!(x.params, y.params);
        assert_eq!(x.losses, y.losses);
        assert_eq!(x.stats, y.stats);
    }
    let (ea, eb) = (strip(ea), strip(eb));
    assert_eq!(
        ea.len(),
        1 + 12 * 6 + 4,
        "start + 12 log points × 6 workers + 4 evaluations"
    );
    assert_eq!(ea, eb);
    // The leader moves around and is recorded.
    assert!(ea
        .iter()
        .any(|e| matches!(e, Event::Worker(r) if r.leader.is_some())));
    // A different seed gives a different run.
    cfg.seed += 1;
    let c = run(&cfg, &problem);
    assert_ne!(a.workers[0].params, c.workers[0].params);
}

/// A diverging worker stops the run with an error that names it, and no worker hangs.
#[test]
fn divergence_is_a_clear_error() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig::default());
    let cfg = config(
        3,
        500,
        AlgorithmConfig::new(LsgdConfig::default()),
        sgd(50.0),
    );
    let err = run_threads(&cfg, &problem, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Diverged { .. }), "{err}");
    assert!(err.to_string().contains("diverged at step"), "{err}");
}

/// Bad run shapes are config errors before anything starts.
#[test]
fn bad_run_configs_are_rejected() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig::default());
    let check = |cfg: RunConfig, needle: &str| {
        let err = run_threads(&cfg, &problem, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    };
    let base = config(4, 10, AlgorithmConfig::new(LsgdConfig::default()), sgd(0.1));
    check(
        RunConfig {
            workers: 0,
            ..base.clone()
        },
        "workers must be at least 1",
    );
    check(
        RunConfig {
            eval_model: EvalModel::Center,
            ..base.clone()
        },
        "needs an algorithm with a center",
    );
    check(
        RunConfig {
            algorithm: AlgorithmConfig::new(LsgdConfig {
                group_size: Some(3),
                ..Default::default()
            }),
            ..base.clone()
        },
        "not divisible",
    );
    check(
        RunConfig {
            algorithm: AlgorithmConfig::new(peloton_core::algorithms::EamsgdConfig {
                easgd: EasgdConfig::default(),
            }),
            ..base.clone()
        },
        "Nesterov",
    );
    check(
        RunConfig {
            steps: None,
            epochs: Some(1.0),
            ..base.clone()
        },
        "finite dataset",
    );
}

/// Workers that build models of different sizes fail with a clear error, not a hang.
#[test]
fn workers_that_disagree_on_the_model_fail_cleanly() {
    let factory = |ctx: LearnerContext| -> peloton_core::Result<Box<dyn Learner>> {
        let dim = if ctx.rank == 2 { 11 } else { 10 };
        ProblemConfig::Quadratic(QuadraticConfig {
            dim,
            ..Default::default()
        })
        .build(ctx)
    };
    let cfg = config(3, 10, AlgorithmConfig::new(AllReduceConfig {}), sgd(0.1));
    let err = run_threads(&cfg, &factory, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("workers disagree on the model size"), "{err}");
}

/// An epochs budget runs ⌈epochs · shard / batch⌉ steps on every worker.
#[test]
fn epoch_budget_counts_steps_from_the_shard() {
    let problem = ProblemConfig::Softmax(small_softmax(20));
    let mut cfg = config(4, 1, AlgorithmConfig::new(AllReduceConfig {}), sgd(0.1));
    cfg.steps = None;
    cfg.epochs = Some(1.5);
    let report = run(&cfg, &problem);
    // shard = 800 / 4 = 200 samples = 10 batches of 20 ; 1.5 epochs = 15 steps
    assert!(report
        .workers
        .iter()
        .all(|w| w.steps == 15 && w.losses.len() == 15));
}
