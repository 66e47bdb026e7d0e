//! # peloton-mpi
//!
//! The MPI transport of peloton: every MPI process is one worker (world rank = worker rank),
//! talking through the system's MPI library (Open MPI or MPICH) via rsmpi, the `mpi` crate.
//! The same algorithm code that runs on threads and in the simulator runs here unchanged, and
//! a synchronous run ends with the same parameters, bit for bit, as on the threads transport.
//! Asynchronous runs (`async-lsgd`, `async-easgd`, `async-eamsgd`, `ad-psgd`) are, as on
//! threads, not reproducible bit for bit: who takes which unit of work follows the timing of
//! the processes, so an MPI run and a threads run agree statistically, not bitwise.
//!
//! ```text
//! mpirun -n 4 peloton train --transport mpi ...     (peloton-cli built with --features mpi)
//!
//! Mpi::init ── MPI_Init_thread(MULTIPLE), panic hook → MPI_Abort
//!   └ Mpi::world() ── MpiComm (Communicator) ── MPI_Comm_dup(MPI_COMM_WORLD)
//!        ├ split() ── MPI_Comm_split        node_layout() ── MPI_Comm_split_type(SHARED)
//!        └ start_services() ── MPI_Comm_dup; rank 0: service thread (counters, parameter server)
//! run() ── run_worker on this rank, then every rank's events and results gathered to rank 0
//! ```
//!
//! Everything but this documentation sits behind the crate feature `mpi` (enabled by
//! `peloton-cli/mpi`): building it needs MPI's headers and libclang
//! (`apt-get install libopenmpi-dev openmpi-bin libclang-dev`), and the workspace's default
//! build must not.
//!
//! Design decisions (see [`MpiComm`] for the operations):
//! * **Deterministic reductions.** `MPI_Allreduce` may sum in any order, so sums would differ
//!   from the threads transport in the last bits. Peloton reduces itself: reduce-scatter through
//!   `MPI_Alltoallv`, a rank-order sum of each chunk, all-gather through `MPI_Allgatherv`.
//! * **`Send`.** rsmpi's communicator is `!Send` under Open MPI (its handle is a pointer). MPI is
//!   initialized at `MPI_THREAD_MULTIPLE`, where handles may be used from any thread, and
//!   [`MpiComm`] is used by one thread at a time (`&mut self`), so it is declared `Send` with
//!   that justification.
//! * **Asynchronous services on a thread of rank 0.** The asynchronous algorithms need shared
//!   counters (the global work counter, stop requests, finished workers), a parameter server
//!   (EASGD's center) and any-source polling (AD-PSGD). For asynchronous runs [`run`] starts,
//!   with [`MpiComm::start_services`], a service thread on rank 0 that owns the counters and
//!   the server's vector and serves the other ranks' requests in an `MPI_Improbe` / receive /
//!   reply loop on a communicator of its own (duplicated from the world, so requests never
//!   match the workers' messages); rank 0's own worker sends it requests like every other rank,
//!   so that no rank reaches the counters much faster than the others (which skewed the split
//!   of the work completely on short steps). One thread applies every operation in one total
//!   order, so counters are linearizable and no push is lost. A thread rather than a dedicated
//!   server rank keeps `mpirun -n N` = N workers; RMA atomics were ruled out because Open MPI's
//!   one-sided operations fail over TCP at `MPI_THREAD_MULTIPLE`. The S shards of the server
//!   (the threads transport's layout, `shard_ranges`) all live on rank 0: a push is applied to
//!   all of them at once. The idle service thread sleeps between probes so that it does not
//!   take the core it shares with rank 0's worker. At the end every rank says `BYE` and rank 0
//!   joins the thread; a rank that fails ends the job through `MPI_Abort` instead. Any-source
//!   polling is `MPI_Iprobe(MPI_ANY_SOURCE)` on the workers' communicator; tags are checked
//!   against the library's `MPI_TAG_UB` (AD-PSGD's tags need more than the standard's minimum
//!   32767; Open MPI allows 2³¹ − 1). Timestamps inside AD-PSGD's requests (for its staleness
//!   record) come from each process's own clock, started at its first step, so its staleness
//!   is approximate on MPI.
//! * **Watchdog.** With [`MpiComm::set_watchdog`] (set by [`run`] from the run config's
//!   `watchdog`), every collective and every receive waits in a loop of `MPI_Test` /
//!   `MPI_Improbe` with a deadline instead of a blocking call: collectives are built from
//!   immediate ones (`MPI_Iallgather` for the length check, `MPI_Ialltoallv`,
//!   `MPI_Iallgatherv`, `MPI_Ibcast`, `MPI_Igatherv`, `MPI_Ibarrier`), receives are
//!   `MPI_Improbe` + `MPI_Imrecv`. MPI does not say who is missing from an unfinished
//!   collective, so a rank that has waited a quarter of the limit (at most 1 s) in the entry
//!   of collective #k sends every other member an 8-byte "I am in #k" notice on a
//!   communicator of its own, and waiting ranks that read one answer at once; the rank whose
//!   limit expires returns [`Error::Timeout`](peloton_core::Error::Timeout) naming the
//!   members it has not heard from (a receive names its source). Collectives that finish
//!   sooner send nothing extra. The timeout is returned from the length check, whose buffers
//!   the transport can leak; a transfer that stalls after every member has entered (only a
//!   member dying inside MPI does that) cannot hand the caller's buffer back, since MPI cannot
//!   cancel a collective, and ends the job at once. The services' round trips to rank 0,
//!   rank 0's wait for every `BYE` (naming the ranks whose `BYE` has not come) and the final
//!   gathering in [`run`] wait under the same limit. Creating a communicator (`MPI_Comm_dup`, `MPI_Comm_split`) blocks, but a
//!   split runs only after an all-gather under the watchdog has seen every member arrive.
//! * **Failures.** A panic on any rank prints the rank and the message and calls `MPI_Abort`, so
//!   the job ends in well under a second instead of hanging in the next collective; so does
//!   [`Communicator::abort`](peloton_core::transport::Communicator::abort). Errors that every
//!   rank returns together (a disagreement before training) need no abort: see
//!   [`is_shared_error`].

