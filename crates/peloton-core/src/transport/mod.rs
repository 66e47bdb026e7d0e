//! The transport: how workers talk.
//!
//! [`Communicator`] is one worker's handle on a group of workers, in the style of an MPI
//! communicator: collectives (all-reduce, reduce, broadcast, all-gather), point-to-point
//! send/receive (blocking and non-blocking), sub-groups created collectively, and a barrier.
//! Algorithms only ever see `&mut dyn Communicator`, so the same algorithm code runs on every
//! implementation: worker threads in one process ([`threads`]), MPI processes, and the
//! deterministic simulator.
//!
//! ## Rules every implementation follows
//! * Collectives are called by every member of the group, in the same order, with the same
//!   lengths; a length mismatch is an [`Error::Transport`] on every member, not a hang.
//! * Reductions sum in rank order (0, 1, …, p−1), so results are deterministic and
//!   bit-identical on all members.
//! * Point-to-point messages between a pair with the same tag arrive in send order. Sends are
//!   buffered: `send` returns once the data is handed to the transport.
//! * When any worker calls [`Communicator::abort`], every blocked or later operation of every
//!   member fails with [`Error::Aborted`] instead of waiting forever.
//!
//! ## Byte accounting
//! [`CommStats`] counts the bytes a bandwidth-optimal implementation moves through this
//! worker's link, so numbers are comparable across transports (shared memory moves none):
//! all-reduce (ring) 2(p−1)/p·n each way; broadcast: the root sends n, every other member
//! receives n; reduce: every non-root sends n, the root receives n; all-gather (ring) (p−1)·k
//! each way for k contributed bytes; point-to-point: the exact payload.

pub mod compressed;
pub mod threads;

use peloton_compression::Kind;

use crate::checkpoint::StateDict;
use crate::{Error, Result};

/// Message tag for point-to-point operations. Tags up to 32766 work on every transport (the
/// MPI standard's least `MPI_TAG_UB` is 32767, which the compression layer keeps for itself:
/// [`compressed::TAG_COMPRESSED`]); larger ones only where the MPI library allows them.
pub type Tag = u32;

/// A compressed parameter-server push ([`Communicator::server_push_encoded`]): the encoded
/// message and what decodes it, wherever the server lives. Decoding needs only the kind and
/// the run seed (every compressor's decoder is stateless), so a transport can carry these to
/// a server in another process in a few words.
#[derive(Debug, Clone, Copy)]
pub struct EncodedPush<'a> {
    /// The compressor of the first `model_len` values.
    pub kind: Kind,
    /// The run seed (random-k's positions come from it).
    pub seed: u64,
    /// The values the message stands for: the encoded first `model_len`, then the rest exact.
    pub len: usize,
    pub model_len: usize,
    /// The message, as the layer sends it ([`peloton_compression::to_words`]).
    pub words: &'a [f32],
}

impl EncodedPush<'_> {
    /// The `len` values the message stands for, into `out`.
    pub fn decode(&self, out: &mut [f32]) -> Result<()> {
        let bad = |what: String| Error::Transport(format!("a compressed server push: {what}"));
        if out.len() != self.len || self.model_len > self.len {
            return Err(bad(format!(
                "{} values with a model of {}, into {}",
                self.len,
                self.model_len,
                out.len()
            )));
        }
        let compressor = peloton_compression::build(&self.kind, self.seed)
            .ok_or_else(|| bad(format!("{:?} is not a byte compressor", self.kind)))?;
        let (values, tail) = out.split_at_mut(self.model_len);
        peloton_compression::decode_words(
            compressor.as_ref(),
            self.words,
            values,
            tail,
            &mut Vec::new(),
        )
        .map_err(|e| bad(e.to_string()))
    }

    /// The `len` values the message stands for, in a new vector.
    pub fn decoded(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.len];
        self.decode(&mut out)?;
        Ok(out)
    }

    /// The bytes the message carries.
    pub fn wire_bytes(&self) -> u64 {
        4 * self.words.len() as u64
    }
}

/// The reduction applied by [`Communicator::all_reduce`] and [`Communicator::reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the group size.
    Mean,
    Max,
    Min,
}

/// Traffic counters of one worker (all its communicators together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Number of communication operations (collectives and messages) this worker took part in.
    pub operations: u64,
}

impl CommStats {
    /// The traffic between two snapshots.
    pub fn since(&self, earlier: &CommStats) -> CommStats {
        CommStats {
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bytes_received: self.bytes_received - earlier.bytes_received,
            operations: self.operations - earlier.operations,
        }
    }
}

