//! The compression layer: a [`Communicator`] around a worker's communicator that compresses
//! what the algorithm sends (`[compression]`), so that every registered algorithm, built-in
//! or from a user crate, gets compressed messages without code of its own.
//!
//! * **What is compressed.** A message of at least the model's length compresses its first
//!   `model_len` values; a tail (SGP's push-sum weight, AD-PSGD's send time) travels exact,
//!   and so do shorter messages (leader metrics, BatchNorm statistics, counters) and diagnostic
//!   traffic (consensus distance, evaluation models).
//! * **Roles, by the phase the runner is in** ([`Phase`]): collectives inside `before_step`
//!   carry gradients, the others (setup, `after_step`, `drain`, asynchronous rounds) models;
//!   point-to-point messages are gossip. `apply_to` picks the roles.
//! * **All-reduce** is Bagua's ByteGrad scheme: each member encodes its chunk for every other
//!   member (scatter, point-to-point on [`TAG_COMPRESSED`]), sums what it receives in rank
//!   order, encodes its reduced chunk and all-gathers it; everyone decodes every chunk, its own
//!   included, so every member holds the same bits. That moves 2(p−1)/p·B/c bytes per member,
//!   as a ring moves uncompressed. PowerSGD replaces gradient all-reduces by two all-reduces of
//!   its factors ([`peloton_compression::PowerSgd`]).
//! * **Broadcasts** encode once at the root (whose buffer stays exact); **sends** encode,
//!   **receives** decode; an **all-gather** whose pieces make up a model encodes each piece
//!   and decodes them all (everyone holds the same bits).
//! * **Parameter-server pushes** (asynchronous EASGD's elastic differences) are models: each
//!   is encoded through its own error-feedback stream and the server adds what it decodes to,
//!   on every transport the same: the transports carry the encoded message to the server,
//!   which decodes it ([`Communicator::server_push_encoded`]; MPI's server on rank 0 gets the
//!   compressed bytes), the counters count them and the simulator charges them. Pulls travel
//!   exact: the center is the model a worker moves toward and the one evaluated at the end.
//! * **Error feedback** keeps a residual per stream (role, operation, peer or chunk, tag, and
//!   which communicator), checkpointed with the worker ([`CompressionLayer::save_state`]).
//!
//! The encoded bytes travel as `f32` words ([`peloton_compression::to_words`]), so every
//! transport carries them unchanged, the simulator charges them, and the traffic counters
//! count them. [`CompressionStats`] adds what the same operations would have moved as fp32.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use peloton_compression::{
    self as compression, CompressionConfig, Compressor, ErrorFeedback, Kind, PowerSgd, Role,
};

use super::{
    CommStats, Communicator, CounterOp, CutService, EncodedPush, RecvRequest, ReduceOp,
    SendRequest, Tag,
};
use crate::checkpoint::StateDict;
use crate::layout::ParamLayout;
use crate::{Error, Result};

/// The tag of the compressed all-reduce's scatter messages: reserved for the layer.
pub const TAG_COMPRESSED: Tag = 32767;

/// The most values after the model in one message that [`Communicator::probe_any`] still
/// reads as a compressed model plus an exact tail.
const MAX_TAIL: usize = 16;

/// What the runner is doing, which decides the role of a collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing is compressed: the initial model broadcast, a diverged worker's reset.
    Exact,
    /// Collectives carry models (setup, `after_step`, `drain`, asynchronous rounds).
    Models,
    /// Collectives carry gradients (`before_step`).
    Gradients,
}

/// What the layer compressed on one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompressionStats {
    /// Operations compressed (all-reduces, broadcasts, messages, parameter-server pushes).
    pub operations: u64,
    /// Bytes this worker sent in them.
    pub bytes_sent: u64,
    /// Bytes the same operations send uncompressed (fp32), counted as the transports count.
    pub fp32_bytes_sent: u64,
}

impl CompressionStats {
    /// How many times fewer bytes the compressed operations sent (1 when none was).
    pub fn ratio(&self) -> f64 {
        if self.bytes_sent == 0 {
            1.0
        } else {
            self.fp32_bytes_sent as f64 / self.bytes_sent as f64
        }
    }
}

/// One worker's compression layer, shared by its wrapped communicators (the world and every
/// split of it) and its runner, which sets the [`Phase`] and saves the state.
#[derive(Clone)]
pub struct CompressionLayer(Arc<Mutex<Layer>>);

struct Layer {
    config: CompressionConfig,
    kind: Kind,
    error_feedback: bool,
    /// The byte compressor (`None` for PowerSGD, which the all-reduce runs itself).
    compressor: Option<Box<dyn Compressor>>,
    powersgd: Option<PowerSgd>,
    seed: u64,
    /// Whose messages these are, for errors.
    algorithm: String,
    phase: Phase,
    diagnostic: bool,
    /// The model's length; 0 until [`CompressionLayer::set_model`] (everything passes).
    model_len: usize,
    streams: BTreeMap<String, ErrorFeedback>,
    stats: CompressionStats,
    /// Splits made so far (a split's streams are told apart by its number).
    splits: u32,
    bytes: Vec<u8>,
    /// The compressed all-reduce's buffers, kept between calls (a training run all-reduces
    /// the same sizes every step).
    scratch: Scratch,
}

/// Buffers of one compressed all-reduce: encoded words, the reduced chunk, one member's
/// share of it, and the gathered encoded chunks.
#[derive(Default)]
struct Scratch {
    words: Vec<f32>,
    sum: Vec<f32>,
    share: Vec<f32>,
    gathered: Vec<f32>,
}

