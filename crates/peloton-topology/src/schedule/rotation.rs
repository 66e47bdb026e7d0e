//! AL-DSGD's dynamic graphs (`kind = "rotation"`): step t uses copy t mod `copies` of a base
//! schedule at that copy's own step t / copies; copy 0 is the base, copy c > 0 relabels its nodes
//! with a permutation drawn from `seed` and draws its own activations.

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{derive_seed, Schedule, ScheduleConfig, COPY_STREAM, RELABEL_STREAM};
use crate::{ensure, Result};

/// Step t uses copy t mod C at its own step t div C.
#[derive(Debug, Clone)]
pub(super) struct Rotation {
    pub(super) copies: Vec<RelabeledCopy>,
}

/// A copy of the base schedule whose node i is renamed `perm[i]`.
#[derive(Debug, Clone)]
pub(super) struct RelabeledCopy {
    pub(super) schedule: Schedule,
    pub(super) perm: Vec<usize>,
    pub(super) inverse: Vec<usize>,
}

impl Rotation {
    /// Builds `kind = "rotation"`: `copies` copies of `base` on `n` nodes, copy c > 0 relabeled
    /// with a permutation drawn from `relabel_seed`; `seed` is the run seed.
    pub(super) fn build(
        n: usize,
        seed: u64,
        base: &ScheduleConfig,
        copies: &usize,
        relabel_seed: &u64,
    ) -> Result<Rotation> {
        ensure!(*copies >= 1, "rotation copies must be at least 1, got 0");
        ensure!(
            !matches!(*base, ScheduleConfig::Rotation { .. }),
            "rotation cannot nest another rotation"
        );
        let copies = (0..*copies as u64)
            .map(|c| {
                if c == 0 {
                    let identity: Vec<usize> = (0..n).collect();
                    return Ok(RelabeledCopy {
                        schedule: base.build(n, seed)?,
                        perm: identity.clone(),
                        inverse: identity,
                    });
                }
                let schedule = base.build(n, derive_seed(seed, COPY_STREAM, c))?;
                let perm = random_permutation(n, derive_seed(*relabel_seed, RELABEL_STREAM, c));
                let mut inverse = vec![0; n];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                Ok(RelabeledCopy {
                    schedule,
                    perm,
                    inverse,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Rotation { copies })
    }

    /// The copy used at step t and that copy's own step.
    pub(super) fn at(&self, t: u64) -> (&RelabeledCopy, u64) {
        let copies = self.copies.len() as u64;
        (&self.copies[(t % copies) as usize], t / copies)
    }

    /// The mean over copies of f(copy), relabeled.
    pub(super) fn mean(&self, f: impl Fn(&Schedule) -> DMatrix<f64>) -> DMatrix<f64> {
        let n = self.copies[0].perm.len();
        let mut total = DMatrix::zeros(n, n);
        for copy in &self.copies {
            total += permute(&f(&copy.schedule), &copy.perm);
        }
        total / self.copies.len() as f64
    }
}

/// The matrix with node i renamed `perm[i]`: P·M·Pᵀ.
pub(super) fn permute(m: &DMatrix<f64>, perm: &[usize]) -> DMatrix<f64> {
    let mut out = DMatrix::zeros(m.nrows(), m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out[(perm[i], perm[j])] = m[(i, j)];
        }
    }
    out
}

/// A uniform permutation of 0..n (Fisher–Yates on a ChaCha8 stream).
fn random_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        perm.swap(i, rng.random_range(0..=i));
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphSpec;
    use crate::schedule::tests::matcha_on;
    use crate::schedule::Round;

    #[test]
    fn rotation_relabels_copies() {
        let base = ScheduleConfig::Matchings {
            graph: GraphSpec::Ring,
            select: None,
        };
        let rotation = ScheduleConfig::Rotation {
            base: Box::new(base.clone()),
            copies: 3,
            seed: 5,
        };
        let s = rotation.build(8, 0).unwrap();
        let plain = base.build(8, 0).unwrap();
        assert_eq!(s.period(), Some(6));
        // Copy 0 is the base at its own step t / 3.
        assert_eq!(s.round(0), plain.round(0));
        assert_eq!(s.round(3), plain.round(1));
        assert_eq!(s.matchings(), plain.matchings());
        // Other copies are the same mixing on relabeled nodes: same multiset of weights.
        let weights = |r: &Round| {
            let mut w: Vec<u64> = r.self_weight.iter().map(|x| x.to_bits()).collect();
            w.sort_unstable();
            w
        };
        assert_eq!(weights(&s.round(1)), weights(&plain.round(0)));
        assert_ne!(s.round(1), plain.round(0));
        assert!(s
            .describe()
            .starts_with("rotation among 3 relabeled copies of matchings"));
        let d = s.diagnostics();
        assert!(
            d.algebraic_connectivity.unwrap() > plain.diagnostics().algebraic_connectivity.unwrap()
        );
        assert_eq!(s.role(0), None);
        // Copy count and nesting.
        let none = ScheduleConfig::Rotation {
            base: Box::new(base.clone()),
            copies: 0,
            seed: 0,
        };
        assert!(none.build(8, 0).unwrap_err().0.contains("copies"));
        let nested = ScheduleConfig::Rotation {
            base: Box::new(rotation),
            copies: 2,
            seed: 0,
        };
        assert!(nested.build(8, 0).unwrap_err().0.contains("nest"));
        let single = ScheduleConfig::Rotation {
            base: Box::new(base),
            copies: 1,
            seed: 0,
        };
        assert_eq!(single.build(8, 0).unwrap().round(1), plain.round(1));
    }

    #[test]
    fn rotation_of_matcha_has_no_period() {
        let s = ScheduleConfig::Rotation {
            base: Box::new(matcha_on(GraphSpec::Ring)),
            copies: 2,
            seed: 0,
        }
        .build(6, 9)
        .unwrap();
        assert_eq!(s.period(), None);
        assert!(s.matcha().is_some());
        let expected = s.expected_matrix();
        for i in 0..6 {
            assert!((expected.row(i).sum() - 1.0).abs() < 1e-12);
        }
    }
}
