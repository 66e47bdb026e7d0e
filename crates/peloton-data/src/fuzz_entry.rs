//! The bodies of the dataset readers' fuzz targets (`fuzz/fuzz_targets/{idx,cifar}.rs` call
//! these), kept here so that the stable-toolchain smoke test (`tests/fuzz_smoke.rs`) runs the
//! same code over the seed corpus in every `cargo test`, without nightly or cargo-fuzz.
//!
//! Each body feeds arbitrary bytes to the real parsing code, exactly as a file's contents:
//! any input must give `Ok` or `Err`, never a panic, an overflow or an allocation the input
//! does not pay for; an `Ok` must hold together (the checks below panic when it does not,
//! which the fuzzer reports as a crash).

use std::path::Path;

use crate::io::gunzip_if_gz;
use crate::{cifar, mnist};

/// The IDX (MNIST) readers: the input, gunzipped when it starts with the gzip magic, as an
/// images file and as a labels file; then split in two at a place its first byte chooses, as
/// an images file and its labels file.
pub fn idx(data: &[u8]) {
    let path = Path::new("fuzz-input");
    let Ok(bytes) = gunzip_if_gz(data.to_vec(), path) else {
        return;
    };
    if let Ok(([rows, cols], pixels)) = mnist::parse_images(&bytes, path) {
        assert!(rows > 0 && cols > 0, "an image has no pixels");
        assert_eq!(pixels.len() + 16, bytes.len(), "pixels lost or invented");
        assert!(pixels.len().is_multiple_of(rows * cols), "a partial image");
    }
    if let Ok(labels) = mnist::parse_labels(&bytes, path) {
        assert_eq!(labels.len() + 8, bytes.len(), "labels lost or invented");
        assert!(labels.iter().all(|&l| l <= 9), "a label above 9");
    }
    if let Some((&cut, rest)) = bytes.split_first() {
        let (images, labels) = rest.split_at(cut as usize * rest.len() / 255);
        if let Ok(d) = mnist::parse_pair(images, path, labels, path) {
            assert_eq!(d.pixels().len(), d.len() * d.image_len());
            for i in 0..d.len() {
                assert!(d.label(i) <= 9 && d.image(i).len() == d.image_len());
            }
        }
    }
}

/// The CIFAR-10 binary batch reader: the input, gunzipped when it starts with the gzip magic,
/// as one batch file.
pub fn cifar(data: &[u8]) {
    let path = Path::new("fuzz-input");
    let Ok(bytes) = gunzip_if_gz(data.to_vec(), path) else {
        return;
    };
    if let Ok(d) = cifar::parse(&bytes, path) {
        assert_eq!(
            d.len() * cifar::RECORD,
            bytes.len(),
            "records lost or invented"
        );
        assert_eq!([d.channels, d.height, d.width], [3, 32, 32]);
        for i in 0..d.len() {
            assert_eq!(d.label(i), bytes[i * cifar::RECORD], "label {i} moved");
            assert_eq!(
                d.image(i),
                &bytes[i * cifar::RECORD + 1..(i + 1) * cifar::RECORD],
                "image {i} moved"
            );
        }
    }
}

/// Big-endian words that make headers interesting: zero, one, the IDX magics, sizes at the
/// edges of `u32` and of a gzip header.
const EDGE_WORDS: [u32; 8] = [
    0,
    1,
    mnist::IMAGES_MAGIC,
    mnist::LABELS_MAGIC,
    28,
    0x7fff_ffff,
    u32::MAX,
    0x1f8b_0800,
];

/// `input` after one to four random edits — flip a bit, set a byte or a big-endian word to an
/// edge value, cut the end, delete or duplicate a range, insert a token of `dictionary` — for
/// the smoke tests that stand in for a fuzzer where there is none (stable CI). Deterministic
/// for a seeded `rng`.
pub fn mutate(input: &[u8], dictionary: &[&[u8]], rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..7) {
            0 if len > 0 => out[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => out[at] = [0, 1, 9, 10, 0x7f, 0x80, 0xff][rng.random_range(0..7)],
            2 if len >= 4 => {
                let at = at.min(len - 4);
                let word = EDGE_WORDS[rng.random_range(0..EDGE_WORDS.len())];
                out[at..at + 4].copy_from_slice(&word.to_be_bytes());
            }
            3 => out.truncate(at),
            4 if len > 0 => {
                let end = rng.random_range(at..=len);
                out.drain(at..end);
            }
            5 if len > 0 => {
                let end = rng.random_range(at..=len.min(at + 64));
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                out.splice(at..at, token.iter().copied());
            }
            _ => out.push(rng.random()),
        }
    }
    out
}
