//! Properties of the Leader SGD round, checked on the threads transport with hand-set
//! parameters and metrics: a pull never moves the leader, the global leader is unchanged by a
//! multi-leader round, and everybody else lands exactly where the formula says.

use peloton_core::algorithms::{AlgorithmConfig, LsgdConfig, StepContext};
use peloton_core::transport::threads::run_workers;
use proptest::prelude::*;

/// Runs one LSGD round (τ = τ_G = 1) on `n` workers whose parameters are `start(rank)` and
/// whose leader metrics are `metrics`; returns every worker's parameters after the round.
fn one_round(
    n: usize,
    group_size: Option<usize>,
    lambda: f32,
    lambda_global: Option<f32>,
    metrics: &[f64],
) -> Vec<Vec<f32>> {
    let config = LsgdConfig {
        tau: 1,
        lambda,
        group_size,
        tau_global: group_size.filter(|&l| l < n).map(|_| 1),
        lambda_global,
        ..Default::default()
    };
    let algorithm = AlgorithmConfig::new(config);
    algorithm.validate(n, 0, &Default::default()).unwrap();
    let results = run_workers(n, |comm| {
        let rank = peloton_core::transport::Communicator::rank(comm);
        let mut params = start(rank);
        let optimizer = peloton_core::optim::OptimizerConfig::default();
        let run = peloton_core::algorithms::RunShape {
            workers: n,
            seed: 0,
            optimizer: &optimizer,
        };
        let mut built = algorithm.build(&run, params.len())?;
        let alg = built.as_algorithm_mut();
        alg.setup(comm, &mut params)?;
        let mut grad = vec![0.0; params.len()];
        let mut ctx = StepContext {
            comm,
            params: &mut params,
            grad: &mut grad,
            step: 0,
            loss: metrics[rank],
            metric: metrics[rank],
            lr: 0.1,
        };
        alg.after_step(&mut ctx)?;
        Ok(params)
    });
    results.into_iter().map(|r| r.unwrap()).collect()
}

fn start(rank: usize) -> Vec<f32> {
    (0..7).map(|i| (rank * 7 + i) as f32 * 0.37 - 3.0).collect()
}

fn argmin(metrics: &[f64], range: std::ops::Range<usize>) -> Option<usize> {
    range
        .filter(|&i| metrics[i].is_finite())
        .min_by(|&a, &b| metrics[a].partial_cmp(&metrics[b]).unwrap().then(a.cmp(&b)))
}

fn mix(x: &[f32], y: &[f32], c: f32) -> Vec<f32> {
    x.iter()
        .zip(y)
        .map(|(a, b)| (1.0 - c) * a + c * b)
        .collect()
}

#[test]
fn single_leader_round_matches_the_formula() {
    // Worker 2 has the lowest metric; worker 0 has NaN and must not win.
    let metrics = [f64::NAN, 3.0, 1.0, 2.0, 1.0];
    let after = one_round(5, None, 0.25, None, &metrics);
    assert_eq!(after[2], start(2), "the leader does not move");
    for r in [0, 1, 3, 4] {
        assert_eq!(after[r], mix(&start(r), &start(2), 0.25), "worker {r}");
    }
}

#[test]
fn multi_leader_round_applies_local_then_global_pull() {
    // Groups {0,1,2} and {3,4,5}; local leaders 1 and 5; global leader 5.
    let metrics = [4.0, 2.0, 3.0, 6.0, 9.0, 1.0];
    let (l, lg) = (0.3, 0.1);
    let after = one_round(6, Some(3), l, Some(lg), &metrics);
    assert_eq!(after[5], start(5), "the global leader is unchanged");
    // Worker 1 (local leader of group 0) only takes the global pull.
    assert_eq!(after[1], mix(&start(1), &start(5), lg));
    for r in [0, 2] {
        let local = mix(&start(r), &start(1), l);
        assert_eq!(after[r], mix(&local, &start(5), lg), "worker {r}");
    }
    for r in [3, 4] {
        let local = mix(&start(r), &start(5), l);
        assert_eq!(after[r], mix(&local, &start(5), lg), "worker {r}");
    }
}

#[test]
fn nobody_moves_when_every_metric_is_non_finite() {
    let after = one_round(3, None, 0.5, None, &[f64::NAN, f64::INFINITY, f64::NAN]);
    for (r, p) in after.iter().enumerate() {
        assert_eq!(*p, start(r));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// For any world size, grouping and metrics (NaN included), the global leader's parameters
    /// are bit-for-bit unchanged by a round, and so is every local leader's in a local-only round.
    #[test]
    fn a_pull_never_moves_the_leader(
        n in 1usize..10,
        groups_pick in 0usize..4,
        lambda in 0.0f32..=1.0,
        lambda_global in 0.0f32..=1.0,
        raw in proptest::collection::vec(prop_oneof![Just(f64::NAN), 0.0f64..5.0, Just(1.0f64)], 10),
    ) {
        let metrics = &raw[..n];
        let divisors: Vec<usize> = (1..=n).filter(|l| n % l == 0).collect();
        let l = divisors[groups_pick % divisors.len()];
        let multi = l < n;
        let after = one_round(n, Some(l), lambda, multi.then_some(lambda_global), metrics);
        if let Some(g) = argmin(metrics, 0..n) {
            prop_assert_eq!(&after[g], &start(g));
        }
        if multi && lambda_global == 0.0 {
            for first in (0..n).step_by(l) {
                if let Some(local) = argmin(metrics, first..first + l) {
                    prop_assert_eq!(&after[local], &start(local));
                }
            }
        }
    }
}
