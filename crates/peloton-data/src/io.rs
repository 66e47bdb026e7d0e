//! Reading dataset files: raw or gzip (detected by the gzip magic, not by the file name), with
//! errors that name the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use peloton_core::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file, decompressing it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    gunzip_if_gz(read_regular(path)?, path)
}

/// The bytes of `path`, which must be a regular file: a FIFO or a device is refused at once
/// (reading one would block forever or never end).
fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let cannot =
        |e: &dyn std::fmt::Display| Error::Data(format!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(cannot(&"not a regular file (a folder, a FIFO or a device)"));
    }
    std::fs::read(path).map_err(|e| cannot(&e))
}

/// `raw` decompressed when it starts with the gzip magic, else `raw` itself; `path` names the
/// file in errors. The bytes-only half of [`read_maybe_gz`], which the fuzz targets call.
pub fn gunzip_if_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    inflate(raw, path, 0, &|_| None)
}

/// Like [`read_maybe_gz`], for a file whose first `head` bytes promise its length
/// (`promised` reads them; `None` when they cannot): a gzip stream is inflated only up to one
/// byte past that length, so a small file that inflates without end (a header promising 200
/// labels, then gigabytes of zeros) is refused by the parser at once, as a file with trailing
/// bytes, instead of after inflating all of it.
pub fn read_maybe_gz_promised(
    path: &Path,
    head: usize,
    promised: &dyn Fn(&[u8]) -> Option<u64>,
) -> Result<Vec<u8>> {
    inflate(read_regular(path)?, path, head, promised)
}

/// `raw` itself, or its gzip stream inflated: the first `head` bytes, then up to one byte
/// past the length `promised` reads from them (to the end where it reads none).
fn inflate(
    raw: Vec<u8>,
    path: &Path,
    head: usize,
    promised: &dyn Fn(&[u8]) -> Option<u64>,
) -> Result<Vec<u8>> {
    if !(raw.len() >= 2 && raw[..2] == GZIP_MAGIC) {
        return Ok(raw);
    }
    let corrupted = |out: &Vec<u8>, e: std::io::Error| {
        Error::Data(format!(
            "{}: corrupted gzip stream after {} decompressed bytes: {e}",
            path.display(),
            out.len()
        ))
    };
    let mut decoder = MultiGzDecoder::new(&raw[..]);
    let mut out = Vec::with_capacity(raw.len() * 4);
    (&mut decoder)
        .take(head as u64)
        .read_to_end(&mut out)
        .map_err(|e| corrupted(&out, e))?;
    let rest = promised(&out).map_or(u64::MAX, |total| {
        total.saturating_sub(out.len() as u64).saturating_add(1)
    });
    (&mut decoder)
        .take(rest)
        .read_to_end(&mut out)
        .map_err(|e| corrupted(&out, e))?;
    Ok(out)
}

/// The first of `names` (tried with and without a `.gz` suffix) that exists in `dir`.
pub fn find_file(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    for name in names {
        for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Data(format!(
        "{} has no {} (or .gz)",
        dir.display(),
        names.join(" / ")
    )))
}

/// Writes `bytes` to `path` (gzip-compressed when `gzip`), through a temporary file and a
/// rename so that a failure never leaves a half-written file.
pub fn write_file(path: &Path, bytes: &[u8], gzip: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    {
        let file = std::fs::File::create(&tmp)?;
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            enc.write_all(bytes)?;
            enc.finish()?.sync_all()?;
        } else {
            let mut f = file;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    #[test]
    fn reads_raw_and_gzip_alike() {
        let dir = tempdir("io");
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.join("raw"), &payload).unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&payload).unwrap();
        std::fs::write(dir.join("packed"), gz.finish().unwrap()).unwrap();
        assert_eq!(read_maybe_gz(&dir.join("raw")).unwrap(), payload);
        assert_eq!(read_maybe_gz(&dir.join("packed")).unwrap(), payload);
    }

    #[test]
    fn a_gzip_stream_is_inflated_only_past_its_promised_length() {
        let dir = tempdir("promised");
        let path = dir.join("bomb.gz");
        // A 4-byte "header" promising 10 bytes, then 10 MB of zeros.
        let mut data = vec![0, 0, 0, 10];
        data.resize(10_000_000, 0);
        write_file(&path, &data, true).unwrap();
        let promised = |h: &[u8]| Some(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64);
        let out = read_maybe_gz_promised(&path, 4, &promised).unwrap();
        assert_eq!(out.len(), 11, "stops one byte past the promise");
        // Without a promise (an unreadable header) the whole stream is read.
        let all = read_maybe_gz_promised(&path, 4, &|_| None).unwrap();
        assert_eq!(all.len(), 10_000_000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_gzip_is_an_error_naming_the_file() {
        let dir = tempdir("io-trunc");
        let payload = vec![3u8; 100_000];
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&payload).unwrap();
        let bytes = gz.finish().unwrap();
        std::fs::write(dir.join("cut.gz"), &bytes[..bytes.len() / 2]).unwrap();
        let err = read_maybe_gz(&dir.join("cut.gz")).unwrap_err().to_string();
        assert!(
            err.contains("cut.gz") && err.contains("corrupted gzip"),
            "{err}"
        );
        let missing = read_maybe_gz(&dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn find_file_accepts_a_gz_suffix() {
        let dir = tempdir("io-find");
        std::fs::write(dir.join("b.gz"), b"x").unwrap();
        assert_eq!(find_file(&dir, &["a", "b"]).unwrap(), dir.join("b.gz"));
        assert!(find_file(&dir, &["c"]).is_err());
    }

    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peloton-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
