//! Sparsifiers: send k = ⌈fraction · n⌉ of the n values, the rest count as 0. Top-k keeps the
//! k largest magnitudes and sends (index, value) pairs; random-k keeps k positions drawn from a
//! stream both sides know (the run seed and the message's round number, which travels in the
//! message), so only the values are sent. Neither is unbiased on its own; with error feedback
//! what is dropped is sent later.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{check_len, kept, Compressor, DecodeError};

/// `kind = "topk"`, `fraction` of the values kept.
#[derive(Debug, Clone)]
pub struct TopK {
    fraction: f64,
    /// Scratch: the magnitudes' bit patterns, and the chosen indices.
    keys: Vec<u32>,
    order: Vec<u32>,
}

impl TopK {
    pub fn new(fraction: f64) -> Self {
        TopK {
            fraction,
            keys: Vec::new(),
            order: Vec::new(),
        }
    }
}

impl Compressor for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        let k = kept(self.fraction, values.len());
        if k == 0 {
            return;
        }
        // The k-th largest magnitude, found by selecting on the magnitudes' bit patterns (for
        // floats without their sign, the integer order is the magnitude order, and a NaN sorts
        // above ∞, so a diverged value is always sent), then one pass in index order: every
        // value above it, and values equal to it from the lowest index until k are taken.
        self.keys.clear();
        self.keys
            .extend(values.iter().map(|v| v.to_bits() & 0x7FFF_FFFF));
        let (larger, &mut threshold, _) = self.keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        // Every key above the threshold is among the k − 1 the selection put first.
        let above = larger.iter().filter(|&&key| key > threshold).count();
        let mut ties = k - above;
        self.order.clear();
        for (i, v) in values.iter().enumerate() {
            let key = v.to_bits() & 0x7FFF_FFFF;
            if key > threshold || (key == threshold && ties > 0) {
                if key == threshold {
                    ties -= 1;
                }
                self.order.push(i as u32);
            }
        }
        let chosen = &self.order[..];
        out.reserve(8 * k);
        for &i in chosen.iter() {
            out.extend_from_slice(&i.to_le_bytes());
        }
        for &i in chosen.iter() {
            out.extend_from_slice(&values[i as usize].to_le_bytes());
        }
    }

    fn decode(&self, message: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        let k = kept(self.fraction, out.len());
        check_len("topk", message.len(), 8 * k)?;
        out.fill(0.0);
        let (indices, values) = message.split_at(4 * k);
        for (i, v) in indices.chunks_exact(4).zip(values.chunks_exact(4)) {
            let i = u32::from_le_bytes(i.try_into().expect("4 bytes")) as usize;
            let slot = out.get_mut(i).ok_or_else(|| {
                DecodeError(format!("topk: index {i} out of range for {} values", k))
            })?;
            *slot = f32::from_le_bytes(v.try_into().expect("4 bytes"));
        }
        Ok(())
    }

    fn encoded_len(&self, len: usize) -> usize {
        8 * kept(self.fraction, len)
    }
}

/// `kind = "randomk"`, `fraction` of the values kept, at positions drawn from the run seed.
#[derive(Debug, Clone)]
pub struct RandomK {
    fraction: f64,
    seed: u64,
    /// Messages encoded so far: the next message's round.
    round: u64,
}

impl RandomK {
    pub fn new(fraction: f64, seed: u64) -> Self {
        RandomK {
            fraction,
            seed,
            round: 0,
        }
    }

    /// The k positions of round `round` among `len`, ascending.
    fn positions(&self, round: u64, len: usize) -> Vec<usize> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut chosen =
            rand::seq::index::sample(&mut rng, len, kept(self.fraction, len)).into_vec();
        chosen.sort_unstable();
        chosen
    }
}

