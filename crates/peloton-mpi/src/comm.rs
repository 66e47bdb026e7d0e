//! [`MpiComm`]: peloton's [`Communicator`] over an MPI communicator.

use std::mem::ManuallyDrop;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mpi::datatype::{Partition, PartitionMut};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::Communicator as _;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;
use peloton_core::transport::{
    check_rank, check_request_len, CommStats, Communicator, CounterOp, EncodedPush, RecvRequest,
    ReduceOp, SendRequest, Tag,
};
use peloton_core::{Error, Result};

use crate::services::Services;
use crate::watchdog::{TimedOut, Watchdog};

/// The largest tag every MPI implementation accepts (the standard's minimum `MPI_TAG_UB`).
/// Larger tags work where the library allows them: [`MpiComm`] checks against the library's
/// own `MPI_TAG_UB` (Open MPI: 2³¹ − 1), so AD-PSGD's tags (0xAD0001…) pass there.
pub const MAX_TAG: Tag = 32767;

/// The largest tag this MPI library accepts: its `MPI_TAG_UB` attribute, at least [`MAX_TAG`].
fn tag_upper_bound() -> Tag {
    let mut value: *mut c_int = std::ptr::null_mut();
    let mut flag: c_int = 0;
    // SAFETY: MPI is initialized (an `MpiComm` exists only after `Mpi::init`), MPI_COMM_WORLD
    // always carries the predefined MPI_TAG_UB attribute, whose value MPI stores as a pointer
    // to an int that lives as long as MPI; `flag` says whether it was set.
    let ub = unsafe {
        ffi::MPI_Comm_get_attr(
            ffi::RSMPI_COMM_WORLD,
            ffi::MPI_TAG_UB as c_int,
            (&mut value as *mut *mut c_int).cast(),
            &mut flag,
        );
        if flag != 0 && !value.is_null() {
            *value
        } else {
            0
        }
    };
    Tag::try_from(ub).unwrap_or(0).max(MAX_TAG)
}

/// The phrase that starts every error that all members of a collective return together (a
/// length mismatch found by the pre-collective check, a failed [`CommunicatorExt::agree`]):
/// such an error needs no abort, every rank can stop cleanly.
///
/// [`CommunicatorExt::agree`]: peloton_core::transport::CommunicatorExt::agree
pub const SHARED_ERROR_MARK: &str = "(every rank)";

/// Traffic counters shared by a rank's world communicator and every group split from it.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    operations: AtomicU64,
}

impl Counters {
    fn add(&self, sent: u64, received: u64) {
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
        self.operations.fetch_add(1, Ordering::Relaxed);
    }
}

/// A non-blocking send in flight: MPI reads `data` until the request completes.
struct PendingSend {
    request: ffi::MPI_Request,
    data: Vec<f32>,
}

/// One rank's handle on a group of MPI processes.
///
/// * Sum and mean reductions are computed by peloton, not by `MPI_Allreduce` (whose summation
///   order is unspecified): an `MPI_Alltoallv` hands rank r chunk r of every member's buffer,
///   rank r sums the chunks in rank order 0, 1, …, p−1 exactly as the threads transport does,
///   and an `MPI_Allgatherv` (`MPI_Gatherv` for [`Communicator::reduce`]) returns the reduced
///   chunks. That is a reduce-scatter + all-gather, bandwidth-optimal like a ring (each rank
///   sends and receives 2(p−1)/p·n values), and the result is bit-identical to the threads
///   transport's for every group size.
/// * Sends are buffered as the trait requires: the data is copied into an owned buffer and
///   handed to `MPI_Isend`; completed sends are reaped by later operations. `wait_send` does not
///   block (waiting for the receiver there could deadlock two ranks that both wait for their
///   sends before receiving), it leaves the request to be reaped.
/// * Receives are matched when they are waited for (`MPI_Improbe` + `MPI_Imrecv`), the threads
///   transport's semantics; the probe lets a length mismatch be an error instead of an MPI
///   truncation abort.
/// * Every collective first all-gathers the members' lengths (8 bytes each), so a mismatch is
///   the same error on every member instead of undefined behaviour inside MPI.
/// * Every wait is a test loop under the watchdog ([`MpiComm::set_watchdog`]): collectives use
///   MPI's immediate operations, receives `MPI_Improbe` + `MPI_Imrecv` (see the crate
///   documentation).
/// * The asynchronous services (shared counters, the parameter server) are served by a thread
///   of rank 0 once [`MpiComm::start_services`] has run on the world communicator (see the
///   crate documentation); [`Communicator::probe_any`] is `MPI_Iprobe` on any source and
///   [`Communicator::pause`] a 50 µs sleep, as on the threads transport.
pub struct MpiComm {
    comm: ManuallyDrop<SimpleCommunicator>,
    rank: usize,
    size: usize,
    world_rank: usize,
    stats: Arc<Counters>,
    pending: Vec<PendingSend>,
    next_request: u64,
    scratch: Vec<f32>,
    /// The largest tag MPI accepts here.
    tag_ub: Tag,
    /// The asynchronous services, between `start_services` and `stop_services`.
    services: Option<Services>,
    /// The deadline of every wait, and who arrived (see [`MpiComm::set_watchdog`]).
    wd: Watchdog,
}

