//! The star: node 0 connected to every other node (`kind = "star"`).

use super::Graph;
use crate::Result;

impl Graph {
    /// Node 0 connected to every other node.
    pub fn star(n: usize) -> Result<Graph> {
        Graph::new(n, (1..n).map(|i| (0, i)))
    }
}
