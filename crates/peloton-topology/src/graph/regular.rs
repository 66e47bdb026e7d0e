//! Random regular graphs: a random connected `degree`-regular graph drawn with the pairing
//! model (`kind = "regular"`), an expander with high probability.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Graph, MAX_DRAWS};
use crate::{ensure, Result, TopologyError};

impl Graph {
    /// A connected simple `degree`-regular graph (an expander with high probability), drawn
    /// with the pairing model: every node gets `degree` stubs, and random stub pairs are joined
    /// unless they would make a self-loop or a repeated edge; a draw that gets stuck or comes
    /// out disconnected is redrawn from the same ChaCha8 stream.
    pub fn random_regular(n: usize, degree: usize, seed: u64) -> Result<Graph> {
        ensure!(n >= 1, "a graph needs at least one node");
        ensure!(
            degree < n,
            "a {degree}-regular graph needs more than {degree} nodes, got {n}"
        );
        ensure!(
            (n * degree).is_multiple_of(2),
            "a {degree}-regular graph on {n} nodes does not exist: n·degree must be even"
        );
        ensure!(
            n == 1 || degree >= 2 || (n == 2 && degree == 1),
            "a {degree}-regular graph on {n} nodes is disconnected; use degree ≥ 2"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..MAX_DRAWS {
            if let Some(edges) = pair_stubs(n, degree, &mut rng) {
                let graph = Graph::new(n, edges)?;
                if graph.is_connected() {
                    return Ok(graph);
                }
            }
        }
        Err(TopologyError(format!(
            "no connected simple {degree}-regular graph on {n} nodes found in {MAX_DRAWS} draws"
        )))
    }
}

/// One draw of the pairing model: joins random stub pairs, skipping pairs that would make a
/// self-loop or a repeated edge. After a run of rejected picks, the remaining valid pairs are
/// listed and one is picked from them, so the draw never spins; `None` when none is left.
fn pair_stubs(n: usize, degree: usize, rng: &mut ChaCha8Rng) -> Option<Vec<(usize, usize)>> {
    const REJECTIONS_BEFORE_LISTING: usize = 64;
    let mut stubs: Vec<usize> = (0..n)
        .flat_map(|v| std::iter::repeat_n(v, degree))
        .collect();
    let mut edges = BTreeSet::new();
    let valid = |edges: &BTreeSet<(usize, usize)>, a: usize, b: usize| {
        a != b && !edges.contains(&(a.min(b), a.max(b)))
    };
    let mut rejections = 0;
    while !stubs.is_empty() {
        let (i, j) = if rejections < REJECTIONS_BEFORE_LISTING {
            (
                rng.random_range(0..stubs.len()),
                rng.random_range(0..stubs.len()),
            )
        } else {
            let pairs: Vec<(usize, usize)> = (0..stubs.len())
                .flat_map(|i| (i + 1..stubs.len()).map(move |j| (i, j)))
                .filter(|&(i, j)| valid(&edges, stubs[i], stubs[j]))
                .collect();
            if pairs.is_empty() {
                return None;
            }
            pairs[rng.random_range(0..pairs.len())]
        };
        let (a, b) = (stubs[i], stubs[j]);
        if i == j || !valid(&edges, a, b) {
            rejections += 1;
            continue;
        }
        rejections = 0;
        edges.insert((a.min(b), a.max(b)));
        stubs.swap_remove(i.max(j));
        stubs.swap_remove(i.min(j));
    }
    Some(edges.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn random_regular_errors() {
        assert!(Graph::random_regular(5, 3, 0)
            .unwrap_err()
            .0
            .contains("even"));
        assert!(Graph::random_regular(4, 4, 0).is_err());
        assert!(Graph::random_regular(6, 1, 0).is_err());
        assert!(Graph::random_regular(2, 0, 0)
            .unwrap_err()
            .0
            .contains("disconnected"));
        assert_eq!(Graph::random_regular(2, 1, 0).unwrap().edges(), &[(0, 1)]);
        assert_eq!(Graph::random_regular(1, 0, 0).unwrap().n(), 1);
        assert_eq!(
            Graph::random_regular(6, 5, 3).unwrap(),
            Graph::complete(6).unwrap()
        );
    }

    proptest! {
        #[test]
        fn random_regular_is_regular_and_connected(
            half_n in 2usize..12, degree in 2usize..5, seed in any::<u64>()
        ) {
            let n = 2 * half_n;
            prop_assume!(degree < n);
            let g = Graph::random_regular(n, degree, seed).unwrap();
            prop_assert!(g.is_regular() && g.degree(0) == degree && g.is_connected());
        }
    }
}
