//! Asynchronous Leader SGD (Teng et al. 2019, Algorithm 1), ALGORITHMS.md §1.2–1.3.
//!
//! Every worker takes SGD steps at its own pace; communication is triggered by the *total*
//! work of the run, not by any worker's own count: after every N·τ local steps of the whole
//! run (however they are split among workers) comes a leader round, and every
//! (τ_G/τ)-th round is also a global round (multi-leader). Fast workers therefore do more local
//! steps between two rounds than slow ones. The runner's global work counter hands out the
//! steps and the round tickets ([`super::asynchronous`]), exactly like the reference code's
//! global server; the round itself is the synchronous LSGD round (all-gather of the leader
//! metrics, broadcast of the leader's parameters, pulls with λ and λ_G), so workers never
//! wait for each other except inside a round.
//!
//! The leader metric is each worker's running mean of its last K mini-batch losses at the
//! moment of the round. Keys are those of `lsgd` (`tau`, `lambda`, `prox`, `group_size`,
//! `tau_global`, `lambda_global`, `prox_global`); the proximal pull, if on, follows every
//! local step as in the synchronous algorithm.

use serde::{Deserialize, Serialize};

use super::lsgd::{Lsgd, LsgdConfig};
use super::{Algorithm, AsyncSchedule, StepContext};
use crate::checkpoint::StateDict;
use crate::transport::Communicator;
use crate::Result;

/// `name = "async-lsgd"`: the keys of `lsgd`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AsyncLsgdConfig {
    pub lsgd: LsgdConfig,
}

impl AsyncLsgdConfig {
    pub fn validate(&self, workers: usize) -> Result<()> {
        self.lsgd.validate(workers)
    }

    pub fn init(&self, workers: usize, len: usize) -> AsyncLsgd {
        AsyncLsgd {
            inner: self.lsgd.init(workers, len),
        }
    }
}

/// One worker's asynchronous LSGD state: the synchronous algorithm's rounds, run on tickets.
pub struct AsyncLsgd {
    inner: Lsgd,
}

impl Algorithm for AsyncLsgd {
    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        self.inner.setup(comm, params)
    }

    fn schedule(&self) -> Option<AsyncSchedule> {
        Some(AsyncSchedule {
            round_tau: Some(self.inner.tau()),
        })
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        // Only the proximal pulls: rounds come from the work counter, not from this count.
        self.inner.proximal_pulls(ctx.params);
        Ok(())
    }

    fn round(
        &mut self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        index: u64,
        metric: f64,
    ) -> Result<()> {
        let global = (index + 1).is_multiple_of(self.inner.global_every());
        self.inner.leader_round(comm, params, metric, global)
    }

    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        self.inner.save_state(state)
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.inner.load_state(state)
    }

    fn leader(&self) -> Option<usize> {
        self.inner.leader()
    }

    fn leader_changes(&self) -> Option<u64> {
        self.inner.leader_changes()
    }
}