#[cfg(feature = "mpi")]
pub mod bench;
#[cfg(feature = "mpi")]
mod comm;
#[cfg(feature = "mpi")]
mod run;
#[cfg(feature = "mpi")]
mod services;
#[cfg(feature = "mpi")]
mod watchdog;

#[cfg(feature = "mpi")]
pub use comm::{MpiComm, MAX_TAG, SHARED_ERROR_MARK};
#[cfg(feature = "mpi")]
pub use run::{events_file, load_events, run, NodeLayout};

#[cfg(feature = "mpi")]
pub use imp::*;

#[cfg(feature = "mpi")]
mod imp {
    use std::io::Write;

    use mpi::environment::{Threading, Universe};
    use mpi::ffi;
    use mpi::traits::*;
    use peloton_core::{Error, Result};

    use crate::MpiComm;

    /// An initialized MPI library. Dropping it finalizes MPI: drop every [`MpiComm`] first.
    pub struct Mpi {
        universe: Universe,
        world_rank: usize,
        world_size: usize,
    }

    impl Mpi {
        /// Initializes MPI at `MPI_THREAD_MULTIPLE` and installs the panic hook that aborts the
        /// whole job. Fails when MPI was already initialized or cannot run threads freely.
        pub fn init() -> Result<Mpi> {
            let (universe, level) = mpi::initialize_with_threading(Threading::Multiple)
                .ok_or_else(|| Error::Transport("MPI is already initialized".into()))?;
            let world = universe.world();
            let world_rank = world.rank() as usize;
            let world_size = world.size() as usize;
            if level != Threading::Multiple {
                return Err(Error::Transport(format!(
                    "the MPI library provides thread level {level:?}; peloton needs MPI_THREAD_MULTIPLE"
                )));
            }
            install_panic_hook(world_rank);
            Ok(Mpi {
                universe,
                world_rank,
                world_size,
            })
        }

        /// [`Mpi::init`] for a run that starts the asynchronous services
        /// ([`MpiComm::start_services`]). Rank 0's service thread shares the CPU with rank 0's
        /// worker, and Open MPI's blocking calls spin without yielding unless the job is
        /// oversubscribed: a worker waiting in a collective then starves the thread that the
        /// other ranks wait for (measured here: a 2-rank `async-lsgd` run trained for 5.7 s
        /// instead of 0.30 s).
        /// Unless the user chose otherwise, this sets `OMPI_MCA_mpi_yield_when_idle=1` in the
        /// process environment, which Open MPI reads during initialization (MPICH ignores it),
        /// so waiting ranks yield the CPU. Call it before any other thread exists: the
        /// environment is process-wide.
        pub fn init_for_services() -> Result<Mpi> {
            const YIELD: &str = "OMPI_MCA_mpi_yield_when_idle";
            if std::env::var_os(YIELD).is_none() {
                std::env::set_var(YIELD, "1");
            }
            Self::init()
        }

        pub fn world_rank(&self) -> usize {
            self.world_rank
        }

        pub fn world_size(&self) -> usize {
            self.world_size
        }

        /// This host's name as MPI sees it.
        pub fn processor_name(&self) -> String {
            mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
        }

        /// A communicator over every process (a duplicate of `MPI_COMM_WORLD`, so peloton's
        /// traffic never matches anybody else's messages).
        pub fn world(&self) -> MpiComm {
            MpiComm::new(
                self.universe.world().duplicate(),
                self.world_rank,
                (0..self.world_size).collect(),
            )
        }
    }

    /// Prints `error: rank R ...: reason` and ends every process of the job through
    /// `MPI_Abort` (exit code `code`).
    pub fn abort_job(world_rank: usize, reason: &str, code: i32) -> ! {
        let _ = writeln!(
            std::io::stderr(),
            "error: rank {world_rank} aborts the MPI job: {reason}"
        );
        let _ = std::io::stdout().flush();
        if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
            // SAFETY: MPI is initialized and not finalized (checked above), MPI_COMM_WORLD is a
            // valid communicator, and MPI_Abort may be called from any thread at
            // MPI_THREAD_MULTIPLE.
            unsafe {
                ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
            }
        }
        std::process::exit(code)
    }

    /// A panic on one rank would otherwise unwind into `MPI_Finalize` on that rank alone and
    /// leave every other rank waiting forever in its next collective.
    fn install_panic_hook(world_rank: usize) {
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            abort_job(world_rank, &format!("panicked{place}: {message}"), 101);
        }));
    }

    /// True for errors that every rank returns at the same point (failed agreement checks,
    /// mismatched collective lengths): the ranks can stop cleanly, without `MPI_Abort`.
    pub fn is_shared_error(e: &Error) -> bool {
        match e {
            Error::Transport(m) => {
                m.contains(crate::SHARED_ERROR_MARK) || m.starts_with("workers disagree on")
            }
            _ => false,
        }
    }
}
