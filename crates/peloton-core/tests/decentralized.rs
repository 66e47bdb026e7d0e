//! Acceptance tests of the decentralized family (issue: decentralized), on the threads
//! transport: convergence and consensus for every algorithm and several worker counts, the
//! exact identities (lazy SGP, layered = all-reduce, the AL-DSGD formula), average
//! preservation, push-sum mass conservation with messages in flight, and determinism.

mod common;

use common::*;
use peloton_core::algorithms::aldsgd::AlDsgdConfig;
use peloton_core::algorithms::dpsgd::{DpsgdConfig, Variant};
use peloton_core::algorithms::sgp::{Debias, SgpConfig};
use peloton_core::algorithms::slowmo::{SlowMoBase, SlowMoConfig};
use peloton_core::algorithms::{
    AlgorithmConfig, AllReduceConfig, LayeredSgdConfig, MatchaConfig, StepContext,
};
use peloton_core::optim::{LrSchedule, OptimizerConfig};
use peloton_core::runner::{EvalModel, Event, RunConfig};
use peloton_core::transport::threads::run_workers;
use peloton_core::transport::Communicator;
use peloton_problems::{ProblemConfig, QuadraticConfig, SoftmaxConfig};
use peloton_topology::{Directions, GraphSpec, MixingWeights, ScheduleConfig};

fn cosine(lr: f32, total_steps: u64) -> OptimizerConfig {
    OptimizerConfig {
        lr,
        schedule: LrSchedule::Cosine {
            total_steps,
            min_factor: 0.0,
        },
        ..Default::default()
    }
}

/// Every decentralized algorithm with a configuration that fits `n` workers.
fn decentralized_for(n: usize) -> Vec<AlgorithmConfig> {
    let mut algos = vec![
        AlgorithmConfig::new(DpsgdConfig::default()),
        AlgorithmConfig::new(DpsgdConfig {
            variant: Variant::CombineWhileComputing,
            schedule: ScheduleConfig::Static {
                graph: GraphSpec::Exponential,
                weights: MixingWeights::MetropolisHastings,
            },
        }),
        AlgorithmConfig::new(SgpConfig::default()),
        AlgorithmConfig::new(SgpConfig {
            overlap: true,
            staleness: 2,
            ..Default::default()
        }),
        AlgorithmConfig::new(MatchaConfig::default()),
        AlgorithmConfig::new(AlDsgdConfig::default()),
        AlgorithmConfig::new(SlowMoConfig {
            frequency: 12,
            ..Default::default()
        }),
        AlgorithmConfig::new(SlowMoConfig {
            base: SlowMoBase::Sgp,
            frequency: 12,
            sharded: true,
            ..Default::default()
        }),
        AlgorithmConfig::new(LayeredSgdConfig {
            group_size: if n.is_multiple_of(2) { 2 } else { n },
        }),
    ];
    if n >= 3 {
        // Two peers per step on the ±2^i phone book, weights ⅓ (general push-sum form).
        algos.push(AlgorithmConfig::new(SgpConfig {
            schedule: ScheduleConfig::Exponential {
                peers: 2,
                directions: Directions::Both,
            },
            debias: Debias::Always,
            ..Default::default()
        }));
    }
    if n.is_multiple_of(2) {
        algos.push(AlgorithmConfig::new(DpsgdConfig {
            schedule: ScheduleConfig::Bipartite {},
            variant: Variant::AdaptThenCombine,
        }));
    }
    algos
}

fn final_consensus(events: &[Event], steps: u64) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Worker(r) if r.step == steps => r.consensus,
            _ => None,
        })
        .collect()
}

