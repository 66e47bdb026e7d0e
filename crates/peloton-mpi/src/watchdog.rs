//! The watchdog of [`MpiComm`](crate::MpiComm): every wait is a test loop with a deadline, and
//! a rank that gives up names the ranks that did not arrive.
//!
//! **Who did not arrive.** MPI does not say which members of an unfinished collective are
//! missing. Announcing every entry to every member would cost p − 1 messages per collective,
//! so announcements are lazy: a rank that has waited for the *grace* period (a quarter of the
//! limit, at most 1 s) in the entry of collective #k tells every other member "I am in #k"
//! (8 bytes, non-blocking, on a communicator of the watchdog's own), and a rank that waits,
//! reads such a notice and is in #k itself answers at once. A rank whose limit expires names
//! the members it has heard no notice of #k (or later) from. Collectives that finish within
//! the grace period, the normal case, send nothing: the fast path is the test loop alone.
//!
//! **Two kinds of wait.** Every collective starts with a small all-gather (the length check):
//! its buffers belong to the watchdog's caller, which can leak them, so a timeout there is
//! returned as [`Error::Timeout`]. Once it completed every member has arrived, and the data
//! transfer that follows writes into the caller's slice: MPI cannot cancel a collective, so a
//! timeout there (a member died or hung inside the transfer) cannot hand the slice back and
//! ends the job at once ([`crate::abort_job`]) with the same kind of line.

use std::mem::ManuallyDrop;
use std::os::raw::c_int;
use std::time::{Duration, Instant};

use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use peloton_core::{Error, Result};

/// The tag of an arrival notice on the watchdog's communicator.
const NOTICE_TAG: c_int = 1;

/// A waiting rank spins on `MPI_Test` this long (as a blocking MPI wait would), then yields
/// the CPU between tests, so a waiting rank on an oversubscribed node leaves the core to the
/// rank it waits for.
const SPIN: Duration = Duration::from_millis(1);

/// How often a waiting rank past [`SPIN`] reads notices.
const NOTICE_POLL: Duration = Duration::from_millis(1);

/// The longest grace period before a waiting rank announces itself.
const MAX_GRACE: Duration = Duration::from_secs(1);

/// A rank waiting past its grace period sleeps this long between tests: it is waiting for a
/// straggler, and a few hundred µs on top of a wait of a quarter of the limit cost nothing.
const LATE_SLEEP: Duration = Duration::from_micros(200);

/// A notice in flight: MPI reads `seq` until the request completes.
struct Notice {
    request: ffi::MPI_Request,
    seq: Box<u64>,
}

/// One communicator's watchdog: its limit, the collective count and what it heard.
pub(crate) struct Watchdog {
    limit: Option<Duration>,
    /// Notices travel here, never matching the workers' messages.
    ctl: ManuallyDrop<SimpleCommunicator>,
    rank: usize,
    /// World rank of every member (the names in errors).
    members: Vec<usize>,
    world_rank: usize,
    /// The collective this member is in (or last was in): 1, 2, … in call order.
    seq: u64,
    /// The latest collective each member said it had entered (0: none).
    heard: Vec<u64>,
    /// The latest collective this member announced.
    told: u64,
    sends: Vec<Notice>,
}

/// How a wait ended without completing.
pub(crate) struct TimedOut(pub(crate) Error);