/// A pending non-blocking send. Sends are buffered, so waiting only confirms delivery.
#[derive(Debug)]
#[must_use = "a request must be waited on"]
pub struct SendRequest {
    /// Transport-specific handle of the pending operation.
    pub id: u64,
}

/// A pending non-blocking receive of `len` values from `src` with `tag`.
#[derive(Debug)]
#[must_use = "a request must be waited on"]
pub struct RecvRequest {
    /// Transport-specific handle of the pending operation.
    pub id: u64,
    pub src: usize,
    pub tag: Tag,
    pub len: usize,
}

/// One worker's handle on a group of workers. See the module documentation for the rules.
pub trait Communicator: Send {
    /// This worker's rank in the group, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of workers in the group.
    fn size(&self) -> usize;

    /// Combines `buf` element-wise over the group; every member gets the result.
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()>;
    /// Combines `buf` over the group into `root`'s `buf`; the others' buffers are unchanged.
    fn reduce(&mut self, buf: &mut [f32], root: usize, op: ReduceOp) -> Result<()>;
    /// Copies `root`'s `buf` into every member's `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Concatenates every member's `send` in rank order into `recv` (`size()·send.len()` long).
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// The scalar side channel: like [`Communicator::all_gather`] for `f64` values (losses,
    /// step counts, elapsed times, config fingerprints).
    fn all_gather_f64(&mut self, send: &[f64], recv: &mut [f64]) -> Result<()>;
    /// Returns once every member has called it.
    fn barrier(&mut self) -> Result<()>;

