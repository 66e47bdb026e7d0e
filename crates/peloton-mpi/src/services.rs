//! The asynchronous services of the trait on MPI: shared counters, the parameter server and
//! their shutdown (any-source polling and `pause` live in `comm.rs`, they need no server).
//!
//! **Design: a service thread on rank 0.** A thread of rank 0 owns the state (the counters
//! and the parameter server's shards) and serves every rank's requests on a communicator of its
//! own (a duplicate of the world, so a request can never match a worker's message), in a
//! probe/receive loop: `MPI_Improbe` on any source, receive, apply, reply to the source. One
//! thread applies every operation, one at a time, in one total order: counters are
//! linearizable and a push is applied to every shard at once (stronger than the trait's "each
//! shard atomically"), so no update is lost.
//!
//! Rank 0's own worker sends its requests to the thread like every other rank (to itself,
//! through MPI's self path). Applying them in-process, under a lock, was tried first: it gave
//! rank 0 counter operations 400 times faster than the others' round trips, and on problems
//! whose steps take microseconds rank 0 took all 3000 of 3000 work tickets; its model then got
//! dragged back by late exchanges with the others' barely trained ones (AD-PSGD, EAMSGD ended
//! above the threads runs' bounds). Through the thread every rank waits about as long.
//!
//! Why not a dedicated server rank: `mpirun -n N` would then start N − 1 workers, which users
//! do not expect, and the server rank would idle most of the time. Why not RMA
//! (`MPI_Fetch_and_op`): the MPI notes found Open MPI's one-sided operations unusable over TCP
//! at `MPI_THREAD_MULTIPLE` and at one rank.
//!
//! **Waiting.** The service thread shares rank 0's core with its worker (Open MPI binds a rank
//! to one core when there are enough), so it must not spin: after a request it keeps polling,
//! yielding the CPU between probes, for [`SPIN_POLLS`] probes, then sleeps
//! [`IDLE_SLEEP`] between probes until the next request. Neither side waits inside a blocking
//! MPI call: sends and receives are non-blocking, completed by testing them in a loop that
//! yields the CPU between tests (see [`complete`] for why).
//!
//! **Shutdown.** Every rank calls [`Services::stop`] after its last operation and sends `BYE`
//! (after its last request, so MPI's ordering puts it behind them); rank 0 then joins the
//! thread, which ends once it has received `BYE` from every rank. A rank that fails instead
//! ends the whole job through `MPI_Abort`, so nobody waits for a `BYE` that never comes. Under
//! the watchdog, rank 0 waits for the thread at most the limit and then names the ranks whose
//! `BYE` has not come; a reply that does not come within the limit fails the request.
//!
//! **Wire format.** Requests and replies are `f32` messages whose first four slots are a header
//! of integers stored bit for bit (`f32::from_bits`; MPI copies bits, it never converts floats
//! between hosts of one architecture): request `[op, arg, value_hi, value_lo, payload…]`,
//! reply `[status, 0, value_hi, value_lo, payload…]`; an error reply carries its message as one
//! byte per slot.
//!
//! **Compressed pushes** (`PUSH_ENCODED`, the compression layer's): the request carries the
//! encoded message as the layer made it, so the link moves the compressed bytes, and rank 0's
//! service decodes it before adding: `[op, kind code, len, …, param (2), seed (2),
//! model_len (2), words…]`. Every compressor's decoder needs only its kind and the run seed
//! ([`EncodedPush`]), and the service checks both as it would a config.

use std::mem::ManuallyDrop;
use std::os::raw::c_int;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::point_to_point::{Message, Status};
use mpi::raw::{AsRaw, FromRaw};
use mpi::request::{Request, Scope};
use mpi::topology::{Process, SimpleCommunicator};
use mpi::traits::*;
use peloton_compression::Kind;
use peloton_core::transport::{check_counter, CounterOp, EncodedPush, ParameterServer, COUNTERS};
use peloton_core::{Error, Result};

/// Tag of requests on the service communicator.
const REQUEST: c_int = 1;
/// Tag of replies on the service communicator.
const REPLY: c_int = 2;
/// Header slots of every request and reply.
const HEADER: usize = 4;

// Request operations.
const GET: u32 = 1;
const ADD: u32 = 2;
const SET_MIN: u32 = 3;
const INIT: u32 = 4;
const PULL: u32 = 5;
const PUSH: u32 = 6;
const BYE: u32 = 7;
const PUSH_ENCODED: u32 = 8;
/// Slots after the header of a `PUSH_ENCODED` request before its words.
const ENCODED_PREFIX: usize = 6;

