//! The ring: the cycle 0 – 1 – … – (n−1) – 0 (`kind = "ring"`, the default graph).

use super::Graph;
use crate::Result;

impl Graph {
    /// The cycle 0 – 1 – … – (n−1) – 0 (one edge for n = 2, none for n = 1).
    pub fn ring(n: usize) -> Result<Graph> {
        let edges = if n >= 2 {
            (0..n).map(|i| (i, (i + 1) % n)).collect()
        } else {
            Vec::new()
        };
        Graph::new(n, edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_rings() {
        assert!(Graph::ring(1).unwrap().edges().is_empty());
        assert_eq!(Graph::ring(2).unwrap().edges(), &[(0, 1)]);
        assert_eq!(Graph::ring(3).unwrap().edges(), &[(0, 1), (0, 2), (1, 2)]);
        let r = Graph::ring(6).unwrap();
        assert!(r.is_regular() && r.is_connected() && r.max_degree() == 2);
        assert!(Graph::ring(0).is_err());
    }
}
