//! The `reset-to-leader` divergence policy: the per-step check that puts a diverged worker
//! back on the current best worker's parameters, and the report of those resets.

use super::traffic::DiagnosticTraffic;
use super::Event;
use crate::algorithms::leader::elect;
use crate::learner::Access;
use crate::transport::{Communicator, CommunicatorExt};
use crate::{Error, Result};

/// The `reset-to-leader` divergence policy: every step, workers learn who diverged (a NaN/∞
/// loss or gradient) and who leads among the others; the diverged ones take the leader's
/// parameters. One all-gather of one number per step; a broadcast only when someone diverged.
pub(super) struct DivergenceGuard {
    diag: DiagnosticTraffic,
    /// Resets of this worker not yet reported: (step, the diverged loss, the leader it took).
    resets: Vec<(u64, f64, usize)>,
}

impl DivergenceGuard {
    pub(super) fn new() -> Self {
        Self {
            diag: DiagnosticTraffic::default(),
            resets: Vec::new(),
        }
    }

    /// Collective. Returns whether this worker diverged (and now holds the leader's
    /// parameters). `finite` says whether this step's loss and gradient are finite, `metric` is
    /// the leader metric; `to_host` brings the parameters to `params` from a model that lives
    /// elsewhere (a GPU), called only by the leader and the diverged workers.
    pub(super) fn check(
        &mut self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        to_host: &mut dyn FnMut(Access) -> Result<()>,
        (finite, metric): (bool, f64),
        step: u64,
        loss: f64,
    ) -> Result<bool> {
        // +∞ marks "diverged at this step"; a NaN metric (a recent reset) is just ineligible.
        let mark = if finite { metric } else { f64::INFINITY };
        let marks = self.diag.run(comm, |c| c.gather_scalar(mark))?;
        let Some(first) = marks.iter().position(|&m| m == f64::INFINITY) else {
            return Ok(false);
        };
        let Some(leader) = elect(&marks, 0..marks.len()) else {
            // Every worker diverged (or none is eligible): there is nobody to reset to.
            return Err(Error::Diverged {
                worker: first,
                step,
                loss: if comm.rank() == first { loss } else { f64::NAN },
            });
        };
        if comm.rank() == leader {
            to_host(Access::Read)?;
        } else if !finite {
            to_host(Access::Write)?;
        }
        let mut staging = params.to_vec();
        self.diag.run(comm, |c| c.broadcast(&mut staging, leader))?;
        if finite {
            return Ok(false);
        }
        params.copy_from_slice(&staging);
        self.resets.push((step, loss, leader));
        Ok(true)
    }

    /// After a step: adds the guard's traffic to the worker's diagnostics and reports the
    /// resets of this worker (`rank`) made since, each at its local step counted from 1.
    pub(super) fn report(
        &mut self,
        diag: &mut DiagnosticTraffic,
        rank: usize,
        emit: &(dyn Fn(Event) + Sync),
    ) {
        diag.absorb(&mut self.diag);
        for (at, bad, leader) in self.resets.drain(..) {
            emit(Event::Diverged {
                step: at + 1,
                worker: rank,
                loss: bad,
                reset_to: leader,
            });
        }
    }
}
