//! The runner: builds every worker's learner, algorithm and optimizer, drives the local steps,
//! evaluates on a schedule, and reports metrics.
//!
//! [`run_worker`] is one worker's whole run against any
//! [`Communicator`](crate::transport::Communicator); [`run_threads`]
//! spawns N workers on the threads transport and delivers their events to the caller in a
//! deterministic order (by step, then evaluations, then worker records by rank), so that the
//! same config and seed produce the same metrics file, wall-clock fields aside.
//!
//! This file holds the run's configuration ([`RunConfig`], [`EvalModel`],
//! [`DivergencePolicy`]); the rest is split by job:
//! * `records`: what a run reports (events, records, outcomes) and what they take from the
//!   algorithm's observations;
//! * `worker`: one worker's preparation and local step, shared by both loops;
//! * `synchronous` and `asynchronous`: the two training loops;
//! * `divergence`: the `reset-to-leader` guard;
//! * `checkpointing`: what a worker saves at a checkpoint and restores on resume;
//! * `launch` and `ordering`: whole runs on in-process transports, and the deterministic
//!   order of their events.

mod asynchronous;
mod checkpointing;
mod divergence;
mod launch;
mod ordering;
mod records;
mod synchronous;
mod traffic;
mod worker;

pub use asynchronous::final_evaluations;
pub use launch::{
    root_cause, run_threads, run_threads_with_faults, run_with, run_worker, WorkerFn,
};
pub use records::{
    EvalRecord, Event, LinkTraffic, RunReport, WorkerOutcome, WorkerRecord, RECORD_PARAMS_MAX,
};

use serde::{Deserialize, Serialize};

use crate::algorithms::AlgorithmConfig;
use crate::checkpoint::CheckpointConfig;
use crate::ensure_config;
use crate::optim::OptimizerConfig;
use crate::Result;

/// Which parameters an evaluation looks at (ALGORITHMS.md §9.2: make it explicit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalModel {
    /// The average of all workers' parameters (LSGD's and local SGD's "center").
    #[default]
    Average,
    /// The worker with the best leader metric at evaluation time.
    Leader,
    /// The algorithm's center variable (EASGD).
    Center,
    /// Every worker's own parameters (decentralized methods).
    Workers,
}

impl EvalModel {
    pub fn name(&self) -> &'static str {
        match self {
            EvalModel::Average => "average",
            EvalModel::Leader => "leader",
            EvalModel::Center => "center",
            EvalModel::Workers => "worker",
        }
    }
}

/// Everything the runner needs besides the learners.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub workers: usize,
    pub seed: u64,
    /// Local steps per worker.
    pub steps: Option<u64>,
    /// Passes over each worker's shard (needs a finite dataset).
    pub epochs: Option<f64>,
    /// Wall-clock budget in seconds (checked at every log point).
    pub time_budget: Option<f64>,
    /// Worker records every this many steps.
    pub log_every: u64,
    /// Evaluation every this many steps (0 = only at the end).
    pub eval_every: u64,
    pub eval_model: EvalModel,
    /// K, the number of recent mini-batch losses in the leader metric.
    pub leader_window: usize,
    /// Start every worker from worker 0's initial parameters.
    pub sync_init: bool,
    /// Compute each worker's distance to the average at log points (one extra all-reduce).
    pub consensus: bool,
    pub optimizer: OptimizerConfig,
    pub algorithm: AlgorithmConfig,
    /// Checkpoints every `every` steps, and where to resume from (threads transport,
    /// synchronous algorithms).
    pub checkpoint: Option<CheckpointConfig>,
    /// Seconds a worker waits for the others (in a collective or for a message) before the
    /// run fails with an error naming the missing workers (threads transport; `None`: wait
    /// forever).
    pub watchdog: Option<f64>,
    /// What a worker whose loss or gradient becomes NaN/∞ does.
    pub on_divergence: DivergencePolicy,
    /// What the algorithm's messages are compressed with (`[compression]`; default none).
    pub compression: peloton_compression::CompressionConfig,
}