// SAFETY: the fields that are not `Send` are MPI handles (`MPI_Comm`, `MPI_Request`: pointers
// into the MPI library under Open MPI, integers under MPICH) and the buffers they refer to,
// which this value owns. MPI is initialized at `MPI_THREAD_MULTIPLE` before any `MpiComm`
// exists (`Mpi::init` refuses lower levels), so MPI may be called on these handles from any
// thread; `MpiComm` is not `Sync` and every method that uses a handle takes `&mut self` (or
// only calls `MPI_Abort`, which is thread-safe at that level), so one thread at a time uses
// it. Moving it to another thread therefore moves ownership only.
unsafe impl Send for MpiComm {}

fn transport(message: String) -> Error {
    Error::Transport(message)
}

fn count(n: usize, what: &str) -> Result<Count> {
    Count::try_from(n).map_err(|_| {
        transport(format!(
            "{what}: {n} values is more than MPI's {} per operation",
            Count::MAX
        ))
    })
}

/// The first element of chunk `r` when `n` values are split over `p` members (the threads
/// transport's split).
fn chunk_start(r: usize, n: usize, p: usize) -> usize {
    r * n / p
}

/// `acc ⊕= src`, element-wise, with the threads transport's arithmetic.
fn combine(acc: &mut [f32], src: &[f32], op: ReduceOp) {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => acc.iter_mut().zip(src).for_each(|(a, b)| *a += *b),
        ReduceOp::Max => acc.iter_mut().zip(src).for_each(|(a, b)| *a = a.max(*b)),
        ReduceOp::Min => acc.iter_mut().zip(src).for_each(|(a, b)| *a = a.min(*b)),
    }
}

impl MpiComm {
    /// Wraps `comm` (a communicator this value now owns and frees) for world rank
    /// `world_rank`; `members` are the world ranks of its members, in its rank order.
    /// Collective: it duplicates `comm` for the watchdog's notices.
    pub(crate) fn new(comm: SimpleCommunicator, world_rank: usize, members: Vec<usize>) -> Self {
        let rank = comm.rank() as usize;
        let size = comm.size() as usize;
        let wd = Watchdog::new(comm.duplicate(), members, world_rank);
        Self {
            comm: ManuallyDrop::new(comm),
            rank,
            size,
            world_rank,
            stats: Arc::new(Counters::default()),
            pending: Vec::new(),
            next_request: 0,
            scratch: Vec::new(),
            tag_ub: tag_upper_bound(),
            services: None,
            wd,
        }
    }

    /// Sets the watchdog: a collective or a receive that waits longer than `limit` for other
    /// members fails with [`Error::Timeout`] naming the world ranks that did not arrive
    /// (`None`: wait forever). Groups split from this communicator inherit it. After a timeout
    /// the job must end ([`crate::abort_job`]): the abandoned operation is still posted. A
    /// transfer that stalls after every member has entered its collective ends the job at
    /// once (MPI cannot give the caller's buffer back); see the crate documentation.
    pub fn set_watchdog(&mut self, limit: Option<std::time::Duration>) {
        self.wd.set_limit(limit);
    }

