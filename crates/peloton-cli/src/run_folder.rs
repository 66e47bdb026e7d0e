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

/// `checkpoints/latest.json`: the checkpoint a resume starts from. Written (atomically) only
/// once every worker's file of that step is on disk and the metrics up to that step are
/// flushed, so it never points at a half-written checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointManifest {
    pub format_version: u32,
    pub step: u64,
    /// Length of `metrics.jsonl` when the checkpoint was committed: a resume cuts the file
    /// back to it, so records written after the checkpoint are not doubled.
    pub metrics_bytes: u64,
    /// FNV-1a of `config.toml`, as in every worker file.
    pub config_fingerprint: String,
}

/// FNV-1a of a config file's bytes: the fingerprint every checkpoint file carries.
pub fn fingerprint(text: &str) -> u64 {
    peloton_core::layout::fnv1a(text.bytes())
}

/// Commits the checkpoint of `step` in the run folder `run`, whose worker files are all
/// written: writes `checkpoints/latest.json` atomically (with the length `metrics_bytes` of
/// `metrics.jsonl` at that point), then removes every older checkpoint.
pub fn commit_manifest(
    run: &Path,
    step: u64,
    metrics_bytes: u64,
    config_fingerprint: u64,
) -> Result<()> {
    let manifest = CheckpointManifest {
        format_version: peloton_core::checkpoint::FORMAT_VERSION,
        step,
        metrics_bytes,
        config_fingerprint: format!("{config_fingerprint:016x}"),
    };
    let dir = checkpoints_dir(run);
    write_atomic(
        &dir.join("latest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    // Older checkpoints are superseded; newer ones may be being written right now.
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name();
        let older = name
            .to_str()
            .and_then(peloton_core::checkpoint::parse_step_dir)
            .is_some_and(|s| s < step);
        if older {
            std::fs::remove_dir_all(entry.path()).with_context(|| {
                format!(
                    "cannot remove the old checkpoint {}",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}

/// The folder of a run's checkpoints.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Reads a run's checkpoint manifest (`None` before the first checkpoint was committed).
pub fn read_manifest(run: &Path) -> Result<Option<CheckpointManifest>> {
    let path = checkpoints_dir(run).join("latest.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let manifest: CheckpointManifest =
        serde_json::from_str(&text).with_context(|| format!("{} is corrupted", path.display()))?;
    if manifest.format_version != peloton_core::checkpoint::FORMAT_VERSION {
        bail!(
            "{}: checkpoint format version {}, this build reads version {}",
            path.display(),
            manifest.format_version,
            peloton_core::checkpoint::FORMAT_VERSION
        );
    }
    Ok(Some(manifest))
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

    /// Opens an interrupted run's folder to continue it: `metrics.jsonl` is cut back to
    /// `metrics_bytes` (what was written up to the checkpoint) and appended to.
    pub fn reopen(path: &Path, metrics_bytes: u64) -> Result<Self> {
        let metrics_path = path.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot open {}", metrics_path.display()))?;
        let len = file.metadata()?.len();
        if len < metrics_bytes {
            bail!(
                "{} is shorter ({len} bytes) than at the checkpoint ({metrics_bytes} bytes): it was damaged",
                metrics_path.display()
            );
        }
        file.set_len(metrics_bytes)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("cannot truncate {}", metrics_path.display()))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))?;
        Ok(Self {
            path: path.to_path_buf(),
            metrics: BufWriter::new(file),
        })
    }

    /// Commits the checkpoint of `step`, whose worker files are all written: flushes the
    /// metrics, writes the manifest atomically, then removes every older checkpoint.
    pub fn commit_checkpoint(&mut self, step: u64, config_fingerprint: u64) -> Result<()> {
        self.metrics.flush().context("cannot write metrics.jsonl")?;
        let file = self.metrics.get_ref();
        file.sync_data().context("cannot write metrics.jsonl")?;
        commit_manifest(&self.path, step, file.metadata()?.len(), config_fingerprint)?;
        Ok(())
    }

    /// Appends one event to `metrics.jsonl`.
    pub fn record(&mut self, event: &Event) -> Result<()> {
        let Some(line) = event_line(event)? else {
            return Ok(());
        };
        // Each record reaches the file as soon as it is final (the events arrive in their
        // final order), so `tail -f` shows progress and a killed run keeps every record up to
        // its last log point. A flush is one write(2); no fsync (that is the checkpoints' job).
        writeln!(self.metrics, "{line}")
            .and_then(|_| self.metrics.flush())
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

/// One event as its `metrics.jsonl` line (`None` for events that are not metrics).
pub fn event_line(event: &Event) -> Result<Option<String>> {
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
        // Checkpoints are committed by the caller, not recorded as metrics.
        Event::Checkpoint { .. } => return Ok(None),
        Event::Diverged {
            step,
            worker,
            loss,
            reset_to,
        } => (
            "diverged",
            json!({"step": step, "worker": worker, "loss": loss.to_string(), "reset_to": reset_to})
                .to_string(),
        ),
    };
    let fields = body.strip_prefix('{').unwrap_or(&body);
    Ok(Some(format!("{{\"type\":\"{kind}\",{fields}")))
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