impl Compressor for RandomK {
    fn name(&self) -> &'static str {
        "randomk"
    }

    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        let round = self.round;
        self.round += 1;
        out.extend_from_slice(&round.to_le_bytes());
        for i in self.positions(round, values.len()) {
            out.extend_from_slice(&values[i].to_le_bytes());
        }
    }

    fn decode(&self, message: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        check_len("randomk", message.len(), self.encoded_len(out.len()))?;
        let round = u64::from_le_bytes(message[..8].try_into().expect("8 bytes"));
        out.fill(0.0);
        for (i, v) in self
            .positions(round, out.len())
            .into_iter()
            .zip(message[8..].chunks_exact(4))
        {
            out[i] = f32::from_le_bytes(v.try_into().expect("4 bytes"));
        }
        Ok(())
    }

    fn encoded_len(&self, len: usize) -> usize {
        8 + 4 * kept(self.fraction, len)
    }

    fn messages(&self) -> u64 {
        self.round
    }

    fn set_messages(&mut self, messages: u64) {
        self.round = messages;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::round_trip;
    use proptest::prelude::*;

    #[test]
    fn top_k_keeps_the_largest_magnitudes() {
        // k = ⌈0.4 · 5⌉ = 2: −7 and 5 survive; the tie 1, −1 loses either way.
        let y = round_trip(&mut TopK::new(0.4), &[1.0, -7.0, 5.0, -1.0, 0.5]);
        assert_eq!(y, [0.0, -7.0, 5.0, 0.0, 0.0]);
        // Ties between equal magnitudes go to the lower index.
        assert_eq!(
            round_trip(&mut TopK::new(0.5), &[2.0, -2.0, 2.0, 1.0]),
            [2.0, -2.0, 0.0, 0.0]
        );
        // A NaN counts as the largest magnitude, so a diverged value is always sent; −0 and 0
        // tie.
        let y = round_trip(&mut TopK::new(0.25), &[1.0, f32::NAN, -5.0, 0.0]);
        assert!(y[1].is_nan() && y[0] == 0.0 && y[2] == 0.0);
        assert_eq!(round_trip(&mut TopK::new(0.5), &[-0.0, 0.0]), [-0.0, 0.0]);
        // At least one value is kept.
        assert_eq!(round_trip(&mut TopK::new(1e-9), &[0.0, 3.0]), [0.0, 3.0]);
    }

    #[test]
    fn random_k_both_sides_draw_the_same_positions() {
        let x: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        let mut sender = RandomK::new(0.1, 42);
        let receiver = RandomK::new(0.1, 42);
        for _ in 0..3 {
            let mut msg = Vec::new();
            sender.encode(&x, &mut msg);
            let mut y = vec![0.0; 100];
            receiver.decode(&msg, &mut y).unwrap();
            let sent: Vec<&f32> = y.iter().filter(|v| **v != 0.0).collect();
            assert_eq!(sent.len(), 10);
            for (a, b) in x.iter().zip(&y) {
                assert!(*b == 0.0 || a == b);
            }
        }
        // Rounds draw different positions.
        assert_ne!(sender.positions(0, 100), sender.positions(1, 100));
    }

    #[test]
    fn out_of_range_indices_are_errors() {
        let mut msg = Vec::new();
        TopK::new(0.5).encode(&[1.0, 2.0, 3.0, 4.0], &mut msg);
        msg[0] = 200;
        let mut out = [0.0f32; 4];
        assert!(TopK::new(0.5).decode(&msg, &mut out).is_err());
    }

    proptest! {
        /// What top-k drops is never larger in magnitude than what it keeps.
        #[test]
        fn top_k_drops_only_smaller_values(
            x in prop::collection::vec(-1e3f32..1e3, 1..300),
            fraction in 0.01f64..1.0,
        ) {
            let y = round_trip(&mut TopK::new(fraction), &x);
            let k = kept(fraction, x.len());
            prop_assert!(y.iter().filter(|v| **v != 0.0).count() <= k);
            for (a, b) in x.iter().zip(&y) {
                prop_assert!(*b == 0.0 || a == b, "{a} → {b}");
            }
            let smallest_kept = x.iter().zip(&y).filter(|(_, b)| **b != 0.0).map(|(a, _)| a.abs()).fold(f32::INFINITY, f32::min);
            let largest_dropped = x.iter().zip(&y).filter(|(a, b)| **b == 0.0 && **a != 0.0).map(|(a, _)| a.abs()).fold(0.0, f32::max);
            prop_assert!(largest_dropped <= smallest_kept);
        }
    }
}
