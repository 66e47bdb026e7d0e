//! Traffic bookkeeping shared by both loops: what diagnostics spent (kept out of the
//! algorithm's byte counts) and the counters that survive a resume.

use crate::transport::{CommStats, Communicator};
use crate::Result;

/// Traffic spent on diagnostics (agreement checks, consensus distance, evaluation models,
/// budget checks), kept out of the algorithm's byte counts.
#[derive(Default)]
pub(super) struct DiagnosticTraffic(pub CommStats);

impl DiagnosticTraffic {
    /// Adds (and clears) traffic counted elsewhere.
    pub(super) fn absorb(&mut self, other: &mut DiagnosticTraffic) {
        self.0.bytes_sent += other.0.bytes_sent;
        self.0.bytes_received += other.0.bytes_received;
        self.0.operations += other.0.operations;
        other.0 = CommStats::default();
    }

    pub(super) fn run<T>(
        &mut self,
        comm: &mut dyn Communicator,
        f: impl FnOnce(&mut dyn Communicator) -> Result<T>,
    ) -> Result<T> {
        let before = comm.stats();
        comm.set_diagnostic(true);
        let out = f(comm);
        comm.set_diagnostic(false);
        let spent = comm.stats().since(&before);
        self.0.bytes_sent += spent.bytes_sent;
        self.0.bytes_received += spent.bytes_received;
        self.0.operations += spent.operations;
        out
    }
}

/// Traffic counters that survive a resume: the transport's own counters restart at zero in
/// a new process, so the runner carries the checkpoint's totals as an offset.
#[derive(Default)]
pub(super) struct Traffic {
    offset: CommStats,
}

impl Traffic {
    /// `now` is the fresh transport's counters right after the checkpoint was restored,
    /// `saved` the totals the checkpoint recorded.
    pub(super) fn resume(&mut self, now: CommStats, saved: CommStats) {
        // Wrapping: offset + later counters is exact modulo 2⁶⁴ even if the fresh transport
        // already counted more than the checkpoint did.
        self.offset = CommStats {
            bytes_sent: saved.bytes_sent.wrapping_sub(now.bytes_sent),
            bytes_received: saved.bytes_received.wrapping_sub(now.bytes_received),
            operations: saved.operations.wrapping_sub(now.operations),
        };
    }

    /// Everything this worker sent and received since the run began.
    pub(super) fn total(&self, now: CommStats) -> CommStats {
        CommStats {
            bytes_sent: now.bytes_sent.wrapping_add(self.offset.bytes_sent),
            bytes_received: now.bytes_received.wrapping_add(self.offset.bytes_received),
            operations: now.operations.wrapping_add(self.offset.operations),
        }
    }

    /// The algorithm's own traffic: diagnostics excluded.
    pub(super) fn algorithm(&self, now: CommStats, diag: &DiagnosticTraffic) -> CommStats {
        self.total(now).since(&diag.0)
    }
}
