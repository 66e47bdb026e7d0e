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
use super::{
    Algorithm, AlgorithmSpec, AsyncAlgorithm, Asynchronous, RunShape, StepContext, Touches, Wrapper,
};
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

impl AlgorithmSpec for AsyncLsgdConfig {
    const NAME: &'static str = "async-lsgd";
    const SUMMARY: &'static str = "asynchronous Leader SGD: leader rounds every N·tau steps of total work, fast workers step more";
    type Timing = Asynchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn AsyncAlgorithm>> {
        Ok(Box::new(self.init(run.workers, len)))
    }

    fn variants() -> Vec<Self> {
        vec![
            AsyncLsgdConfig {
                lsgd: LsgdConfig {
                    tau: 3,
                    ..Default::default()
                },
            },
            AsyncLsgdConfig {
                lsgd: LsgdConfig {
                    group_size: Some(2),
                    tau_global: Some(8),
                    ..Default::default()
                },
            },
        ]
    }
}

/// One worker's asynchronous LSGD state: the synchronous algorithm's rounds, run on tickets.
pub struct AsyncLsgd {
    inner: Lsgd,
}

/// LSGD's setup, checkpoint state and observations (leader, leader changes) are the inner
/// algorithm's; only the step differs.
impl Wrapper for AsyncLsgd {
    fn inner(&mut self) -> &mut dyn Algorithm {
        &mut self.inner
    }

    fn inner_ref(&self) -> &dyn Algorithm {
        &self.inner
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        // Only the proximal pulls: rounds come from the work counter, not from this count.
        self.inner.proximal_pulls(ctx.params);
        Ok(())
    }

    /// The proximal pulls; the rounds are the runner's own calls.
    fn touches(&self, _step: u64) -> Touches {
        Touches::after_step_params(self.inner.pulls_every_step())
    }
}

impl AsyncAlgorithm for AsyncLsgd {
    fn round_tau(&self) -> Option<u64> {
        Some(self.inner.tau())
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
}