/// What happens when a worker's mini-batch loss or gradient is NaN or infinite. Either way a
/// diverged worker is never elected leader (its leader metric is NaN for K steps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DivergencePolicy {
    /// The run stops with an error naming the worker, the step and the loss.
    #[default]
    Stop,
    /// The worker takes the parameters of the current best worker (the lowest finite leader
    /// metric), clears its momentum, and redoes the step; the run goes on and the metrics
    /// record the reset. Costs one small all-gather per step (synchronous algorithms only).
    ResetToLeader,
}

/// The watchdog when a config gives none: as long as PyTorch's default collective timeout.
pub const DEFAULT_WATCHDOG_SECONDS: f64 = 600.0;

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            seed: 0,
            steps: Some(1000),
            epochs: None,
            time_budget: None,
            log_every: 50,
            eval_every: 0,
            eval_model: EvalModel::Average,
            leader_window: 10,
            sync_init: true,
            consensus: true,
            optimizer: OptimizerConfig::default(),
            algorithm: AlgorithmConfig::default(),
            checkpoint: None,
            watchdog: Some(DEFAULT_WATCHDOG_SECONDS),
            on_divergence: DivergencePolicy::Stop,
            compression: Default::default(),
        }
    }
}

/// The most workers the threads transport accepts (one OS thread each).
pub const MAX_THREAD_WORKERS: usize = 1024;

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(self.workers >= 1, "workers must be at least 1");
        ensure_config!(
            self.steps.is_some() || self.epochs.is_some() || self.time_budget.is_some(),
            "give a budget: steps, epochs or time_budget"
        );
        if let Some(s) = self.steps {
            ensure_config!(s > 0, "steps must be at least 1");
            crate::limits::ensure_steps("steps", s)?;
        }
        if let Some(e) = self.epochs {
            ensure_config!(e.is_finite() && e > 0.0, "epochs must be positive, got {e}");
            ensure_config!(
                e <= 1e6,
                "epochs = {e:e} can never finish (at most 10^6 epochs)"
            );
        }
        if let Some(t) = self.time_budget {
            crate::limits::seconds("time_budget", t)?;
        }
        ensure_config!(self.log_every >= 1, "log_every must be at least 1");
        ensure_config!(self.leader_window >= 1, "leader_window must be at least 1");
        ensure_config!(
            self.leader_window <= 1 << 24,
            "leader_window = {} is more losses than a worker keeps (at most 2^24 = {})",
            self.leader_window,
            1u64 << 24
        );
        ensure_config!(
            self.eval_model != EvalModel::Center || self.algorithm.has_center(),
            "eval.model = \"center\" needs an algorithm with a center variable (easgd, eamsgd); {} has none",
            self.algorithm.name()
        );
        if let Some(w) = self.watchdog {
            crate::limits::seconds("watchdog_seconds (0 turns it off)", w)?;
        }
        ensure_config!(
            self.on_divergence == DivergencePolicy::Stop || !self.algorithm.is_async(),
            "on_divergence = \"reset-to-leader\" needs a synchronous algorithm ({} is asynchronous: its workers never meet to agree on a leader every step)",
            self.algorithm.name()
        );
        if let Some(c) = &self.checkpoint {
            ensure_config!(c.every >= 1, "checkpoint.every must be at least 1 step");
            ensure_config!(
                !self.algorithm.is_async()
                    || (self.time_budget.is_none()
                        && (self.steps.is_some() || self.epochs.is_some())),
                "checkpoints of an asynchronous run ({}) need a steps or epochs budget without time_budget: its cuts are placed by the work budget",
                self.algorithm.name()
            );
        }
        self.compression.validate().map_err(crate::Error::Config)?;
        self.optimizer.validate()?;
        self.algorithm
            .validate(self.workers, self.seed, &self.optimizer)
    }
}