fn lock(layer: &Mutex<Layer>) -> MutexGuard<'_, Layer> {
    // Only the worker's own thread uses its layer; a panic there ends the worker anyway.
    layer.lock().unwrap_or_else(|e| e.into_inner())
}

fn words_for(bytes: usize) -> usize {
    bytes.div_ceil(4)
}

impl CompressionLayer {
    /// The layer `config` asks for (`None` for `kind = "none"`), for a run of `algorithm` with
    /// `seed` (random-k's positions and PowerSGD's first factors come from it).
    pub fn new(config: &CompressionConfig, seed: u64, algorithm: &str) -> Option<Self> {
        let kind = config.resolved();
        if kind == Kind::None {
            return None;
        }
        Some(CompressionLayer(Arc::new(Mutex::new(Layer {
            config: config.clone(),
            kind,
            error_feedback: config.error_feedback(),
            compressor: compression::build(&kind, seed),
            powersgd: None,
            seed,
            algorithm: algorithm.to_string(),
            phase: Phase::Exact,
            diagnostic: false,
            model_len: 0,
            streams: BTreeMap::new(),
            stats: CompressionStats::default(),
            splits: 0,
            bytes: Vec::new(),
            scratch: Scratch::default(),
        }))))
    }

    /// Tells the layer the model: messages of at least its length are compressed, and
    /// PowerSGD plans its matrices from the shapes.
    pub fn set_model(&self, layout: &ParamLayout) -> Result<()> {
        let mut layer = lock(&self.0);
        layer.model_len = layout.len();
        if let Kind::PowerSgd { rank } = layer.kind {
            let shapes: Vec<compression::Shape<'_>> = layout
                .segments()
                .iter()
                .map(|s| (s.offset, s.shape.as_slice()))
                .collect();
            let plan = PowerSgd::new(
                &shapes,
                layout.len(),
                rank,
                layer.error_feedback,
                layer.seed,
            )
            .map_err(Error::Config)?;
            layer.powersgd = Some(plan);
        }
        Ok(())
    }

    /// Sets the runner's phase (the role of the collectives that follow).
    pub fn set_phase(&self, phase: Phase) {
        lock(&self.0).phase = phase;
    }

    /// What was compressed so far.
    pub fn stats(&self) -> CompressionStats {
        lock(&self.0).stats
    }

    /// `comm` with this layer around it.
    pub fn wrap<'a>(&self, comm: &'a mut dyn Communicator) -> Compressed<'a> {
        Compressed {
            inner: Inner::Borrowed(comm),
            layer: self.clone(),
            group: 0,
            pending: BTreeMap::new(),
            next_request: 0,
        }
    }

    /// The state a checkpoint keeps: every stream's residual, the compressor's message count
    /// (random-k's positions), PowerSGD's factors and residual, and the counters.
    pub fn save_state(&self) -> StateDict {
        let layer = lock(&self.0);
        let mut state = StateDict::new();
        let mut streams = StateDict::new();
        for (key, stream) in &layer.streams {
            streams.put_f32s(key, stream.residual());
        }
        state.put_dict("streams", streams);
        state.put_u64(
            "messages",
            layer.compressor.as_ref().map_or(0, |c| c.messages()),
        );
        if let Some(p) = &layer.powersgd {
            let (q, residual) = p.state();
            state.put_f32s("powersgd_q", q);
            state.put_f32s("powersgd_residual", residual);
        }
        let s = layer.stats;
        state.put_u64s("stats", &[s.operations, s.bytes_sent, s.fp32_bytes_sent]);
        state
    }

    /// Restores what [`CompressionLayer::save_state`] saved (after [`CompressionLayer::set_model`]).
    pub fn load_state(&self, state: &StateDict) -> Result<()> {
        let bad = |e: compression::DecodeError| Error::Checkpoint(e.0);
        let mut layer = lock(&self.0);
        let streams = state.dict("streams")?;
        layer.streams.clear();
        for key in streams.keys() {
            let residual = streams.f32s(key)?;
            let mut stream = ErrorFeedback::new(residual.len());
            stream.set_residual(residual).map_err(bad)?;
            layer.streams.insert(key.to_string(), stream);
        }
        let messages = state.u64("messages")?;
        if let Some(c) = &mut layer.compressor {
            c.set_messages(messages);
        }
        if let Some(p) = &mut layer.powersgd {
            p.set_state(state.f32s("powersgd_q")?, state.f32s("powersgd_residual")?)
                .map_err(Error::Checkpoint)?;
        }
        match *state.u64s("stats")? {
            [operations, bytes_sent, fp32_bytes_sent] => {
                layer.stats = CompressionStats {
                    operations,
                    bytes_sent,
                    fp32_bytes_sent,
                }
            }
            _ => {
                return Err(Error::Checkpoint(
                    "compression counters must be three numbers".into(),
                ))
            }
        }
        Ok(())
    }
}

impl Layer {
    /// The role of an operation on `len` values, when the layer compresses it.
    fn role(&self, point_to_point: bool, len: usize) -> Option<Role> {
        if self.diagnostic || self.phase == Phase::Exact || self.model_len == 0 {
            return None;
        }
        if len < self.model_len {
            return None;
        }
        let role = match (point_to_point, self.phase) {
            (true, _) => Role::Gossip,
            (false, Phase::Gradients) => Role::Gradients,
            (false, _) => Role::Models,
        };
        self.config.applies_to(role).then_some(role)
    }