/// Every decentralized algorithm reaches the quadratic's optimum neighbourhood for
/// N ∈ {2, 5, 8, 16}: every worker's own model ends below f − f* = 2e-3 (the start is ≈ 5),
/// and the workers agree: consensus distance ‖x_i − x̄‖ below 1e-2 (it starts at ≈ 4).
#[test]
fn every_decentralized_algorithm_converges_on_the_quadratic() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig {
        dim: 10,
        noise: 0.2,
        ..Default::default()
    });
    let steps = 400;
    for n in [2, 5, 8, 16] {
        for algorithm in decentralized_for(n) {
            let name = format!("{algorithm:?}");
            let mut cfg = config(n, steps, algorithm, cosine(0.5, steps));
            cfg.eval_model = EvalModel::Workers;
            cfg.consensus = true;
            // Decentralized methods must pull different starts together; layered SGD, like
            // all-reduce SGD, only averages gradients and needs a common start.
            cfg.sync_init = cfg.algorithm.name() == "layered-sgd";
            let (report, events) = run_with_events(&cfg, &problem);
            assert_eq!(report.final_evals.len(), n);
            for e in &report.final_evals {
                assert!(
                    e.eval.loss < 2e-3,
                    "N = {n}, {name}: worker {:?} ends at f − f* = {}",
                    e.worker,
                    e.eval.loss
                );
            }
            let consensus = final_consensus(&events, steps);
            assert_eq!(consensus.len(), n);
            for (w, c) in consensus.iter().enumerate() {
                assert!(
                    *c < 1e-2,
                    "N = {n}, {name}: worker {w} is {c} from the average"
                );
            }
        }
    }
}

/// On softmax regression every decentralized algorithm ends within 0.05 of the test loss of
/// all-reduce SGD with the same budget (both evaluate the workers' average).
#[test]
fn every_decentralized_algorithm_learns_softmax_regression() {
    let problem = ProblemConfig::Softmax(SoftmaxConfig {
        classes: 5,
        features: 8,
        train_samples: 800,
        test_samples: 400,
        batch_size: 16,
        ..Default::default()
    });
    let steps = 200;
    for n in [2, 5, 8, 16] {
        let reference = run(
            &config(
                n,
                steps,
                AlgorithmConfig::new(AllReduceConfig {}),
                cosine(0.5, steps),
            ),
            &problem,
        );
        let reference_loss = reference.final_evals[0].eval.loss;
        for algorithm in decentralized_for(n) {
            let name = format!("{algorithm:?}");
            let report = run(&config(n, steps, algorithm, cosine(0.5, steps)), &problem);
            let loss = report.final_evals[0].eval.loss;
            assert!(
                loss < reference_loss + 0.05,
                "N = {n}, {name}: test loss {loss} vs all-reduce {reference_loss}"
            );
        }
    }
}

/// SGP on a regular graph with uniform weights (one peer: ½–½) in its lazy form — raw
/// parameters sent, `(x + y)·½` received, no weights — equals the general push-sum form with
/// weights and de-biasing bit for bit: scaling by ½ is exact, so ½x + ½y = (x + y)·½ in f32.
#[test]
fn lazy_sgp_equals_general_push_sum_bit_for_bit() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig {
        dim: 12,
        ..Default::default()
    });
    for directions in [Directions::Forward, Directions::Both] {
        let sgp = |debias| {
            AlgorithmConfig::new(SgpConfig {
                schedule: ScheduleConfig::Exponential {
                    peers: 1,
                    directions,
                },
                debias,
                ..Default::default()
            })
        };
        let mut cfg = config(6, 50, sgp(Debias::Auto), sgd(0.1));
        cfg.sync_init = false;
        let lazy = run(&cfg, &problem);
        cfg.algorithm = sgp(Debias::Always);
        let general = run(&cfg, &problem);
        for (a, b) in lazy.workers.iter().zip(&general.workers) {
            assert_eq!(a.params, b.params, "worker {}", a.rank);
            assert_eq!(a.losses, b.losses, "worker {}", a.rank);
        }
    }
}

/// Layered SGD computes the mean gradient like all-reduce SGD, only in two layers, so the
/// runs agree up to summation order: max |Δ| < 1e-5 after 50 steps on parameters of size ~1.
#[test]
fn layered_sgd_matches_all_reduce_sgd() {
    let problem = ProblemConfig::Softmax(SoftmaxConfig {
        classes: 4,
        features: 6,
        train_samples: 400,
        test_samples: 100,
        batch_size: 8,
        ..Default::default()
    });
    for (n, g) in [(4, 2), (6, 3), (6, 1), (5, 5)] {
        let reference = run(
            &config(n, 50, AlgorithmConfig::new(AllReduceConfig {}), sgd(0.5)),
            &problem,
        );
        let layered = run(
            &config(
                n,
                50,
                AlgorithmConfig::new(LayeredSgdConfig { group_size: g }),
                sgd(0.5),
            ),
            &problem,
        );
        for (a, b) in layered.workers.iter().zip(&reference.workers) {
            let diff = max_abs_diff(&a.params, &b.params);
            assert!(diff < 1e-5, "N = {n}, g = {g}, worker {}: {diff}", a.rank);
            assert_eq!(
                a.params, layered.workers[0].params,
                "workers stay identical"
            );
        }
    }
}

