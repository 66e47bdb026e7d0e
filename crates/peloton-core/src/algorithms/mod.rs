//! Distributed algorithms, one file each, built from the blocks in [`leader`].
//!
//! An algorithm is a serde config ([`AlgorithmConfig`], selected by `name`) whose
//! [`AlgorithmConfig::init`] builds one worker's state implementing [`Algorithm`]. The runner
//! calls its hooks around every local step:
//!
//! ```text
//! algorithm.before_compute(x)                // combine-while-computing sends start here
//! loss, grad = learner.loss_and_grad(x)      // mini-batch at the current parameters
//! algorithm.before_step(ctx)                 // gradient ready: all-reduce SGD averages it here
//! optimizer.step(x, grad, lr)                // the local optimizer (SGD / momentum / Nesterov)
//! algorithm.after_step(ctx)                  // parameters updated: pulls, averaging, gossip
//! ...
//! algorithm.drain(x)                         // before every evaluation and at the end
//! ```
//!
//! The decentralized family (D-PSGD, SGP, MATCHA, AL-DSGD) takes its communication pattern
//! from a peloton-topology schedule and mixes through the shared [`gossip`] block.
//!
//! Algorithms talk only through `&mut dyn Communicator`, so one implementation runs on every
//! transport.

pub mod adpsgd;
pub mod aldsgd;
pub mod all_reduce;
pub mod async_easgd;
pub mod async_lsgd;
pub mod asynchronous;
pub mod dpsgd;
pub mod easgd;
pub mod gossip;
pub mod independent;
pub mod layered;
pub mod leader;
pub mod local_sgd;
pub mod lsgd;
pub mod matcha;
pub mod sgp;
pub mod slowmo;

use serde::{Deserialize, Serialize};

use crate::checkpoint::StateDict;
use crate::optim::OptimizerConfig;
use crate::transport::Communicator;
use crate::{Error, Result};

pub use adpsgd::AdPsgdConfig;
pub use aldsgd::AlDsgdConfig;
pub use all_reduce::AllReduceConfig;
pub use async_easgd::AsyncEasgdConfig;
pub use async_lsgd::AsyncLsgdConfig;
pub use dpsgd::DpsgdConfig;
pub use easgd::EasgdConfig;
pub use gossip::LinkStats;
pub use independent::IndependentConfig;
pub use layered::LayeredSgdConfig;
pub use local_sgd::LocalSgdConfig;
pub use lsgd::LsgdConfig;
pub use matcha::MatchaConfig;
pub use sgp::SgpConfig;
pub use slowmo::SlowMoConfig;

/// What an algorithm sees at one local step.
pub struct StepContext<'a> {
    pub comm: &'a mut dyn Communicator,
    pub params: &'a mut [f32],
    /// The mini-batch gradient of this step (after `before_step`, what the optimizer used).
    pub grad: &'a mut [f32],
    /// Index of this local step, counted from 0.
    pub step: u64,
    /// This step's mini-batch loss, at the parameters before the step.
    pub loss: f64,
    /// The leader metric: mean of the last K mini-batch losses, this one included.
    pub metric: f64,
    /// The learning rate of this step.
    pub lr: f32,
}

