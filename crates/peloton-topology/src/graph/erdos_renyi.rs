//! Erdős–Rényi graphs: G(n, p) conditioned on being connected (`kind = "erdos-renyi"`, `er`
//! on the command line).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Graph, MAX_DRAWS};
use crate::{ensure, Result, TopologyError};

impl Graph {
    /// A connected G(n, p) graph: every pair is an edge independently with probability `p`,
    /// drawn from a ChaCha8 stream seeded by `seed`; disconnected draws are discarded and the
    /// next graph is drawn from the same stream (so the result is G(n, p) conditioned on being
    /// connected). Errors after 1000 disconnected draws: `p` is too small for `n`.
    pub fn erdos_renyi(n: usize, p: f64, seed: u64) -> Result<Graph> {
        ensure!(
            p > 0.0 && p <= 1.0,
            "erdos-renyi p must be in (0, 1], got {p}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..MAX_DRAWS {
            let mut edges = Vec::new();
            for a in 0..n {
                for b in a + 1..n {
                    if rng.random::<f64>() < p {
                        edges.push((a, b));
                    }
                }
            }
            let graph = Graph::new(n, edges)?;
            if graph.is_connected() {
                return Ok(graph);
            }
        }
        Err(TopologyError(format!(
            "erdos-renyi p = {p} is too small for {n} nodes: {MAX_DRAWS} draws were all disconnected"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erdos_renyi_is_connected_and_reproducible() {
        let a = Graph::erdos_renyi(16, 0.3, 7).unwrap();
        assert!(a.is_connected());
        assert_eq!(a, Graph::erdos_renyi(16, 0.3, 7).unwrap());
        assert_eq!(
            Graph::erdos_renyi(5, 1.0, 0).unwrap(),
            Graph::complete(5).unwrap()
        );
        assert!(Graph::erdos_renyi(5, 0.0, 0).is_err());
        assert!(Graph::erdos_renyi(5, f64::NAN, 0).is_err());
        let err = Graph::erdos_renyi(60, 0.001, 0).unwrap_err().0;
        assert!(err.contains("too small"), "{err}");
    }
}
