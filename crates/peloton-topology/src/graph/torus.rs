//! The torus: a rows × cols grid with wraparound (`kind = "torus"`, optional `rows`; the most
//! square factorization when `rows` is absent).

use super::Graph;
use crate::{ensure, Result, TopologyError};

impl Graph {
    /// The `rows × cols` grid with wraparound; node (r, c) is `r·cols + c`. A dimension of
    /// length 2 contributes one edge per pair (not two parallel ones), a dimension of length 1
    /// none, so `torus(1, n)` is the ring.
    pub fn torus(rows: usize, cols: usize) -> Result<Graph> {
        ensure!(
            rows >= 1 && cols >= 1,
            "torus dimensions must be at least 1, got {rows}x{cols}"
        );
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| TopologyError(format!("torus {rows}x{cols} is too large")))?;
        let mut edges = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let me = r * cols + c;
                if cols >= 2 {
                    edges.push((me, r * cols + (c + 1) % cols));
                }
                if rows >= 2 {
                    edges.push((me, ((r + 1) % rows) * cols + c));
                }
            }
        }
        Graph::new(n, edges)
    }
}

/// The largest divisor of `n` not above √n: the rows of the most square rows × cols grid.
pub(super) fn most_square_rows(n: usize) -> usize {
    (1..=n)
        .take_while(|r| r * r <= n)
        .filter(|&r| n.is_multiple_of(r))
        .last()
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torus_degrees() {
        let t = Graph::torus(3, 4).unwrap();
        assert_eq!((t.n(), t.edges().len()), (12, 24));
        assert!(t.is_regular() && t.degree(0) == 4);
        // 2 × 2: no duplicated wraparound edges, it is the 4-cycle 0 – 1 – 3 – 2 – 0.
        assert_eq!(
            Graph::torus(2, 2).unwrap().edges(),
            &[(0, 1), (0, 2), (1, 3), (2, 3)]
        );
        assert_eq!(Graph::torus(1, 5).unwrap(), Graph::ring(5).unwrap());
        assert_eq!(Graph::torus(1, 1).unwrap().edges().len(), 0);
        assert!(Graph::torus(0, 3).is_err());
    }
}