    /// The role of a parameter-server push of `len` values, when the layer compresses it:
    /// models (an elastic difference), whatever phase the runner is in.
    fn server_role(&self, len: usize) -> Option<Role> {
        if self.diagnostic || self.phase == Phase::Exact || self.model_len == 0 {
            return None;
        }
        (len >= self.model_len && self.config.applies_to(Role::Models)).then_some(Role::Models)
    }

    /// The refusal of a message PowerSGD cannot compress.
    fn powersgd_refuses(&self, what: &str, role: Role) -> Error {
        let role = match role {
            Role::Gradients => "gradients",
            Role::Models => "models",
            Role::Gossip => "gossip",
        };
        Error::Config(format!(
            "compression.kind = \"powersgd\" compresses gradient all-reduces only, and {} sends a model-sized {what} ({role}): set compression.apply_to = [\"gradients\"] or choose fp16, bf16, int8, topk or randomk",
            self.algorithm
        ))
    }

    fn compressor(&self) -> &dyn Compressor {
        self.compressor
            .as_deref()
            .expect("a byte compressor for every kind but none and powersgd")
    }

    /// Words of the encoded form of `len` values.
    fn encoded_words(&self, len: usize) -> usize {
        words_for(self.compressor().encoded_len(len))
    }

    /// Words of a message of `len` values (at least the model's): the encoded model, then
    /// the exact tail.
    fn message_words(&self, len: usize) -> usize {
        self.encoded_words(self.model_len) + (len - self.model_len)
    }

    /// Encodes `values` (through the residual of `stream` with error feedback on) into
    /// `words`, then appends `tail` exact.
    fn encode(&mut self, stream: String, values: &[f32], tail: &[f32], words: &mut Vec<f32>) {
        let Layer {
            compressor,
            streams,
            bytes,
            error_feedback,
            ..
        } = self;
        let compressor = compressor
            .as_deref_mut()
            .expect("a byte compressor for every kind but none and powersgd");
        if *error_feedback {
            let ef = streams
                .entry(stream)
                .or_insert_with(|| ErrorFeedback::new(values.len()));
            if ef.residual().len() != values.len() {
                *ef = ErrorFeedback::new(values.len());
            }
            // The compressor decodes its own message here; it cannot fail.
            ef.encode(compressor, values, bytes)
                .expect("a compressor decodes its own message");
        } else {
            compressor.encode(values, bytes);
        }
        compression::to_words(bytes, words);
        words.extend_from_slice(tail);
    }

    /// Decodes a message of [`Layer::message_words`] words into `values` and `tail`.
    fn decode(&mut self, words: &[f32], values: &mut [f32], tail: &mut [f32]) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.bytes);
        let decoded = compression::decode_words(self.compressor(), words, values, tail, &mut bytes);
        self.bytes = bytes;
        decoded.map_err(|e| Error::Transport(e.to_string()))
    }

    fn count(&mut self, actual: CommStats, fp32_sent: u64) {
        self.stats.operations += 1;
        self.stats.bytes_sent += actual.bytes_sent;
        self.stats.fp32_bytes_sent += fp32_sent;
    }
}

enum Inner<'a> {
    Borrowed(&'a mut dyn Communicator),
    Owned(Box<dyn Communicator>),
}

/// A communicator with the compression layer around it ([`CompressionLayer::wrap`]).
pub struct Compressed<'a> {
    inner: Inner<'a>,
    layer: CompressionLayer,
    /// Which communicator of the worker this is (0: the world; k: its k-th split).
    group: u32,
    /// Receives started through this communicator: the inner request, and whether the
    /// message is compressed.
    pending: BTreeMap<u64, (RecvRequest, bool)>,
    next_request: u64,
}

