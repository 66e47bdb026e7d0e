//! The hypercube on `n = 2^d` nodes: i ~ j when their binary labels differ in one bit
//! (`kind = "hypercube"`).

use super::Graph;
use crate::{ensure, Result};

impl Graph {
    /// The hypercube on `n = 2^d` nodes: i ~ j when their binary labels differ in one bit.
    pub fn hypercube(n: usize) -> Result<Graph> {
        ensure!(
            n.is_power_of_two(),
            "a hypercube needs a power-of-two number of nodes, got {n}"
        );
        let bits = n.trailing_zeros();
        let edges = (0..n).flat_map(|i| (0..bits).map(move |b| (i, i ^ (1 << b))));
        Graph::new(n, edges)
    }
}