    /// The watchdog's limit.
    pub fn watchdog(&self) -> Option<std::time::Duration> {
        self.wd.limit()
    }

    /// Starts the asynchronous services (shared counters, the parameter server) for the world
    /// this communicator spans: a service communicator is duplicated from it and rank 0 starts
    /// the thread that serves every rank. Collective: every member calls it at the same point,
    /// before its first service operation, and calls [`MpiComm::stop_services`] after its last
    /// one.
    pub fn start_services(&mut self) -> Result<()> {
        if self.services.is_some() {
            return Err(transport(
                "the asynchronous services are already running on this communicator".into(),
            ));
        }
        self.services = Some(Services::start(self.comm.duplicate(), self.wd.limit())?);
        Ok(())
    }

    /// Ends this member's use of the services. Every member calls it once it will not use them
    /// again; rank 0 returns when every member has (its service thread then ends). A member
    /// that fails instead must end the job ([`crate::abort_job`]): rank 0 would otherwise wait
    /// for it.
    pub fn stop_services(&mut self) -> Result<()> {
        match self.services.take() {
            Some(services) => services.stop(),
            None => Ok(()),
        }
    }

    fn services(&mut self, what: &str) -> Result<(&mut Services, usize)> {
        let rank = self.world_rank;
        match self.services.as_mut() {
            Some(s) => Ok((s, rank)),
            None => Err(transport(format!(
                "{what} on MPI need the asynchronous services: call MpiComm::start_services on the world communicator first"
            ))),
        }
    }

    /// This process's rank in `MPI_COMM_WORLD`.
    pub fn world_rank(&self) -> usize {
        self.world_rank
    }