impl Compressed<'_> {
    fn inner(&mut self) -> &mut dyn Communicator {
        match &mut self.inner {
            Inner::Borrowed(c) => &mut **c,
            Inner::Owned(c) => c.as_mut(),
        }
    }

    fn inner_ref(&self) -> &dyn Communicator {
        match &self.inner {
            Inner::Borrowed(c) => &**c,
            Inner::Owned(c) => c.as_ref(),
        }
    }

    fn layer(&self) -> MutexGuard<'_, Layer> {
        lock(&self.layer.0)
    }

    /// Whether the layer runs PowerSGD (a separate statement from any other use of the layer:
    /// the lock is not re-entrant).
    fn is_powersgd(&self) -> bool {
        let kind = self.layer().kind;
        matches!(kind, Kind::PowerSgd { .. })
    }

    fn stream(&self, role: Role, op: &str, peer: usize, tag: Tag) -> String {
        format!("g{}/{role:?}/{op}/{peer}/{tag}", self.group)
    }

    /// Runs `f` and charges its traffic to the layer's counters, against `fp32_sent`.
    fn counted(&mut self, fp32_sent: u64, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let before = self.inner_ref().stats();
        f(self)?;
        let actual = self.inner_ref().stats().since(&before);
        self.layer().count(actual, fp32_sent);
        Ok(())
    }

    /// ByteGrad's all-reduce of the model-sized prefix (see the module documentation).
    fn compressed_all_reduce(&mut self, buf: &mut [f32], op: ReduceOp, role: Role) -> Result<()> {
        let (p, me) = (self.size(), self.rank());
        let model_len = self.layer().model_len;
        let (values, tail) = buf.split_at_mut(model_len);
        if !tail.is_empty() {
            self.inner().all_reduce(tail, op)?;
        }
        let chunks = super::shard_ranges(model_len, p);
        // The buffers of the previous call, back after this one (a failed call drops them).
        let mut scratch = std::mem::take(&mut self.layer().scratch);
        let Scratch {
            words,
            sum,
            share,
            gathered,
        } = &mut scratch;
        // Scatter: my share of every other member's chunk.
        for (j, chunk) in chunks.iter().enumerate().filter(|&(j, _)| j != me) {
            let stream = self.stream(role, "all-reduce-scatter", j, 0);
            self.layer()
                .encode(stream, &values[chunk.clone()], &[], words);
            self.inner().send(j, TAG_COMPRESSED, words)?;
        }
        // Reduce my chunk: every member's share, in rank order.
        let mine = chunks[me].clone();
        sum.clear();
        sum.resize(mine.len(), 0.0);
        share.resize(mine.len(), 0.0);
        let share_words = self.layer().encoded_words(mine.len());
        for r in 0..p {
            if r == me {
                share.copy_from_slice(&values[mine.clone()]);
            } else {
                words.resize(share_words, 0.0);
                self.inner().recv(r, TAG_COMPRESSED, words)?;
                self.layer().decode(words, share, &mut [])?;
            }
            sum.iter_mut().zip(share.iter()).for_each(|(s, x)| *s += *x);
        }
        if op == ReduceOp::Mean {
            let scale = p as f32;
            sum.iter_mut().for_each(|s| *s /= scale);
        }
        // Gather: every member's reduced chunk, encoded, padded to the longest.
        let longest = chunks
            .iter()
            .map(|c| self.layer().encoded_words(c.len()))
            .max()
            .unwrap_or(0);
        let stream = self.stream(role, "all-reduce-gather", me, 0);
        self.layer().encode(stream, sum, &[], words);
        words.resize(longest, 0.0);
        gathered.resize(longest * p, 0.0);
        self.inner().all_gather(words, gathered)?;
        let mut layer = self.layer();
        for (r, chunk) in chunks.iter().enumerate() {
            let n = layer.encoded_words(chunk.len());
            let message = &gathered[r * longest..r * longest + n];
            layer.decode(message, &mut values[chunk.clone()], &mut [])?;
        }
        layer.scratch = scratch;
        Ok(())
    }

    fn powersgd_all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let p = self.size();
        let model_len = self.layer().model_len;
        let (values, tail) = buf.split_at_mut(model_len);
        if !tail.is_empty() {
            self.inner().all_reduce(tail, op)?;
        }
        // The plan leaves the layer while its all-reduces run on the inner communicator.
        let mut plan = self.layer().powersgd.take().expect("planned at set_model");
        let divisor = if op == ReduceOp::Mean { p } else { 1 };
        let inner = self.inner();
        let result = plan.all_reduce(values, divisor, |m| inner.all_reduce(m, ReduceOp::Sum));
        self.layer().powersgd = Some(plan);
        result
    }
}

