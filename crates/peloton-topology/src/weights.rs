//! Mixing weights on a static graph: the matrix W with W_ij ≠ 0 only on edges and the diagonal.
//!
//! Every rule here gives a symmetric W with rows summing to 1, hence doubly stochastic: consensus
//! averaging preserves the average and push-sum weights stay 1. They differ in how fast they mix
//! and in what they need to know: Metropolis–Hastings only the degrees of the two endpoints
//! (computable locally), max-degree the global Δ, best-constant the Laplacian spectrum.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::graph::Graph;
use crate::spectral;
use crate::{ensure, Result};

/// A rule turning a graph into mixing weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixingWeights {
    /// 1/(d + 1) for self and each neighbour (D-PSGD's ring weights ⅓); doubly stochastic only
    /// on regular graphs.
    Uniform,
    /// W_ij = 1/(1 + max(d_i, d_j)), W_ii = 1 − Σ_j W_ij: doubly stochastic on any graph, from
    /// local information only.
    #[default]
    MetropolisHastings,
    /// W = I − L/(Δ + 1).
    MaxDegree,
    /// W = I − αL with α = 2/(λ₂(L) + λ_max(L)) (Xiao–Boyd's best constant edge weight). May
    /// put a negative weight on the diagonal of a high-degree node.
    BestConstant,
}

impl MixingWeights {
    /// The dense mixing matrix of `graph`.
    pub fn matrix(&self, graph: &Graph) -> Result<DMatrix<f64>> {
        let n = graph.n();
        let identity = DMatrix::identity(n, n);
        Ok(match self {
            MixingWeights::Uniform => {
                let min = (0..n).map(|i| graph.degree(i)).min().unwrap_or(0);
                ensure!(
                    graph.is_regular(),
                    "uniform weights are doubly stochastic only on regular graphs (degrees \
                     range from {min} to {}); use metropolis-hastings",
                    graph.max_degree()
                );
                let w = 1.0 / (graph.degree(0) + 1) as f64;
                let mut m = identity * w;
                for &(a, b) in graph.edges() {
                    m[(a, b)] = w;
                    m[(b, a)] = w;
                }
                m
            }
            MixingWeights::MetropolisHastings => {
                let mut m = identity;
                for &(a, b) in graph.edges() {
                    let w = 1.0 / (1 + graph.degree(a).max(graph.degree(b))) as f64;
                    m[(a, b)] = w;
                    m[(b, a)] = w;
                    m[(a, a)] -= w;
                    m[(b, b)] -= w;
                }
                m
            }
            MixingWeights::MaxDegree => {
                identity - graph.laplacian() / (graph.max_degree() + 1) as f64
            }
            MixingWeights::BestConstant => {
                let laplacian = graph.laplacian();
                identity - &laplacian * spectral::best_constant_alpha(&laplacian)
            }
        })
    }

    /// The config-file name, e.g. "metropolis-hastings".
    pub fn name(&self) -> &'static str {
        match self {
            MixingWeights::Uniform => "uniform",
            MixingWeights::MetropolisHastings => "metropolis-hastings",
            MixingWeights::MaxDegree => "max-degree",
            MixingWeights::BestConstant => "best-constant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [MixingWeights; 4] = [
        MixingWeights::Uniform,
        MixingWeights::MetropolisHastings,
        MixingWeights::MaxDegree,
        MixingWeights::BestConstant,
    ];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn uniform_on_the_4_ring_is_one_third() {
        let w = MixingWeights::Uniform
            .matrix(&Graph::ring(4).unwrap())
            .unwrap();
        assert!(close(w[(0, 0)], 1.0 / 3.0) && close(w[(0, 1)], 1.0 / 3.0));
        assert!(close(w[(0, 3)], 1.0 / 3.0) && w[(0, 2)] == 0.0);
    }

    #[test]
    fn uniform_refuses_irregular_graphs() {
        let err = MixingWeights::Uniform
            .matrix(&Graph::star(4).unwrap())
            .unwrap_err()
            .0;
        assert!(
            err.contains("regular") && err.contains("metropolis-hastings"),
            "{err}"
        );
    }

    #[test]
    fn metropolis_hastings_on_a_star() {
        // Star with centre 0 and leaves 1, 2, 3: every edge has max degree 3, weight ¼; the
        // centre keeps 1 − 3/4 = ¼, each leaf 1 − ¼ = ¾.
        let w = MixingWeights::MetropolisHastings
            .matrix(&Graph::star(4).unwrap())
            .unwrap();
        assert!(close(w[(0, 0)], 0.25) && close(w[(0, 2)], 0.25) && close(w[(2, 0)], 0.25));
        assert!(close(w[(1, 1)], 0.75) && w[(1, 2)] == 0.0);
    }

    #[test]
    fn max_degree_on_a_star() {
        // Δ = 3: edges 1/4, centre 1 − 3/4, leaves 1 − 1/4.
        let w = MixingWeights::MaxDegree
            .matrix(&Graph::star(4).unwrap())
            .unwrap();
        assert!(close(w[(0, 0)], 0.25) && close(w[(0, 1)], 0.25) && close(w[(3, 3)], 0.75));
    }

    #[test]
    fn best_constant_on_the_8_ring() {
        // λ₂ = 2 − 2cos(π/4) = 2 − √2 and λ_max = 4, so α = 2/(6 − √2) ≈ 0.43613.
        let alpha = 2.0 / (6.0 - 2f64.sqrt());
        assert!((alpha - 0.436_130).abs() < 1e-6);
        let w = MixingWeights::BestConstant
            .matrix(&Graph::ring(8).unwrap())
            .unwrap();
        assert!(close(w[(0, 1)], alpha) && close(w[(0, 0)], 1.0 - 2.0 * alpha));
        // |1 − αλ₂| = |1 − αλ_max|: the two extreme eigenvalues are balanced.
        assert!(close(
            1.0 - alpha * (2.0 - 2f64.sqrt()),
            -(1.0 - 4.0 * alpha)
        ));
    }

    #[test]
    fn single_node_is_identity() {
        let g = Graph::ring(1).unwrap();
        for rule in ALL {
            assert_eq!(rule.matrix(&g).unwrap(), DMatrix::identity(1, 1));
        }
    }

    #[test]
    fn names_match_serde() {
        for rule in ALL {
            let value = toml::Value::try_from(rule).unwrap();
            assert_eq!(value.as_str(), Some(rule.name()));
        }
        assert_eq!(MixingWeights::default(), MixingWeights::MetropolisHastings);
    }

    proptest! {
        #[test]
        fn weights_are_symmetric_and_doubly_stochastic(
            n in 2usize..20, p in 0.2f64..1.0, seed in any::<u64>()
        ) {
            let g = Graph::erdos_renyi(n, p, seed).unwrap();
            for rule in ALL {
                let Ok(w) = rule.matrix(&g) else {
                    prop_assert!(rule == MixingWeights::Uniform && !g.is_regular());
                    continue;
                };
                prop_assert!(crate::spectral::is_symmetric(&w));
                for i in 0..n {
                    prop_assert!((w.row(i).sum() - 1.0).abs() < 1e-12);
                    for j in 0..n {
                        let edge = g.neighbors(i).contains(&j);
                        prop_assert!(i == j || edge || w[(i, j)] == 0.0);
                        prop_assert!(!edge || w[(i, j)] > 0.0);
                    }
                }
            }
        }
    }
}