// Reply status.
const OK: u32 = 0;
const FAILED: u32 = 1;

/// Probes after a request before the service thread starts sleeping: requests come in bursts
/// (a ticket is two counter operations), so the next one usually arrives within them.
pub(crate) const SPIN_POLLS: u32 = 200;
/// The service thread's sleep between probes when idle. Linux rounds short sleeps up to about
/// 60 µs (timer slack), so this bounds an idle service's extra latency.
pub(crate) const IDLE_SLEEP: Duration = Duration::from_micros(20);

fn word(v: u32) -> f32 {
    f32::from_bits(v)
}

fn header(slots: &[f32]) -> (u32, u32, u64) {
    (slots[0].to_bits(), slots[1].to_bits(), wide(&slots[2..4]))
}

/// A `u64` stored in two slots, high word first.
fn wide(slots: &[f32]) -> u64 {
    ((slots[0].to_bits() as u64) << 32) | slots[1].to_bits() as u64
}

fn put_wide(out: &mut Vec<f32>, value: u64) {
    out.extend([word((value >> 32) as u32), word(value as u32)]);
}

fn put_header(out: &mut Vec<f32>, a: u32, b: u32, value: u64) {
    out.clear();
    out.resize(HEADER, 0.0);
    set_header(out, a, b, value);
}

fn set_header(out: &mut [f32], a: u32, b: u32, value: u64) {
    out[..HEADER].copy_from_slice(&[
        word(a),
        word(b),
        word((value >> 32) as u32),
        word(value as u32),
    ]);
}