impl Watchdog {
    /// `ctl` is a communicator over the same members as the one watched (a duplicate), owned
    /// by the watchdog from now on; `members` names the members by world rank.
    pub(crate) fn new(ctl: SimpleCommunicator, members: Vec<usize>, world_rank: usize) -> Self {
        let rank = ctl.rank() as usize;
        let size = members.len();
        Self {
            limit: None,
            ctl: ManuallyDrop::new(ctl),
            rank,
            members,
            world_rank,
            seq: 0,
            heard: vec![0; size],
            told: 0,
            sends: Vec::new(),
        }
    }

    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    pub(crate) fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit;
    }

    pub(crate) fn members(&self) -> &[usize] {
        &self.members
    }

    /// The grace period before announcing: a quarter of the limit, at most [`MAX_GRACE`].
    fn grace(limit: Duration) -> Duration {
        (limit / 4).min(MAX_GRACE)
    }

    /// Waits for `request`, the entry of the next collective (`what`, for errors). Its buffers
    /// must be the caller's to leak: on a timeout the request is handed back, unfinished.
    pub(crate) fn enter<'a, D: ?Sized, S: Scope<'a>>(
        &mut self,
        request: Request<'a, D, S>,
        what: &str,
    ) -> Result<(), (Request<'a, D, S>, TimedOut)> {
        self.seq += 1;
        let mut request = match request.test() {
            Ok(_) => return Ok(()),
            Err(r) => r,
        };
        let start = Instant::now();
        let mut next_poll = SPIN;
        loop {
            request = match request.test() {
                Ok(_) => return Ok(()),
                Err(r) => r,
            };
            let waited = start.elapsed();
            if waited < SPIN {
                continue;
            }
            let Some(limit) = self.limit else {
                std::thread::yield_now();
                continue;
            };
            if waited >= next_poll {
                next_poll = waited + NOTICE_POLL;
                if self.read_notices() {
                    // Somebody waits in this collective already: say at once that this
                    // member is here too.
                    self.announce();
                }
            }
            if waited >= Self::grace(limit) {
                self.announce();
                if waited >= limit {
                    self.read_notices();
                    let err = self.missing_error(what, limit);
                    return Err((request, TimedOut(err)));
                }
                std::thread::sleep(LATE_SLEEP);
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Waits for `request`, a transfer after every member has entered (see the module
    /// documentation). Its buffers are borrowed, so a timeout ends the job.
    pub(crate) fn finish<'a, D: ?Sized, S: Scope<'a>>(
        &mut self,
        request: Request<'a, D, S>,
        what: &str,
    ) {
        let mut request = match request.test() {
            Ok(_) => return,
            Err(r) => r,
        };
        let start = Instant::now();
        loop {
            request = match request.test() {
                Ok(_) => return,
                Err(r) => r,
            };
            let waited = start.elapsed();
            if waited < SPIN {
                continue;
            }
            if let Some(limit) = self.limit.filter(|&l| waited >= l) {
                let err = Error::Transport(format!(
                    "watchdog: worker {} waited {} s for the data of {what} after every member had entered it (a member died or hangs inside MPI)",
                    self.world_rank,
                    limit.as_secs_f64()
                ));
                // MPI may still write into the caller's buffer: it cannot be handed back.
                crate::abort_job(self.world_rank, &err.to_string(), 1);
            }
            std::thread::yield_now();
        }
    }

    /// Waits for a message from member `src`: polls `probe` (which matches it when it has
    /// come) until it returns something or the limit expires.
    pub(crate) fn await_message<T>(
        &mut self,
        src: usize,
        what: impl Fn() -> String,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        if let Some(found) = probe() {
            return Ok(found);
        }
        let start = Instant::now();
        loop {
            if let Some(found) = probe() {
                return Ok(found);
            }
            let waited = start.elapsed();
            if waited < SPIN {
                continue;
            }
            match self.limit {
                Some(limit) if waited >= limit => {
                    return Err(Error::Timeout {
                        worker: self.world_rank,
                        what: what(),
                        missing: vec![self.members[src]],
                        seconds: limit.as_secs_f64(),
                    })
                }
                Some(limit) if waited >= Self::grace(limit) => std::thread::sleep(LATE_SLEEP),
                _ => std::thread::yield_now(),
            }
        }
    }

    /// Reads every notice that has come; true when one says its sender is in this member's
    /// current collective or a later one.
    fn read_notices(&mut self) -> bool {
        self.reap();
        let mut current = false;
        while let Some((message, status)) = self
            .ctl
            .any_process()
            .immediate_matched_probe_with_tag(NOTICE_TAG)
        {
            let mut seq = 0u64;
            // A notice is 8 bytes, sent before it was probed: the receive completes at once.
            message.matched_receive_into(&mut seq);
            let from = status.source_rank() as usize;
            if let Some(h) = self.heard.get_mut(from) {
                *h = (*h).max(seq);
            }
            current |= seq >= self.seq;
        }
        current
    }

    /// Tells every other member that this one is in the current collective (once).
    fn announce(&mut self) {
        if self.told >= self.seq {
            return;
        }
        self.told = self.seq;
        self.heard[self.rank] = self.seq;
        for dest in (0..self.members.len()).filter(|&d| d != self.rank) {
            let mut notice = Notice {
                // SAFETY: MPI_REQUEST_NULL is a plain constant handle.
                request: unsafe { ffi::RSMPI_REQUEST_NULL },
                seq: Box::new(self.seq),
            };
            // SAFETY: the 8-byte buffer lives in a heap box that `notice` keeps (and `Drop`
            // leaks while the request may be live) until the request completes; the
            // communicator is live.
            unsafe {
                ffi::MPI_Isend(
                    (&*notice.seq as *const u64).cast(),
                    1,
                    u64::equivalent_datatype().as_raw(),
                    dest as c_int,
                    NOTICE_TAG,
                    self.ctl.as_raw(),
                    &mut notice.request,
                );
            }
            self.sends.push(notice);
        }
    }

    /// Frees the notices MPI has delivered.
    fn reap(&mut self) {
        self.sends.retain_mut(|n| {
            let mut done: c_int = 0;
            // SAFETY: `n.request` is a live request of `MPI_Isend` on `n.seq`, which stays
            // alive; `MPI_Test` frees the request when it is done.
            unsafe {
                ffi::MPI_Test(&mut n.request, &mut done, ffi::RSMPI_STATUS_IGNORE);
            }
            done == 0
        });
    }

    /// The error of a collective entry that timed out: the members not heard from in it.
    fn missing_error(&self, what: &str, limit: Duration) -> Error {
        let missing: Vec<usize> = (0..self.members.len())
            .filter(|&m| m != self.rank && self.heard[m] < self.seq)
            .map(|m| self.members[m])
            .collect();
        if missing.is_empty() {
            return Error::Transport(format!(
                "watchdog: worker {} waited {} s in {what}; every member said it had entered, yet it did not complete",
                self.world_rank,
                limit.as_secs_f64()
            ));
        }
        Error::Timeout {
            worker: self.world_rank,
            what: what.to_string(),
            missing,
            seconds: limit.as_secs_f64(),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if mpi::environment::is_finalized() {
            // As in `MpiComm`'s drop: MPI is gone, leak what it might still read.
            std::mem::take(&mut self.sends)
                .into_iter()
                .for_each(std::mem::forget);
            return;
        }
        self.reap();
        for mut n in std::mem::take(&mut self.sends) {
            // SAFETY: `n.request` is live; after `MPI_Request_free` it is not used again and
            // the box is leaked so MPI may still read it.
            unsafe {
                ffi::MPI_Request_free(&mut n.request);
            }
            std::mem::forget(n.seq);
        }
        // SAFETY: `ctl` is dropped exactly once, here, and never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ctl) };
    }
}
