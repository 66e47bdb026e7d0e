//! The static undirected exponential graph: i ~ i + 2^k (mod n) for every 2^k < n
//! (`kind = "exponential"`) — the static counterpart of SGP's time-varying exponential schedule.

use super::Graph;
use crate::Result;

impl Graph {
    /// The undirected exponential graph: i ~ i + 2^k (mod n) for every 2^k < n — the static
    /// counterpart of SGP's time-varying exponential schedule, degree O(log n), diameter
    /// O(log n).
    pub fn exponential(n: usize) -> Result<Graph> {
        let hops: Vec<usize> = std::iter::successors(Some(1usize), |h| h.checked_mul(2))
            .take_while(|&h| h < n)
            .collect();
        Graph::new(
            n,
            (0..n).flat_map(|i| hops.iter().map(move |&h| (i, (i + h) % n))),
        )
    }
}