impl Communicator for Compressed<'_> {
    fn rank(&self) -> usize {
        self.inner_ref().rank()
    }
    fn size(&self) -> usize {
        self.inner_ref().size()
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let p = self.size();
        let role = self.layer().role(false, buf.len());
        let (Some(role), true, true) = (role, matches!(op, ReduceOp::Sum | ReduceOp::Mean), p > 1)
        else {
            return self.inner().all_reduce(buf, op);
        };
        let (kind, model_len) = {
            let layer = self.layer();
            (layer.kind, layer.model_len)
        };
        let fp32 = (2 * (p - 1) * 4 * buf.len() / p) as u64;
        if let Kind::PowerSgd { .. } = kind {
            if role != Role::Gradients {
                return Err(self.layer().powersgd_refuses("all-reduce", role));
            }
            return self.counted(fp32, |c| c.powersgd_all_reduce(buf, op));
        }
        if model_len < p {
            return self.inner().all_reduce(buf, op);
        }
        self.counted(fp32, |c| c.compressed_all_reduce(buf, op, role))
    }

    fn reduce(&mut self, buf: &mut [f32], root: usize, op: ReduceOp) -> Result<()> {
        let role = self.layer().role(false, buf.len());
        let Some(role) = role.filter(|_| matches!(op, ReduceOp::Sum | ReduceOp::Mean)) else {
            return self.inner().reduce(buf, root, op);
        };
        if self.is_powersgd() {
            return Err(self.layer().powersgd_refuses("reduce", role));
        }
        super::check_rank("reduce root", root, self.size())?;
        let (p, me) = (self.size(), self.rank());
        let fp32 = if me == root { 0 } else { 4 * buf.len() as u64 };
        self.counted(fp32, |c| {
            let model_len = c.layer().model_len;
            let (values, tail) = buf.split_at_mut(model_len);
            if !tail.is_empty() {
                c.inner().reduce(tail, root, op)?;
            }
            let mut words = Vec::new();
            if me != root {
                let stream = c.stream(role, "reduce", root, 0);
                c.layer().encode(stream, values, &[], &mut words);
                return c.inner().send(root, TAG_COMPRESSED, &words);
            }
            let mut sum = vec![0.0f32; values.len()];
            let mut share = vec![0.0f32; values.len()];
            for r in 0..p {
                if r == me {
                    share.copy_from_slice(values);
                } else {
                    words.resize(c.layer().encoded_words(values.len()), 0.0);
                    c.inner().recv(r, TAG_COMPRESSED, &mut words)?;
                    c.layer().decode(&words, &mut share, &mut [])?;
                }
                sum.iter_mut().zip(&share).for_each(|(s, x)| *s += *x);
            }
            if op == ReduceOp::Mean {
                sum.iter_mut().for_each(|s| *s /= p as f32);
            }
            values.copy_from_slice(&sum);
            Ok(())
        })
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let role = self.layer().role(false, buf.len());
        let Some(role) = role.filter(|_| self.size() > 1) else {
            return self.inner().broadcast(buf, root);
        };
        if self.is_powersgd() {
            return Err(self.layer().powersgd_refuses("broadcast", role));
        }
        super::check_rank("broadcast root", root, self.size())?;
        let me = self.rank();
        let fp32 = if me == root { 4 * buf.len() as u64 } else { 0 };
        self.counted(fp32, |c| {
            let model_len = c.layer().model_len;
            let mut words = Vec::new();
            if me == root {
                let stream = c.stream(role, "broadcast", root, 0);
                let (values, tail) = buf.split_at(model_len);
                c.layer().encode(stream, values, tail, &mut words);
                c.inner().broadcast(&mut words, root)
            } else {
                words.resize(c.layer().message_words(buf.len()), 0.0);
                c.inner().broadcast(&mut words, root)?;
                let (values, tail) = buf.split_at_mut(model_len);
                c.layer().decode(&words, values, tail)
            }
        })
    }

    /// An all-gather whose pieces make up a model (SlowMo's sharded slow update: each member's
    /// slice of it) is compressed piece by piece: each member encodes its piece, and everyone
    /// decodes every piece, its own included, so all hold the same bits. PowerSGD leaves
    /// all-gathers exact (it compresses gradient all-reduces only).
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        let p = self.size();
        let role = self.layer().role(false, recv.len());
        let (Some(role), true, false, false) = (
            role,
            p > 1 && recv.len() == send.len() * p,
            send.is_empty(),
            self.is_powersgd(),
        ) else {
            return self.inner().all_gather(send, recv);
        };
        let me = self.rank();
        let fp32 = (4 * (p - 1) * send.len()) as u64;
        self.counted(fp32, |c| {
            let stream = c.stream(role, "all-gather", me, 0);
            let mut words = Vec::new();
            c.layer().encode(stream, send, &[], &mut words);
            let mut gathered = vec![0.0f32; words.len() * p];
            c.inner().all_gather(&words, &mut gathered)?;
            let mut layer = c.layer();
            for (piece, message) in recv
                .chunks_exact_mut(send.len())
                .zip(gathered.chunks_exact(words.len()))
            {
                layer.decode(message, piece, &mut [])?;
            }
            Ok(())
        })
    }
    fn all_gather_f64(&mut self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        self.inner().all_gather_f64(send, recv)
    }
    fn barrier(&mut self) -> Result<()> {
        self.inner().barrier()
    }

    fn send(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<()> {
        self.isend(dest, tag, data)
            .and_then(|request| self.wait_send(request))
    }

    fn recv(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        let request = self.irecv(src, tag, buf.len())?;
        self.wait_recv(request, buf)
    }

    fn isend(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<SendRequest> {
        let role = self.layer().role(true, data.len());
        let Some(role) = role else {
            return self.inner().isend(dest, tag, data);
        };
        if self.is_powersgd() {
            return Err(self.layer().powersgd_refuses("message", role));
        }
        let stream = self.stream(role, "send", dest, tag);
        let mut words = Vec::new();
        {
            let mut layer = self.layer();
            let (values, tail) = data.split_at(layer.model_len);
            layer.encode(stream, values, tail, &mut words);
        }
        let before = self.inner_ref().stats();
        let request = self.inner().isend(dest, tag, &words)?;
        let actual = self.inner_ref().stats().since(&before);
        self.layer().count(actual, 4 * data.len() as u64);
        Ok(request)
    }

    fn irecv(&mut self, src: usize, tag: Tag, len: usize) -> Result<RecvRequest> {
        let compressed = self.layer().role(true, len).is_some();
        let words = if compressed {
            if self.is_powersgd() {
                return Err(self.layer().powersgd_refuses("message", Role::Gossip));
            }
            self.layer().message_words(len)
        } else {
            len
        };
        let inner = self.inner().irecv(src, tag, words)?;
        let id = self.next_request;
        self.next_request += 1;
        self.pending.insert(id, (inner, compressed));
        Ok(RecvRequest { id, src, tag, len })
    }

    fn wait_send(&mut self, req: SendRequest) -> Result<()> {
        self.inner().wait_send(req)
    }

    fn wait_recv(&mut self, req: RecvRequest, buf: &mut [f32]) -> Result<()> {
        super::check_request_len(&req, buf)?;
        let (inner, compressed) = self
            .pending
            .remove(&req.id)
            .ok_or_else(|| Error::Transport(format!("wait_recv: no pending receive {}", req.id)))?;
        if !compressed {
            return self.inner().wait_recv(inner, buf);
        }
        let mut words = vec![0.0f32; inner.len];
        self.inner().wait_recv(inner, &mut words)?;
        let mut layer = self.layer();
        let (values, tail) = buf.split_at_mut(layer.model_len);
        layer.decode(&words, values, tail)
    }

    fn test_recv(&mut self, req: &RecvRequest) -> Result<bool> {
        let (inner, _) = self
            .pending
            .get(&req.id)
            .ok_or_else(|| Error::Transport(format!("test_recv: no pending receive {}", req.id)))?;
        let comm: &mut dyn Communicator = match &mut self.inner {
            Inner::Borrowed(c) => &mut **c,
            Inner::Owned(c) => c.as_mut(),
        };
        comm.test_recv(inner)
    }

    fn split(&mut self, color: usize, key: usize) -> Result<Box<dyn Communicator>> {
        let child = self.inner().split(color, key)?;
        let group = {
            let mut layer = self.layer();
            layer.splits += 1;
            layer.splits
        };
        Ok(Box::new(Compressed {
            inner: Inner::Owned(child),
            layer: self.layer.clone(),
            group,
            pending: BTreeMap::new(),
            next_request: 0,
        }))
    }

    fn abort(&self, reason: &str) {
        self.inner_ref().abort(reason)
    }
    fn stats(&self) -> CommStats {
        self.inner_ref().stats()
    }
    fn now(&self) -> Option<f64> {
        self.inner_ref().now()
    }
    fn compute(&mut self, step: u64) -> Result<()> {
        self.inner().compute(step)
    }
    fn stopped_by_fault(&self) -> Option<f64> {
        self.inner_ref().stopped_by_fault()
    }
    fn set_diagnostic(&mut self, on: bool) {
        self.layer().diagnostic = on;
        self.inner().set_diagnostic(on)
    }
    fn counter(&mut self, id: usize, op: CounterOp) -> Result<u64> {
        self.inner().counter(id, op)
    }
    fn server_init(&mut self, init: &[f32], shards: usize) -> Result<()> {
        self.inner().server_init(init, shards)
    }
    /// Pulls travel exact: the center a worker pulls is the model it moves toward and the
    /// one evaluated at the end, and a sparsified model is no model.
    fn server_pull(&mut self, buf: &mut [f32]) -> Result<u64> {
        self.inner().server_pull(buf)
    }

    /// The push is compressed (through its error-feedback stream) and the server adds what
    /// the message decodes to.
    fn server_push(&mut self, delta: &[f32]) -> Result<()> {
        let role = self.layer().server_role(delta.len());
        let Some(role) = role else {
            return self.inner().server_push(delta);
        };
        if self.is_powersgd() {
            return Err(self.layer().powersgd_refuses("parameter-server push", role));
        }
        let stream = self.stream(role, "server-push", 0, 0);
        let mut words = Vec::new();
        let (kind, seed, model_len) = {
            let mut layer = self.layer();
            let model_len = layer.model_len;
            layer.encode(stream, &delta[..model_len], &delta[model_len..], &mut words);
            (layer.kind, layer.seed, model_len)
        };
        let push = EncodedPush {
            kind,
            seed,
            len: delta.len(),
            model_len,
            words: &words,
        };
        self.counted(4 * delta.len() as u64, |c| {
            c.inner().server_push_encoded(&push)
        })
    }

    /// Already compressed: passes through.
    fn server_push_encoded(&mut self, push: &EncodedPush<'_>) -> Result<()> {
        self.inner().server_push_encoded(push)
    }

    fn probe_any(&mut self, tag: Tag) -> Result<Option<(usize, usize)>> {
        let Some((src, words)) = self.inner().probe_any(tag)? else {
            return Ok(None);
        };
        let layer = self.layer();
        if layer.role(true, layer.model_len).is_none() || layer.compressor.is_none() {
            return Ok(Some((src, words)));
        }
        // A compressed model plus a short exact tail (module documentation).
        let model_words = layer.message_words(layer.model_len);
        if words >= model_words && words - model_words <= MAX_TAIL {
            return Ok(Some((src, layer.model_len + (words - model_words))));
        }
        Ok(Some((src, words)))
    }

    fn checkpoint_cut(&mut self, serve: Option<&mut CutService<'_>>) -> Result<Option<StateDict>> {
        match serve {
            None => self.inner().checkpoint_cut(None),
            Some(serve) => {
                // The service answers peers through this layer, so that they decode its replies.
                let layer = self.layer.clone();
                let group = self.group;
                let mut wrapped = |inner: &mut dyn Communicator| {
                    let mut c = Compressed {
                        inner: Inner::Borrowed(inner),
                        layer: layer.clone(),
                        group,
                        pending: BTreeMap::new(),
                        next_request: 0,
                    };
                    serve(&mut c)
                };
                self.inner().checkpoint_cut(Some(&mut wrapped))
            }
        }
    }

    fn restore_cut(&mut self, state: &StateDict) -> Result<()> {
        self.inner().restore_cut(state)
    }

    fn pause(&mut self) -> Result<()> {
        self.inner().pause()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::threads;

    fn layer(text: &str) -> CompressionLayer {
        let config: CompressionConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let layer = CompressionLayer::new(&config, 3, "test").unwrap();
        let layout = ParamLayout::new().with("w", &[8, 16]).with("b", &[8]);
        layer.set_model(&layout).unwrap();
        layer.set_phase(Phase::Models);
        layer
    }

    /// Worker r's model-sized vector: distinct, smooth values.
    fn values(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 13 + rank * 7) as f32 * 0.11).sin() * (1.0 + rank as f32))
            .collect()
    }

    const LEN: usize = 8 * 16 + 8;

    #[test]
    fn a_compressed_all_reduce_gives_every_member_the_same_bits_near_the_exact_mean() {
        // fp16: every value is within 2⁻¹¹ (relative) of its exact share, twice rounded.
        let out = threads::run_workers(4, |comm| {
            let layer = layer("kind = \"fp16\"");
            let mut c = layer.wrap(comm);
            let mut buf = values(c.rank(), LEN);
            buf.push(c.rank() as f32); // an exact tail
            c.all_reduce(&mut buf, ReduceOp::Mean)?;
            Ok((buf, layer.stats(), c.stats()))
        });
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        for (buf, _, _) in &out {
            assert_eq!(buf, &out[0].0, "the same bits on every member");
        }
        for i in 0..LEN {
            let exact = (0..4).map(|r| values(r, LEN)[i]).sum::<f32>() / 4.0;
            assert!(
                (out[0].0[i] - exact).abs() <= 4.0 * 2f32.powi(-11) * 4.0,
                "{i}"
            );
        }
        assert_eq!(out[0].0[LEN], 1.5, "the tail is reduced exact: (0+1+2+3)/4");
        let (_, stats, comm) = &out[1];
        // A ring moves 2(p−1)/p·4n bytes; fp16 about half of it (the tail is exact).
        assert_eq!(stats.fp32_bytes_sent, (2 * 3 * 4 * (LEN + 1) / 4) as u64);
        assert_eq!(stats.bytes_sent, comm.bytes_sent);
        assert!((stats.ratio() - 2.0).abs() < 0.05, "{}", stats.ratio());
    }

    /// Parameter-server pushes under top-k with error feedback: each push carries 1 value in
    /// 8 (about a quarter of the bytes with its indices), the server holds what the pushes
    /// decoded to, and with the last residual added the server holds exactly the sum of what
    /// was meant to be pushed (the error-feedback identity, to float rounding). Pulls are exact.
    #[test]
    fn parameter_server_pushes_are_compressed_with_error_feedback() {
        let out = threads::run_workers(2, |comm| {
            let layer = layer("kind = \"topk\"\nfraction = 0.125");
            let mut c = layer.wrap(comm);
            c.server_init(&vec![0.0; LEN], 2)?;
            c.barrier()?;
            let me = c.rank();
            let mut meant = vec![0.0f32; LEN];
            for round in 0..5 {
                let delta = values(10 * me + round, LEN);
                meant.iter_mut().zip(&delta).for_each(|(m, d)| *m += d);
                c.server_push(&delta)?;
            }
            let residual = layer.save_state();
            c.barrier()?;
            let mut center = vec![0.0; LEN];
            let before = c.stats();
            c.server_pull(&mut center)?;
            let pulled = c.stats().since(&before).bytes_received;
            Ok((meant, residual, center, pulled, layer.stats()))
        });
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        let mut expected = vec![0.0f32; LEN];
        for (meant, residual, _, _, _) in &out {
            // The one stream with a residual: this worker's pushes.
            let streams = residual.dict("streams").unwrap();
            let key = streams.keys().find(|k| k.contains("server-push")).unwrap();
            let left = streams.f32s(key).unwrap();
            for i in 0..LEN {
                expected[i] += meant[i] - left[i];
            }
        }
        let (_, _, center, pulled, stats) = &out[0];
        for (c, e) in center.iter().zip(&expected) {
            assert!((c - e).abs() <= 1e-4 * (1.0 + e.abs()), "{c} {e}");
        }
        assert_eq!(*pulled, 4 * LEN as u64, "pulls are exact");
        assert_eq!(stats.operations, 5);
        assert_eq!(stats.fp32_bytes_sent, 5 * 4 * LEN as u64);
        assert!(stats.ratio() > 3.0, "{}", stats.ratio());
    }

    #[test]
    fn a_model_gathered_in_pieces_is_compressed_piece_by_piece() {
        // 4 members each hold a quarter of the 136 values (34 each): fp16 halves the bytes,
        // every member decodes the same bits, each within fp16's rounding of the piece sent.
        let out = threads::run_workers(4, |comm| {
            let layer = layer("kind = \"fp16\"");
            let mut c = layer.wrap(comm);
            let piece = values(c.rank(), LEN / 4);
            let mut gathered = vec![0.0; LEN];
            c.all_gather(&piece, &mut gathered)?;
            // A short gather (leader metrics) stays exact.
            let mut metrics = vec![0.0; 4];
            c.all_gather(&[c.rank() as f32 + 0.1], &mut metrics)?;
            Ok((gathered, metrics, layer.stats(), c.stats()))
        });
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        for (gathered, metrics, _, _) in &out {
            assert_eq!(gathered, &out[0].0, "the same bits on every member");
            assert_eq!(metrics, &[0.1, 1.1, 2.1, 3.1]);
        }
        for (r, piece) in out[0].0.chunks(LEN / 4).enumerate() {
            for (x, y) in piece.iter().zip(values(r, LEN / 4)) {
                assert!((x - y).abs() <= y.abs() * 2f32.powi(-11), "{x} {y}");
            }
        }
        let (_, _, stats, comm) = &out[2];
        assert_eq!(stats.operations, 1);
        assert_eq!(stats.fp32_bytes_sent, (4 * 3 * LEN / 4) as u64);
        assert!(
            stats.bytes_sent < comm.bytes_sent,
            "the metrics' gather is not counted"
        );
        assert!((stats.ratio() - 2.0).abs() < 0.1, "{}", stats.ratio());
    }

    #[test]
    fn broadcasts_and_messages_decode_what_was_encoded_and_keep_their_tail() {
        let out = threads::run_workers(3, |comm| {
            let layer = layer("kind = \"int8\"\nblock = 32");
            let mut c = layer.wrap(comm);
            let mut model = values(c.rank(), LEN);
            c.broadcast(&mut model, 1)?;
            let me = c.rank();
            let mut message = values(10 + me, LEN);
            message.extend([1.0e-30, f32::MAX]);
            let (to, from) = ((me + 1) % 3, (me + 2) % 3);
            let request = c.isend(to, 9, &message)?;
            let mut got = vec![0.0; LEN + 2];
            c.recv(from, 9, &mut got)?;
            c.wait_send(request)?;
            Ok((me, model, from, got))
        });
        for r in out {
            let (me, model, from, got) = r.unwrap();
            let root = values(1, LEN);
            if me == 1 {
                assert_eq!(model, root, "the root keeps its exact model");
            }
            let sent = values(10 + from, LEN);
            for (block, (a, b)) in [(&model, &root), (&got[..LEN].to_vec(), &sent)]
                .into_iter()
                .enumerate()
            {
                for (chunk_a, chunk_b) in a.chunks(32).zip(b.chunks(32)) {
                    let (lo, hi) = chunk_b
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                    for (x, y) in chunk_a.iter().zip(chunk_b) {
                        assert!((x - y).abs() <= (hi - lo) / 510.0 * 1.001, "{block}");
                    }
                }
            }
            assert_eq!(&got[LEN..], &[1.0e-30, f32::MAX], "the tail travels exact");
        }
    }

    #[test]
    fn short_diagnostic_and_exact_phase_traffic_passes_untouched() {
        let out = threads::run_workers(2, |comm| {
            let layer = layer("kind = \"topk\"\nfraction = 0.01");
            let mut c = layer.wrap(comm);
            let mut short = vec![c.rank() as f32; LEN - 1];
            c.all_reduce(&mut short, ReduceOp::Sum)?;
            c.set_diagnostic(true);
            let mut diag = values(c.rank(), LEN);
            c.all_reduce(&mut diag, ReduceOp::Sum)?;
            c.set_diagnostic(false);
            layer.set_phase(Phase::Exact);
            let mut exact = values(c.rank(), LEN);
            c.broadcast(&mut exact, 0)?;
            Ok((short, diag, exact, layer.stats()))
        });
        for r in out {
            let (short, diag, exact, stats) = r.unwrap();
            assert!(short.iter().all(|&x| x == 1.0));
            let sum: Vec<f32> = (0..LEN)
                .map(|i| values(0, LEN)[i] + values(1, LEN)[i])
                .collect();
            assert_eq!(diag, sum);
            assert_eq!(exact, values(0, LEN));
            assert_eq!(stats, CompressionStats::default(), "nothing compressed");
        }
    }

    #[test]
    fn error_feedback_sends_over_time_what_was_meant() {
        // One stream (worker 0 → 1), top-10%: Σ received + the final residual = Σ meant.
        let out = threads::run_workers(2, |comm| {
            let layer = layer("kind = \"topk\"\nfraction = 0.1");
            let mut c = layer.wrap(comm);
            let mut total = vec![0.0f32; LEN];
            for round in 0..20 {
                let x = values(round, LEN);
                if c.rank() == 0 {
                    total.iter_mut().zip(&x).for_each(|(t, v)| *t += v);
                    c.send(1, 4, &x)?;
                } else {
                    let mut got = vec![0.0; LEN];
                    c.recv(0, 4, &mut got)?;
                    total.iter_mut().zip(&got).for_each(|(t, v)| *t += v);
                }
            }
            Ok((total, layer.save_state()))
        });
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        let streams = out[0].1.dict("streams").unwrap();
        let residual = streams.f32s("g0/Gossip/send/1/4").unwrap();
        for (i, ((received, r), meant)) in out[1].0.iter().zip(residual).zip(&out[0].0).enumerate()
        {
            assert!((received + r - meant).abs() < 1e-4, "{i}");
        }
    }

    #[test]
    fn powersgd_reduces_gradients_and_refuses_other_messages() {
        let out = threads::run_workers(2, |comm| {
            let layer = layer("kind = \"powersgd\"\nrank = 2");
            let mut c = layer.wrap(comm);
            layer.set_phase(Phase::Gradients);
            let mut grad = values(c.rank(), LEN);
            c.all_reduce(&mut grad, ReduceOp::Mean)?;
            layer.set_phase(Phase::Models);
            let refused = c.broadcast(&mut grad.clone(), 0).unwrap_err();
            Ok((grad, layer.stats(), refused.to_string()))
        });
        let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(out[0].0, out[1].0, "the same approximation on both workers");
        // The bias (8 values) is exact: the mean of the two workers' biases.
        for i in 128..LEN {
            let exact = (values(0, LEN)[i] + values(1, LEN)[i]) / 2.0;
            assert!((out[0].0[i] - exact).abs() < 1e-6);
        }
        // Factors of 8×16 at rank 2: 8·2 + 16·2 = 48 values and 8 exact, against 136.
        assert!(
            (out[0].1.ratio() - 136.0 / 56.0).abs() < 1e-9,
            "{}",
            out[0].1.ratio()
        );
        assert!(
            out[0].2.contains("compresses gradient all-reduces only"),
            "{}",
            out[0].2
        );
    }
}
