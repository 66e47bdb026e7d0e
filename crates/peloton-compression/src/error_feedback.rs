//! Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD"): a lossy compressor's
//! error is not thrown away but kept, per message stream and per worker, and added to the next
//! message of that stream:
//!
//! ```text
//! e_t = x_t + r_{t−1};   m_t = C(e_t);   r_t = e_t − D(m_t)
//! ```
//!
//! so Σ_t D(m_t) + r_T = Σ_t x_t: over time everything that was meant to be sent is sent.
//! The residual is the state a checkpoint keeps ([`ErrorFeedback::residual`]).

use crate::{Compressor, DecodeError};

/// The residual of one message stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
    corrected: Vec<f32>,
    sent: Vec<f32>,
}

impl ErrorFeedback {
    /// A stream of messages of `len` values, with no error yet.
    pub fn new(len: usize) -> Self {
        ErrorFeedback {
            residual: vec![0.0; len],
            corrected: vec![0.0; len],
            sent: vec![0.0; len],
        }
    }

    /// Encodes `values` plus the residual into `out` and keeps the new residual.
    pub fn encode(
        &mut self,
        compressor: &mut dyn Compressor,
        values: &[f32],
        out: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        if values.len() != self.residual.len() {
            return Err(DecodeError(format!(
                "error feedback: a message of {} values on a stream of {}",
                values.len(),
                self.residual.len()
            )));
        }
        for ((e, &x), &r) in self.corrected.iter_mut().zip(values).zip(&self.residual) {
            *e = x + r;
        }
        compressor.encode(&self.corrected, out);
        compressor.decode(out, &mut self.sent)?;
        for ((r, &e), &d) in self
            .residual
            .iter_mut()
            .zip(&self.corrected)
            .zip(&self.sent)
        {
            *r = e - d;
        }
        Ok(())
    }

    /// What has been meant but not yet sent.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Restores a residual (from a checkpoint).
    pub fn set_residual(&mut self, residual: &[f32]) -> Result<(), DecodeError> {
        if residual.len() != self.residual.len() {
            return Err(DecodeError(format!(
                "error feedback: a residual of {} values for a stream of {}",
                residual.len(),
                self.residual.len()
            )));
        }
        self.residual.copy_from_slice(residual);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Int8, RandomK, TopK};
    use proptest::prelude::*;

    /// Σ_t D(m_t) + r_T against Σ_t x_t, over `steps` messages drawn from `draw`.
    fn sums(
        compressor: &mut dyn Compressor,
        len: usize,
        steps: usize,
        mut draw: impl FnMut(usize, usize) -> f32,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut ef = ErrorFeedback::new(len);
        let (mut meant, mut delivered) = (vec![0.0f64; len], vec![0.0f64; len]);
        let (mut msg, mut got) = (Vec::new(), vec![0.0f32; len]);
        for t in 0..steps {
            let x: Vec<f32> = (0..len).map(|i| draw(t, i)).collect();
            ef.encode(compressor, &x, &mut msg).unwrap();
            compressor.decode(&msg, &mut got).unwrap();
            for i in 0..len {
                meant[i] += x[i] as f64;
                delivered[i] += got[i] as f64;
            }
        }
        for (d, r) in delivered.iter_mut().zip(ef.residual()) {
            *d += *r as f64;
        }
        (meant, delivered)
    }

    /// With sparsifiers on multiples of 1/8 every operation is exact, so the identity holds
    /// bit for bit: what was sent plus the residual is what was meant, summed over 20 steps.
    #[test]
    fn sent_plus_residual_is_what_was_meant_exactly() {
        let draw = |t: usize, i: usize| ((t * 7 + i * 13) % 17) as f32 / 8.0 - 1.0;
        for compressor in [
            &mut TopK::new(0.1) as &mut dyn Compressor,
            &mut RandomK::new(0.25, 3),
        ] {
            let (meant, delivered) = sums(compressor, 40, 20, draw);
            assert_eq!(meant, delivered, "{}", compressor.name());
        }
    }

    /// A top-1 stream delivers a constant signal's every coordinate in turn: after n steps of
    /// x = 1, each of the n coordinates has been sent at least once.
    #[test]
    fn every_coordinate_gets_its_turn() {
        let mut ef = ErrorFeedback::new(5);
        let mut top1 = TopK::new(0.2);
        let (mut msg, mut got, mut seen) = (Vec::new(), [0.0f32; 5], [false; 5]);
        for _ in 0..5 {
            ef.encode(&mut top1, &[1.0; 5], &mut msg).unwrap();
            top1.decode(&msg, &mut got).unwrap();
            for (s, g) in seen.iter_mut().zip(&got) {
                *s |= *g != 0.0;
            }
        }
        assert_eq!(seen, [true; 5]);
    }

    #[test]
    fn lengths_must_match() {
        let mut ef = ErrorFeedback::new(3);
        assert!(ef
            .encode(&mut TopK::new(0.5), &[1.0; 4], &mut Vec::new())
            .is_err());
        assert!(ef.set_residual(&[0.0; 2]).is_err());
        ef.set_residual(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(ef.residual(), [1.0, 2.0, 3.0]);
    }

    proptest! {
        /// With a quantizer the identity holds up to f32 rounding of the residual updates.
        #[test]
        fn identity_holds_for_int8_up_to_rounding(seed in 0u64..1000, block in 1usize..64) {
            let noise = |t: usize, i: usize| {
                let h = (seed ^ ((t as u64) << 32 | i as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            let (meant, delivered) = sums(&mut Int8::new(block), 50, 30, noise);
            for (m, d) in meant.iter().zip(&delivered) {
                prop_assert!((m - d).abs() < 1e-4, "{m} vs {d}");
            }
        }
    }
}