    /// Sends `data` to `dest` (buffered: returns once the transport holds the data).
    fn send(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<()>;
    /// Receives exactly `buf.len()` values from `src` with `tag`, blocking until they arrive.
    fn recv(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()>;
    /// Starts a send; the data is copied, so `data` may be reused at once.
    fn isend(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<SendRequest>;
    /// Starts a receive of `len` values from `src` with `tag`.
    fn irecv(&mut self, src: usize, tag: Tag, len: usize) -> Result<RecvRequest>;
    /// Completes a send.
    fn wait_send(&mut self, req: SendRequest) -> Result<()>;
    /// Completes a receive into `buf` (`buf.len()` must equal the request's `len`).
    fn wait_recv(&mut self, req: RecvRequest, buf: &mut [f32]) -> Result<()>;
    /// True when `wait_recv` on this request would not block.
    fn test_recv(&mut self, req: &RecvRequest) -> Result<bool>;

    /// Splits the group: members passing the same `color` form a new group, ordered by
    /// `(key, rank)`. Collective: every member calls it, in the same order.
    fn split(&mut self, color: usize, key: usize) -> Result<Box<dyn Communicator>>;

    /// Stops the whole run (every group of every worker): other workers' pending and future
    /// operations fail with [`Error::Aborted`] carrying `reason`. `worker` is the world rank
    /// of the caller, for the message.
    fn abort(&self, reason: &str);

    /// This worker's traffic so far, over all its communicators.
    fn stats(&self) -> CommStats;

    /// Virtual time in seconds, for transports with a clock (the simulator); `None` means
    /// wall-clock time applies.
    fn now(&self) -> Option<f64> {
        None
    }
    /// Charges the compute of local step `step` (gradient and optimizer) to this worker. Real
    /// transports ignore it: the time has already passed. The simulator advances the worker's
    /// virtual clock by its compute model and may fail the step (an injected fault).
    fn compute(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
    /// When an injected `stop` fault has taken this worker out (transports with faults: the
    /// fault's time has come on this worker's clock), the time now; otherwise `None`.
    /// [`Communicator::compute`] fails such a worker's next step; asynchronous workers also
    /// ask before drawing work, so a worker that never gets to compute still leaves.
    fn stopped_by_fault(&self) -> Option<f64> {
        None
    }
    /// While on, operations are measurements outside the algorithm (consensus distance,
    /// evaluation models, budget checks): the simulator lets them take no virtual time.
    fn set_diagnostic(&mut self, _on: bool) {}

    // ---- Asynchronous coordination -------------------------------------------------------
    //
    // Asynchronous algorithms never wait for the whole group. They coordinate through three
    // world-wide services, each a small protocol an MPI transport implements with a server
    // rank and point-to-point messages: shared counters (global work, stop requests), a
    // parameter server holding a vector sharded over S servers (EASGD's center), and
    // any-source polling for requests from peers (AD-PSGD). Transports without them return
    // an error naming the operation. Operations on the world's services are called on the
    // world communicator.

    /// Applies `op` to the world-wide counter `id` (`0..COUNTERS`) atomically with respect to
    /// every other counter operation and returns the value it held before. Counters start at
    /// 0. The simulator orders counter operations by virtual time (then rank).
    fn counter(&mut self, _id: usize, _op: CounterOp) -> Result<u64> {
        Err(unsupported("shared counters"))
    }

    /// Creates the world's parameter server: a vector of `init.len()` values split into
    /// `shards` contiguous shards (⌊d/S⌋ each, the last one takes the remainder), starting at
    /// `init`. Every worker calls it with the same length and shard count; the first call
    /// initializes the values (the author's EASGD: the first client initializes the server),
    /// later calls only check the shape.
    fn server_init(&mut self, _init: &[f32], _shards: usize) -> Result<()> {
        Err(unsupported("a parameter server"))
    }

    /// Reads the parameter server's vector into `buf` and returns its version: the number of
    /// pushes applied so far. Shards are read one after the other, each atomically.
    fn server_pull(&mut self, _buf: &mut [f32]) -> Result<u64> {
        Err(unsupported("a parameter server"))
    }

    /// Adds `delta` to the parameter server's vector, shard by shard, each atomically, so no
    /// update is ever lost.
    fn server_push(&mut self, _delta: &[f32]) -> Result<()> {
        Err(unsupported("a parameter server"))
    }

    /// [`Communicator::server_push`] of a compressed message (the compression layer's), which
    /// the transport carries as it is and the server decodes ([`EncodedPush::decode`]) before
    /// adding it. The traffic counters and the simulator's links count the encoded bytes. The
    /// default decodes here and pushes the decoded values.
    fn server_push_encoded(&mut self, push: &EncodedPush<'_>) -> Result<()> {
        self.server_push(&push.decoded()?)
    }

    /// Non-blocking any-source probe: the (group rank of the sender, length) of the oldest
    /// message with `tag` that has arrived for this worker, without receiving it.
    fn probe_any(&mut self, _tag: Tag) -> Result<Option<(usize, usize)>> {
        Err(unsupported("any-source polling"))
    }

    // ---- Checkpoints of the transport's own state -----------------------------------------
    //
    // A transport whose state decides the rest of the run (the simulator: virtual clocks, link
    // queues, shared counters, the parameter server, messages in flight) takes part in
    // checkpoints. Real transports have nothing of their own to save: the defaults return at
    // once.

    /// Waits at a consistent cut of the whole run: returns once every worker still running
    /// has called it, with the transport's state at that moment for world rank 0 (`None` for
    /// the others, and on transports with no state of their own). No virtual time passes
    /// while a worker waits. `serve` is called, with time passing, while *other* workers have
    /// still to arrive, for a worker that must keep answering its peers until they reach the
    /// cut (a passive AD-PSGD worker); with `None` the worker simply waits. Called on the
    /// world communicator, by every worker, the same number of times.
    fn checkpoint_cut(&mut self, _serve: Option<&mut CutService<'_>>) -> Result<Option<StateDict>> {
        Ok(None)
    }

    /// A resumed run: puts back the transport state one worker's checkpoint holds (world
    /// rank 0 passes what [`Communicator::checkpoint_cut`] returned, the others an empty
    /// state). Every worker calls it, after its own preparation and before its first step;
    /// it returns once every worker did.
    fn restore_cut(&mut self, state: &StateDict) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::Checkpoint(
                "the checkpoint holds a simulator's state (clocks, queues, counters); resume it on the simulator".into(),
            ))
        }
    }

    /// Nothing to do until a peer acts: lets a little time pass (the simulator advances this
    /// worker's clock by its poll interval; real transports yield the CPU briefly). Called by
    /// polling loops so that they make progress in virtual time.
    fn pause(&mut self) -> Result<()> {
        std::thread::yield_now();
        Ok(())
    }
}

/// What a worker does while it waits at a checkpoint cut for the others
/// ([`Communicator::checkpoint_cut`]): answer its peers through the communicator it is given.
pub type CutService<'a> = dyn FnMut(&mut dyn Communicator) -> Result<()> + 'a;

/// Number of shared counters every transport provides ([`Communicator::counter`]).
pub const COUNTERS: usize = 8;

/// An atomic operation on a shared counter ([`Communicator::counter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOp {
    /// Reads the value.
    Get,
    /// Adds to the value.
    Add(u64),
    /// Lowers the value to `v` where `v` is smaller; a counter holding 0 is unset and takes
    /// `v`. (Used for "stop at round r" requests: the earliest request wins.)
    SetMin(u64),
}

