//! SGP's time-varying directed exponential graph (`kind = "exponential"`): every node sends to
//! `peers` peers per step with uniform weights 1/(peers + 1), forward offsets j·(k+1)^i or the
//! ±2^i "phone book" (see [`Directions`]).

use serde::{Deserialize, Serialize};

use super::circulant::{distinct_offsets, powers_up_to, Circulant, Shape};
use super::gcd;
use crate::{ensure, Result};

/// Which directions SGP's exponential graph uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Directions {
    /// Offsets j·(k+1)^i ahead only (the paper's graph; the reference's default graph_type 5).
    #[default]
    Forward,
    /// The ±2^i "phone book" r+1, r−1, r+2, r−2, … (the reference's SGP job scripts, graph_type 0).
    Both,
}

impl Circulant {
    /// SGP's exponential graphs (see [`Directions`]).
    pub(super) fn exponential(n: usize, peers: usize, directions: Directions) -> Result<Circulant> {
        ensure!(peers >= 1, "exponential peers must be at least 1, got 0");
        let shape = Shape::Exponential { peers, directions };
        if n == 1 {
            return Ok(Circulant {
                shape,
                steps: vec![Vec::new()],
            });
        }
        let steps = match directions {
            Directions::Both => {
                // Phone book +1, −1, +2, −2, +4, … ± 2^⌊log2(n−1)⌋; node r sends to entries
                // t·k … t·k + k − 1 (mod len) at step t, so the sequence repeats after
                // len / gcd(k, len) steps.
                let hops = powers_up_to(2, n - 1);
                let book = distinct_offsets(n, hops.iter().flat_map(|&h| [h, n - h]));
                ensure!(
                    peers <= book.len(),
                    "exponential with {peers} peers per step needs at most {} for {n} workers \
                     (the phone book has {} distinct offsets)",
                    book.len(),
                    book.len()
                );
                let period = book.len() / gcd(peers as u64, book.len() as u64) as usize;
                (0..period)
                    .map(|t| {
                        (0..peers)
                            .map(|j| book[(t * peers + j) % book.len()])
                            .collect()
                    })
                    .collect()
            }
            Directions::Forward => {
                // Group i = offsets j·(k+1)^i, j = 1..k; offsets that wrap to 0 or repeat
                // within the group (small n) are dropped, and the weights stay uniform over
                // the remaining ones.
                ensure!(
                    peers < n,
                    "exponential with {peers} peers per step needs more than {peers} workers, \
                     got {n}"
                );
                powers_up_to(peers + 1, n - 1)
                    .into_iter()
                    .map(|base| {
                        distinct_offsets(
                            n,
                            (1..=peers).map(|j| ((j as u128 * base as u128) % n as u128) as usize),
                        )
                    })
                    .collect()
            }
        };
        Ok(Circulant { shape, steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::{apply, exponential};
    use crate::schedule::{Protocol, Round};
    use proptest::prelude::*;

    #[test]
    fn exponential_phone_book_both_directions() {
        // 8 workers: +1, −1, +2, −2, +4 (−4 ≡ +4 dropped) — 5 entries.
        let s = exponential(1, Directions::Both).build(8, 0).unwrap();
        assert_eq!(s.period(), Some(5));
        let firsts: Vec<usize> = (0..5).map(|t| s.node(t, 0).send[0].0).collect();
        assert_eq!(firsts, vec![1, 7, 2, 6, 4]);
        // 32 workers: 9 entries since +16 ≡ −16.
        assert_eq!(
            exponential(1, Directions::Both)
                .build(32, 0)
                .unwrap()
                .period(),
            Some(9)
        );
        // Two peers on a 5-entry book: entries (0,1), (2,3), (4,0), … — period 5.
        let s = exponential(2, Directions::Both).build(8, 0).unwrap();
        assert_eq!(s.period(), Some(5));
        let view = s.node(2, 0);
        assert_eq!(view.send, vec![(1, 1.0 / 3.0), (4, 1.0 / 3.0)]);
        assert_eq!(view.recv, vec![(4, 1.0 / 3.0), (7, 1.0 / 3.0)]);
        let err = exponential(6, Directions::Both).build(8, 0).unwrap_err().0;
        assert!(err.contains("6 peers") && err.contains("5"), "{err}");
        assert!(exponential(0, Directions::Both).build(8, 0).is_err());
    }

    #[test]
    fn exponential_forward_groups() {
        // k = 1: hops 1, 2, 4 ahead on 8 workers, ½–½.
        let s = exponential(1, Directions::Forward).build(8, 0).unwrap();
        assert_eq!(s.period(), Some(3));
        let hops: Vec<usize> = (0..3).map(|t| s.node(t, 0).send[0].0).collect();
        assert_eq!(hops, vec![1, 2, 4]);
        assert_eq!(s.node(1, 0).recv, vec![(6, 0.5)]);
        assert_eq!(s.round(0).self_weight, vec![0.5; 8]);
        // k = 2 on 9 workers: groups {1, 2} and {3, 6}, weights ⅓.
        let s = exponential(2, Directions::Forward).build(9, 0).unwrap();
        assert_eq!(s.period(), Some(2));
        let peers: Vec<usize> = s.node(1, 0).send.iter().map(|&(p, _)| p).collect();
        assert_eq!(peers, vec![3, 6]);
        // k = 2 on 6 workers: group 1 is {3, 6 ≡ 0} → just {3}, weights ½.
        let s = exponential(2, Directions::Forward).build(6, 0).unwrap();
        assert_eq!(s.node(1, 0).send, vec![(3, 0.5)]);
        assert!(exponential(8, Directions::Forward).build(8, 0).is_err());
        // A single worker only keeps its own value.
        let one = exponential(3, Directions::Forward).build(1, 0).unwrap();
        assert_eq!(
            one.round(5),
            Round {
                self_weight: vec![1.0],
                edges: vec![]
            }
        );
        assert_eq!(one.check(Protocol::PushSum), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn push_sum_conserves_mass(
            n in 3usize..=40,
            peers in 1usize..4,
            both in any::<bool>(),
            x in prop::collection::vec(-10.0f64..10.0, 40),
        ) {
            prop_assume!(!n.is_power_of_two() && peers < n);
            let directions = if both { Directions::Both } else { Directions::Forward };
            let Ok(schedule) = exponential(peers, directions).build(n, 0) else {
                return Ok(());
            };
            let mut x = x[..n].to_vec();
            let mut w = vec![1.0; n];
            let (mass, weight) = (x.iter().sum::<f64>(), n as f64);
            for t in 0..50 {
                let round = schedule.round(t);
                prop_assert!(round.check(Protocol::PushSum, 1e-12).is_ok());
                x = apply(&round, &x);
                w = apply(&round, &w);
                prop_assert!((x.iter().sum::<f64>() - mass).abs() < 1e-9);
                prop_assert!((w.iter().sum::<f64>() - weight).abs() < 1e-9);
            }
        }
    }
}
