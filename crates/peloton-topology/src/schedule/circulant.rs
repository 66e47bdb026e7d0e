//! Time-varying circulant graphs with uniform weights: the shared machinery of the
//! `exponential` and `bipartite` schedules (every node r sends to r + o for each offset o of
//! the step).

use super::{sort_edges, Directions, Edge, NodeRound, Round};

/// What a circulant schedule was built as.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    Exponential {
        peers: usize,
        directions: Directions,
    },
    Bipartite,
}

/// A time-varying circulant graph with uniform weights: at step t every node r sends to
/// r + o and receives from r − o (mod n) for each offset o of `steps[t mod len]`, all with
/// weight 1/(k + 1) (k offsets). Every node sends to and receives from exactly k distinct peers,
/// so the round is both column- and row-stochastic.
#[derive(Debug, Clone)]
pub(super) struct Circulant {
    pub(super) shape: Shape,
    pub(super) steps: Vec<Vec<usize>>,
}

impl Circulant {
    fn step(&self, t: u64) -> &[usize] {
        &self.steps[(t % self.steps.len() as u64) as usize]
    }

    pub(super) fn round(&self, n: usize, t: u64) -> Round {
        let offsets = self.step(t);
        let weight = 1.0 / (offsets.len() + 1) as f64;
        let mut edges: Vec<Edge> = (0..n)
            .flat_map(|from| {
                offsets.iter().map(move |&o| Edge {
                    from,
                    to: (from + o) % n,
                    weight,
                })
            })
            .collect();
        sort_edges(&mut edges);
        Round {
            self_weight: vec![weight; n],
            edges,
        }
    }

    pub(super) fn node(&self, n: usize, t: u64, rank: usize) -> NodeRound {
        let offsets = self.step(t);
        let weight = 1.0 / (offsets.len() + 1) as f64;
        let peers = |sign: fn(usize, usize, usize) -> usize| {
            let mut peers: Vec<(usize, f64)> = offsets
                .iter()
                .map(|&o| (sign(rank, o, n), weight))
                .collect();
            peers.sort_by_key(|&(peer, _)| peer);
            peers
        };
        NodeRound {
            self_weight: weight,
            send: peers(|r, o, n| (r + o) % n),
            recv: peers(|r, o, n| (r + n - o) % n),
        }
    }
}

/// 1, b, b², … up to and including `limit`.
pub(super) fn powers_up_to(base: usize, limit: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |p| p.checked_mul(base))
        .take_while(|&p| p <= limit)
        .collect()
}

/// Offsets reduced mod n, without 0 (a self-link) and without repeats (first occurrence kept).
pub(super) fn distinct_offsets(n: usize, offsets: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut kept = Vec::new();
    for o in offsets.into_iter().map(|o| o % n) {
        if o != 0 && !kept.contains(&o) {
            kept.push(o);
        }
    }
    kept
}
