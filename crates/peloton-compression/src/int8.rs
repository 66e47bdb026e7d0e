//! Blockwise 8-bit min–max quantization (Bagua's ByteGrad, hivemind's blockwise 8-bit): each
//! block of `block` values is sent as its minimum and maximum (two f32) and one byte per value,
//! the value's position between them in 255 steps, rounded to nearest. The error of a value is
//! at most half a step, (max − min)/510, per block; a block holding NaN or ±∞ (or spanning more
//! than f32's range) decodes to NaN.

use crate::{check_len, Compressor, DecodeError};

/// `kind = "int8"`, `block` values per block.
#[derive(Debug, Clone, Copy)]
pub struct Int8 {
    block: usize,
}

impl Int8 {
    /// `block` ≥ 1 (checked by the config).
    pub fn new(block: usize) -> Self {
        Int8 {
            block: block.max(1),
        }
    }
}

impl Compressor for Int8 {
    fn name(&self) -> &'static str {
        "int8"
    }

    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.encoded_len(values.len()));
        for block in values.chunks(self.block) {
            let finite = block.iter().all(|v| v.is_finite());
            let (lo, hi) = block
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            // A block with NaN or ±∞, or wider than f32 can hold, decodes to NaN.
            let (min, max) = if finite && (hi - lo).is_finite() {
                (lo, hi)
            } else {
                (f32::NAN, f32::NAN)
            };
            out.extend_from_slice(&min.to_le_bytes());
            out.extend_from_slice(&max.to_le_bytes());
            // f32 arithmetic, which vectorizes: round half up of the position in steps.
            let range = max - min;
            let scale = if range > 0.0 { 255.0 / range } else { 0.0 };
            out.extend(
                block
                    .iter()
                    .map(|&v| ((v - min) * scale + 0.5).min(255.0) as u8),
            );
        }
    }

    fn decode(&self, message: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        check_len("int8", message.len(), self.encoded_len(out.len()))?;
        let mut at = 0;
        for block in out.chunks_mut(self.block) {
            let word =
                |i: usize| f32::from_le_bytes(message[i..i + 4].try_into().expect("4 bytes"));
            let (min, max) = (word(at), word(at + 4));
            at += 8;
            let step = (max - min) / 255.0;
            let codes = &message[at..at + block.len()];
            at += block.len();
            for (v, &code) in block.iter_mut().zip(codes) {
                *v = min + code as f32 * step;
            }
        }
        Ok(())
    }

    fn encoded_len(&self, len: usize) -> usize {
        len + 8 * len.div_ceil(self.block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(block: usize, x: &[f32]) -> Vec<f32> {
        crate::tests::round_trip(&mut Int8::new(block), x)
    }

    #[test]
    fn known_values() {
        // min 0, max 255: steps of exactly 1, so integers come back exactly; 2.4 → 2, 2.6 → 3.
        let y = round_trip(8, &[0.0, 255.0, 17.0, 2.4, 2.6]);
        assert_eq!(y, [0.0, 255.0, 17.0, 2.0, 3.0]);
        // A constant block is exact; 10 values in blocks of 4: 10 + 3·8 bytes.
        assert_eq!(round_trip(4, &[0.5; 10]), [0.5; 10]);
        assert_eq!(Int8::new(4).encoded_len(10), 34);
        // A non-finite value spoils its block only.
        let y = round_trip(2, &[1.0, f32::NAN, 3.0, 4.0]);
        assert!(y[0].is_nan() && y[1].is_nan());
        assert_eq!(&y[2..], [3.0, 4.0]);
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let mut out = [0.0f32; 10];
        assert!(Int8::new(4).decode(&[0u8; 33], &mut out).is_err());
    }

    proptest! {
        /// Every value is within half a step, (max − min)/510, of what was sent — up to the
        /// f32 rounding of the position and of the decoded value (a thousandth of a step, and
        /// an ulp of the value).
        #[test]
        fn error_is_at_most_half_a_step_per_block(
            x in prop::collection::vec(-1e3f32..1e3, 1..400),
            block in 1usize..100,
        ) {
            let y = round_trip(block, &x);
            for (xs, ys) in x.chunks(block).zip(y.chunks(block)) {
                let lo = xs.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (a, b) in xs.iter().zip(ys) {
                    let half_step = (hi as f64 - lo as f64) / 510.0;
                    let bound = half_step * 1.001 + (a.abs() as f64) * f32::EPSILON as f64;
                    prop_assert!(((a - b) as f64).abs() <= bound, "{a} → {b}, block [{lo}, {hi}]");
                }
            }
        }
    }
}