/// With β = 0 and α = 1 the slow step is x_old ← x_avg, so SlowMo over local SGD equals local
/// SGD averaging every `frequency` steps (to f32 rounding of x_old − γ·(x_old − x_avg)/γ).
#[test]
fn slowmo_without_momentum_is_periodic_averaging() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig {
        dim: 8,
        ..Default::default()
    });
    let slowmo = AlgorithmConfig::new(SlowMoConfig {
        local_period: 1000,
        frequency: 5,
        slow_momentum: 0.0,
        ..Default::default()
    });
    let local = AlgorithmConfig::new(peloton_core::algorithms::LocalSgdConfig {
        period: 5,
        ..Default::default()
    });
    for sharded in [false, true] {
        let slowmo = match slowmo.get::<SlowMoConfig>() {
            Some(c) => AlgorithmConfig::new(SlowMoConfig {
                sharded,
                ..c.clone()
            }),
            None => unreachable!(),
        };
        let a = run(&config(3, 40, slowmo, sgd(0.05)), &problem);
        let b = run(&config(3, 40, local.clone(), sgd(0.05)), &problem);
        for (x, y) in a.workers.iter().zip(&b.workers) {
            let diff = max_abs_diff(&x.params, &y.params);
            assert!(
                diff < 1e-4,
                "sharded = {sharded}, worker {}: {diff}",
                x.rank
            );
        }
    }
}

/// Runs `rounds` gossip-only steps (zero gradient) of `algorithm` on `n` workers from
/// `start(rank)`, draining at the end; returns every worker's parameters.
fn gossip_only(n: usize, algorithm: &AlgorithmConfig, rounds: u64) -> Vec<Vec<f32>> {
    algorithm
        .validate(n, 7, &OptimizerConfig::default())
        .unwrap();
    run_workers(n, |comm| {
        let rank = comm.rank();
        let mut params = start(rank);
        let optimizer = OptimizerConfig::default();
        let run = peloton_core::algorithms::RunShape {
            workers: n,
            seed: 7,
            optimizer: &optimizer,
        };
        let mut built = algorithm.build(&run, params.len())?;
        let alg = built.as_algorithm_mut();
        alg.setup(comm, &mut params)?;
        gossip_steps(comm, alg, &mut params, rounds, 1.0)?;
        Ok(params)
    })
    .into_iter()
    .map(|r| r.unwrap())
    .collect()
}

fn start(rank: usize) -> Vec<f32> {
    (0..9)
        .map(|i| ((rank * 9 + i) as f32 * 0.731).sin() * 3.0)
        .collect()
}

fn average(vectors: &[Vec<f32>]) -> Vec<f64> {
    let mut avg = vec![0.0f64; vectors[0].len()];
    for v in vectors {
        for (a, x) in avg.iter_mut().zip(v) {
            *a += *x as f64 / vectors.len() as f64;
        }
    }
    avg
}

/// Doubly-stochastic mixing preserves the workers' average (to f32 rounding: |Δ| < 1e-5 on
/// values of size ≤ 3 after 30 rounds) and drives every worker toward it.
#[test]
fn consensus_rounds_preserve_the_average_and_contract() {
    for n in [2usize, 3, 8, 13] {
        let mut algos = vec![
            AlgorithmConfig::new(DpsgdConfig::default()),
            AlgorithmConfig::new(MatchaConfig::default()),
            AlgorithmConfig::new(SgpConfig::default()),
        ];
        if n.is_multiple_of(2) {
            algos.push(AlgorithmConfig::new(DpsgdConfig {
                schedule: ScheduleConfig::Bipartite {},
                variant: Variant::CombineWhileComputing,
            }));
        }
        let initial: Vec<Vec<f32>> = (0..n).map(start).collect();
        let before = average(&initial);
        let spread = |v: &[Vec<f32>], avg: &[f64]| {
            v.iter()
                .flat_map(|x| x.iter().zip(avg).map(|(a, b)| (*a as f64 - b).abs()))
                .fold(0.0, f64::max)
        };
        for algorithm in algos {
            let after = gossip_only(n, &algorithm, 30);
            let avg = average(&after);
            for (a, b) in avg.iter().zip(&before) {
                assert!((a - b).abs() < 1e-5, "N = {n}, {algorithm:?}: {a} vs {b}");
            }
            assert!(
                spread(&after, &avg) < 0.5 * spread(&initial, &before),
                "N = {n}, {algorithm:?}: no contraction"
            );
        }
    }
}

