//! The same graph every step, with static mixing weights (`kind = "static"`).

use super::{NodeRound, Round};
use crate::graph::{Graph, GraphSpec};
use crate::weights::MixingWeights;
use crate::Result;

/// One mixing matrix for every step.
#[derive(Debug, Clone)]
pub(super) struct StaticMix {
    pub(super) graph_name: String,
    pub(super) weights: MixingWeights,
    pub(super) graph: Graph,
    pub(super) round: Round,
    /// Every node's view of `round`, precomputed.
    pub(super) nodes: Vec<NodeRound>,
}

impl StaticMix {
    /// Builds `kind = "static"`: `graph` for `n` nodes with `weights`, every node's view
    /// precomputed.
    pub(super) fn build(n: usize, graph: &GraphSpec, weights: &MixingWeights) -> Result<StaticMix> {
        let built = graph.build(n)?;
        let round = Round::from_matrix(&weights.matrix(&built)?);
        Ok(StaticMix {
            graph_name: graph.name(),
            weights: *weights,
            nodes: (0..n).map(|rank| round.node(rank)).collect(),
            graph: built,
            round,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::exponential;
    use crate::schedule::{Directions, ScheduleConfig};

    #[test]
    fn static_diagnostics() {
        let s = ScheduleConfig::Static {
            graph: GraphSpec::Ring,
            weights: MixingWeights::Uniform,
        }
        .build(4, 0)
        .unwrap();
        let d = s.diagnostics();
        assert!((d.mixing_rate - 1.0 / 3.0).abs() < 1e-12);
        assert!((d.rho - 1.0 / 9.0).abs() < 1e-12);
        assert!((d.algebraic_connectivity.unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(s.describe(), "static ring with uniform weights, 4 nodes");
        assert!(s.matchings().is_none() && s.matcha().is_none());
        assert_eq!(s.links().len(), 8);
        let e = exponential(1, Directions::Forward).build(8, 0).unwrap();
        assert!(e.diagnostics().algebraic_connectivity.is_none());
        assert!(e.diagnostics().spectral_gap > 0.0);
    }
}
