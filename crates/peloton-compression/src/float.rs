//! Half-precision messages: fp16 (IEEE binary16: 5 exponent bits, 10 mantissa bits; values
//! beyond ±65504 become ±∞, below 2⁻²⁴ become 0) and bf16 (fp32's 8 exponent bits, 7 mantissa
//! bits: fp32's range, coarser steps). Conversions go through the `half` crate's slice
//! routines, which use the CPU's conversion instructions (F16C) where it has them; both round
//! to nearest, ties to even. bf16 encoding has a loop of its own that the compiler vectorizes
//! (see `to_bf16_bits`).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::{check_len, Compressor, DecodeError};

/// `kind = "fp16"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp16;

/// `kind = "bf16"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bf16;

impl Compressor for Fp16 {
    fn name(&self) -> &'static str {
        "fp16"
    }

    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        encode_halves(values, out, |src, dst: &mut [f16]| {
            dst.convert_from_f32_slice(src)
        });
    }

    fn decode(&self, message: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        check_len("fp16", message.len(), 2 * out.len())?;
        decode_halves::<f16>(message, out);
        Ok(())
    }

    fn encoded_len(&self, len: usize) -> usize {
        2 * len
    }
}

impl Compressor for Bf16 {
    fn name(&self) -> &'static str {
        "bf16"
    }

    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        encode_halves(values, out, to_bf16_bits);
    }

    fn decode(&self, message: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        check_len("bf16", message.len(), 2 * out.len())?;
        decode_halves::<bf16>(message, out);
        Ok(())
    }

    fn encoded_len(&self, len: usize) -> usize {
        2 * len
    }
}

/// Converts `values` into 2-byte halves with `convert`, straight into the message where its
/// bytes are 2-aligned (the allocator's blocks always are in practice), through an aligned
/// stack buffer otherwise.
fn encode_halves<H: bytemuck::Pod>(
    values: &[f32],
    out: &mut Vec<u8>,
    convert: impl Fn(&[f32], &mut [H]),
) {
    out.clear();
    out.resize(2 * values.len(), 0);
    if let Ok(halves) = bytemuck::try_cast_slice_mut::<u8, H>(out) {
        return convert(values, halves);
    }
    let mut halves = [H::zeroed(); 1024];
    for (src, dst) in values.chunks(1024).zip(out.chunks_mut(2048)) {
        let halves = &mut halves[..src.len()];
        convert(src, halves);
        dst.copy_from_slice(bytemuck::cast_slice(halves));
    }
}

/// Converts a message of 2-byte halves of type `H` back to f32 (its length checked).
fn decode_halves<H: bytemuck::Pod>(message: &[u8], out: &mut [f32])
where
    [H]: HalfFloatSliceExt,
{
    if let Ok(halves) = bytemuck::try_cast_slice::<u8, H>(message) {
        return halves.convert_to_f32_slice(out);
    }
    let mut halves = [H::zeroed(); 1024];
    for (src, dst) in message.chunks(2048).zip(out.chunks_mut(1024)) {
        let halves = &mut halves[..dst.len()];
        bytemuck::cast_slice_mut(halves).copy_from_slice(src);
        halves.convert_to_f32_slice(dst);
    }
}

