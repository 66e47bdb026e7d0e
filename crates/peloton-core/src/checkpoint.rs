//! Checkpoints: the full state of one worker at a step boundary, so that a run killed at any
//! moment resumes exactly — bit for bit on the threads transport.
//!
//! Each component writes what it owns into a [`StateDict`] (PyTorch's `state_dict`: named
//! vectors, counters and random-generator positions): the runner (step, loss history, leader
//! window, traffic), the local optimizer (momentum), the algorithm (centers, anchors,
//! push-sum weights, per-link traffic), the learner (data-iterator position, RNG streams,
//! BatchNorm statistics) and the transport (its byte counters). A [`WorkerCheckpoint`] bundles
//! them with what must match on resume: rank, worker count, the caller's config fingerprint
//! and the model layout.
//!
//! On disk a worker file is `MAGIC | format version (u32 LE) | CRC-32 of the payload (u32 LE)
//! | payload length (u64 LE) | payload (postcard)`, written to a temporary name, fsynced and
//! renamed, so a crash leaves either the old file or the new one, never half of one. A whole
//! checkpoint is one folder per step (`step-0000000100/worker-3.ckpt`); the caller commits it
//! (writes its manifest) only once every worker's file is in place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::seed::Rng;
use crate::{Error, Result};

/// Bumped whenever the payload's meaning changes; older files are refused with a clear error.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"PELOTON\x1a";
const HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// A random generator's exact position: ChaCha8's key, stream and 128-bit word position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    seed: [u8; 32],
    stream: u64,
    word_pos: [u64; 2],
}

impl RngState {
    pub fn of(rng: &Rng) -> Self {
        let pos = rng.get_word_pos();
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: [pos as u64, (pos >> 64) as u64],
        }
    }

    pub fn to_rng(&self) -> Rng {
        use rand::SeedableRng;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos[0] as u128 | ((self.word_pos[1] as u128) << 64));
        rng
    }
}

/// One entry of a [`StateDict`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateValue {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U64(Vec<u64>),
    Rng(RngState),
    /// A nested component (an algorithm built on another one).
    Dict(StateDict),
    /// Opaque bytes: a training loop outside peloton's own state (a PyTorch optimizer's state
    /// dict). Last, so that files written before it still read.
    Bytes(Vec<u8>),
}

impl StateValue {
    fn kind(&self) -> &'static str {
        match self {
            StateValue::F32(_) => "f32 vector",
            StateValue::F64(_) => "f64 vector",
            StateValue::U64(_) => "u64 vector",
            StateValue::Rng(_) => "random generator",
            StateValue::Dict(_) => "nested state",
            StateValue::Bytes(_) => "byte string",
        }
    }
}

/// A component's state: named entries, in name order (so equal states encode equally).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateDict(BTreeMap<String, StateValue>);

