//! The segment table of a flat parameter buffer: which named tensor lives where.
//!
//! Every worker keeps its parameters in one contiguous `f32` buffer; the layout says how that
//! buffer splits into tensors (for per-tensor work such as Laplacian smoothing or bucketing,
//! and for checks that ranks agree on the model).

use serde::{Deserialize, Serialize};

/// One named tensor inside a flat buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub offset: usize,
    pub shape: Vec<usize>,
}

impl Segment {
    /// Number of scalars in the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The index range of this tensor inside the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// An ordered, gap-free list of segments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    segments: Vec<Segment>,
    len: usize,
}

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor after the last one (builder style).
    pub fn with(mut self, name: impl Into<String>, shape: &[usize]) -> Self {
        self.push(name, shape);
        self
    }

    /// Appends a tensor after the last one.
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) {
        let seg = Segment {
            name: name.into(),
            offset: self.len,
            shape: shape.to_vec(),
        };
        self.len += seg.numel();
        self.segments.push(seg);
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// A 64-bit fingerprint of names, shapes and offsets, used by ranks to check that they
    /// agree on the model before training (FNV-1a: stable across platforms and releases).
    pub fn fingerprint(&self) -> u64 {
        fnv1a(self.segments.iter().flat_map(|s| {
            let shape = s.shape.iter().flat_map(|d| (*d as u64).to_le_bytes());
            s.name
                .bytes()
                .chain([0xff])
                .chain(shape)
                .chain((s.offset as u64).to_le_bytes())
        }))
    }
}

/// FNV-1a, 64 bits: the one hash behind every fingerprint and checksum peloton compares
/// across ranks, runs and files (stable across platforms and releases; not cryptographic).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_contiguous() {
        let l = ParamLayout::new().with("w", &[3, 4]).with("b", &[3]);
        assert_eq!(l.len(), 15);
        assert_eq!(l.segments()[1].range(), 12..15);
    }

    #[test]
    fn fingerprint_sees_shape_changes() {
        let a = ParamLayout::new().with("w", &[3, 4]);
        let b = ParamLayout::new().with("w", &[4, 3]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