/// One worker's state of a distributed algorithm. Every hook is collective where the
/// algorithm communicates: all workers call it at the same step.
pub trait Algorithm: Send {
    /// Called once before the first step, after the parameters are initialized (and
    /// broadcast from worker 0 when the run asks for it).
    fn setup(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
    /// The parameters are about to be used for this step's gradient (communication that
    /// overlaps the gradient computation starts here).
    fn before_compute(
        &mut self,
        _comm: &mut dyn Communicator,
        _params: &mut [f32],
        _step: u64,
    ) -> Result<()> {
        Ok(())
    }
    /// The gradient is ready; the local optimizer has not stepped yet.
    fn before_step(&mut self, _ctx: &mut StepContext<'_>) -> Result<()> {
        Ok(())
    }
    /// The local optimizer has stepped.
    fn after_step(&mut self, _ctx: &mut StepContext<'_>) -> Result<()> {
        Ok(())
    }
    /// Completes communication still in flight so that `params` holds all of this worker's
    /// mass (overlap SGP). Collective; called before every evaluation and at the end.
    fn drain(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
    /// Per-link traffic, for algorithms that talk to individual peers.
    fn links(&mut self) -> Option<&mut gossip::LinkStats> {
        None
    }
    /// The world rank of the current (global) leader, for leader-based algorithms.
    fn leader(&self) -> Option<usize> {
        None
    }
    /// The center variable, for algorithms that keep one (EASGD).
    fn center(&self) -> Option<&[f32]> {
        None
    }
    /// How many times the (global) leader changed so far, for leader-based algorithms.
    fn leader_changes(&self) -> Option<u64> {
        None
    }

    // ---- Checkpoints (see [`crate::checkpoint`]) -------------------------------------------

    /// Writes everything this worker needs to continue exactly from here. Called at a step
    /// boundary after [`Algorithm::drain`], so nothing is in flight. Scratch buffers that every
    /// step overwrites are not state. An algorithm that keeps the default cannot be
    /// checkpointed, and says so.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Err(Error::Checkpoint(
            "this algorithm cannot be checkpointed".into(),
        ))
    }
    /// Restores what [`Algorithm::save_state`] wrote, after [`Algorithm::setup`] ran again.
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Err(Error::Checkpoint(
            "this algorithm cannot be checkpointed".into(),
        ))
    }

    // ---- Asynchronous algorithms (see [`asynchronous`]) -----------------------------------

    /// `Some` for asynchronous algorithms: the runner hands out work through a global work
    /// counter instead of a per-worker step count, and never synchronizes the workers itself.
    fn schedule(&self) -> Option<AsyncSchedule> {
        None
    }
    /// Collective round `index` of an asynchronous algorithm with rounds; `metric` is this
    /// worker's leader metric. Every worker takes part in every round.
    fn round(
        &mut self,
        _comm: &mut dyn Communicator,
        _params: &mut [f32],
        _index: u64,
        _metric: f64,
    ) -> Result<()> {
        Ok(())
    }
    /// Called once after the worker's last step, before it leaves (asynchronous algorithms:
    /// a passive AD-PSGD worker keeps answering its peers until every worker is done).
    fn finish(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
    /// Staleness of the models pulled or averaged since the previous call, in this worker's
    /// steps: (mean, max); `None` when nothing was received.
    fn staleness(&mut self) -> Option<(f64, u64)> {
        None
    }
    /// Whether this worker must keep answering its peers while it waits at a checkpoint cut
    /// for the others (a passive AD-PSGD worker: an active peer still in its step waits for
    /// the reply). Such a worker's [`Algorithm::serve_at_cut`] is called until every other
    /// worker has reached the cut.
    fn serves_at_cut(&self, _rank: usize) -> bool {
        false
    }
    /// Answers what peers sent so far (see [`Algorithm::serves_at_cut`]).
    fn serve_at_cut(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
}

/// How the runner schedules an asynchronous algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncSchedule {
    /// τ of algorithms with collective rounds: a round after every N·τ steps of the whole run.
    pub round_tau: Option<u64>,
}

/// Every algorithm, selected by `name` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum AlgorithmConfig {
    /// No communication: N independent SGD runs (a baseline).
    Independent(IndependentConfig),
    /// Synchronous data-parallel SGD: gradients averaged every step.
    AllReduce(AllReduceConfig),
    /// Local SGD (average every `period` steps) and post-local SGD (`warmup_steps`).
    LocalSgd(LocalSgdConfig),
    /// Synchronous elastic averaging SGD.
    Easgd(EasgdConfig),
    /// Synchronous elastic averaging with Nesterov momentum as the local optimizer.
    Eamsgd(EasgdConfig),
    /// Leader SGD, single- and multi-leader.
    Lsgd(LsgdConfig),
    /// Decentralized parallel SGD over a doubly-stochastic gossip schedule.
    #[serde(rename = "d-psgd")]
    Dpsgd(DpsgdConfig),
    /// Stochastic gradient push (and overlap SGP).
    Sgp(SgpConfig),
    /// Decentralized SGD over randomly activated matchings under a communication budget.
    Matcha(MatchaConfig),
    /// Adjacent-leader decentralized SGD on dynamic graphs.
    #[serde(rename = "al-dsgd")]
    AlDsgd(AlDsgdConfig),
    /// Two-layer (intra-node, inter-node) gradient averaging.
    LayeredSgd(LayeredSgdConfig),
    /// Slow momentum over local SGD or SGP.
    #[serde(rename = "slowmo")]
    SlowMo(SlowMoConfig),
    /// Asynchronous Leader SGD: leader rounds every N·τ steps of total work.
    AsyncLsgd(AsyncLsgdConfig),
    /// Asynchronous EASGD with a (sharded) parameter server holding the center.
    AsyncEasgd(AsyncEasgdConfig),
    /// Asynchronous EASGD with a Nesterov-momentum local optimizer.
    AsyncEamsgd(AsyncEasgdConfig),
    /// Asynchronous decentralized SGD: atomic pairwise averaging with a random neighbour.
    #[serde(rename = "ad-psgd")]
    AdPsgd(AdPsgdConfig),
}

impl Default for AlgorithmConfig {
    fn default() -> Self {
        AlgorithmConfig::Lsgd(LsgdConfig::default())
    }
}