/// `Option<usize>` as a one-or-zero-element vector.
fn opt_to_vec(v: Option<usize>) -> Vec<u64> {
    v.map(|x| vec![x as u64]).unwrap_or_default()
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn put(&mut self, key: &str, value: StateValue) {
        self.0.insert(key.to_string(), value);
    }
    pub fn put_f32s(&mut self, key: &str, v: &[f32]) {
        self.put(key, StateValue::F32(v.to_vec()));
    }
    pub fn put_f64s(&mut self, key: &str, v: &[f64]) {
        self.put(key, StateValue::F64(v.to_vec()));
    }
    pub fn put_u64s(&mut self, key: &str, v: &[u64]) {
        self.put(key, StateValue::U64(v.to_vec()));
    }
    pub fn put_u64(&mut self, key: &str, v: u64) {
        self.put_u64s(key, &[v]);
    }
    pub fn put_f64(&mut self, key: &str, v: f64) {
        self.put_f64s(key, &[v]);
    }
    pub fn put_bool(&mut self, key: &str, v: bool) {
        self.put_u64(key, v as u64);
    }
    pub fn put_opt_usize(&mut self, key: &str, v: Option<usize>) {
        self.put(key, StateValue::U64(opt_to_vec(v)));
    }
    pub fn put_rng(&mut self, key: &str, rng: &Rng) {
        self.put(key, StateValue::Rng(RngState::of(rng)));
    }
    pub fn put_dict(&mut self, key: &str, dict: StateDict) {
        self.put(key, StateValue::Dict(dict));
    }
    pub fn put_bytes(&mut self, key: &str, bytes: Vec<u8>) {
        self.put(key, StateValue::Bytes(bytes));
    }

    pub fn get(&self, key: &str) -> Result<&StateValue> {
        self.0
            .get(key)
            .ok_or_else(|| Error::Checkpoint(format!("the checkpoint has no entry '{key}'")))
    }

    fn wrong(key: &str, want: &str, got: &StateValue) -> Error {
        Error::Checkpoint(format!(
            "entry '{key}' is a {}, expected a {want}",
            got.kind()
        ))
    }

    pub fn f32s(&self, key: &str) -> Result<&[f32]> {
        match self.get(key)? {
            StateValue::F32(v) => Ok(v),
            other => Err(Self::wrong(key, "f32 vector", other)),
        }
    }
    pub fn f64s(&self, key: &str) -> Result<&[f64]> {
        match self.get(key)? {
            StateValue::F64(v) => Ok(v),
            other => Err(Self::wrong(key, "f64 vector", other)),
        }
    }
    pub fn u64s(&self, key: &str) -> Result<&[u64]> {
        match self.get(key)? {
            StateValue::U64(v) => Ok(v),
            other => Err(Self::wrong(key, "u64 vector", other)),
        }
    }
    pub fn dict(&self, key: &str) -> Result<&StateDict> {
        match self.get(key)? {
            StateValue::Dict(d) => Ok(d),
            other => Err(Self::wrong(key, "nested state", other)),
        }
    }
    pub fn bytes(&self, key: &str) -> Result<&[u8]> {
        match self.get(key)? {
            StateValue::Bytes(b) => Ok(b),
            other => Err(Self::wrong(key, "byte string", other)),
        }
    }
    pub fn rng(&self, key: &str) -> Result<Rng> {
        match self.get(key)? {
            StateValue::Rng(r) => Ok(r.to_rng()),
            other => Err(Self::wrong(key, "random generator", other)),
        }
    }

    /// Copies entry `key` into `out`, which must have the saved length (a model or shard of a
    /// different size is a different run).
    pub fn f32s_into(&self, key: &str, out: &mut [f32]) -> Result<()> {
        let v = self.f32s(key)?;
        if v.len() != out.len() {
            return Err(Error::Checkpoint(format!(
                "entry '{key}' holds {} values, this run needs {}",
                v.len(),
                out.len()
            )));
        }
        out.copy_from_slice(v);
        Ok(())
    }

    /// Replaces `out` by entry `key` (any length).
    pub fn f32s_to_vec(&self, key: &str, out: &mut Vec<f32>) -> Result<()> {
        let v = self.f32s(key)?;
        out.clear();
        out.extend_from_slice(v);
        Ok(())
    }

    fn scalar<T: Copy>(key: &str, v: &[T]) -> Result<T> {
        match v {
            [x] => Ok(*x),
            _ => Err(Error::Checkpoint(format!(
                "entry '{key}' holds {} values, expected one",
                v.len()
            ))),
        }
    }
    pub fn u64(&self, key: &str) -> Result<u64> {
        Self::scalar(key, self.u64s(key)?)
    }
    pub fn f64(&self, key: &str) -> Result<f64> {
        Self::scalar(key, self.f64s(key)?)
    }
    pub fn bool(&self, key: &str) -> Result<bool> {
        self.u64(key).map(|v| v != 0)
    }
    pub fn usize(&self, key: &str) -> Result<usize> {
        usize::try_from(self.u64(key)?)
            .map_err(|_| Error::Checkpoint(format!("entry '{key}' does not fit this machine")))
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.u64s(key)? {
            [] => Ok(None),
            [x] => Ok(Some(*x as usize)),
            v => Err(Error::Checkpoint(format!(
                "entry '{key}' holds {} values, expected at most one",
                v.len()
            ))),
        }
    }
}

