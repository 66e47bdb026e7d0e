//! MATCHA's random matchings (`kind = "matcha"`): every matching of a graph is active
//! independently with its optimized probability (shared seed), W(t) = I − α·Σ_j B_j(t)·L_j. The
//! probabilities and α are solved in [`crate::matcha`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{derive_seed, ACTIVATION_STREAM};
use crate::graph::{GraphSpec, Matching};
use crate::matcha::{self, MatchaSolution, Moments};
use crate::{ensure, Result};

/// MATCHA: matching j active with probability p_j, W = I − α·Σ_active L_j.
#[derive(Debug, Clone)]
pub(super) struct RandomMatchings {
    pub(super) graph_name: String,
    pub(super) budget: f64,
    pub(super) matchings: Vec<Matching>,
    pub(super) solution: MatchaSolution,
    pub(super) moments: Moments,
    pub(super) seed: u64,
}

impl RandomMatchings {
    /// Builds `kind = "matcha"`: the matchings of `graph` on `n` nodes with MATCHA's optimized
    /// probabilities for `budget` (and α, unless `alpha` overrides it); `seed` is the run seed.
    pub(super) fn build(
        n: usize,
        seed: u64,
        graph: &GraphSpec,
        budget: &f64,
        alpha: &Option<f64>,
    ) -> Result<RandomMatchings> {
        let matchings = graph.build(n)?.matchings();
        let mut solution = matcha::solve(n, &matchings, *budget)?;
        let moments = Moments::new(n, &matchings, &solution.probabilities)?;
        if let Some(alpha) = *alpha {
            ensure!(
                alpha.is_finite() && alpha > 0.0,
                "matcha alpha must be positive, got {alpha}"
            );
            solution.alpha = alpha;
            solution.rho = moments.rho(alpha);
        }
        Ok(RandomMatchings {
            graph_name: graph.name(),
            budget: *budget,
            matchings,
            solution,
            moments,
            seed,
        })
    }

    /// The matchings active at step t: u_j < p_j with u_j drawn from a ChaCha8 stream seeded by
    /// (run seed, t) alone, so every worker draws the same flags and step t does not depend on
    /// which steps were drawn before.
    pub(super) fn active(&self, t: u64) -> Vec<&Matching> {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, ACTIVATION_STREAM, t));
        self.matchings
            .iter()
            .zip(&self.solution.probabilities)
            .filter(|&(_, &p)| rng.random::<f64>() < p)
            .map(|(matching, _)| matching)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

    use crate::schedule::tests::{er, matcha_on};
    use crate::schedule::{Protocol, ScheduleConfig};

    #[test]
    fn matcha_rounds_follow_the_probabilities() {
        let s = matcha_on(er(0)).build(8, 42).unwrap();
        let solution = s.matcha().unwrap().clone();
        let m = s.matchings().unwrap().len();
        assert_eq!(solution.probabilities.len(), m);
        assert!(solution.probabilities.iter().sum::<f64>() <= 0.5 * m as f64 + 1e-9);
        assert_eq!(s.period(), None);
        // Identical on every worker (a second build) and independent of evaluation order.
        let again = matcha_on(er(0)).build(8, 42).unwrap();
        let late = again.round(999);
        for t in (0..1000).rev() {
            assert_eq!(s.round(t), again.round(t));
        }
        assert_eq!(late, s.round(999));
        assert_ne!(
            (0..20).map(|t| s.round(t)).collect::<Vec<_>>(),
            (0..20)
                .map(|t| matcha_on(er(0)).build(8, 43).unwrap().round(t))
                .collect::<Vec<_>>()
        );
        // The empirical activation frequency matches p_j, and the sample mean of W matches E[W].
        let steps = 20_000;
        let mut mean = DMatrix::zeros(8, 8);
        let mut counts = vec![0usize; m];
        let matchings = s.matchings().unwrap().to_vec();
        for t in 0..steps {
            let round = s.round(t);
            mean += round.matrix();
            for (j, matching) in matchings.iter().enumerate() {
                let (a, b) = matching.edges[0];
                counts[j] += usize::from(round.edges.iter().any(|e| e.from == a && e.to == b));
            }
        }
        mean /= steps as f64;
        for (count, p) in counts.iter().zip(&solution.probabilities) {
            assert!((*count as f64 / steps as f64 - p).abs() < 0.02);
        }
        assert!((mean - s.expected_matrix()).amax() < 0.02);
        let d = s.diagnostics();
        assert!((d.rho - solution.rho).abs() < 1e-12);
        assert!(
            (d.algebraic_connectivity.unwrap() - solution.algebraic_connectivity).abs() < 1e-12
        );
        assert!(s.describe().starts_with(&format!(
            "matcha on erdos-renyi(p=0.5, seed=0), 8 nodes, {m} matchings, budget 0.5"
        )));
    }

    #[test]
    fn matcha_alpha_override_recomputes_rho() {
        let config = ScheduleConfig::Matcha {
            graph: GraphSpec::Ring,
            budget: 0.5,
            alpha: Some(0.25),
        };
        let s = config.build(8, 0).unwrap();
        let solution = s.matcha().unwrap();
        assert_eq!(solution.alpha, 0.25);
        let expected =
            matcha::rho(8, s.matchings().unwrap(), &solution.probabilities, 0.25).unwrap();
        assert!((solution.rho - expected).abs() < 1e-15);
        let optimal = matcha_on(GraphSpec::Ring).build(8, 0).unwrap();
        assert!(optimal.matcha().unwrap().rho <= solution.rho);
        let bad = ScheduleConfig::Matcha {
            graph: GraphSpec::Ring,
            budget: 0.5,
            alpha: Some(-1.0),
        };
        assert!(bad.build(8, 0).unwrap_err().0.contains("alpha"));
        let err = ScheduleConfig::Matcha {
            graph: GraphSpec::Ring,
            budget: 1.5,
            alpha: None,
        }
        .build(8, 0)
        .unwrap_err()
        .0;
        assert!(err.contains("budget"), "{err}");
    }

    #[test]
    fn push_sum_refuses_negative_matcha_self_weights() {
        // With every matching of K8 active a node has 7 partners: 1 − 0.2·7 < 0. The random
        // window may never draw that round; the structural check does.
        let s = ScheduleConfig::Matcha {
            graph: GraphSpec::Complete,
            budget: 0.5,
            alpha: Some(0.2),
        }
        .build(8, 0)
        .unwrap();
        assert_eq!(s.check(Protocol::Symmetric), Ok(()));
        let err = s.check(Protocol::PushSum).unwrap_err().0;
        assert!(err.contains("negative self weight"), "{err}");
    }
}
