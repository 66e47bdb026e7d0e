//! D-PSGD's / AD-PSGD's bipartite exponential graph (`kind = "bipartite"`): offsets ±1, ±3,
//! ±5, ±9, … cycled, one peer per step, ½–½ weights; even ranks passive, odd ranks active
//! (needs an even number of workers).

use super::circulant::{distinct_offsets, powers_up_to, Circulant, Shape};
use crate::{ensure, Result};

/// Bipartite roles for deadlock-free pairwise exchange (D-PSGD, AD-PSGD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends first, then receives (odd ranks).
    Active,
    /// Receives first, then sends (even ranks).
    Passive,
}

impl Circulant {
    /// The bipartite exponential graph: offsets ±1, ±(1 + 2^i) while 1 + 2^i < n, one per
    /// step. All offsets are odd and n is even, so every link joins an even and an odd rank.
    pub(super) fn bipartite(n: usize) -> Result<Circulant> {
        ensure!(
            n >= 2 && n.is_multiple_of(2),
            "bipartite needs an even number of workers, got {n}"
        );
        let magnitudes = std::iter::once(1)
            .chain(powers_up_to(2, n).into_iter().skip(1).map(|p| p + 1))
            .filter(|&o| o < n);
        let offsets = distinct_offsets(n, magnitudes.flat_map(|o| [o, n - o]));
        Ok(Circulant {
            shape: Shape::Bipartite,
            steps: offsets.into_iter().map(|o| vec![o]).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::exponential;
    use crate::schedule::{Directions, ScheduleConfig};

    #[test]
    fn bipartite_offsets_and_roles() {
        let s = ScheduleConfig::Bipartite {}.build(8, 0).unwrap();
        assert_eq!(s.period(), Some(4));
        let offsets: Vec<usize> = (0..4).map(|t| s.node(t, 0).send[0].0).collect();
        assert_eq!(offsets, vec![1, 7, 3, 5]);
        assert_eq!(s.role(0), Some(Role::Passive));
        assert_eq!(s.role(3), Some(Role::Active));
        assert_eq!(s.role(8), None);
        for t in 0..4 {
            for e in s.round(t).edges {
                assert_ne!(e.from % 2, e.to % 2, "links join opposite roles");
                assert_eq!(e.weight, 0.5);
            }
        }
        let err = ScheduleConfig::Bipartite {}.build(7, 0).unwrap_err().0;
        assert_eq!(err, "bipartite needs an even number of workers, got 7");
        assert!(ScheduleConfig::Bipartite {}.build(1, 0).is_err());
        assert_eq!(
            ScheduleConfig::Bipartite {}.build(2, 0).unwrap().period(),
            Some(1)
        );
        assert_eq!(
            exponential(1, Directions::Both)
                .build(8, 0)
                .unwrap()
                .role(1),
            None
        );
    }
}