/// What must be equal between the run that wrote a checkpoint and the one resuming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub rank: u64,
    pub workers: u64,
    /// The caller's fingerprint of the whole configuration (the CLI hashes `config.toml`).
    pub config: u64,
    /// The model's segment table ([`crate::layout::ParamLayout::fingerprint`]).
    pub layout: u64,
    pub algorithm: String,
}

/// One worker's state at the end of local step `step` (`step` steps done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerCheckpoint {
    pub identity: Identity,
    pub step: u64,
    pub runner: StateDict,
    pub optimizer: StateDict,
    pub algorithm: StateDict,
    pub learner: StateDict,
    pub transport: StateDict,
}

impl WorkerCheckpoint {
    /// The file's bytes: header, checksum, payload.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let payload = postcard::to_stdvec(self)
            .map_err(|e| Error::Checkpoint(format!("cannot encode the checkpoint: {e}")))?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Reads a file's bytes back; every way a file can be damaged is an error that says which.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(Error::Checkpoint(
                "not a peloton checkpoint (bad magic number or shorter than the header)".into(),
            ));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let version = word(8);
        if version != FORMAT_VERSION {
            return Err(Error::Checkpoint(format!(
                "checkpoint format version {version}, this build reads version {FORMAT_VERSION}"
            )));
        }
        let crc = word(12);
        let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let payload = &bytes[HEADER_LEN..];
        if payload.len() as u64 != len {
            return Err(Error::Checkpoint(format!(
                "checkpoint truncated or padded: header says {len} payload bytes, file has {}",
                payload.len()
            )));
        }
        if crc32fast::hash(payload) != crc {
            return Err(Error::Checkpoint(
                "checkpoint checksum mismatch: the file is corrupted".into(),
            ));
        }
        postcard::from_bytes(payload)
            .map_err(|e| Error::Checkpoint(format!("checkpoint payload is malformed: {e}")))
    }

    /// Checks that this checkpoint belongs to the resuming run.
    pub fn check(&self, expected: &Identity, step: u64) -> Result<()> {
        let got = &self.identity;
        let what = if got.config != expected.config {
            Some(format!(
                "it was written by another configuration (fingerprint {:016x}, this run {:016x})",
                got.config, expected.config
            ))
        } else if got.workers != expected.workers {
            Some(format!(
                "it has {} workers, this run {}",
                got.workers, expected.workers
            ))
        } else if got.rank != expected.rank {
            Some(format!(
                "it is worker {}'s, read as worker {}'s",
                got.rank, expected.rank
            ))
        } else if got.algorithm != expected.algorithm {
            Some(format!(
                "it is of algorithm {}, this run is {}",
                got.algorithm, expected.algorithm
            ))
        } else if got.layout != expected.layout {
            Some("its model layout differs from this run's".to_string())
        } else if self.step != step {
            Some(format!(
                "it is of step {}, the manifest says {step}",
                self.step
            ))
        } else {
            None
        };
        match what {
            Some(w) => Err(Error::Checkpoint(format!(
                "worker {}'s checkpoint does not match this run: {w}",
                expected.rank
            ))),
            None => Ok(()),
        }
    }
}

/// Where a run's checkpoints live and how often they are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// Every this many local steps (at the end of the step; not after the last one).
    pub every: u64,
    /// The folder holding one `step-NNNNNNNNNN/` folder per checkpoint.
    pub dir: PathBuf,
    /// The caller's fingerprint of the configuration, stored in and checked against every file.
    pub fingerprint: u64,
    /// Resume from the checkpoint of this step (its files must all be in `dir`).
    pub resume: Option<u64>,
}

impl CheckpointConfig {
    pub fn step_dir(&self, step: u64) -> PathBuf {
        step_dir(&self.dir, step)
    }

    pub fn worker_file(&self, step: u64, rank: usize) -> PathBuf {
        self.step_dir(step).join(format!("worker-{rank}.ckpt"))
    }
}

