//! The run folder: `config.toml` (the resolved experiment), `metrics.jsonl` (one JSON object
//! per worker record and evaluation, in step order) and `summary.json` (written last, also
//! when the run fails). Whole files are written to a temporary name and renamed, so a crash
//! never leaves a half-written config or summary.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use peloton_core::runner::Event;
use serde_json::json;

/// An open run folder.
pub struct RunFolder {
    path: PathBuf,
    metrics: BufWriter<File>,
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, flushed to
/// disk, then renamed over the target.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

impl RunFolder {
    /// Creates the folder. An existing non-empty folder is refused, so a new run never
    /// overwrites an old one.
    pub fn create(path: &Path, config_toml: &str) -> Result<Self> {
        if path.exists() {
            let non_empty = std::fs::read_dir(path)
                .with_context(|| {
                    format!("run folder {} exists but cannot be read", path.display())
                })?
                .next()
                .is_some();
            if non_empty {
                bail!(
                    "run folder {} already exists and is not empty; choose another --out",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create run folder {}", path.display()))?;
        write_atomic(&path.join("config.toml"), config_toml.as_bytes())?;
        let metrics_path = path.join("metrics.jsonl");
        let metrics = BufWriter::new(
            File::create(&metrics_path)
                .with_context(|| format!("cannot create {}", metrics_path.display()))?,
        );
        Ok(Self {
            path: path.to_path_buf(),
            metrics,
        })
    }

    /// Appends one event to `metrics.jsonl`.
    pub fn record(&mut self, event: &Event) -> Result<()> {
        // Records are serialized directly (not through serde_json::Value) so that f32 fields
        // keep their shortest form; the "type" key goes first.
        let (kind, body) = match event {
            Event::Started {
                workers,
                params,
                steps,
            } => (
                "start",
                json!({"workers": workers, "params": params, "steps": steps}).to_string(),
            ),
            Event::Worker(r) => ("worker", serde_json::to_string(r)?),
            Event::Eval(e) => ("eval", serde_json::to_string(e)?),
        };
        let fields = body.strip_prefix('{').unwrap_or(&body);
        writeln!(self.metrics, "{{\"type\":\"{kind}\",{fields}")
            .context("cannot write metrics.jsonl")
    }

    /// Flushes the metrics and writes `summary.json`.
    pub fn finish(mut self, summary: &serde_json::Value) -> Result<()> {
        self.metrics.flush().context("cannot write metrics.jsonl")?;
        write_atomic(
            &self.path.join("summary.json"),
            serde_json::to_string_pretty(summary)?.as_bytes(),
        )
    }
}

/// A fresh folder name under `runs/`: `runs/<algorithm>-<problem>-<unix time>[-k]`.
pub fn default_path(algorithm: &str, problem: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = PathBuf::from("runs").join(format!("{algorithm}-{problem}-{secs}"));
    let mut path = base.clone();
    let mut k = 2;
    while path.exists() {
        path = PathBuf::from(format!("{}-{k}", base.display()));
        k += 1;
    }
    path
}
