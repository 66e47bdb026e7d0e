//! The α-β cost of every operation: α seconds per message, β seconds per byte.
//!
//! Collectives are costed as the algorithm a real library runs (Thakur, Rabenseifner & Gropp,
//! "Optimization of collective communication operations in MPICH", 2005), with p members and n
//! bytes per member, on the slowest link the algorithm uses:
//!
//! | operation | algorithm | time |
//! |---|---|---|
//! | all-reduce | ring (reduce-scatter + all-gather) | 2(p−1)·α + 2(p−1)/p · n·β |
//! | all-reduce | binomial tree (reduce, then broadcast) | 2⌈log₂p⌉·(α + n·β) |
//! | broadcast, reduce | binomial tree | ⌈log₂p⌉·(α + n·β) |
//! | all-gather (n bytes each) | ring | (p−1)·(α + n·β) |
//! | barrier | dissemination | ⌈log₂p⌉·α |
//!
//! Point-to-point: α + n·β, plus queueing on shared NICs (see [`Nics`]).

use crate::cluster::{CollectiveAlgorithm, Link};

/// ⌈log₂ p⌉ (0 for p ≤ 1).
pub fn ceil_log2(p: usize) -> u32 {
    if p <= 1 {
        0
    } else {
        usize::BITS - (p - 1).leading_zeros()
    }
}

/// Ring all-reduce: 2(p−1)α + 2(p−1)/p·nβ.
pub fn ring_all_reduce(p: usize, bytes: usize, link: Link) -> f64 {
    if p <= 1 {
        return 0.0;
    }
    let p = p as f64;
    2.0 * (p - 1.0) * link.alpha() + 2.0 * (p - 1.0) / p * bytes as f64 * link.beta()
}

/// Binomial-tree all-reduce (reduce + broadcast): 2⌈log₂p⌉(α + nβ).
pub fn tree_all_reduce(p: usize, bytes: usize, link: Link) -> f64 {
    2.0 * tree(p, bytes, link)
}

/// Binomial-tree broadcast or reduce: ⌈log₂p⌉(α + nβ).
pub fn tree(p: usize, bytes: usize, link: Link) -> f64 {
    ceil_log2(p) as f64 * (link.alpha() + bytes as f64 * link.beta())
}

/// Ring all-gather of `bytes` per member: (p−1)(α + nβ).
pub fn ring_all_gather(p: usize, bytes: usize, link: Link) -> f64 {
    p.saturating_sub(1) as f64 * (link.alpha() + bytes as f64 * link.beta())
}

/// Dissemination barrier: ⌈log₂p⌉α.
pub fn barrier(p: usize, link: Link) -> f64 {
    ceil_log2(p) as f64 * link.alpha()
}

/// All-reduce under the configured algorithm choice.
pub fn all_reduce(algorithm: CollectiveAlgorithm, p: usize, bytes: usize, link: Link) -> f64 {
    match algorithm {
        CollectiveAlgorithm::Ring => ring_all_reduce(p, bytes, link),
        CollectiveAlgorithm::Tree => tree_all_reduce(p, bytes, link),
        CollectiveAlgorithm::Auto => {
            ring_all_reduce(p, bytes, link).min(tree_all_reduce(p, bytes, link))
        }
    }
}

/// The network interfaces of the nodes: a message between two nodes occupies the sender's
/// outbound NIC for n·β, travels α, then occupies the receiver's inbound NIC for n·β; messages
/// that want a busy NIC wait for it (first come, first served in virtual time).
#[derive(Debug, Clone)]
pub struct Nics {
    outbound_free: Vec<f64>,
    inbound_free: Vec<f64>,
}

/// When a message has left the sender and when it has fully arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// The sender's NIC is done with it (a blocking send returns then).
    pub injected: f64,
    /// The receiver holds the whole message.
    pub arrival: f64,
}

impl Nics {
    pub fn new(nodes: usize) -> Self {
        Self {
            outbound_free: vec![0.0; nodes],
            inbound_free: vec![0.0; nodes],
        }
    }

    /// When each node's (outbound, inbound) NIC is next free, for a checkpoint.
    pub fn busy_until(&self) -> (&[f64], &[f64]) {
        (&self.outbound_free, &self.inbound_free)
    }