/// The folder of step `step`'s checkpoint under `dir`.
pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:010}"))
}

/// The step of a checkpoint folder's name (`step-0000000100` → 100).
pub fn parse_step_dir(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsynced, renamed
/// over the target (then the folder fsynced, so the rename itself survives a power cut).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // Directories cannot be opened for syncing everywhere; where they can, this makes the
    // rename durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes one worker's checkpoint file.
pub fn save(path: &Path, checkpoint: &WorkerCheckpoint) -> Result<()> {
    let bytes = checkpoint.encode()?;
    write_atomic(path, &bytes)
        .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))
}

/// Checks, before a resume touches anything, that the checkpoint of `step` in `dir` has a
/// readable, intact file for each of `workers` workers, written by this configuration
/// (`fingerprint`) for this worker count, rank and step. (The model layout and the algorithm
/// are checked again by each worker when it loads its file.)
pub fn verify(dir: &Path, step: u64, workers: usize, fingerprint: u64) -> Result<()> {
    for rank in 0..workers {
        let path = step_dir(dir, step).join(format!("worker-{rank}.ckpt"));
        let c = load(&path)?;
        let expected = Identity {
            rank: rank as u64,
            workers: workers as u64,
            config: fingerprint,
            layout: c.identity.layout,
            algorithm: c.identity.algorithm.clone(),
        };
        c.check(&expected, step)?;
    }
    Ok(())
}

/// Reads one worker's checkpoint file.
pub fn load(path: &Path) -> Result<WorkerCheckpoint> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    WorkerCheckpoint::decode(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{}: {}", path.display(), strip(&e))))
}