/// Push-sum conserves mass when messages are in flight (overlap SGP, staleness 3, N not a
/// power of two, the general form with weights): after draining, Σ w_i x_i / Σ w_i — which is
/// what the workers' de-biased models average to when weights are equal — and every worker's
/// model converge to the initial average.
#[test]
fn overlap_sgp_conserves_mass_through_the_drain() {
    for n in [3, 5, 7] {
        let algorithm = AlgorithmConfig::new(SgpConfig {
            schedule: ScheduleConfig::Exponential {
                peers: 1,
                directions: Directions::Both,
            },
            overlap: true,
            staleness: 3,
            ..Default::default()
        });
        let initial: Vec<Vec<f32>> = (0..n).map(start).collect();
        let before = average(&initial);
        // Few rounds: mass is still in flight when the drain starts.
        let after = gossip_only(n, &algorithm, 5);
        assert_eq!(after.len(), n);
        let after_long = gossip_only(n, &algorithm, 200);
        for x in &after_long {
            for (a, b) in x.iter().zip(&before) {
                assert!((*a as f64 - b).abs() < 1e-4, "N = {n}: {a} vs {b}");
            }
        }
    }
}

/// The AL-DSGD update on two workers, worked by hand. One matching {0, 1}, α = 2/(λ₂ + λ_max)
/// = 2/(2 + 2) = ½ for the 2-node graph, both degrees 1 (so the max-degree "neighbour" is the
/// worker itself), worker 0 has the lower loss. With c1 = 0.3, c2 = 0.1, p1 = p2 = 0.2:
///   worker 1: y = ½x₀ + ½x₁, b = 0, m = 1: z = 0.6y + 0.3x₀ + 0.1x₁ = 0.6x₀ + 0.4x₁,
///             x₁' = 0.6z + 0.2x₀ + 0.2x₁ = 0.56x₀ + 0.44x₁;
///   worker 0: b = m = 0: z = 0.6y + 0.4x₀ = 0.7x₀ + 0.3x₁, x₀' = 0.6z + 0.4x₀ = 0.82x₀ + 0.18x₁.
#[test]
fn aldsgd_update_matches_the_hand_computed_formula() {
    let algorithm = AlgorithmConfig::new(AlDsgdConfig {
        schedule: ScheduleConfig::Matchings {
            graph: GraphSpec::Complete,
            select: None,
        },
        ..Default::default()
    });
    algorithm
        .validate(2, 0, &OptimizerConfig::default())
        .unwrap();
    let after: Vec<Vec<f32>> = run_workers(2, |comm| {
        let rank = comm.rank();
        let mut params = start(rank);
        let optimizer = OptimizerConfig::default();
        let run = peloton_core::algorithms::RunShape {
            workers: 2,
            seed: 0,
            optimizer: &optimizer,
        };
        let mut built = algorithm.build(&run, params.len())?;
        let alg = built.as_algorithm_mut();
        let mut grad = vec![0.0; params.len()];
        let mut ctx = StepContext {
            comm,
            params: &mut params,
            grad: &mut grad,
            step: 0,
            loss: [0.5, 2.0][rank],
            metric: 0.0,
            lr: 0.1,
        };
        alg.after_step(&mut ctx)?;
        Ok(params)
    })
    .into_iter()
    .map(|r| r.unwrap())
    .collect();
    let (x0, x1) = (start(0), start(1));
    for i in 0..x0.len() {
        let w0 = 0.82 * x0[i] + 0.18 * x1[i];
        let w1 = 0.56 * x0[i] + 0.44 * x1[i];
        assert!(
            (after[0][i] - w0).abs() < 1e-5,
            "worker 0, {i}: {} vs {w0}",
            after[0][i]
        );
        assert!(
            (after[1][i] - w1).abs() < 1e-5,
            "worker 1, {i}: {} vs {w1}",
            after[1][i]
        );
    }
}

