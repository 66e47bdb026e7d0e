//! # peloton-compression
//!
//! What a worker sends, made smaller: the compressors of PyTorch DDP's communication hooks,
//! Horovod, Bagua and hivemind, as one small trait over flat `f32` buffers.
//!
//! | kind | message for n values | error |
//! |---|---|---|
//! | [`Fp16`] | 2n bytes | relative ≤ 2⁻¹¹ in fp16's normal range |
//! | [`Bf16`] | 2n bytes | relative ≤ 2⁻⁸ |
//! | [`Int8`] (blockwise min–max) | n + 8⌈n/block⌉ bytes | ≤ (max − min)/510 per block |
//! | [`TopK`] | 8k bytes (index, value) | the n − k smallest magnitudes dropped |
//! | [`RandomK`] | 8 + 4k bytes (indices regenerated from a shared seed) | n − k random values dropped |
//! | [`PowerSgd`] (all-reduces) | 4r(n + m) bytes per n × m matrix | all but a rank-r power step |
//!
//! A [`Compressor`] encodes a buffer into bytes and decodes them back; [`ErrorFeedback`] keeps
//! the residual of one message stream and adds it to the next message, so that what was sent
//! plus the final residual equals what was meant to be sent, summed over steps. The
//! configuration a run file gives is [`CompressionConfig`] (`[compression]`).
//!
//! The crate depends on no other peloton crate: the transports and algorithms use it.

pub mod bench;
mod config;
mod error_feedback;
mod float;
mod int8;
mod powersgd;
mod sparse;

pub use config::{CompressionConfig, Kind, KindName, Role};
pub use error_feedback::ErrorFeedback;
pub use float::{Bf16, Fp16};
pub use int8::Int8;
pub use powersgd::{PowerSgd, Shape};
pub use sparse::{RandomK, TopK};

/// A message that cannot be decoded: its length does not fit the buffer, or an index is out
/// of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compressed message: {0}")]
pub struct DecodeError(pub String);

/// Encodes a flat `f32` buffer into bytes and decodes them back (lossy).
pub trait Compressor: Send {
    /// The `kind` of a config file, for messages.
    fn name(&self) -> &'static str;
    /// Encodes `values` into `out` (cleared first).
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>);
    /// Decodes `message` into `out`, which has the length the encoded buffer had.
    fn decode(&self, message: &[u8], out: &mut [f32]) -> Result<(), DecodeError>;
    /// The length in bytes of the message for `len` values.
    fn encoded_len(&self, len: usize) -> usize;
    /// Messages encoded so far, for compressors whose next message depends on it (random-k
    /// draws each message's positions from it); a checkpoint keeps it.
    fn messages(&self) -> u64 {
        0
    }
    /// Restores [`Compressor::messages`] (from a checkpoint).
    fn set_messages(&mut self, _messages: u64) {}
}

/// `bytes` as f32 words (bit for bit, little-endian, zero-padded to a whole word), for
/// transports that carry `f32` buffers: every peloton transport copies bits unchanged.
pub fn to_words(bytes: &[u8], words: &mut Vec<f32>) {
    words.clear();
    words.extend(bytes.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        f32::from_bits(u32::from_le_bytes(w))
    }));
}

/// The inverse of [`to_words`]: the first `len` bytes of `words`.
pub fn from_words(words: &[f32], len: usize, bytes: &mut Vec<u8>) {
    bytes.clear();
    bytes.extend(words.iter().flat_map(|w| w.to_bits().to_le_bytes()));
    bytes.truncate(len);
}

/// Decodes a message of words — `values.len()` values encoded by `compressor`, then `tail`
/// exact, as the communication layer sends them — with `bytes` as scratch.
pub fn decode_words(
    compressor: &dyn Compressor,
    words: &[f32],
    values: &mut [f32],
    tail: &mut [f32],
    bytes: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let len = compressor.encoded_len(values.len());
    let encoded = len.div_ceil(4);
    if words.len() != encoded + tail.len() {
        return Err(DecodeError(format!(
            "{} words, expected {}",
            words.len(),
            encoded + tail.len()
        )));
    }
    from_words(&words[..encoded], len, bytes);
    compressor.decode(bytes, values)?;
    tail.copy_from_slice(&words[encoded..]);
    Ok(())
}

/// The compressor a config describes: `None` for `kind = "none"`, and for PowerSGD, which is
/// not a byte compressor (the communication layer runs its two all-reduces). `seed` is the
/// run seed: random-k draws its indices from it.
pub fn build(kind: &Kind, seed: u64) -> Option<Box<dyn Compressor>> {
    Some(match *kind {
        Kind::None | Kind::PowerSgd { .. } => return None,
        Kind::Fp16 => Box::new(Fp16),
        Kind::Bf16 => Box::new(Bf16),
        Kind::Int8 { block } => Box::new(Int8::new(block)),
        Kind::TopK { fraction } => Box::new(TopK::new(fraction)),
        Kind::RandomK { fraction } => Box::new(RandomK::new(fraction, seed)),
    })
}

/// The number of values a sparsifier keeps of `len`: ⌈fraction · len⌉, at least 1 (none of an
/// empty buffer).
pub fn kept(fraction: f64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    ((fraction * len as f64).ceil() as usize).clamp(1, len)
}

pub(crate) fn check_len(what: &str, got: usize, expected: usize) -> Result<(), DecodeError> {
    if got == expected {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "{what}: {got} bytes, expected {expected}"
        )))
    }
}

#[cfg(test)]
mod tests {
    /// Encodes `x` and decodes it back into a buffer first filled with NaN (so that a value the
    /// decoder forgets to write shows), checking the message's length on the way.
    pub(crate) fn round_trip(c: &mut dyn super::Compressor, x: &[f32]) -> Vec<f32> {
        let mut message = Vec::new();
        c.encode(x, &mut message);
        assert_eq!(message.len(), c.encoded_len(x.len()), "{}", c.name());
        let mut out = vec![f32::NAN; x.len()];
        c.decode(&message, &mut out).unwrap();
        out
    }

    #[test]
    fn bytes_survive_the_trip_through_words() {
        let bytes: Vec<u8> = (0..=255u8).chain([7, 9, 0xff]).collect();
        let mut words = Vec::new();
        super::to_words(&bytes, &mut words);
        assert_eq!(words.len(), bytes.len().div_ceil(4));
        let mut back = Vec::new();
        super::from_words(&words, bytes.len(), &mut back);
        assert_eq!(back, bytes, "NaN bit patterns included");
    }
}
