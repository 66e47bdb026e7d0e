//! Sharding a dataset over workers: IID (a shared random permutation cut into near-equal
//! contiguous pieces) or non-IID by Dirichlet(α) label skew (each class split over workers in
//! proportions drawn from Dir(α·1)). Every worker computes the same partition from the run
//! seed, so no communication is needed and shards never overlap.

use peloton_core::seed;
use peloton_core::{ensure_config, Error, Result};
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

/// How training samples are spread over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Partition {
    /// Uniformly random, equal-size shards.
    #[default]
    Iid,
    /// Label skew: class c's samples go to workers in proportions p_c ~ Dir(α·1). Small α
    /// (0.1) gives workers few classes each; large α (100) approaches IID.
    Dirichlet { alpha: f64 },
}

/// Dirichlet draws are repeated until every shard holds at least the minimum (the usual
/// practice in federated benchmarks); this many tries at most.
const DIRICHLET_TRIES: u64 = 200;

impl Partition {
    pub fn validate(&self) -> Result<()> {
        if let Partition::Dirichlet { alpha } = self {
            ensure_config!(
                alpha.is_finite() && *alpha > 0.0,
                "data.partition.alpha must be positive, got {alpha}"
            );
        }
        Ok(())
    }

    /// The sample indices of every worker's shard. Each shard holds at least `min_size`
    /// samples, or this is an error naming the smallest shard.
    pub fn shards(
        &self,
        labels: &[u8],
        classes: usize,
        workers: usize,
        min_size: usize,
        seed_value: u64,
    ) -> Result<Vec<Vec<u32>>> {
        self.validate()?;
        ensure_config!(workers >= 1, "workers must be at least 1");
        let n = labels.len();
        ensure_config!(
            workers
                .checked_mul(min_size.max(1))
                .is_some_and(|need| n >= need),
            "{n} training samples cannot give {workers} workers {} samples each (the batch size)",
            min_size.max(1)
        );
        match *self {
            Partition::Iid => {
                let mut order: Vec<u32> = (0..n as u32).collect();
                order.shuffle(&mut seed::rng(seed_value, "partition-iid", 0));
                Ok((0..workers)
                    .map(|r| order[r * n / workers..(r + 1) * n / workers].to_vec())
                    .collect())
            }
            Partition::Dirichlet { alpha } => {
                let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); classes];
                for (i, &l) in labels.iter().enumerate() {
                    by_class[l as usize].push(i as u32);
                }
                let gamma = Gamma::new(alpha, 1.0).map_err(|e| Error::Config(e.to_string()))?;
                let mut smallest = 0;
                for attempt in 0..DIRICHLET_TRIES {
                    let mut rng = seed::rng(seed_value, "partition-dirichlet", attempt);
                    let mut shards = vec![Vec::new(); workers];
                    for members in &by_class {
                        let mut members = members.clone();
                        members.shuffle(&mut rng);
                        let draws: Vec<f64> =
                            (0..workers).map(|_| gamma.sample(&mut rng)).collect();
                        let total: f64 = draws.iter().sum::<f64>().max(f64::MIN_POSITIVE);
                        let mut cumulative = 0.0;
                        let mut start = 0;
                        for (w, d) in draws.iter().enumerate() {
                            cumulative += d / total;
                            let end = if w + 1 == workers {
                                members.len()
                            } else {
                                ((cumulative * members.len() as f64).round() as usize)
                                    .clamp(start, members.len())
                            };
                            shards[w].extend_from_slice(&members[start..end]);
                            start = end;
                        }
                    }
                    smallest = shards.iter().map(Vec::len).min().unwrap_or(0);
                    if smallest >= min_size.max(1) {
                        for s in &mut shards {
                            s.sort_unstable();
                        }
                        return Ok(shards);
                    }
                }
                Err(Error::Config(format!(
                    "Dirichlet(α = {alpha}) partition left a worker with {smallest} samples (fewer than {} needed) after {DIRICHLET_TRIES} draws; use a larger alpha or fewer workers",
                    min_size.max(1)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(n: usize, classes: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % classes) as u8).collect()
    }

    proptest! {
        #[test]
        fn shards_are_disjoint_and_cover_everything(
            n in 20usize..400, workers in 1usize..9, alpha in 0.05f64..50.0, iid: bool, seed: u64,
        ) {
            let l = labels(n, 5);
            let p = if iid { Partition::Iid } else { Partition::Dirichlet { alpha } };
            if let Ok(shards) = p.shards(&l, 5, workers, 1, seed) {
                prop_assert_eq!(shards.len(), workers);
                let mut all: Vec<u32> = shards.concat();
                all.sort_unstable();
                prop_assert_eq!(all, (0..n as u32).collect::<Vec<_>>());
                prop_assert!(shards.iter().all(|s| !s.is_empty()));
                if iid {
                    let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
                    prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
                }
                prop_assert_eq!(p.shards(&l, 5, workers, 1, seed).unwrap(), shards);
            }
        }
    }

    #[test]
    fn small_alpha_skews_labels() {
        let l = labels(5000, 10);
        let skewed = Partition::Dirichlet { alpha: 0.1 }
            .shards(&l, 10, 4, 32, 1)
            .unwrap();
        let even = Partition::Dirichlet { alpha: 1000.0 }
            .shards(&l, 10, 4, 32, 1)
            .unwrap();
        // The share of a worker's most common class: near 1/10 for α → ∞, far above for α = 0.1.
        let top_share = |s: &Vec<u32>| {
            let mut c = [0usize; 10];
            s.iter().for_each(|&i| c[l[i as usize] as usize] += 1);
            *c.iter().max().unwrap() as f64 / s.len() as f64
        };
        let skew: f64 = skewed.iter().map(top_share).sum::<f64>() / 4.0;
        let flat: f64 = even.iter().map(top_share).sum::<f64>() / 4.0;
        assert!(skew > 0.35 && flat < 0.13, "skew {skew}, flat {flat}");
    }

    #[test]
    fn too_few_samples_is_a_config_error() {
        let e = Partition::Iid
            .shards(&labels(10, 2), 2, 4, 3, 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("cannot give 4 workers 3 samples"),
            "{e}"
        );
        assert!(Partition::Dirichlet { alpha: -1.0 }.validate().is_err());
    }
}