impl AlgorithmConfig {
    /// The `name` of this algorithm in config files.
    pub fn name(&self) -> &'static str {
        match self {
            AlgorithmConfig::Independent(_) => "independent",
            AlgorithmConfig::AllReduce(_) => "all-reduce",
            AlgorithmConfig::LocalSgd(_) => "local-sgd",
            AlgorithmConfig::Easgd(_) => "easgd",
            AlgorithmConfig::Eamsgd(_) => "eamsgd",
            AlgorithmConfig::Lsgd(_) => "lsgd",
            AlgorithmConfig::Dpsgd(_) => "d-psgd",
            AlgorithmConfig::Sgp(_) => "sgp",
            AlgorithmConfig::Matcha(_) => "matcha",
            AlgorithmConfig::AlDsgd(_) => "al-dsgd",
            AlgorithmConfig::LayeredSgd(_) => "layered-sgd",
            AlgorithmConfig::SlowMo(_) => "slowmo",
            AlgorithmConfig::AsyncLsgd(_) => "async-lsgd",
            AlgorithmConfig::AsyncEasgd(_) => "async-easgd",
            AlgorithmConfig::AsyncEamsgd(_) => "async-eamsgd",
            AlgorithmConfig::AdPsgd(_) => "ad-psgd",
        }
    }

    /// True for asynchronous algorithms (no per-step synchronization; see [`asynchronous`]).
    pub fn is_async(&self) -> bool {
        matches!(
            self,
            AlgorithmConfig::AsyncLsgd(_)
                | AlgorithmConfig::AsyncEasgd(_)
                | AlgorithmConfig::AsyncEamsgd(_)
                | AlgorithmConfig::AdPsgd(_)
        )
    }

    /// Every algorithm name with a one-line description and its keys, for `peloton list`.
    pub fn catalog() -> &'static [(&'static str, &'static str, &'static str)] {
        &[
            ("independent", "no communication: N independent SGD runs", "(none)"),
            ("all-reduce", "gradients averaged over all workers every step", "(none)"),
            ("local-sgd", "local steps, parameters averaged every `period` steps; post-local SGD with `warmup_steps`", "period, warmup_steps, group_size"),
            ("easgd", "synchronous elastic averaging toward a replicated center", "tau, alpha | beta"),
            ("eamsgd", "EASGD with a Nesterov-momentum local optimizer", "tau, alpha | beta"),
            ("lsgd", "Leader SGD: pull toward the best worker every tau steps; multi-leader with groups", "tau, lambda, prox, group_size, tau_global, lambda_global, prox_global"),
            ("d-psgd", "decentralized SGD: mix with neighbours through a doubly-stochastic schedule", "schedule, variant"),
            ("sgp", "stochastic gradient push on a directed time-varying graph; overlap SGP", "schedule, overlap, staleness, eager, debias"),
            ("matcha", "decentralized SGD over random matchings under a communication budget", "graph, budget, alpha"),
            ("al-dsgd", "adjacent-leader decentralized SGD on dynamic (rotated) graphs", "schedule, c1, c2, p1, p2, period"),
            ("layered-sgd", "gradients reduced inside nodes, all-reduced among node communicators", "group_size"),
            ("slowmo", "slow momentum every `frequency` steps over local SGD or SGP", "base, local_period, schedule, frequency, slow_lr, slow_momentum, sharded"),
            ("async-lsgd", "asynchronous Leader SGD: leader rounds every N·tau steps of total work, fast workers step more", "tau, lambda, group_size, tau_global, lambda_global"),
            ("async-easgd", "asynchronous EASGD: every tau own steps pull the center from a sharded parameter server, push the elastic difference", "tau, alpha | beta, servers"),
            ("async-eamsgd", "asynchronous EASGD with a Nesterov-momentum local optimizer", "tau, alpha | beta, servers"),
            ("ad-psgd", "asynchronous decentralized SGD: each step, average atomically with a random neighbour of a bipartite graph", "graph"),
        ]
    }

    /// Checks the config against the run shape; every error names the offending key.
    /// `seed` is the run seed (random gossip activations are drawn from it).
    pub fn validate(&self, workers: usize, seed: u64, optimizer: &OptimizerConfig) -> Result<()> {
        match self {
            AlgorithmConfig::Independent(_) | AlgorithmConfig::AllReduce(_) => Ok(()),
            AlgorithmConfig::LocalSgd(c) => c.validate(workers),
            AlgorithmConfig::Easgd(c) => c.validate(workers),
            AlgorithmConfig::Eamsgd(c) => {
                crate::ensure_config!(
                    optimizer.momentum > 0.0 && optimizer.nesterov,
                    "eamsgd needs a Nesterov-momentum local optimizer: set optimizer.momentum > 0 (the paper uses 0.99) and optimizer.nesterov = true"
                );
                c.validate(workers)
            }
            AlgorithmConfig::Lsgd(c) => c.validate(workers),
            AlgorithmConfig::Dpsgd(c) => c.validate(workers, seed),
            AlgorithmConfig::Sgp(c) => c.validate(workers, seed),
            AlgorithmConfig::Matcha(c) => c.validate(workers, seed),
            AlgorithmConfig::AlDsgd(c) => c.validate(workers, seed),
            AlgorithmConfig::LayeredSgd(c) => c.validate(workers),
            AlgorithmConfig::SlowMo(c) => c.validate(workers, seed),
            AlgorithmConfig::AsyncLsgd(c) => c.validate(workers),
            AlgorithmConfig::AsyncEasgd(c) => c.validate(workers),
            AlgorithmConfig::AsyncEamsgd(c) => {
                crate::ensure_config!(
                    optimizer.momentum > 0.0 && optimizer.nesterov,
                    "async-eamsgd needs a Nesterov-momentum local optimizer: set optimizer.momentum > 0 (the paper uses 0.99) and optimizer.nesterov = true"
                );
                c.validate(workers)
            }
            AlgorithmConfig::AdPsgd(c) => c.validate(workers),
        }
    }

    /// True when the algorithm keeps a center variable (evaluation model "center").
    pub fn has_center(&self) -> bool {
        matches!(
            self,
            AlgorithmConfig::Easgd(_)
                | AlgorithmConfig::Eamsgd(_)
                | AlgorithmConfig::AsyncEasgd(_)
                | AlgorithmConfig::AsyncEamsgd(_)
        )
    }

    /// Builds one worker's algorithm state for a world of `workers` and `len` parameters;
    /// `seed` is the run seed, the same on every worker.
    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<Box<dyn Algorithm>> {
        Ok(match self {
            AlgorithmConfig::Independent(_) => Box::new(independent::Independent),
            AlgorithmConfig::AllReduce(_) => Box::new(all_reduce::AllReduceSgd),
            AlgorithmConfig::LocalSgd(c) => Box::new(c.init()),
            AlgorithmConfig::Easgd(c) | AlgorithmConfig::Eamsgd(c) => {
                Box::new(c.init(workers, len))
            }
            AlgorithmConfig::Lsgd(c) => Box::new(c.init(workers, len)),
            AlgorithmConfig::Dpsgd(c) => Box::new(c.init(workers, len, seed)?),
            AlgorithmConfig::Sgp(c) => Box::new(c.init(workers, len, seed)?),
            AlgorithmConfig::Matcha(c) => Box::new(c.init(workers, len, seed)?),
            AlgorithmConfig::AlDsgd(c) => Box::new(c.init(workers, len, seed)?),
            AlgorithmConfig::LayeredSgd(c) => Box::new(c.init(workers)),
            AlgorithmConfig::SlowMo(c) => Box::new(c.init(workers, len, seed)?),
            AlgorithmConfig::AsyncLsgd(c) => Box::new(c.init(workers, len)),
            AlgorithmConfig::AsyncEasgd(c) | AlgorithmConfig::AsyncEamsgd(c) => {
                Box::new(c.init(workers, len))
            }
            AlgorithmConfig::AdPsgd(c) => Box::new(c.init(workers, len, seed)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lists_every_variant() {
        let names: Vec<&str> = AlgorithmConfig::catalog().iter().map(|c| c.0).collect();
        for cfg in [
            AlgorithmConfig::Independent(Default::default()),
            AlgorithmConfig::AllReduce(Default::default()),
            AlgorithmConfig::LocalSgd(Default::default()),
            AlgorithmConfig::Easgd(Default::default()),
            AlgorithmConfig::Eamsgd(Default::default()),
            AlgorithmConfig::Lsgd(Default::default()),
            AlgorithmConfig::Dpsgd(Default::default()),
            AlgorithmConfig::Sgp(Default::default()),
            AlgorithmConfig::Matcha(Default::default()),
            AlgorithmConfig::AlDsgd(Default::default()),
            AlgorithmConfig::LayeredSgd(Default::default()),
            AlgorithmConfig::SlowMo(Default::default()),
            AlgorithmConfig::AsyncLsgd(Default::default()),
            AlgorithmConfig::AsyncEasgd(Default::default()),
            AlgorithmConfig::AsyncEamsgd(Default::default()),
            AlgorithmConfig::AdPsgd(Default::default()),
        ] {
            assert!(
                names.contains(&cfg.name()),
                "{} missing from the catalog",
                cfg.name()
            );
        }
    }
}
