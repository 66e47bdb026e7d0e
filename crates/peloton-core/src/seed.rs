//! Seeds: one run seed fixes every random stream of a run.
//!
//! Streams are derived by mixing (run seed, stream name, index) with SplitMix64, so adding a
//! new stream never shifts an existing one, and a worker's stream does not depend on how many
//! workers there are.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random generator used everywhere: portable and reproducible across platforms.
pub type Rng = ChaCha8Rng;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Derives the seed of stream `(name, index)` from `seed`.
pub fn derive(seed: u64, name: &str, index: u64) -> u64 {
    let mut h = splitmix64(seed);
    for b in name.bytes() {
        h = splitmix64(h ^ b as u64);
    }
    splitmix64(h ^ splitmix64(index))
}

/// A generator for stream `(name, index)` of `seed`.
pub fn rng(seed: u64, name: &str, index: u64) -> Rng {
    Rng::seed_from_u64(derive(seed, name, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn streams_differ_and_repeat() {
        assert_ne!(derive(1, "worker", 0), derive(1, "worker", 1));
        assert_ne!(derive(1, "worker", 0), derive(1, "data", 0));
        assert_ne!(derive(1, "worker", 0), derive(2, "worker", 0));
        let a: u64 = rng(7, "w", 3).random();
        let b: u64 = rng(7, "w", 3).random();
        assert_eq!(a, b);
    }
}