/// f32 → bf16 bits, round to nearest, ties to even, NaN kept quiet — the same bits as
/// `half::bf16::from_f32` (a test checks it), in a branch-free loop the compiler vectorizes:
/// `half` converts bf16 one value at a time, at under half of memcpy's speed on this
/// project's machines (BENCHMARKS.md), while decoding (a shift) needs no help.
fn to_bf16_bits(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        let bits = x.to_bits();
        let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
        let quiet_nan = ((bits >> 16) | 0x0040) as u16;
        *d = if x.is_nan() { quiet_nan } else { rounded };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::round_trip;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // 1/3 in fp16: 0x3555 = 1.0101010101₂ × 2⁻² = 0.333251953125.
        let y = round_trip(&mut Fp16, &[1.0 / 3.0, 65504.0, 1e6, -2.0, 0.0]);
        assert_eq!(y, [0.333_251_95, 65504.0, f32::INFINITY, -2.0, 0.0]);
        // 1/3 in bf16: 0x3EAB = 1.0101011₂ × 2⁻² = 0.333984375; 1e6 stays finite.
        let y = round_trip(&mut Bf16, &[1.0 / 3.0, 1e6]);
        assert_eq!(y, [0.333_984_38, 999_424.0]);
        // bf16 ties go to even (0x3F80_8000 down, 0x3F81_8000 up), the largest f32 rounds to
        // ∞, a signalling NaN comes back quiet: as the `half` crate does.
        let bits = [
            0x3F80_8000u32,
            0x3F81_8000,
            0x7F7F_FFFF,
            0x7F80_0001,
            0xFF80_0000,
        ];
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let mut ours = [0u16; 5];
        to_bf16_bits(&x, &mut ours);
        assert_eq!(ours, [0x3F80, 0x3F82, 0x7F80, 0x7FC0, 0xFF80]);
        for (v, o) in x.iter().zip(&ours) {
            assert_eq!(*o, bf16::from_f32(*v).to_bits());
        }
        // A length that is not a multiple of the 1024-value chunks; fp16's 11 significant
        // bits hold multiples of 1/4 below 512 exactly.
        let x: Vec<f32> = (0..2500).map(|i| (i % 2048) as f32 * 0.25).collect();
        let y = round_trip(&mut Fp16, &x);
        assert!(x == y, "multiples of 1/4 below 512 are exact");
    }

    /// A message at an odd address (a slice of a larger buffer) decodes the same, through the
    /// aligned stack buffer.
    #[test]
    fn a_misaligned_message_decodes_the_same() {
        let x: Vec<f32> = (0..3000).map(|i| i as f32 * 0.37 - 500.0).collect();
        for c in [&mut Fp16 as &mut dyn Compressor, &mut Bf16] {
            let mut message = Vec::new();
            c.encode(&x, &mut message);
            let mut shifted = vec![0u8; message.len() + 1];
            shifted[1..].copy_from_slice(&message);
            let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            c.decode(&message, &mut a).unwrap();
            c.decode(&shifted[1..], &mut b).unwrap();
            assert!(a == b, "{}", c.name());
        }
    }

    #[test]
    fn a_message_of_the_wrong_length_is_an_error() {
        let mut out = [0.0f32; 3];
        let err = Fp16.decode(&[0u8; 5], &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "compressed message: fp16: 5 bytes, expected 6"
        );
    }

    proptest! {
        /// The vectorizable bf16 conversion gives `half`'s bits for every f32 bit pattern
        /// (NaNs, infinities, subnormals and ties included).
        #[test]
        fn bf16_bits_match_the_half_crate(bits in prop::collection::vec(any::<u32>(), 1..300)) {
            let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            let mut ours = vec![0u16; x.len()];
            to_bf16_bits(&x, &mut ours);
            for (v, o) in x.iter().zip(&ours) {
                prop_assert_eq!(*o, bf16::from_f32(*v).to_bits(), "{:#x}", v.to_bits());
            }
        }

        /// fp16 rounds to nearest: relative error ≤ 2⁻¹¹ in the normal range [2⁻¹⁴, 65504].
        #[test]
        fn fp16_relative_error_is_at_most_2_pow_minus_11(
            x in prop::collection::vec(
                prop_oneof![6.103_515_6e-5f32..65504.0, -65504.0f32..-6.103_515_6e-5], 1..300)
        ) {
            let y = round_trip(&mut Fp16, &x);
            for (a, b) in x.iter().zip(&y) {
                prop_assert!(((a - b) / a).abs() <= 2f32.powi(-11), "{a} → {b}");
            }
        }

        /// bf16 keeps 8 significant bits: relative error ≤ 2⁻⁸ over fp32's normal range.
        #[test]
        fn bf16_relative_error_is_at_most_2_pow_minus_8(
            x in prop::collection::vec(
                prop_oneof![1e-30f32..1e30, -1e30f32..-1e-30], 1..300)
        ) {
            let y = round_trip(&mut Bf16, &x);
            for (a, b) in x.iter().zip(&y) {
                prop_assert!(((a - b) / a).abs() <= 2f32.powi(-8), "{a} → {b}");
            }
        }
    }
}