    /// The underlying MPI communicator (for measurements against bare MPI calls).
    pub fn raw(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// Every member's `value`, all-gathered under the watchdog: the entry of a collective, where
    /// a timeout is returned (see the crate documentation).
    fn enter_all_gather(&mut self, what: &str, value: u64) -> Result<Vec<u64>> {
        // Owned, and leaked on a timeout: MPI may still write them after this returns.
        let send = ManuallyDrop::new(vec![value]);
        let mut all = ManuallyDrop::new(vec![0u64; self.size]);
        let comm = &self.comm;
        let wd = &mut self.wd;
        let timed_out = mpi::request::scope(|scope| {
            let request = comm.immediate_all_gather_into(scope, &send[..], &mut all[..]);
            match wd.enter(request, what) {
                Ok(()) => None,
                Err((request, TimedOut(e))) => {
                    // SAFETY: the request is abandoned unfinished; its buffers (`send`, `all`)
                    // are never dropped below, so MPI may write them until the job ends.
                    let _ = unsafe { request.into_raw() };
                    Some(e)
                }
            }
        });
        if let Some(e) = timed_out {
            return Err(e);
        }
        drop(ManuallyDrop::into_inner(send));
        Ok(ManuallyDrop::into_inner(all))
    }

    /// Every member's length, after checking that they agree; `Err` (the same on every member)
    /// otherwise. Not counted in the statistics: the threads transport's check is free.
    /// This is the entry of every collective: the watchdog's timeout is returned from here.
    fn check_lengths(&mut self, what: &str, len: usize) -> Result<()> {
        let lens = self.enter_all_gather(what, len as u64)?;
        if let Some(other) = lens.iter().position(|&l| l != lens[0]) {
            return Err(transport(format!(
                "{what}: worker 0 passed {} values but worker {other} passed {} (do the workers build the same model?) {SHARED_ERROR_MARK}",
                lens[0], lens[other]
            )));
        }
        Ok(())
    }

    /// Gathers every member's `bytes` on `root` (in rank order; `None` elsewhere), under the
    /// watchdog. Not counted in the statistics.
    pub(crate) fn gather_bytes(
        &mut self,
        bytes: &[u8],
        root: usize,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let p = self.size;
        let lens = self.enter_all_gather("the gathering of the results", bytes.len() as u64)?;
        let total: u64 = lens.iter().sum();
        if total > Count::MAX as u64 {
            return Err(transport(format!(
                "the ranks' results take {total} bytes, more than one MPI message holds {SHARED_ERROR_MARK}"
            )));
        }
        let process = self.comm.process_at_rank(root as c_int);
        let wd = &mut self.wd;
        let what = "the gathering of the results";
        if self.rank != root {
            mpi::request::scope(|scope| {
                wd.finish(process.immediate_gather_varcount_into(scope, bytes), what)
            });
            return Ok(None);
        }
        let counts: Vec<Count> = lens.iter().map(|&l| l as Count).collect();
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let mut all = vec![0u8; total as usize];
        {
            let mut recv = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            mpi::request::scope(|scope| {
                wd.finish(
                    process.immediate_gather_varcount_into_root(scope, bytes, &mut recv),
                    what,
                )
            });
        }
        Ok(Some(
            (0..p)
                .map(|r| {
                    let d = displs[r] as usize;
                    all[d..d + counts[r] as usize].to_vec()
                })
                .collect(),
        ))
    }

    /// Counts and displacements of the p chunks of an n-value buffer.
    fn chunks(&self, n: usize) -> (Vec<Count>, Vec<Count>) {
        let p = self.size;
        let displs: Vec<Count> = (0..p).map(|r| chunk_start(r, n, p) as Count).collect();
        let counts = (0..p)
            .map(|r| (chunk_start(r + 1, n, p) - chunk_start(r, n, p)) as Count)
            .collect();
        (counts, displs)
    }

    /// Reduce-scatter: leaves this member's reduced chunk in `self.scratch[..chunk]` and
    /// returns the chunk layout.
    fn reduce_scatter(
        &mut self,
        buf: &[f32],
        op: ReduceOp,
    ) -> Result<(usize, Vec<Count>, Vec<Count>)> {
        let p = self.size;
        let n = buf.len();
        let (counts, displs) = self.chunks(n);
        let mine = counts[self.rank] as usize;
        // Member j's copy of chunk `rank` lands at j·mine: the p copies in rank order.
        self.scratch.resize(p * mine, 0.0);
        let recv_counts = vec![mine as Count; p];
        let recv_displs: Vec<Count> = (0..p).map(|j| (j * mine) as Count).collect();
        {
            let send = Partition::new(buf, &counts[..], &displs[..]);
            let mut recv =
                PartitionMut::new(&mut self.scratch[..], &recv_counts[..], &recv_displs[..]);
            let (comm, wd) = (&self.comm, &mut self.wd);
            mpi::request::scope(|scope| {
                wd.finish(
                    comm.immediate_all_to_all_varcount_into(scope, &send, &mut recv),
                    "a reduction",
                )
            });
        }
        let (acc, rest) = self.scratch.split_at_mut(mine);
        for j in 1..p {
            combine(acc, &rest[(j - 1) * mine..j * mine], op);
        }
        if op == ReduceOp::Mean {
            let pf = p as f32;
            acc.iter_mut().for_each(|a| *a /= pf);
        }
        Ok((mine, counts, displs))
    }

    /// Completes the sends MPI has finished with, freeing their buffers.
    fn reap_sends(&mut self) {
        self.pending.retain_mut(|s| {
            let mut done: c_int = 0;
            // SAFETY: `s.request` is a live request started by `MPI_Isend` on a buffer that
            // `s.data` keeps alive; `MPI_Test` frees it (sets it to MPI_REQUEST_NULL) when done.
            unsafe {
                ffi::MPI_Test(&mut s.request, &mut done, ffi::RSMPI_STATUS_IGNORE);
            }
            done == 0
        });
    }

    fn check_tag(&self, tag: Tag) -> Result<c_int> {
        if tag > self.tag_ub {
            return Err(transport(format!(
                "tag {tag} is above {}, the largest tag this MPI accepts (MPI_TAG_UB)",
                self.tag_ub
            )));
        }
        Ok(tag as c_int)
    }

    fn receive(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        let tag = self.check_tag(tag)?;
        let process = self.comm.process_at_rank(src as c_int);
        let wd = &mut self.wd;
        let (message, status) = wd.await_message(
            src,
            || format!("a receive (tag {tag})"),
            || process.immediate_matched_probe_with_tag(tag),
        )?;
        let got = status.count(f32::equivalent_datatype()) as usize;
        if got != buf.len() {
            // Take the message anyway, as the threads transport does, so it cannot be matched
            // by a later receive.
            let mut junk = vec![0.0f32; got];
            mpi::request::scope(|scope| {
                wd.finish(
                    message.immediate_matched_receive_into(scope, &mut junk[..]),
                    "a receive",
                )
            });
            return Err(transport(format!(
                "message from rank {src} (tag {tag}) has {got} values, the receiver expected {}",
                buf.len()
            )));
        }
        mpi::request::scope(|scope| {
            wd.finish(
                message.immediate_matched_receive_into(scope, &mut *buf),
                "a receive",
            )
        });
        self.stats.add(0, 4 * buf.len() as u64);
        Ok(())
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        if mpi::environment::is_finalized() {
            // MPI is gone: its handles cannot be freed any more, and buffers of sends it never
            // completed must not be freed while it might still read them. The process is
            // ending; leak both.
            std::mem::take(&mut self.pending)
                .into_iter()
                .for_each(std::mem::forget);
            return;
        }
        self.reap_sends();
        for mut s in std::mem::take(&mut self.pending) {
            // A send nobody received: let MPI finish (or drop) it on its own and never free the
            // buffer it may still read.
            // SAFETY: `s.request` is a live request; after `MPI_Request_free` it is not used
            // again, and `s.data` is leaked so the memory stays valid.
            unsafe {
                ffi::MPI_Request_free(&mut s.request);
            }
            std::mem::forget(s.data);
        }
        // SAFETY: `comm` is dropped exactly once, here, and never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.comm) };
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let p = self.size;
        if p == 1 {
            return Ok(());
        }
        self.check_lengths("all-reduce", buf.len())?;
        count(buf.len(), "all-reduce")?;
        let (mine, counts, displs) = self.reduce_scatter(buf, op)?;
        {
            let mut recv = PartitionMut::new(buf, &counts[..], &displs[..]);
            let (comm, wd, scratch) = (&self.comm, &mut self.wd, &self.scratch);
            mpi::request::scope(|scope| {
                wd.finish(
                    comm.immediate_all_gather_varcount_into(scope, &scratch[..mine], &mut recv),
                    "an all-reduce",
                )
            });
        }
        let bytes = (2 * (p - 1) * 4 * buf.len() / p) as u64;
        self.stats.add(bytes, bytes);
        Ok(())
    }

    fn reduce(&mut self, buf: &mut [f32], root: usize, op: ReduceOp) -> Result<()> {
        let p = self.size;
        check_rank("reduce root", root, p)?;
        if p == 1 {
            return Ok(());
        }
        self.check_lengths("reduce", buf.len())?;
        count(buf.len(), "reduce")?;
        let (mine, counts, displs) = self.reduce_scatter(buf, op)?;
        let root_process = self.comm.process_at_rank(root as c_int);
        let (wd, scratch) = (&mut self.wd, &self.scratch[..mine]);
        if self.rank == root {
            let mut recv = PartitionMut::new(buf, &counts[..], &displs[..]);
            mpi::request::scope(|scope| {
                wd.finish(
                    root_process.immediate_gather_varcount_into_root(scope, scratch, &mut recv),
                    "a reduce",
                )
            });
        } else {
            mpi::request::scope(|scope| {
                wd.finish(
                    root_process.immediate_gather_varcount_into(scope, scratch),
                    "a reduce",
                )
            });
        }
        let bytes = 4 * buf.len() as u64;
        if self.rank == root {
            self.stats.add(0, bytes);
        } else {
            self.stats.add(bytes, 0);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let p = self.size;
        check_rank("broadcast root", root, p)?;
        if p == 1 {
            return Ok(());
        }
        self.check_lengths("broadcast", buf.len())?;
        count(buf.len(), "broadcast")?;
        let root_process = self.comm.process_at_rank(root as c_int);
        let wd = &mut self.wd;
        mpi::request::scope(|scope| {
            wd.finish(
                root_process.immediate_broadcast_into(scope, &mut *buf),
                "a broadcast",
            )
        });
        let bytes = 4 * buf.len() as u64;
        if self.rank == root {
            self.stats.add(bytes, 0);
        } else {
            self.stats.add(0, bytes);
        }
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        gather(self, send, recv)
    }

    fn all_gather_f64(&mut self, send: &[f64], recv: &mut [f64]) -> Result<()> {
        gather(self, send, recv)
    }

    fn barrier(&mut self) -> Result<()> {
        // Not counted, as on the threads transport: a barrier moves no data.
        if self.size == 1 {
            return Ok(());
        }
        let request = self.comm.immediate_barrier();
        match self.wd.enter(request, "a barrier") {
            Ok(()) => Ok(()),
            Err((request, TimedOut(e))) => {
                // SAFETY: a barrier has no buffers; the abandoned request handle is leaked.
                let _ = unsafe { request.into_raw() };
                Err(e)
            }
        }
    }

    fn send(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<()> {
        self.isend(dest, tag, data).map(|_| ())
    }

    fn recv(&mut self, src: usize, tag: Tag, buf: &mut [f32]) -> Result<()> {
        check_rank("receive source", src, self.size)?;
        self.receive(src, tag, buf)
    }

    fn isend(&mut self, dest: usize, tag: Tag, data: &[f32]) -> Result<SendRequest> {
        check_rank("send destination", dest, self.size)?;
        let mpi_tag = self.check_tag(tag)?;
        let n = count(data.len(), "send")?;
        self.reap_sends();
        let mut pending = PendingSend {
            // SAFETY: MPI_REQUEST_NULL is a plain constant handle.
            request: unsafe { ffi::RSMPI_REQUEST_NULL },
            data: data.to_vec(),
        };
        // SAFETY: the buffer holds `n` f32 values and lives in `pending.data` (a heap
        // allocation that does not move when `pending` does) until the request completes or is
        // freed with the buffer leaked (`reap_sends`, `Drop`); the communicator is live.
        unsafe {
            ffi::MPI_Isend(
                pending.data.as_ptr().cast(),
                n,
                f32::equivalent_datatype().as_raw(),
                dest as c_int,
                mpi_tag,
                self.comm.as_raw(),
                &mut pending.request,
            );
        }
        self.pending.push(pending);
        self.stats.add(4 * data.len() as u64, 0);
        self.next_request += 1;
        Ok(SendRequest {
            id: self.next_request,
        })
    }

    fn irecv(&mut self, src: usize, tag: Tag, len: usize) -> Result<RecvRequest> {
        check_rank("receive source", src, self.size)?;
        self.check_tag(tag)?;
        self.next_request += 1;
        Ok(RecvRequest {
            id: self.next_request,
            src,
            tag,
            len,
        })
    }

    fn wait_send(&mut self, _req: SendRequest) -> Result<()> {
        // Buffered semantics: the data is ours until MPI is done with it (see the type docs).
        self.reap_sends();
        Ok(())
    }

    fn wait_recv(&mut self, req: RecvRequest, buf: &mut [f32]) -> Result<()> {
        check_request_len(&req, buf)?;
        self.receive(req.src, req.tag, buf)
    }

    fn test_recv(&mut self, req: &RecvRequest) -> Result<bool> {
        let tag = self.check_tag(req.tag)?;
        self.reap_sends();
        Ok(self
            .comm
            .process_at_rank(req.src as c_int)
            .immediate_probe_with_tag(tag)
            .is_some())
    }

    fn split(&mut self, color: usize, key: usize) -> Result<Box<dyn Communicator>> {
        // Every member learns every (color, key) first, as on the threads transport (whose
        // byte counts this reproduces), so a value MPI cannot take is the same error on all.
        let p = self.size;
        let mut all = vec![0.0f64; 2 * p];
        self.all_gather_f64(&[color as f64, key as f64], &mut all)?;
        if let Some(bad) = all.iter().find(|v| **v > c_int::MAX as f64) {
            return Err(transport(format!(
                "split: color or key {bad} is above MPI's limit {} {SHARED_ERROR_MARK}",
                c_int::MAX
            )));
        }
        // MPI_Comm_split's order: by key, ties by rank in this communicator.
        let mut members: Vec<usize> = (0..p).filter(|&j| all[2 * j] == color as f64).collect();
        members.sort_by(|&a, &b| all[2 * a + 1].total_cmp(&all[2 * b + 1]).then(a.cmp(&b)));
        let members = members.iter().map(|&j| self.wd.members()[j]).collect();
        // Every member has just passed the all-gather above, under the watchdog: the split
        // and the duplicate in `new` wait for nobody that has not arrived.
        let sub = self
            .comm
            .split_by_color_with_key(Color::with_value(color as c_int), key as c_int)
            .ok_or_else(|| transport("split: MPI returned no communicator".into()))?;
        let mut comm = MpiComm::new(sub, self.world_rank, members);
        comm.stats = self.stats.clone();
        comm.set_watchdog(self.wd.limit());
        Ok(Box::new(comm))
    }

    fn counter(&mut self, id: usize, op: CounterOp) -> Result<u64> {
        let (services, rank) = self.services("shared counters")?;
        let old = services.counter(id, op, rank)?;
        // The threads transport's accounting: 8 bytes each way.
        self.stats.add(8, 8);
        Ok(old)
    }

    fn server_init(&mut self, init: &[f32], shards: usize) -> Result<()> {
        let (services, rank) = self.services("a parameter server")?;
        services.init(init, shards, rank)
    }

    fn server_pull(&mut self, buf: &mut [f32]) -> Result<u64> {
        let (services, rank) = self.services("a parameter server")?;
        let version = services.pull(buf, rank)?;
        self.stats.add(0, 4 * buf.len() as u64);
        Ok(version)
    }

    fn server_push(&mut self, delta: &[f32]) -> Result<()> {
        let (services, rank) = self.services("a parameter server")?;
        services.push(delta, rank)?;
        self.stats.add(4 * delta.len() as u64, 0);
        Ok(())
    }

    /// The encoded message travels to rank 0's service as it is, and the service decodes it
    /// (`services.rs`, "Compressed pushes").
    fn server_push_encoded(&mut self, push: &EncodedPush<'_>) -> Result<()> {
        let (services, rank) = self.services("a parameter server")?;
        services.push_encoded(push, rank)?;
        self.stats.add(push.wire_bytes(), 0);
        Ok(())
    }

    fn probe_any(&mut self, tag: Tag) -> Result<Option<(usize, usize)>> {
        let tag = self.check_tag(tag)?;
        // Polling loops call this between steps: a good moment to free finished sends.
        self.reap_sends();
        Ok(self
            .comm
            .any_process()
            .immediate_probe_with_tag(tag)
            .map(|status| {
                (
                    status.source_rank() as usize,
                    status.count(f32::equivalent_datatype()) as usize,
                )
            }))
    }

    fn pause(&mut self) -> Result<()> {
        // As on the threads transport: long enough to leave the CPU to the peers being
        // waited for, short next to a step.
        std::thread::sleep(std::time::Duration::from_micros(50));
        Ok(())
    }

    fn abort(&self, reason: &str) {
        crate::abort_job(self.world_rank, reason, 1);
    }

    fn stats(&self) -> CommStats {
        CommStats {
            bytes_sent: self.stats.sent.load(Ordering::Relaxed),
            bytes_received: self.stats.received.load(Ordering::Relaxed),
            operations: self.stats.operations.load(Ordering::Relaxed),
        }
    }
}

/// All-gather of `f32` or `f64` values, with the threads transport's checks and counts.
fn gather<T>(c: &mut MpiComm, send: &[T], recv: &mut [T]) -> Result<()>
where
    T: Equivalence + Copy,
{
    let p = c.size;
    let k = send.len();
    if recv.len() != p * k {
        return Err(transport(format!(
            "all-gather: receive buffer holds {} values, expected {p}·{k}",
            recv.len()
        )));
    }
    if p == 1 {
        recv.copy_from_slice(send);
    } else {
        c.check_lengths("all-gather", k)?;
        count(p * k, "all-gather")?;
        let (comm, wd) = (&c.comm, &mut c.wd);
        mpi::request::scope(|scope| {
            wd.finish(
                comm.immediate_all_gather_into(scope, send, recv),
                "an all-gather",
            )
        });
    }
    let bytes = ((p - 1) * k * std::mem::size_of::<T>()) as u64;
    c.stats.add(bytes, bytes);
    Ok(())
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MpiComm(rank {} of {}, world rank {})",
            self.rank, self.size, self.world_rank
        )
    }
}
