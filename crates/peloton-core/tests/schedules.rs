//! Every gossip schedule on the real threads transport: deadlock-free (each run must finish
//! within a bound, checked by a watchdog), identical on every worker, and push-sum conserves
//! total weight at every step with messages in flight (property tests over N ∈ 1..=33).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use peloton_core::algorithms::dpsgd::DpsgdConfig;
use peloton_core::algorithms::sgp::{Debias, SgpConfig};
use peloton_core::algorithms::{Algorithm, AlgorithmConfig, MatchaConfig, StepContext};
use peloton_core::optim::OptimizerConfig;
use peloton_core::transport::threads::run_workers;
use peloton_core::transport::{Communicator, CommunicatorExt};
use peloton_topology::{Directions, GraphSpec, MixingWeights, ScheduleConfig};
use proptest::prelude::*;

/// Generous: 20 gossip rounds of 33 threads take milliseconds; a deadlock never ends.
const WATCHDOG: Duration = Duration::from_secs(120);

fn start(rank: usize) -> Vec<f32> {
    (0..5)
        .map(|i| ((rank * 5 + i) as f32 * 0.37).cos())
        .collect()
}

/// Runs `rounds` gossip steps of `algorithm` on `n` threads under a watchdog; every worker
/// also checks that it computes the same rounds as worker 0.
fn run_guarded(n: usize, algorithm: AlgorithmConfig, schedule: ScheduleConfig, rounds: u64) {
    algorithm
        .validate(n, 3, &OptimizerConfig::default())
        .unwrap_or_else(|e| panic!("N = {n}: {e}"));
    let (done, wait) = mpsc::channel();
    let label = format!("N = {n}, {algorithm:?}");
    std::thread::spawn(move || {
        let results = run_workers(n, |comm| {
            let rank = comm.rank();
            let built = schedule.build(n, 3).expect("validated");
            let mut fingerprint = 0u64;
            for t in 0..rounds {
                for e in built.round(t).edges {
                    fingerprint = fingerprint
                        .rotate_left(7)
                        .wrapping_add((e.from * 1_000 + e.to) as u64 ^ e.weight.to_bits());
                }
            }
            comm.agree("the schedule's rounds", fingerprint)?;
            let mut params = start(rank);
            let optimizer = peloton_core::optim::OptimizerConfig::default();
            let run = peloton_core::algorithms::RunShape {
                workers: n,
                seed: 3,
                optimizer: &optimizer,
            };
            let mut built = algorithm.build(&run, params.len())?;
            let alg = built.as_algorithm_mut();
            alg.setup(comm, &mut params)?;
            common::gossip_steps(comm, alg, &mut params, rounds, rank as f64)
        });
        let _ = done.send(
            results
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect::<Vec<_>>(),
        );
    });
    let results = wait
        .recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{label}: no result within {WATCHDOG:?} (deadlock)"));
    for r in results {
        r.unwrap_or_else(|e| panic!("{label}: {e}"));
    }
}

