//! The complete graph: every pair of nodes connected (`kind = "complete"`).

use super::Graph;
use crate::Result;

impl Graph {
    /// Every pair of nodes connected.
    pub fn complete(n: usize) -> Result<Graph> {
        Graph::new(n, (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))))
    }
}
