//! CIFAR-10, binary version: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`,
//! raw or gzip. Each record is one label byte (0–9) followed by 3072 pixel bytes (1024 red,
//! 1024 green, 1024 blue, row-major 32×32), which is already the C×H×W order.

use std::path::Path;

use peloton_core::{Error, Result};

use crate::dataset::ImageDataset;
use crate::io::{find_file, read_maybe_gz};

pub const RECORD: usize = 1 + 3 * 32 * 32;
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// The training set (the five batches, in order) and the test set from `dir`.
pub fn load(dir: &Path) -> Result<(ImageDataset, ImageDataset)> {
    let mut train = Parsed::default();
    for name in TRAIN_FILES {
        parse_into(&read_file(dir, name)?, &dir.join(name), &mut train)?;
    }
    let mut test = Parsed::default();
    parse_into(&read_file(dir, TEST_FILE)?, &dir.join(TEST_FILE), &mut test)?;
    Ok((train.into_dataset()?, test.into_dataset()?))
}

fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    read_maybe_gz(&find_file(dir, &[name])?)
}

#[derive(Default)]
struct Parsed {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Parsed {
    fn into_dataset(self) -> Result<ImageDataset> {
        ImageDataset::new([3, 32, 32], 10, self.pixels, self.labels)
    }
}

fn parse_into(bytes: &[u8], path: &Path, out: &mut Parsed) -> Result<()> {
    if bytes.is_empty() {
        return Err(Error::Data(format!("{}: empty file", path.display())));
    }
    if !bytes.len().is_multiple_of(RECORD) {
        let whole = bytes.len() / RECORD;
        return Err(Error::Data(format!(
            "{}: truncated: {} bytes is not a whole number of {RECORD}-byte records; record {whole} starting at byte {} is incomplete",
            path.display(),
            bytes.len(),
            whole * RECORD
        )));
    }
    let count = bytes.len() / RECORD;
    out.labels.reserve(count);
    out.pixels.reserve(count * (RECORD - 1));
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] > 9 {
            return Err(Error::Data(format!(
                "{}: label {} at byte {} (record {i}) is not a class 0-9",
                path.display(),
                record[0],
                i * RECORD
            )));
        }
        out.labels.push(record[0]);
        out.pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Parses one binary batch into a dataset.
pub fn parse(bytes: &[u8], path: &Path) -> Result<ImageDataset> {
    let mut p = Parsed::default();
    parse_into(bytes, path, &mut p)?;
    p.into_dataset()
}

/// Encodes a 3×32×32 dataset as one binary batch.
pub fn encode(d: &ImageDataset) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len() * RECORD);
    for i in 0..d.len() {
        out.push(d.label(i));
        out.extend_from_slice(d.image(i));
    }
    out
}

/// Writes a small CIFAR-10 directory: `train` split over the five batch files, and `test`.
pub fn write_dir(dir: &Path, train: &ImageDataset, test: &ImageDataset, gzip: bool) -> Result<()> {
    if [train.channels, train.height, train.width] != [3, 32, 32] {
        return Err(Error::Data("CIFAR-10 images are 3×32×32".into()));
    }
    let io = |e: std::io::Error| Error::Data(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let bytes = encode(train);
    let records = train.len();
    for (b, name) in TRAIN_FILES.iter().enumerate() {
        let (lo, hi) = (b * records / 5, (b + 1) * records / 5);
        let name = if gzip {
            format!("{name}.gz")
        } else {
            name.to_string()
        };
        crate::io::write_file(&dir.join(name), &bytes[lo * RECORD..hi * RECORD], gzip)
            .map_err(io)?;
    }
    let name = if gzip {
        format!("{TEST_FILE}.gz")
    } else {
        TEST_FILE.to_string()
    };
    crate::io::write_file(&dir.join(name), &encode(test), gzip).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tests::tempdir;
    use crate::synthetic::SyntheticConfig;

    fn small() -> (ImageDataset, ImageDataset) {
        SyntheticConfig {
            channels: 3,
            size: 32,
            train: 25,
            test: 7,
            ..Default::default()
        }
        .generate(3)
        .unwrap()
    }

    #[test]
    fn round_trip_through_files() {
        for gzip in [false, true] {
            let dir = tempdir(&format!("cifar-rt-{gzip}"));
            let (train, test) = small();
            write_dir(&dir, &train, &test, gzip).unwrap();
            let (tr, te) = load(&dir).unwrap();
            assert_eq!(tr, train);
            assert_eq!(te, test);
        }
    }

    #[test]
    fn truncated_and_corrupted_batches() {
        let (train, _) = small();
        let bytes = encode(&train);
        let cut = parse(&bytes[..RECORD * 3 + 100], Path::new("b1"))
            .unwrap_err()
            .to_string();
        assert!(
            cut.contains("b1") && cut.contains("record 3") && cut.contains("byte 9219"),
            "{cut}"
        );
        let mut bad = bytes.clone();
        bad[RECORD * 2] = 10;
        let e = parse(&bad, Path::new("b2")).unwrap_err().to_string();
        assert!(e.contains("record 2") && e.contains("byte 6146"), "{e}");
        assert!(parse(&[], Path::new("b3")).is_err());
    }

    #[test]
    fn a_missing_batch_is_named() {
        let dir = tempdir("cifar-missing");
        let (train, test) = small();
        write_dir(&dir, &train, &test, false).unwrap();
        std::fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("data_batch_4.bin"), "{e}");
    }
}