impl CounterOp {
    /// The counter's new value after applying this operation to `old`.
    pub fn apply(self, old: u64) -> u64 {
        match self {
            CounterOp::Get => old,
            CounterOp::Add(v) => old.wrapping_add(v),
            CounterOp::SetMin(v) if old == 0 => v,
            CounterOp::SetMin(v) => old.min(v),
        }
    }
}

/// Checks a counter id (every transport's check).
pub fn check_counter(id: usize) -> Result<()> {
    if id >= COUNTERS {
        return Err(Error::Transport(format!(
            "counter {id} does not exist: transports provide counters 0..{COUNTERS}"
        )));
    }
    Ok(())
}

/// The contiguous shard ranges of a parameter-server vector of `len` values over `shards`
/// servers: ⌊len/S⌋ values each, the last shard takes the remainder (the author's layout).
pub fn shard_ranges(len: usize, shards: usize) -> Vec<std::ops::Range<usize>> {
    let shards = shards.clamp(1, len.max(1));
    let each = len / shards;
    (0..shards)
        .map(|s| {
            let start = s * each;
            let end = if s + 1 == shards { len } else { start + each };
            start..end
        })
        .collect()
}

/// A parameter server held by one owner that applies every operation in turn (the
/// simulator's shared state, MPI's service thread): the vector in [`shard_ranges`] layout and
/// its version. The threads transport locks each shard instead and keeps its own.
#[derive(Debug, Default)]
pub struct ParameterServer {
    server: Option<ServerVector>,
}

#[derive(Debug)]
struct ServerVector {
    ranges: Vec<std::ops::Range<usize>>,
    values: Vec<f32>,
    /// Pushes applied so far.
    version: u64,
}

impl ParameterServer {
    /// The first call creates the server from `init`; later ones check the shape.
    pub fn init(&mut self, init: &[f32], shards: usize, rank: usize) -> Result<()> {
        let ranges = shard_ranges(init.len(), shards);
        let server = self.server.get_or_insert_with(|| ServerVector {
            ranges: ranges.clone(),
            values: init.to_vec(),
            version: 0,
        });
        if server.values.len() != init.len() || server.ranges.len() != ranges.len() {
            return Err(Error::Transport(format!(
                "parameter server holds {} values in {} shards, worker {rank} asked for {} values in {shards}",
                server.values.len(),
                server.ranges.len(),
                init.len()
            )));
        }
        Ok(())
    }

    /// The vector's length, once created.
    pub fn size(&self) -> Option<usize> {
        self.server.as_ref().map(|s| s.values.len())
    }

    fn vector(&mut self, len: usize, rank: usize) -> Result<&mut ServerVector> {
        let server = self.server.as_mut().ok_or_else(|| {
            Error::Transport("the parameter server is used before server_init".into())
        })?;
        if server.values.len() != len {
            return Err(Error::Transport(format!(
                "parameter server holds {} values, worker {rank} used {len}",
                server.values.len()
            )));
        }
        Ok(server)
    }

    /// Copies the vector into `buf`; returns its version.
    pub fn pull(&mut self, buf: &mut [f32], rank: usize) -> Result<u64> {
        let server = self.vector(buf.len(), rank)?;
        buf.copy_from_slice(&server.values);
        Ok(server.version)
    }

    /// Adds `delta` to the vector (every shard at once) and counts one version.
    pub fn push(&mut self, delta: &[f32], rank: usize) -> Result<()> {
        let server = self.vector(delta.len(), rank)?;
        server
            .values
            .iter_mut()
            .zip(delta)
            .for_each(|(v, d)| *v += *d);
        server.version += 1;
        Ok(())
    }

    /// The shard ranges (empty before `init`).
    pub fn ranges(&self) -> &[std::ops::Range<usize>] {
        self.server.as_ref().map_or(&[], |s| &s.ranges)
    }

    /// The server's whole state, for a checkpoint (empty before `init`).
    pub fn save_state(&self) -> StateDict {
        let mut state = StateDict::new();
        if let Some(s) = &self.server {
            state.put_u64("shards", s.ranges.len() as u64);
            state.put_f32s("values", &s.values);
            state.put_u64("version", s.version);
        }
        state
    }

    /// Restores what [`ParameterServer::save_state`] saved.
    pub fn load_state(&mut self, state: &StateDict) -> Result<()> {
        if state.is_empty() {
            self.server = None;
            return Ok(());
        }
        let values = state.f32s("values")?.to_vec();
        let shards = state.usize("shards")?;
        if shards == 0 || shards > values.len().max(1) {
            return Err(Error::Checkpoint(format!(
                "parameter server: {shards} shards for {} values",
                values.len()
            )));
        }
        self.server = Some(ServerVector {
            ranges: shard_ranges(values.len(), shards),
            values,
            version: state.u64("version")?,
        });
        Ok(())
    }
}