/// Same seed, same decentralized run bit for bit, random activations included; per-link
/// bytes and distinct-peer counts are reported and consistent.
#[test]
fn decentralized_runs_are_deterministic_and_report_links() {
    let problem = ProblemConfig::Quadratic(QuadraticConfig::default());
    for algorithm in [
        AlgorithmConfig::new(MatchaConfig::default()),
        AlgorithmConfig::new(AlDsgdConfig::default()),
        AlgorithmConfig::new(SgpConfig {
            overlap: true,
            staleness: 2,
            ..Default::default()
        }),
    ] {
        let mut cfg: RunConfig = config(8, 60, algorithm, sgd(0.05));
        cfg.log_every = 10;
        // No initial broadcast, so that all traffic is the algorithm's point-to-point traffic.
        cfg.sync_init = false;
        let (a, events_a) = run_with_events(&cfg, &problem);
        let (b, events_b) = run_with_events(&cfg, &problem);
        for (x, y) in a.workers.iter().zip(&b.workers) {
            assert_eq!(x.params, y.params);
            assert_eq!(x.links, y.links);
        }
        let strip = |events: &[Event]| -> Vec<String> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Worker(r) => Some(format!(
                        "{} {} {:?} {} {:?}",
                        r.step, r.worker, r.loss, r.bytes_sent, r.peers
                    )),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(strip(&events_a), strip(&events_b));
        for w in &a.workers {
            let link_sum: u64 = w.links.iter().map(|l| l.bytes_sent).sum();
            assert_eq!(
                link_sum, w.stats.bytes_sent,
                "worker {}: per-link bytes add up",
                w.rank
            );
            assert!(!w.links.is_empty(), "worker {} talked to nobody", w.rank);
        }
        let peers: Vec<usize> = events_a
            .iter()
            .filter_map(|e| match e {
                Event::Worker(r) => r.peers,
                _ => None,
            })
            .collect();
        assert!(peers.iter().all(|&p| p < 8) && peers.iter().any(|&p| p > 0));
    }
}

/// Schedules that cannot work are refused before training with a message naming the problem.
#[test]
fn bad_decentralized_configs_are_rejected() {
    let check = |n: usize, algorithm: AlgorithmConfig, needle: &str| {
        let err = algorithm
            .validate(n, 0, &OptimizerConfig::default())
            .expect_err(needle);
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle:?}"
        );
    };
    check(
        7,
        AlgorithmConfig::new(DpsgdConfig {
            schedule: ScheduleConfig::Bipartite {},
            variant: Variant::AdaptThenCombine,
        }),
        "even",
    );
    // Pairwise exchange needs a symmetric schedule; SGP's exponential graph is directed.
    check(
        8,
        AlgorithmConfig::new(AlDsgdConfig {
            schedule: ScheduleConfig::Exponential {
                peers: 1,
                directions: Directions::Forward,
            },
            ..Default::default()
        }),
        "directed",
    );
    check(
        8,
        AlgorithmConfig::new(MatchaConfig {
            budget: 0.0,
            ..Default::default()
        }),
        "budget",
    );
    check(
        6,
        AlgorithmConfig::new(LayeredSgdConfig { group_size: 4 }),
        "group_size",
    );
    check(
        4,
        AlgorithmConfig::new(SgpConfig {
            overlap: true,
            staleness: 0,
            ..Default::default()
        }),
        "staleness",
    );
    check(
        4,
        AlgorithmConfig::new(AlDsgdConfig {
            c1: 0.8,
            c2: 0.5,
            ..Default::default()
        }),
        "c1 + algorithm.c2",
    );
    check(
        8,
        AlgorithmConfig::new(DpsgdConfig {
            schedule: ScheduleConfig::Static {
                graph: GraphSpec::Edges {
                    edges: vec![[0, 1], [1, 2], [2, 3], [4, 5], [5, 6], [6, 7]],
                },
                weights: MixingWeights::MetropolisHastings,
            },
            variant: Variant::AdaptThenCombine,
        }),
        "disconnected",
    );
}
