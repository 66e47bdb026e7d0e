//! Reading a small text file a user names (a graph's edge list here; the CLI's experiment,
//! sweep and cluster files): only a regular file is read, so a FIFO, a device or a folder is
//! refused at once instead of blocking forever or streaming without end, and at most
//! [`MAX_TEXT_FILE`] bytes are read.

use std::io::Read;
use std::path::Path;

/// The largest text file read: 64 MiB (an edge list of several million edges).
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// The contents of the regular file `path`, as UTF-8 text of at most [`MAX_TEXT_FILE`] bytes.
pub fn read_text_file(path: &Path) -> std::io::Result<String> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    if !std::fs::metadata(path)?.is_file() {
        return Err(invalid(
            "not a regular file (a folder, a FIFO or a device)".into(),
        ));
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(invalid(format!(
            "larger than {} MiB, more than any text file peloton reads",
            MAX_TEXT_FILE >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("peloton-text-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        std::fs::write(&file, "0 1\n").unwrap();
        assert_eq!(read_text_file(&file).unwrap(), "0 1\n");
        let e = read_text_file(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(read_text_file(&file)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        if Path::new("/dev/zero").exists() {
            let e = read_text_file(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