/// A worker slowed down or stopped on purpose (fault injection). On the simulator `at` is
/// virtual seconds; on threads it is wall-clock seconds since the worker started.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub worker: usize,
    /// Seconds after which the fault applies.
    #[serde(default)]
    pub at: f64,
    pub kind: FaultKind,
    /// Slowdown factor of a `slow` fault.
    #[serde(default = "one")]
    pub factor: f64,
}

fn one() -> f64 {
    1.0
}

impl Fault {
    /// Checks the fault against a world of `workers`.
    pub fn validate(&self, workers: usize) -> Result<()> {
        crate::ensure_config!(
            self.worker < workers,
            "fault for worker {} but the run has {workers} workers",
            self.worker
        );
        crate::ensure_config!(
            self.at.is_finite() && self.at >= 0.0 && self.at <= crate::limits::MAX_SECONDS,
            "fault time must be a non-negative number of seconds up to {:e}, got {}",
            crate::limits::MAX_SECONDS,
            self.at
        );
        crate::ensure_config!(
            self.factor.is_finite()
                && self.factor >= 1.0
                && self.factor <= crate::limits::MAX_SLOWDOWN,
            "a slow fault's factor must be between 1 and {:e}, got {}",
            crate::limits::MAX_SLOWDOWN,
            self.factor
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Every later step of the worker takes `factor` times longer.
    Slow,
    /// The worker stops: its next step fails with [`Error::Stopped`]. A synchronous run ends
    /// with a message naming the worker; asynchronous algorithms go on without it.
    Stop,
}

fn unsupported(what: &str) -> Error {
    Error::Transport(format!(
        "this transport does not provide {what} (needed by asynchronous algorithms)"
    ))
}

/// Checks that a rank names a member of a group of `size` (every transport's check).
pub fn check_rank(what: &str, rank: usize, size: usize) -> Result<()> {
    if rank >= size {
        return Err(Error::Transport(format!(
            "{what} rank {rank} is outside the group of {size} workers"
        )));
    }
    Ok(())
}

/// Checks that a receive buffer fits the pending receive it completes.
pub fn check_request_len(req: &RecvRequest, buf: &[f32]) -> Result<()> {
    if buf.len() != req.len {
        return Err(Error::Transport(format!(
            "wait_recv: buffer holds {} values, the request was for {}",
            buf.len(),
            req.len
        )));
    }
    Ok(())
}

/// Collective helpers built on the trait (one implementation for every transport).
pub trait CommunicatorExt: Communicator {
    /// Gathers one `f64` from every member.
    fn gather_scalar(&mut self, value: f64) -> Result<Vec<f64>> {
        let mut all = vec![0.0; self.size()];
        self.all_gather_f64(&[value], &mut all)?;
        Ok(all)
    }

    /// Fails on every member, with the same message, unless all members pass the same value.
    /// Used before training to check that ranks agree on model size, layout and config.
    fn agree(&mut self, what: &str, value: u64) -> Result<()> {
        // f64 carries 53 bits exactly; fold the value so that the comparison is exact.
        let folded = ((value >> 32) ^ (value & 0xffff_ffff)) as f64;
        let all = self.gather_scalar(folded)?;
        if let Some(other) = all.iter().position(|v| *v != all[0]) {
            return Err(Error::Transport(format!(
                "workers disagree on {what}: worker 0 has {}, worker {other} has {}",
                all[0], all[other]
            )));
        }
        Ok(())
    }
}

impl<T: Communicator + ?Sized> CommunicatorExt for T {}

/// Runs `f(comm)` on one OS thread per communicator (a world's communicators, in rank order)
/// and returns their results in rank order. A panic in a worker becomes that worker's error,
/// and any worker's error aborts the others, so one failure ends the run instead of hanging it.
/// In-process transports (threads, the simulator) launch their workers with it.
pub fn spawn_workers<C, T, F>(comms: Vec<C>, f: F) -> Vec<Result<T>>
where
    C: Communicator,
    T: Send,
    F: Fn(&mut C) -> Result<T> + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                let f = &f;
                s.spawn(move || {
                    let out =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut comm)))
                            .unwrap_or_else(|payload| {
                                Err(Error::Panic {
                                    worker: rank,
                                    message: panic_message(&payload),
                                })
                            });
                    if let Err(e) = &out {
                        comm.abort(&e.to_string());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Panic {
                        worker: rank,
                        message: "worker thread died".into(),
                    })
                })
            })
            .collect()
    })
}

/// The text of a panic payload.
pub fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
