//! MNIST in its original IDX format (big-endian), raw or gzip.
//!
//! Images: magic `0x00000803`, count, rows, columns, then `count·rows·columns` `u8` pixels.
//! Labels: magic `0x00000801`, count, then `count` `u8` labels in 0..=9. Every check names the
//! file and the byte offset (of the decompressed stream) where the problem is.

use std::path::Path;

use peloton_core::{Error, Result};

use crate::dataset::ImageDataset;
use crate::io::{find_file, read_maybe_gz_promised};

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The training and test sets of MNIST read from `dir` (the four standard file names, each
/// raw or `.gz`).
pub fn load(dir: &Path) -> Result<(ImageDataset, ImageDataset)> {
    let train = load_pair(
        &find_file(dir, &["train-images-idx3-ubyte", "train-images.idx3-ubyte"])?,
        &find_file(dir, &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"])?,
    )?;
    let test = load_pair(
        &find_file(dir, &["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"])?,
        &find_file(dir, &["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"])?,
    )?;
    Ok((train, test))
}

/// One images file and its labels file.
pub fn load_pair(images: &Path, labels: &Path) -> Result<ImageDataset> {
    // IDX headers promise the length: 16 + count·rows·columns bytes for images, 8 + count
    // for labels (checked again, with errors, by the parsers).
    let word = |h: &[u8], w: usize| be_u32(h, 4 * w) as u64;
    let images_len = |h: &[u8]| {
        (h.len() >= 16).then(|| {
            word(h, 1)
                .saturating_mul(word(h, 2))
                .saturating_mul(word(h, 3))
                .saturating_add(16)
        })
    };
    let labels_len = |h: &[u8]| (h.len() >= 8).then(|| word(h, 1).saturating_add(8));
    parse_pair(
        &read_maybe_gz_promised(images, 16, &images_len)?,
        images,
        &read_maybe_gz_promised(labels, 8, &labels_len)?,
        labels,
    )
}

/// The dataset of an images file's and a labels file's bytes (decompressed); the paths name
/// the files in errors.
pub fn parse_pair(
    image_bytes: &[u8],
    images: &Path,
    label_bytes: &[u8],
    labels: &Path,
) -> Result<ImageDataset> {
    let (shape, pixels) = parse_images(image_bytes, images)?;
    let labels_vec = parse_labels(label_bytes, labels)?;
    // parse_images checked that rows × columns neither is 0 nor overflows.
    let count = pixels.len() / (shape[0] * shape[1]);
    if count != labels_vec.len() {
        return Err(Error::Data(format!(
            "{} holds {count} images but {} holds {} labels",
            images.display(),
            labels.display(),
            labels_vec.len()
        )));
    }
    ImageDataset::new([1, shape[0], shape[1]], 10, pixels, labels_vec)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn header(bytes: &[u8], words: usize, magic: u32, path: &Path) -> Result<Vec<u32>> {
    if bytes.len() < 4 * words {
        return Err(Error::Data(format!(
            "{}: truncated header: {} bytes, need {}",
            path.display(),
            bytes.len(),
            4 * words
        )));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(Error::Data(format!(
            "{}: bad magic number 0x{found:08x} at byte 0, expected 0x{magic:08x} (not an IDX file of this kind)",
            path.display()
        )));
    }
    Ok((1..words).map(|w| be_u32(bytes, 4 * w)).collect())
}

/// Parses an IDX images file into `([rows, columns], pixels)`.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<([usize; 2], Vec<u8>)> {
    let h = header(bytes, 4, IMAGES_MAGIC, path)?;
    let (count, rows, cols) = (h[0] as usize, h[1] as usize, h[2] as usize);
    // The header's words are up to 2³² each: their products are computed with checks, so
    // a corrupted header is an error, not an overflow.
    let per_image = rows.checked_mul(cols).filter(|&n| n > 0).ok_or_else(|| {
        Error::Data(format!(
            "{}: image size {rows}×{cols} at byte 8 is not a valid image size",
            path.display()
        ))
    })?;
    let need = count.checked_mul(per_image).and_then(|n| n.checked_add(16));
    if need != Some(bytes.len()) {
        let (what, need) = match need {
            Some(need) if bytes.len() > need => ("has trailing bytes", need.to_string()),
            Some(need) => ("truncated", need.to_string()),
            None => ("truncated", "more than 2⁶⁴".to_string()),
        };
        return Err(Error::Data(format!(
            "{}: {what}: the header promises {count} images of {rows}×{cols} ({need} bytes), the file has {} bytes (data ends at byte {})",
            path.display(),
            bytes.len(),
            bytes.len()
        )));
    }
    Ok(([rows, cols], bytes[16..].to_vec()))
}

/// Parses an IDX labels file; every label must be a digit.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let h = header(bytes, 2, LABELS_MAGIC, path)?;
    let count = h[0] as usize;
    let need = 8 + count;
    if bytes.len() != need {
        return Err(Error::Data(format!(
            "{}: the header promises {count} labels ({need} bytes), the file has {} bytes",
            path.display(),
            bytes.len()
        )));
    }
    if let Some(i) = bytes[8..].iter().position(|&l| l > 9) {
        return Err(Error::Data(format!(
            "{}: label {} at byte {} is not a digit 0-9",
            path.display(),
            bytes[8 + i],
            8 + i
        )));
    }
    Ok(bytes[8..].to_vec())
}

/// Encodes images in IDX format (for tests and tools that write small MNIST-like files).
pub fn encode_images(rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let count = pixels.len() / (rows * cols);
    let mut out = Vec::with_capacity(16 + pixels.len());
    for word in [IMAGES_MAGIC, count as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels in IDX format.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Writes a small MNIST-format directory (raw or gzip files) from two datasets of 1×H×W
/// images: the four standard file names.
pub fn write_dir(dir: &Path, train: &ImageDataset, test: &ImageDataset, gzip: bool) -> Result<()> {
    let io = |e: std::io::Error| Error::Data(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for (prefix, d) in [("train", train), ("t10k", test)] {
        let files = [
            (
                format!("{prefix}-images-idx3-ubyte"),
                encode_images(d.height, d.width, d.pixels()),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                encode_labels(d.labels()),
            ),
        ];
        for (name, bytes) in files {
            let name = if gzip { format!("{name}.gz") } else { name };
            crate::io::write_file(&dir.join(name), &bytes, gzip).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tests::tempdir;

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
        (encode_images(4, 5, &pixels), encode_labels(&[7, 0, 9]))
    }

    #[test]
    fn round_trip_raw_and_gz() {
        for gzip in [false, true] {
            let dir = tempdir(&format!("mnist-rt-{gzip}"));
            let (img, lab) = sample();
            crate::io::write_file(&dir.join("train-images-idx3-ubyte"), &img, gzip).unwrap();
            crate::io::write_file(&dir.join("train-labels-idx1-ubyte"), &lab, gzip).unwrap();
            crate::io::write_file(&dir.join("t10k-images-idx3-ubyte"), &img, gzip).unwrap();
            crate::io::write_file(&dir.join("t10k-labels-idx1-ubyte"), &lab, gzip).unwrap();
            let (train, test) = load(&dir).unwrap();
            assert_eq!((train.len(), train.height, train.width), (3, 4, 5));
            assert_eq!(train.labels(), &[7, 0, 9]);
            assert_eq!(train.image(1)[0], 20);
            assert_eq!(test, train);
        }
    }

    #[test]
    fn corrupted_files_name_file_and_offset() {
        let p = Path::new("imgs");
        let (img, lab) = sample();
        let cut = parse_images(&img[..img.len() - 3], p)
            .unwrap_err()
            .to_string();
        assert!(
            cut.contains("imgs") && cut.contains("truncated") && cut.contains("byte 73"),
            "{cut}"
        );
        let mut bad = img.clone();
        bad[3] = 0x01;
        let magic = parse_images(&bad, p).unwrap_err().to_string();
        assert!(
            magic.contains("bad magic") && magic.contains("byte 0"),
            "{magic}"
        );
        assert!(parse_images(&img[..10], p)
            .unwrap_err()
            .to_string()
            .contains("truncated header"));
        let mut bad_label = lab.clone();
        bad_label[9] = 12;
        let l = parse_labels(&bad_label, Path::new("labs"))
            .unwrap_err()
            .to_string();
        assert!(l.contains("labs") && l.contains("byte 9"), "{l}");
        // Labels given to the images parser: a clear magic error, no panic.
        assert!(parse_images(&lab, p).is_err());
    }

    /// Header words whose products overflow `usize` (they panicked with "attempt to multiply
    /// with overflow" in debug builds; found by the bad-input catalog).
    #[test]
    fn header_sizes_that_overflow_are_errors() {
        let p = Path::new("huge");
        // 2³²−1 images of (2³²−1)×(2³²−1): rows × columns fits in 64 bits, the total does not.
        let huge = [
            0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let e = parse_images(&huge, p).unwrap_err().to_string();
        assert!(
            e.contains("huge: truncated") && e.contains("more than 2⁶⁴"),
            "{e}"
        );
        // No images of that size: a valid, empty file; pairing it computes rows × columns.
        let empty = [
            0, 0, 8, 3, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let d = parse_pair(&empty, p, &encode_labels(&[]), p).unwrap();
        assert!(d.is_empty());
        // Rows × columns overflows on 32-bit targets only; zero rows is refused everywhere.
        let zero = [0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 28];
        let e = parse_images(&zero, p).unwrap_err().to_string();
        assert!(e.contains("image size 0×28 at byte 8"), "{e}");
    }

    #[test]
    fn count_mismatch_between_files() {
        let dir = tempdir("mnist-mismatch");
        let (img, _) = sample();
        std::fs::write(dir.join("i"), &img).unwrap();
        std::fs::write(dir.join("l"), encode_labels(&[1, 2])).unwrap();
        let e = load_pair(&dir.join("i"), &dir.join("l"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");
    }
}
