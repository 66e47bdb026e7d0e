//! Cycling through chosen matchings of a graph (`kind = "matchings"`): one matching per step
//! with W = I − α·L_matching (MATCHA's "FixedProcessor" D-PSGD baseline).

use crate::graph::{GraphSpec, Matching};
use crate::spectral;
use crate::{ensure, Result};

/// Cycling through chosen matchings of a graph with W = I − α·L_matching.
#[derive(Debug, Clone)]
pub(super) struct CyclicMatchings {
    pub(super) graph_name: String,
    pub(super) matchings: Vec<Matching>,
    pub(super) select: Vec<usize>,
    pub(super) alpha: f64,
}

impl CyclicMatchings {
    /// Builds `kind = "matchings"`: the matchings of `graph` on `n` nodes, cycling through
    /// `select` (all of them when absent), with the best constant α of the graph.
    pub(super) fn build(
        n: usize,
        graph: &GraphSpec,
        select: &Option<Vec<usize>>,
    ) -> Result<CyclicMatchings> {
        let built = graph.build(n)?;
        let matchings = built.matchings();
        let select = match select {
            Some(select) => {
                ensure!(!select.is_empty(), "matchings select is empty");
                for &j in select {
                    ensure!(
                        j < matchings.len(),
                        "matchings select names matching {j}, but {} has {} matchings",
                        graph.name(),
                        matchings.len()
                    );
                }
                select.clone()
            }
            None => (0..matchings.len()).collect(),
        };
        Ok(CyclicMatchings {
            graph_name: graph.name(),
            alpha: spectral::best_constant_alpha(&built.laplacian()),
            matchings,
            select,
        })
    }

    pub(super) fn active(&self, t: u64) -> Vec<&Matching> {
        if self.select.is_empty() {
            return Vec::new();
        }
        vec![&self.matchings[self.select[(t % self.select.len() as u64) as usize]]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Protocol, ScheduleConfig};

    /// The FixedProcessor situation of ALGORITHMS.md §5.2 on 8 nodes: colour classes 0 and 1 of
    /// this graph are {(0,4), (1,2), (3,5), (6,7)} and {(1,7), (2,3), (5,6)}; only the edge
    /// (4, 7) of class 2 ties {0, 4} to the 6-cycle 1 – 2 – 3 – 5 – 6 – 7.
    fn fixed_processor_graph() -> GraphSpec {
        GraphSpec::Edges {
            edges: vec![
                [0, 4],
                [1, 2],
                [1, 7],
                [2, 3],
                [3, 5],
                [4, 7],
                [5, 6],
                [6, 7],
            ],
        }
    }

    #[test]
    fn fixed_processor_disconnection_is_refused() {
        let graph = fixed_processor_graph();
        let built = graph.build(8).unwrap();
        assert!(built.is_connected());
        let matchings = built.matchings();
        assert_eq!(matchings[0].edges, vec![(0, 4), (1, 2), (3, 5), (6, 7)]);
        assert_eq!(matchings[1].edges, vec![(1, 7), (2, 3), (5, 6)]);
        let first_two = ScheduleConfig::Matchings {
            graph: graph.clone(),
            select: Some(vec![0, 1]),
        };
        let schedule = first_two.build(8, 0).unwrap();
        assert_eq!(schedule.period(), Some(2));
        let err = schedule.check(Protocol::Symmetric).unwrap_err().0;
        assert_eq!(
            err,
            "the links used by the schedule leave nodes {0, 4} disconnected from {1, 2, 3, 5, 6, 7}"
        );
        // All matchings, or a rotation through relabeled copies, reconnect the nodes.
        let all = ScheduleConfig::Matchings {
            graph: graph.clone(),
            select: None,
        };
        assert_eq!(all.build(8, 0).unwrap().check(Protocol::Symmetric), Ok(()));
        let rotations_connect = (0..10).any(|seed| {
            let rotation = ScheduleConfig::Rotation {
                base: Box::new(first_two.clone()),
                copies: 2,
                seed,
            };
            rotation
                .build(8, 0)
                .unwrap()
                .check(Protocol::Symmetric)
                .is_ok()
        });
        assert!(rotations_connect);
        let err = ScheduleConfig::Matchings {
            graph,
            select: Some(vec![0, 9]),
        }
        .build(8, 0)
        .unwrap_err()
        .0;
        assert!(err.contains("matching 9"), "{err}");
    }

    #[test]
    fn matchings_use_the_best_constant_alpha() {
        // 8-ring: α = 2/(λ₂ + λ_max) = 2/(6 − √2); two alternating perfect matchings.
        let s = ScheduleConfig::Matchings {
            graph: GraphSpec::Ring,
            select: None,
        }
        .build(8, 0)
        .unwrap();
        let alpha = 2.0 / (6.0 - 2f64.sqrt());
        assert_eq!(s.matchings().unwrap().len(), 2);
        let view = s.node(0, 0);
        assert_eq!(view.send.len(), 1);
        assert!((view.send[0].1 - alpha).abs() < 1e-12);
        assert!((view.self_weight - (1.0 - alpha)).abs() < 1e-12);
        assert!(s
            .describe()
            .starts_with("matchings of ring, 8 nodes, cycling 2 of 2"));
        let d = s.diagnostics();
        // E[L] = L_ring / 2, so λ₂ = (2 − √2)/2.
        let lambda2 = (2.0 - 2f64.sqrt()) / 2.0;
        assert!((d.algebraic_connectivity.unwrap() - lambda2).abs() < 1e-12);
    }
}