fn strip(e: &Error) -> String {
    match e {
        Error::Checkpoint(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The checkpoint reader's fuzz body (`fuzz/fuzz_targets/checkpoint.rs`, and the stable smoke
/// test in peloton-cli): any bytes give a checkpoint or an error, never a panic or an
/// unbounded allocation, and a checkpoint that reads back writes and reads again to itself.
pub fn fuzz_decode(data: &[u8]) {
    // The bytes as a whole file (header paths, CRC), then as a payload under a valid header,
    // so the fuzzer reaches the payload decoder without having to forge CRC-32s.
    let mut sealed = Vec::with_capacity(HEADER_LEN + data.len());
    sealed.extend_from_slice(MAGIC);
    sealed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    sealed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    sealed.extend_from_slice(&(data.len() as u64).to_le_bytes());
    sealed.extend_from_slice(data);
    fuzz_decode_file(data);
    fuzz_decode_file(&sealed);
}

fn fuzz_decode_file(data: &[u8]) {
    if let Ok(c) = WorkerCheckpoint::decode(data) {
        let again = c.encode().expect("a decoded checkpoint encodes");
        let back = WorkerCheckpoint::decode(&again).expect("an encoded checkpoint decodes");
        // NaN payloads compare unequal; the encodings are the exact comparison.
        assert_eq!(back.encode().expect("encodes"), again);
        assert_eq!(back.identity, c.identity);
    }
}

/// A small valid checkpoint file, the fuzzers' seed.
pub fn sample_file() -> Vec<u8> {
    let mut runner = StateDict::new();
    runner.put_u64("step", 12);
    runner.put_f64s("losses", &[2.5, 1.25, f64::INFINITY]);
    runner.put_f32s("params", &[0.5, -1.0, 3.0, 0.0]);
    let mut window = StateDict::new();
    window.put_u64s("position", &[1, 3]);
    runner.put_dict("window", window);
    let mut learner = StateDict::new();
    learner.put_rng("sampler", &crate::seed::rng(1, "fuzz", 0));
    let mut algorithm = StateDict::new();
    algorithm.put_opt_usize("leader", Some(1));
    WorkerCheckpoint {
        identity: Identity {
            rank: 0,
            workers: 2,
            config: 7,
            layout: 9,
            algorithm: "lsgd".into(),
        },
        step: 12,
        runner,
        optimizer: StateDict::new(),
        algorithm,
        learner,
        transport: StateDict::new(),
    }
    .encode()
    .expect("the sample encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    fn sample() -> WorkerCheckpoint {
        let mut runner = StateDict::new();
        runner.put_u64("step", 7);
        runner.put_f64s("losses", &[1.5, f64::NAN, 0.25]);
        let mut rng = crate::seed::rng(3, "t", 1);
        rng.next_u64();
        let mut learner = StateDict::new();
        learner.put_rng("sampler", &rng);
        let mut inner = StateDict::new();
        inner.put_f32s("center", &[1.0, -2.0, 3.5]);
        let mut algorithm = StateDict::new();
        algorithm.put_dict("base", inner);
        algorithm.put_opt_usize("leader", Some(2));
        WorkerCheckpoint {
            identity: Identity {
                rank: 1,
                workers: 4,
                config: 0xfeed,
                layout: 0xbeef,
                algorithm: "lsgd".into(),
            },
            step: 7,
            runner,
            optimizer: StateDict::new(),
            algorithm,
            learner,
            transport: StateDict::new(),
        }
    }

    #[test]
    fn encode_decode_round_trips_bit_for_bit() {
        let c = sample();
        let back = WorkerCheckpoint::decode(&c.encode().unwrap()).unwrap();
        assert_eq!(back.identity, c.identity);
        // NaN != NaN, so compare the encodings.
        assert_eq!(back.encode().unwrap(), c.encode().unwrap());
        assert_eq!(
            back.algorithm.dict("base").unwrap().f32s("center").unwrap(),
            &[1.0, -2.0, 3.5]
        );
        assert_eq!(back.algorithm.opt_usize("leader").unwrap(), Some(2));
    }

    #[test]
    fn a_restored_rng_continues_the_same_stream() {
        let mut rng = crate::seed::rng(9, "stream", 0);
        for _ in 0..37 {
            rng.next_u32();
        }
        let mut copy = RngState::of(&rng).to_rng();
        for _ in 0..100 {
            assert_eq!(rng.next_u64(), copy.next_u64());
        }
    }

    #[test]
    fn every_damage_is_a_clear_error() {
        let good = sample().encode().unwrap();
        let err = |bytes: &[u8]| WorkerCheckpoint::decode(bytes).unwrap_err().to_string();
        assert!(err(&good[..5]).contains("not a peloton checkpoint"));
        assert!(err(&good[..good.len() - 1]).contains("truncated"));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(err(&flipped).contains("checksum mismatch"));
        let mut version = good.clone();
        version[8] = 99;
        assert!(err(&version).contains("format version 99"));
        let mut magic = good;
        magic[0] = b'X';
        assert!(err(&magic).contains("bad magic"));
    }

    #[test]
    fn a_checkpoint_of_another_run_is_refused() {
        let c = sample();
        let mut other = c.identity.clone();
        other.config = 1;
        assert!(c
            .check(&other, 7)
            .unwrap_err()
            .to_string()
            .contains("another configuration"));
        assert!(c
            .check(&c.identity, 8)
            .unwrap_err()
            .to_string()
            .contains("step 7"));
        c.check(&c.identity, 7).unwrap();
    }

    #[test]
    fn missing_and_mistyped_entries_are_named() {
        let c = sample();
        assert!(c
            .runner
            .f32s("losses")
            .unwrap_err()
            .to_string()
            .contains("'losses' is a f64 vector"));
        assert!(c
            .runner
            .u64("nope")
            .unwrap_err()
            .to_string()
            .contains("no entry 'nope'"));
        let mut short = [0.0f32; 2];
        assert!(c
            .algorithm
            .dict("base")
            .unwrap()
            .f32s_into("center", &mut short)
            .is_err());
    }

    #[test]
    fn write_atomic_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("peloton-ckpt-{}", std::process::id()));
        let path = step_dir(&dir, 5).join("worker-0.ckpt");
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap().step, 7);
        assert!(!path.with_extension("ckpt.partial").exists());
        std::fs::write(&path, b"garbage").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("worker-0.ckpt") && e.contains("not a peloton checkpoint"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