/// The text of an error reply's payload (one byte per slot).
fn error_text(payload: &[f32]) -> String {
    let bytes: Vec<u8> = payload.iter().map(|c| c.to_bits() as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A `PUSH_ENCODED` request's payload: the compressor's parameter, the seed, the model's
/// length, then the words.
fn encoded_payload(push: &EncodedPush<'_>, out: &mut Vec<f32>) {
    out.clear();
    put_wide(out, push.kind.to_wire().1);
    put_wide(out, push.seed);
    put_wide(out, push.model_len as u64);
    out.extend_from_slice(push.words);
}

/// What rank 0 holds for the whole world.
#[derive(Default)]
pub(crate) struct State {
    counters: [u64; COUNTERS],
    server: ParameterServer,
    /// A compressed push's decoded values.
    decoded: Vec<f32>,
}

impl State {
    pub(crate) fn counter(&mut self, id: usize, op: CounterOp) -> Result<u64> {
        check_counter(id)?;
        let old = self.counters[id];
        self.counters[id] = op.apply(old);
        Ok(old)
    }

    /// The first call creates the server from `init`; later ones check the shape (the threads
    /// transport's rule).
    pub(crate) fn init(&mut self, init: &[f32], shards: usize, rank: usize) -> Result<()> {
        self.server.init(init, shards, rank)
    }

    pub(crate) fn pull(&mut self, buf: &mut [f32], rank: usize) -> Result<u64> {
        self.server.pull(buf, rank)
    }

    pub(crate) fn push(&mut self, delta: &[f32], rank: usize) -> Result<()> {
        self.server.push(delta, rank)
    }

    /// A `PUSH_ENCODED` request's payload (module documentation), decoded and added.
    fn push_encoded(&mut self, code: u32, len: u64, payload: &[f32], rank: usize) -> Result<()> {
        let bad = |what: &str| {
            Error::Transport(format!("rank {rank} sent a compressed server push {what}"))
        };
        if payload.len() < ENCODED_PREFIX {
            return Err(bad("shorter than its prefix"));
        }
        let kind = Kind::from_wire(code, wide(&payload[0..2]))
            .map_err(|e| bad(&format!("of an unknown compressor: {e}")))?;
        let len = usize::try_from(len).map_err(|_| bad("of too many values"))?;
        let model_len =
            usize::try_from(wide(&payload[4..6])).map_err(|_| bad("of too many values"))?;
        let push = EncodedPush {
            kind,
            seed: wide(&payload[2..4]),
            len,
            model_len,
            words: &payload[ENCODED_PREFIX..],
        };
        // Checked before the buffer is sized: a corrupt length must not allocate for it.
        match self.server.size() {
            Some(have) if have == len => {}
            Some(have) => return Err(bad(&format!("of {len} values to a server of {have}"))),
            None => {
                return Err(Error::Transport(
                    "the parameter server is used before server_init".into(),
                ))
            }
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.resize(len, 0.0);
        let pushed = push
            .decode(&mut decoded)
            .and_then(|()| self.server.push(&decoded, rank));
        self.decoded = decoded;
        pushed
    }

    /// Applies request `req` from `rank` and writes the reply into `reply`.
    fn handle(&mut self, req: &[f32], rank: usize, reply: &mut Vec<f32>) {
        reply.clear();
        reply.resize(HEADER, 0.0);
        let answer = if req.len() < HEADER {
            Err(Error::Transport(format!(
                "rank {rank} sent a service request of {} values, shorter than its header",
                req.len()
            )))
        } else {
            self.apply(req, rank, reply)
        };
        match answer {
            // `apply` may have left a payload after the header slots.
            Ok(value) => set_header(reply, OK, 0, value),
            Err(e) => {
                reply.truncate(HEADER);
                set_header(reply, FAILED, 0, 0);
                reply.extend(e.to_string().bytes().map(|b| word(b as u32)));
            }
        }
    }

    fn apply(&mut self, req: &[f32], rank: usize, reply: &mut Vec<f32>) -> Result<u64> {
        let (op, arg, value) = header(req);
        let payload = &req[HEADER..];
        match op {
            GET => self.counter(arg as usize, CounterOp::Get),
            ADD => self.counter(arg as usize, CounterOp::Add(value)),
            SET_MIN => self.counter(arg as usize, CounterOp::SetMin(value)),
            INIT => self.init(payload, arg as usize, rank).map(|()| 0),
            PULL => {
                reply.resize(HEADER + value as usize, 0.0);
                self.pull(&mut reply[HEADER..], rank)
            }
            PUSH => self.push(payload, rank).map(|()| 0),
            PUSH_ENCODED => self.push_encoded(arg, value, payload, rank).map(|()| 0),
            other => Err(Error::Transport(format!(
                "rank {rank} sent an unknown service request {other}"
            ))),
        }
    }
}

/// Completes `request` by testing it in a loop, never inside a blocking MPI call. Open MPI at
/// `MPI_THREAD_MULTIPLE` lets one waiting thread of a process drive progress and parks the
/// others on a condition variable; the service thread and rank 0's worker wait at the same time,
/// and each hand-over between them costs a wake-up (measured on the loaded 2-core machine: a
/// 1 MiB pull 5.4 ms with blocking calls, 1.6 ms with tests). Testing keeps every waiting
/// thread driving progress itself.
fn complete<'a, D: ?Sized, S: Scope<'a>>(mut request: Request<'a, D, S>) -> Status {
    loop {
        match request.test() {
            Ok(status) => return status,
            Err(pending) => {
                request = pending;
                std::thread::yield_now();
            }
        }
    }
}

/// Sends `data` with `tag` to `dest`, waiting as [`complete`] does.
fn send(dest: &Process<'_>, data: &[f32], tag: c_int) {
    mpi::request::scope(|scope| {
        complete(dest.immediate_send_with_tag(scope, data, tag));
    });
}

/// Receives a probed message into `buf` (resized to fit), waiting as [`complete`] does.
fn receive(message: Message, status: &Status, buf: &mut Vec<f32>) {
    buf.resize(status.count(f32::equivalent_datatype()) as usize, 0.0);
    mpi::request::scope(|scope| {
        complete(message.immediate_matched_receive_into(scope, &mut buf[..]));
    });
}

/// A communicator moved into the service thread.
struct ServiceComm(SimpleCommunicator);

// SAFETY: `SimpleCommunicator` is `!Send` under Open MPI only because its handle is a pointer.
// MPI runs at `MPI_THREAD_MULTIPLE` (`Mpi::init` refuses less), where a handle may be used from
// any thread concurrently; the service thread owns (and alone frees) this one.
unsafe impl Send for ServiceComm {}

/// One rank's end of the services: its client, and on rank 0 the service thread.
pub(crate) struct Services {
    /// The service communicator. On rank 0 an alias of the service thread's (which frees it);
    /// elsewhere owned, and freed by `stop`.
    comm: ManuallyDrop<SimpleCommunicator>,
    request: Vec<f32>,
    reply: Vec<f32>,
    thread: Option<JoinHandle<()>>,
    /// The watchdog's limit on waiting for a reply (and on rank 0 for every `BYE`).
    limit: Option<Duration>,
    /// Rank 0: which ranks have said `BYE` (written by the service thread).
    said_bye: Arc<Mutex<Vec<bool>>>,
}

impl Services {
    /// Starts the services on `comm`, a fresh communicator over the world that this value
    /// owns. Every rank calls it at the same point (the communicator was created collectively).
    pub(crate) fn start(comm: SimpleCommunicator, limit: Option<Duration>) -> Result<Services> {
        let mut services = Services {
            comm: ManuallyDrop::new(comm),
            request: Vec::new(),
            reply: Vec::new(),
            thread: None,
            limit,
            said_bye: Arc::default(),
        };
        if services.comm.rank() == 0 {
            // SAFETY: both wrappers hold the same live handle; only the service thread's is
            // ever dropped (this one is `ManuallyDrop` and `stop` skips it on rank 0), and the
            // thread drops it after every rank, this one included, said `BYE`, when this rank
            // no longer uses it. Concurrent use from two threads is allowed at
            // MPI_THREAD_MULTIPLE.
            let alias = unsafe { SimpleCommunicator::from_raw(services.comm.as_raw()) };
            let alias = ServiceComm(alias);
            let said_bye = services.said_bye.clone();
            let thread = std::thread::Builder::new()
                .name("peloton-mpi-services".into())
                .spawn(move || serve(alias, &said_bye))
                .map_err(|e| Error::Transport(format!("cannot start the service thread: {e}")))?;
            services.thread = Some(thread);
        }
        Ok(services)
    }

    /// Ends this rank's use of the services; on rank 0, waits until every rank has ended its
    /// own (see the module documentation).
    pub(crate) fn stop(mut self) -> Result<()> {
        put_header(&mut self.request, BYE, 0, 0);
        send(&self.comm.process_at_rank(0), &self.request, REQUEST);
        match self.thread.take() {
            Some(thread) => {
                let start = Instant::now();
                while !thread.is_finished() {
                    if let Some(limit) = self.limit.filter(|&l| start.elapsed() >= l) {
                        let said = self.said_bye.lock().unwrap_or_else(|e| e.into_inner());
                        let missing = (0..said.len()).filter(|&r| !said[r]).collect();
                        drop(said);
                        // Still serving: `Drop` detaches it, and the job is about to end.
                        self.thread = Some(thread);
                        return Err(Error::Timeout {
                            worker: 0,
                            what: "the end of the asynchronous services".into(),
                            missing,
                            seconds: limit.as_secs_f64(),
                        });
                    }
                    // The end of a run: a millisecond more costs nothing, and the CPU goes to
                    // the ranks still working.
                    std::thread::sleep(Duration::from_millis(1));
                }
                thread
                    .join()
                    .map_err(|_| Error::Transport("the MPI service thread died".into()))
            }
            None => {
                // SAFETY: dropped exactly once: `self` is consumed here, and its `Drop` never
                // touches the communicator. Not on rank 0 (`thread` is `Some` there), whose
                // handle the service thread frees.
                unsafe { ManuallyDrop::drop(&mut self.comm) };
                Ok(())
            }
        }
    }

    /// Runs one request and returns the reply's value; `payload_out` receives the reply's
    /// payload (a pull). `rank` names the caller in errors.
    fn call(
        &mut self,
        op: u32,
        arg: u32,
        value: u64,
        payload: &[f32],
        payload_out: Option<&mut [f32]>,
        rank: usize,
    ) -> Result<u64> {
        put_header(&mut self.request, op, arg, value);
        self.request.extend_from_slice(payload);
        let server = self.comm.process_at_rank(0);
        send(&server, &self.request, REQUEST);
        // The request is sent (nothing of this rank's is in flight): a timeout can return.
        let start = Instant::now();
        let (message, status) = loop {
            match server.immediate_matched_probe_with_tag(REPLY) {
                Some(found) => break found,
                None => {
                    if let Some(limit) = self.limit.filter(|&l| start.elapsed() >= l) {
                        return Err(Error::Timeout {
                            worker: rank,
                            what: "a request to the asynchronous services".into(),
                            missing: vec![0],
                            seconds: limit.as_secs_f64(),
                        });
                    }
                    std::thread::yield_now()
                }
            }
        };
        let reply = &mut self.reply;
        receive(message, &status, reply);
        if reply.len() < HEADER {
            return Err(Error::Transport(
                "the service on rank 0 sent a reply shorter than its header".into(),
            ));
        }
        let (status, _, value) = header(reply);
        if status != OK {
            return Err(Error::Transport(error_text(&reply[HEADER..])));
        }
        if let Some(out) = payload_out {
            let got = &reply[HEADER..];
            if got.len() != out.len() {
                return Err(Error::Transport(format!(
                    "the service on rank 0 sent {} values, rank {rank} expected {}",
                    got.len(),
                    out.len()
                )));
            }
            out.copy_from_slice(got);
        }
        Ok(value)
    }

    pub(crate) fn counter(&mut self, id: usize, op: CounterOp, rank: usize) -> Result<u64> {
        check_counter(id)?;
        let (code, value) = match op {
            CounterOp::Get => (GET, 0),
            CounterOp::Add(v) => (ADD, v),
            CounterOp::SetMin(v) => (SET_MIN, v),
        };
        self.call(code, id as u32, value, &[], None, rank)
    }

    pub(crate) fn init(&mut self, init: &[f32], shards: usize, rank: usize) -> Result<()> {
        let shards = u32::try_from(shards)
            .map_err(|_| Error::Transport(format!("{shards} parameter-server shards")))?;
        self.call(INIT, shards, 0, init, None, rank).map(|_| ())
    }

    pub(crate) fn pull(&mut self, buf: &mut [f32], rank: usize) -> Result<u64> {
        self.call(PULL, 0, buf.len() as u64, &[], Some(buf), rank)
    }

    pub(crate) fn push(&mut self, delta: &[f32], rank: usize) -> Result<()> {
        self.call(PUSH, 0, 0, delta, None, rank).map(|_| ())
    }

    pub(crate) fn push_encoded(&mut self, push: &EncodedPush<'_>, rank: usize) -> Result<()> {
        let mut payload = Vec::with_capacity(ENCODED_PREFIX + push.words.len());
        encoded_payload(push, &mut payload);
        let (code, _) = push.kind.to_wire();
        self.call(PUSH_ENCODED, code, push.len as u64, &payload, None, rank)
            .map(|_| ())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        // Not stopped: the run failed and the job is being aborted. The service thread (rank 0)
        // may still be inside MPI and the communicator in use, so neither is touched: the
        // thread is detached and the communicator leaked.
        drop(self.thread.take());
    }
}

/// The service thread: owns the state and serves requests until every rank said `BYE`.
fn serve(comm: ServiceComm, said_bye: &Mutex<Vec<bool>>) {
    let comm = ManuallyDrop::new(comm.0);
    let mut state = State::default();
    let mut remaining = comm.size() as usize;
    *said_bye.lock().unwrap_or_else(|e| e.into_inner()) = vec![false; remaining];
    let mut request: Vec<f32> = Vec::new();
    let mut reply: Vec<f32> = Vec::new();
    let mut idle = 0u32;
    while remaining > 0 {
        let Some((message, status)) = comm.any_process().immediate_matched_probe_with_tag(REQUEST)
        else {
            idle = idle.saturating_add(1);
            if idle < SPIN_POLLS {
                std::thread::yield_now();
            } else {
                std::thread::sleep(IDLE_SLEEP);
            }
            continue;
        };
        idle = 0;
        receive(message, &status, &mut request);
        let source = status.source_rank();
        if request.len() >= HEADER && header(&request).0 == BYE {
            remaining -= 1;
            if let Some(said) = said_bye
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(source as usize)
            {
                *said = true;
            }
            continue;
        }
        state.handle(&request, source as usize, &mut reply);
        send(&comm.process_at_rank(source), &reply, REPLY);
    }
    // Every rank has stopped using the services: nobody else uses this communicator.
    drop(ManuallyDrop::into_inner(comm));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: u32, arg: u32, value: u64, payload: &[f32]) -> Vec<f32> {
        let mut r = Vec::new();
        put_header(&mut r, op, arg, value);
        r.extend_from_slice(payload);
        r
    }

    #[test]
    fn requests_apply_to_the_state_and_errors_travel_as_text() {
        let mut s = State::default();
        let mut reply = Vec::new();
        s.handle(&request(ADD, 3, 5, &[]), 1, &mut reply);
        assert_eq!(header(&reply), (OK, 0, 0));
        s.handle(&request(SET_MIN, 3, 2, &[]), 1, &mut reply);
        assert_eq!(header(&reply), (OK, 0, 5));
        s.handle(&request(GET, 3, 0, &[]), 1, &mut reply);
        assert_eq!(header(&reply), (OK, 0, 2));
        // A value above 2³² survives the header.
        s.handle(&request(ADD, 0, 1 << 40, &[]), 1, &mut reply);
        s.handle(&request(GET, 0, 0, &[]), 1, &mut reply);
        assert_eq!(header(&reply).2, 1 << 40);

        s.handle(&request(INIT, 2, 0, &[1.0, 2.0, 3.0]), 2, &mut reply);
        assert_eq!(header(&reply).0, OK);
        s.handle(&request(PUSH, 0, 0, &[0.5, 0.5, 0.5]), 2, &mut reply);
        s.handle(&request(PULL, 0, 3, &[]), 2, &mut reply);
        assert_eq!(header(&reply), (OK, 0, 1));
        assert_eq!(&reply[HEADER..], &[1.5, 2.5, 3.5]);

        s.handle(&request(PULL, 0, 4, &[]), 3, &mut reply);
        assert_eq!(header(&reply).0, FAILED);
        let text = error_text(&reply[HEADER..]);
        assert!(text.contains("holds 3 values, worker 3 used 4"), "{text}");
        s.handle(&request(GET, COUNTERS as u32, 0, &[]), 1, &mut reply);
        assert_eq!(header(&reply).0, FAILED);
        s.handle(&request(INIT, 3, 0, &[1.0, 2.0, 3.0]), 1, &mut reply);
        assert_eq!(header(&reply).0, FAILED, "a different shard count");
    }

    /// A compressed push travels as its encoded words (a quarter of the values' for int8) and
    /// leaves the server at init + what the message decodes to, exactly as the threads
    /// transport's in-process decoding does; a corrupt request is refused in one line.
    #[test]
    fn a_compressed_push_is_decoded_by_the_service() {
        use peloton_compression::{to_words, Compressor, Int8, TopK};
        let len = 1001;
        let model_len = 1000; // then one value exact, as a tail travels
        let init: Vec<f32> = (0..len).map(|i| i as f32 * 0.25).collect();
        let delta: Vec<f32> = (0..len)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.0)
            .collect();
        let encode = |c: &mut dyn Compressor| {
            let mut bytes = Vec::new();
            c.encode(&delta[..model_len], &mut bytes);
            let mut words = Vec::new();
            to_words(&bytes, &mut words);
            words.push(delta[model_len]);
            words
        };
        for (kind, words) in [
            (Kind::Int8 { block: 64 }, encode(&mut Int8::new(64))),
            (Kind::TopK { fraction: 0.05 }, encode(&mut TopK::new(0.05))),
        ] {
            let push = EncodedPush {
                kind,
                seed: 7,
                len,
                model_len,
                words: &words,
            };
            assert!(
                push.words.len() < len / 3,
                "{kind:?}: {} words",
                words.len()
            );
            let mut decoded = vec![0.0; len];
            push.decode(&mut decoded).unwrap();
            let expected: Vec<f32> = init.iter().zip(&decoded).map(|(a, d)| a + d).collect();

            let mut s = State::default();
            let mut reply = Vec::new();
            s.handle(&request(INIT, 1, 0, &init), 0, &mut reply);
            let mut payload = Vec::new();
            encoded_payload(&push, &mut payload);
            let code = kind.to_wire().0;
            s.handle(
                &request(PUSH_ENCODED, code, len as u64, &payload),
                1,
                &mut reply,
            );
            assert_eq!(header(&reply).0, OK, "{}", error_text(&reply[HEADER..]));
            s.handle(&request(PULL, 0, len as u64, &[]), 1, &mut reply);
            assert_eq!(header(&reply), (OK, 0, 1));
            let got: Vec<u32> = reply[HEADER..].iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = expected.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{kind:?}");
            assert_eq!(
                reply[HEADER + model_len],
                init[model_len] + delta[model_len]
            );

            for (req, needle) in [
                (
                    request(PUSH_ENCODED, 99, len as u64, &payload),
                    "unknown compressor: compressed message: compressor code 99",
                ),
                (
                    request(
                        PUSH_ENCODED,
                        code,
                        len as u64,
                        &payload[..payload.len() - 2],
                    ),
                    "words, expected",
                ),
                (
                    request(PUSH_ENCODED, code, 5, &payload),
                    "of 5 values to a server of 1001",
                ),
                (
                    request(PUSH_ENCODED, code, len as u64, &payload[..3]),
                    "shorter than its prefix",
                ),
            ] {
                s.handle(&req, 2, &mut reply);
                assert_eq!(header(&reply).0, FAILED, "{needle}");
                let text = error_text(&reply[HEADER..]);
                assert!(text.contains(needle), "{text}");
                assert!(!text.contains('\n'), "{text}");
            }
        }
    }
}