fn graph_for(choice: u8, n: usize, seed: u64) -> GraphSpec {
    match choice % 5 {
        0 => GraphSpec::Ring,
        1 => GraphSpec::Exponential,
        2 => GraphSpec::ErdosRenyi { p: 0.5, seed },
        3 => GraphSpec::Complete,
        _ if n >= 3 && (n * 2).is_multiple_of(2) => GraphSpec::Regular { degree: 2, seed },
        _ => GraphSpec::Star,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Consensus (D-PSGD) over static graphs, cycling matchings and the bipartite graph; MATCHA
    /// over random graphs; SGP over the exponential graphs with 1–3 peers.
    #[test]
    fn every_schedule_is_deadlock_free_and_identical_on_every_worker(
        n in 1usize..=33,
        graph in 0u8..5,
        seed in 0u64..1000,
        peers in 1usize..=3,
        both in any::<bool>(),
    ) {
        let g = graph_for(graph, n, seed);
        let statics = [
            ScheduleConfig::Static { graph: g.clone(), weights: MixingWeights::MetropolisHastings },
            ScheduleConfig::Matchings { graph: g.clone(), select: None },
        ];
        for schedule in statics {
            let algorithm = AlgorithmConfig::new(DpsgdConfig { schedule: schedule.clone(), ..Default::default() });
            run_guarded(n, algorithm, schedule, 20);
        }
        if n.is_multiple_of(2) {
            let schedule = ScheduleConfig::Bipartite {};
            let algorithm = AlgorithmConfig::new(DpsgdConfig { schedule: schedule.clone(), ..Default::default() });
            run_guarded(n, algorithm, schedule, 20);
        }
        if n >= 2 {
            let matcha = MatchaConfig { graph: g.clone(), budget: 0.5, alpha: None };
            run_guarded(n, AlgorithmConfig::new(matcha.clone()), matcha.schedule(), 20);
        }
        let directions = if both { Directions::Both } else { Directions::Forward };
        let schedule = ScheduleConfig::Exponential { peers: 1, directions };
        let sgp = SgpConfig { schedule: schedule.clone(), ..Default::default() };
        run_guarded(n, AlgorithmConfig::new(sgp), schedule, 20);
        if n > peers + 1 {
            let schedule = ScheduleConfig::Exponential { peers, directions: Directions::Both };
            let sgp = SgpConfig { schedule: schedule.clone(), overlap: true, staleness: 2, ..Default::default() };
            run_guarded(n, AlgorithmConfig::new(sgp), schedule, 20);
        }
    }

    /// Push-sum conserves weight at every step: Σ_i (w_i + weight i sent that is still in
    /// flight) = N within 1e-12·N, for overlap SGP with staleness τ and N not a power of two;
    /// after the drain nothing is in flight, Σ w_i = N, and the numerators Σ w_i·z_i still sum
    /// to the initial Σ x_i (f32 parameters: within 1e-4 on values of size ≤ 1).
    #[test]
    fn push_sum_conserves_mass_with_messages_in_flight(
        n in 2usize..=13,
        staleness in 1u64..=4,
        rounds in 1u64..=12,
        both in any::<bool>(),
    ) {
        let directions = if both { Directions::Both } else { Directions::Forward };
        let config = SgpConfig {
            schedule: ScheduleConfig::Exponential { peers: 1, directions },
            overlap: true,
            staleness,
            debias: Debias::Always,
            ..Default::default()
        };
        config.validate(n, 0).unwrap();
        let results = run_workers(n, |comm| {
            let rank = comm.rank();
            let mut params = start(rank);
            let mut sgp = config.init(n, params.len(), 0)?;
            let mut grad = vec![0.0; params.len()];
            let mut per_step = Vec::new();
            for step in 0..rounds {
                let mut ctx = StepContext {
                    comm: &mut *comm,
                    params: &mut params,
                    grad: &mut grad,
                    step,
                    loss: 1.0,
                    metric: 1.0,
                    lr: 0.0,
                };
                sgp.before_step(&mut ctx)?;
                sgp.after_step(&mut ctx)?;
                let (held, in_flight) = sgp.mass();
                per_step.push(held + in_flight);
            }
            sgp.drain(comm, &mut params)?;
            let (held, in_flight) = sgp.mass();
            let numerator: Vec<f64> = params.iter().map(|&z| z as f64 * held).collect();
            Ok((per_step, held, in_flight, numerator))
        });
        let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
        for step in 0..rounds as usize {
            let total: f64 = results.iter().map(|r| r.0[step]).sum();
            prop_assert!((total - n as f64).abs() < 1e-12 * n as f64, "step {step}: total weight {total}");
        }
        let held: f64 = results.iter().map(|r| r.1).sum();
        prop_assert!((held - n as f64).abs() < 1e-12 * n as f64, "after the drain: {held}");
        prop_assert!(results.iter().all(|r| r.2 == 0.0));
        for i in 0..5 {
            let initial: f64 = (0..n).map(|r| start(r)[i] as f64).sum();
            let now: f64 = results.iter().map(|r| r.3[i]).sum();
            prop_assert!((initial - now).abs() < 1e-4, "coordinate {i}: {now} vs {initial}");
        }
    }
}