    /// Restores what [`Nics::busy_until`] returned; the node count must match.
    pub fn set_busy_until(&mut self, outbound: &[f64], inbound: &[f64]) -> bool {
        if outbound.len() != self.outbound_free.len() || inbound.len() != self.inbound_free.len() {
            return false;
        }
        self.outbound_free.copy_from_slice(outbound);
        self.inbound_free.copy_from_slice(inbound);
        true
    }

    /// A message of `bytes` sent at `time` over `link`; `nodes = (from, to)` share NICs when
    /// `contention` and the nodes differ. Intra-node messages never queue.
    pub fn transfer(
        &mut self,
        time: f64,
        bytes: usize,
        link: Link,
        nodes: (usize, usize),
        contention: bool,
    ) -> Transfer {
        let wire = bytes as f64 * link.beta();
        if !contention || nodes.0 == nodes.1 {
            return Transfer {
                injected: time + wire,
                arrival: time + link.alpha() + wire,
            };
        }
        let start = time.max(self.outbound_free[nodes.0]);
        self.outbound_free[nodes.0] = start + wire;
        let reach = start + link.alpha();
        let enter = reach.max(self.inbound_free[nodes.1]);
        self.inbound_free[nodes.1] = enter + wire;
        Transfer {
            injected: start + wire,
            arrival: enter + wire,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// α = 10 µs, 8 Gb/s → β = 1 ns per byte.
    fn link() -> Link {
        Link {
            latency_us: 10.0,
            bandwidth_gbps: 8.0,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn collective_formulas_match_hand_computed_values() {
        // Ring all-reduce, p = 4, n = 1 MB: 2·3·10 µs + 2·3/4·10⁶·1 ns = 60 µs + 1.5 ms.
        close(ring_all_reduce(4, 1_000_000, link()), 60e-6 + 1.5e-3);
        // p = 1 costs nothing.
        close(ring_all_reduce(1, 1_000_000, link()), 0.0);
        // Tree all-reduce, p = 5 (⌈log₂5⌉ = 3), n = 1000 B: 2·3·(10 µs + 1 µs) = 66 µs.
        close(tree_all_reduce(5, 1000, link()), 66e-6);
        // Broadcast, p = 8: 3·(10 µs + 1 µs) = 33 µs.
        close(tree(8, 1000, link()), 33e-6);
        // All-gather of 4 bytes each over 16 members: 15·(10 µs + 4 ns).
        close(ring_all_gather(16, 4, link()), 15.0 * (10e-6 + 4e-9));
        close(barrier(9, link()), 4.0 * 10e-6);
        // Auto picks the tree for small messages, the ring for large ones.
        close(
            all_reduce(CollectiveAlgorithm::Auto, 16, 8, link()),
            tree_all_reduce(16, 8, link()),
        );
        close(
            all_reduce(CollectiveAlgorithm::Auto, 16, 10_000_000, link()),
            ring_all_reduce(16, 10_000_000, link()),
        );
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(1024), 10);
        assert_eq!(ceil_log2(1025), 11);
    }

    #[test]
    fn point_to_point_and_nic_contention_match_hand_computed_values() {
        let mut nics = Nics::new(2);
        // One 1000-byte message node 0 → node 1 at t = 0: injected after 1 µs, arrives at
        // α + nβ = 11 µs.
        let a = nics.transfer(0.0, 1000, link(), (0, 1), true);
        close(a.injected, 1e-6);
        close(a.arrival, 11e-6);
        // A second one from the same node at t = 0 waits for the outbound NIC (starts at 1 µs)
        // and then for the inbound NIC (free at 11 µs): arrives at 12 µs.
        let b = nics.transfer(0.0, 1000, link(), (0, 1), true);
        close(b.injected, 2e-6);
        close(b.arrival, 12e-6);
        // Without contention both would arrive at 11 µs.
        let mut free = Nics::new(2);
        close(
            free.transfer(0.0, 1000, link(), (0, 1), false).arrival,
            11e-6,
        );
        close(
            free.transfer(0.0, 1000, link(), (0, 1), false).arrival,
            11e-6,
        );
        // Intra-node messages never queue.
        close(
            nics.transfer(0.0, 1000, link(), (1, 1), true).arrival,
            11e-6,
        );
        // A later message finds the NICs free again: sent at 1 ms, arrives 11 µs later.
        close(
            nics.transfer(1e-3, 1000, link(), (0, 1), true).arrival,
            1e-3 + 11e-6,
        );
    }
}
