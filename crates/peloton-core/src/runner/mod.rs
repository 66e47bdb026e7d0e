//! The runner: builds every worker's learner, algorithm and optimizer, drives the local steps,
//! evaluates on a schedule, and reports metrics.
//!
//! [`run_worker`] is one worker's whole run against any [`Communicator`]; [`run_threads`]
//! spawns N workers on the threads transport and delivers their events to the caller in a
//! deterministic order (by step, then evaluations, then worker records by rank), so that the
//! same config and seed produce the same metrics file, wall-clock fields aside.

mod asynchronous;

pub use asynchronous::final_evaluations;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::algorithms::leader::{elect, LossWindow};
use crate::algorithms::{AlgorithmConfig, LinkStats, RunShape, StepContext, Worker};
use crate::checkpoint::{self, CheckpointConfig, Identity, StateDict, WorkerCheckpoint};
use crate::ensure_config;
use crate::kernels;
use crate::learner::{Evaluation, LearnerContext, LearnerFactory};
use crate::optim::OptimizerConfig;
use crate::transport::{threads, CommStats, Communicator, CommunicatorExt, ReduceOp};
use crate::{Error, Result};

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
        self.optimizer.validate()?;
        self.algorithm
            .validate(self.workers, self.seed, &self.optimizer)
    }
}

/// One worker's metrics at a log point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub step: u64,
    pub worker: usize,
    /// Mean mini-batch loss since the previous record.
    pub loss: f64,
    /// The leader metric (mean of the last K losses).
    pub metric: f64,
    pub lr: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader: Option<usize>,
    /// ‖x_i − x̄‖, distance to the workers' average.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consensus: Option<f64>,
    /// Distinct peers this worker exchanged messages with since the previous record
    /// (algorithms that talk to individual peers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peers: Option<usize>,
    /// Bytes of the algorithm's own traffic so far (diagnostics excluded).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Wall-clock seconds since training started.
    pub seconds: f64,
    /// Asynchronous algorithms: local steps of the whole run handed out so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub work: Option<u64>,
    /// Asynchronous algorithms: mean and max staleness of the models this worker pulled or
    /// averaged with since the previous record (see each algorithm for its unit).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staleness: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staleness_max: Option<u64>,
    /// Leader-based algorithms: rounds so far in which the global leader changed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader_changes: Option<u64>,
    /// The worker's parameters, for models of at most [`RECORD_PARAMS_MAX`] parameters
    /// (toy problems: the report draws every worker's trajectory from them).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub params: Option<Vec<f32>>,
}

/// Models this small have their parameters in every worker record: a 2-D toy objective's
/// trajectories cost a few bytes per record, while a network's would be megabytes.
pub const RECORD_PARAMS_MAX: usize = 4;

/// Point-to-point traffic between a worker and one peer over the whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTraffic {
    pub peer: usize,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// An evaluation at a log point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    /// "average", "leader", "center" or "worker".
    pub model: String,
    /// The evaluated worker ("leader" and "worker" models).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub worker: Option<usize>,
    #[serde(flatten)]
    pub eval: Evaluation,
    pub seconds: f64,
}

/// What the runner reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Sent once, by worker 0, when training starts.
    Started {
        workers: usize,
        params: usize,
        steps: Option<u64>,
    },
    Worker(WorkerRecord),
    Eval(EvalRecord),
    /// Worker `worker` wrote its file of the checkpoint at `step`. The runner of a whole run
    /// ([`run_with`]) passes one `Checkpoint` per step on, with `worker` 0, once every worker's
    /// file is written and every record up to `step` is out: the caller then commits it.
    Checkpoint {
        step: u64,
        worker: usize,
    },
    /// Worker `worker`'s loss or gradient was NaN/∞ at local step `step` (counted from 1, like
    /// records); under `reset-to-leader` it took worker `reset_to`'s parameters and went on.
    Diverged {
        step: u64,
        worker: usize,
        loss: f64,
        reset_to: usize,
    },
}

/// One worker's results.
#[derive(Debug, Clone)]
pub struct WorkerOutcome {
    pub rank: usize,
    pub params: Vec<f32>,
    /// Every step's mini-batch loss.
    pub losses: Vec<f64>,
    /// The evaluations this worker made at the last step.
    pub final_evals: Vec<EvalRecord>,
    /// The algorithm's traffic (diagnostics excluded).
    pub stats: CommStats,
    /// Traffic per peer, for algorithms that talk to individual peers (else empty).
    pub links: Vec<LinkTraffic>,
    pub center: Option<Vec<f32>>,
    pub steps: u64,
    pub seconds: f64,
    /// The leader metric at the end (mean of the last K losses).
    pub metric: f64,
    /// The model state averaged before evaluations (BatchNorm statistics), at the end.
    pub shared_state: Vec<f32>,
    /// When an injected fault stopped this worker (asynchronous algorithms go on without it).
    pub stopped_at: Option<f64>,
    pub leader_changes: Option<u64>,
}

/// The results of a whole run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Per worker, in rank order.
    pub workers: Vec<WorkerOutcome>,
    /// The evaluations made at the last step, by every worker.
    pub final_evals: Vec<EvalRecord>,
    pub steps: u64,
    pub seconds: f64,
}

/// Runs one worker to the end of its budget. Every worker of `comm` must call it with the
/// same config; `emit` receives this worker's events.
pub fn run_worker(
    comm: &mut dyn Communicator,
    factory: &dyn LearnerFactory,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<WorkerOutcome> {
    let (prepared, algorithm) = prepare(comm, factory, config, emit)?;
    let mut algorithm = match algorithm {
        Worker::Asynchronous(algorithm) => {
            return asynchronous::run_async_worker(comm, config, emit, prepared, algorithm)
        }
        Worker::Synchronous(algorithm) => algorithm,
    };
    let Prepared {
        mut learner,
        mut params,
        total_steps,
        state_len,
        mut shared_state,
        mut diag,
        layout_fingerprint,
    } = prepared;
    let rank = comm.rank();
    let n = comm.size();
    let len = params.len();
    let mut grad = vec![0.0f32; len];
    let mut scratch = vec![0.0f32; len];
    let mut optimizer = config.optimizer.init(learner.layout());
    let mut window = LossWindow::new(config.leader_window);
    let mut losses = Vec::with_capacity(total_steps.unwrap_or(1024).min(1 << 24) as usize);
    let (mut interval_sum, mut interval_count) = (0.0f64, 0u64);
    let mut final_evals = Vec::new();
    let start = Instant::now();
    let mut step = 0u64;
    let mut guard =
        (config.on_divergence == DivergencePolicy::ResetToLeader).then(DivergenceGuard::new);
    // A resumed run continues the traffic counters and the clock where the checkpoint was.
    let mut traffic = Traffic::default();
    let mut clock_offset = 0.0;
    let identity = checkpoint_identity(config, rank, n, layout_fingerprint);
    if let (Some(c), Some(identity)) = (&config.checkpoint, &identity) {
        if let Some(at) = c.resume {
            let saved = checkpoint::load(&c.worker_file(at, rank))?;
            saved.check(identity, at)?;
            let r = &saved.runner;
            step = saved.step;
            r.f32s_into("params", &mut params)?;
            losses = r.f64s("losses")?.to_vec();
            interval_sum = r.f64("interval_sum")?;
            interval_count = r.u64("interval_count")?;
            window.load_state(r.dict("window")?)?;
            r.f32s_into("shared_state", &mut shared_state)?;
            clock_offset = r.f64("seconds")?;
            restore_components(
                comm,
                config,
                &saved,
                &mut optimizer,
                learner.as_mut(),
                algorithm.as_mut(),
                &mut diag,
            )?;
            traffic.resume(comm.stats(), stats_from(r.u64s("traffic")?)?);
            // After the agreement above, whose traffic the checkpoint's totals do not hold.
            diag.0 = stats_from(r.u64s("diagnostic_traffic")?)?;
        }
    }
    // Virtual time on the simulator, wall-clock time elsewhere.
    let clock = |comm: &dyn Communicator| {
        comm.now()
            .unwrap_or_else(|| clock_offset + start.elapsed().as_secs_f64())
    };
    'steps: loop {
        if total_steps.is_some_and(|t| step >= t) {
            break;
        }
        let lr = config.optimizer.lr_at(step, clock(comm));
        before_compute(
            algorithm.as_mut(),
            comm,
            (&mut params, &mut grad),
            step,
            &window,
            lr,
        )?;
        // Charged before the real work: the simulator then knows this worker's next virtual
        // time while the gradient is being computed, so other workers need not wait for it.
        comm.compute(step)?;
        let loss = local_step(
            comm,
            learner.as_mut(),
            algorithm.as_mut(),
            &mut optimizer,
            (&mut params, &mut grad),
            &mut window,
            step,
            lr,
            guard.as_mut(),
        )?;
        if let Some(g) = guard.as_mut() {
            diag.absorb(&mut g.diag);
            for (at, bad, leader) in g.resets.drain(..) {
                emit(Event::Diverged {
                    step: at + 1,
                    worker: rank,
                    loss: bad,
                    reset_to: leader,
                });
            }
        }
        losses.push(loss);
        interval_sum += loss;
        interval_count += 1;
        let metric = window.mean();
        step += 1;

        let last = total_steps == Some(step);
        let eval_point = config.eval_every > 0 && step.is_multiple_of(config.eval_every);
        let checkpoint_point = config
            .checkpoint
            .as_ref()
            .is_some_and(|c| step.is_multiple_of(c.every));
        // A labeled block: a step that is not a log point skips to the checkpoint below.
        'log: {
            if !(last || eval_point || step.is_multiple_of(config.log_every)) {
                break 'log;
            }
            let mut stop = last;
            if let Some(budget) = config.time_budget {
                let elapsed = clock(comm);
                // Any worker out of time stops everyone at the same step.
                stop |= diag.run(comm, |c| {
                    Ok(c.gather_scalar(elapsed)?.iter().any(|&t| t >= budget))
                })?;
            }
            if eval_point || stop {
                // Evaluated models and the final parameters hold all their mass (overlap SGP).
                algorithm.drain(comm, &mut params)?;
            }
            let seconds = clock(comm);
            let mut averaged = false;
            let mut consensus = None;
            if config.consensus && n > 1 {
                scratch.copy_from_slice(&params);
                diag.run(comm, |c| c.all_reduce(&mut scratch, ReduceOp::Mean))?;
                averaged = true;
                consensus = Some(kernels::dist_sq(&params, &scratch).sqrt());
            }
            if eval_point || stop {
                if state_len > 0 {
                    // Every evaluated model sees statistics gathered over the whole cluster's data.
                    learner.read_shared_state(&mut shared_state);
                    diag.run(comm, |c| c.all_reduce(&mut shared_state, ReduceOp::Mean))?;
                    learner.write_shared_state(&shared_state);
                }
                let mut evals = Vec::new();
                let record = |eval: Evaluation, worker: Option<usize>| EvalRecord {
                    step,
                    model: config.eval_model.name().to_string(),
                    worker,
                    eval,
                    seconds,
                };
                match config.eval_model {
                    EvalModel::Average => {
                        if !averaged {
                            scratch.copy_from_slice(&params);
                            diag.run(comm, |c| c.all_reduce(&mut scratch, ReduceOp::Mean))?;
                        }
                        if rank == 0 {
                            evals.push(record(learner.evaluate(&scratch)?, None));
                        }
                    }
                    EvalModel::Leader => {
                        let metrics = diag.run(comm, |c| c.gather_scalar(window.mean()))?;
                        if elect(&metrics, 0..n) == Some(rank) {
                            evals.push(record(learner.evaluate(&params)?, Some(rank)));
                        }
                    }
                    EvalModel::Center => {
                        if rank == 0 {
                            let center = algorithm.observe().center.ok_or_else(|| {
                            Error::Config(format!(
                                "eval.model = \"center\" needs an algorithm with a center variable; {} has none",
                                config.algorithm.name()
                            ))
                        })?;
                            evals.push(record(learner.evaluate(center)?, None));
                        }
                    }
                    EvalModel::Workers => {
                        evals.push(record(learner.evaluate(&params)?, Some(rank)))
                    }
                }
                for e in &evals {
                    emit(Event::Eval(e.clone()));
                }
                if stop {
                    final_evals = evals;
                }
            }
            let spent = traffic.algorithm(comm.stats(), &diag);
            let seen = Seen::at_record(algorithm.as_mut());
            emit(Event::Worker(WorkerRecord {
                step,
                worker: rank,
                loss: interval_sum / interval_count.max(1) as f64,
                metric,
                lr,
                leader: seen.leader,
                consensus,
                peers: seen.peers,
                bytes_sent: spent.bytes_sent,
                bytes_received: spent.bytes_received,
                seconds,
                work: None,
                staleness: None,
                staleness_max: None,
                leader_changes: seen.leader_changes,
                params: (params.len() <= RECORD_PARAMS_MAX).then(|| params.clone()),
            }));
            interval_sum = 0.0;
            interval_count = 0;
            if stop {
                break 'steps;
            }
        }
        if checkpoint_point {
            let seconds = clock(comm);
            save_checkpoint(
                comm,
                config,
                identity.as_ref(),
                step,
                emit,
                WorkerState {
                    params: &mut params,
                    losses: &losses,
                    interval: (interval_sum, interval_count),
                    window: &window,
                    shared_state: &shared_state,
                    seconds,
                    diag: &diag,
                    traffic: &traffic,
                    optimizer: &optimizer,
                    learner: learner.as_mut(),
                    algorithm: algorithm.as_mut(),
                },
            )?;
        }
    }
    let (links, center, leader_changes) = at_the_end(algorithm.as_mut());
    Ok(WorkerOutcome {
        rank,
        stats: traffic.algorithm(comm.stats(), &diag),
        links,
        center,
        params,
        losses,
        final_evals,
        steps: step,
        seconds: clock(comm),
        metric: window.mean(),
        shared_state,
        stopped_at: None,
        leader_changes,
    })
}

/// What a worker record takes from the algorithm's observation at a log point; the
/// per-link window (distinct peers since the previous record) restarts.
pub(crate) struct Seen {
    pub leader: Option<usize>,
    pub peers: Option<usize>,
    pub leader_changes: Option<u64>,
}

impl Seen {
    pub(crate) fn at_record(algorithm: &mut dyn crate::algorithms::Algorithm) -> Self {
        let seen = algorithm.observe();
        Seen {
            leader: seen.leader,
            peers: seen.links.map(|l| l.take_window()),
            leader_changes: seen.leader_changes,
        }
    }
}

/// What a worker's outcome takes from the algorithm's observation at the end: per-link
/// traffic, the center, the leader changes.
pub(crate) fn at_the_end(
    algorithm: &mut dyn crate::algorithms::Algorithm,
) -> (Vec<LinkTraffic>, Option<Vec<f32>>, Option<u64>) {
    let seen = algorithm.observe();
    (
        seen.links.map(link_traffic).unwrap_or_default(),
        seen.center.map(<[f32]>::to_vec),
        seen.leader_changes,
    )
}

/// The algorithm's hook before this step's gradient: its context holds the step's learning
/// rate and the leader metric so far; the loss is not known yet (NaN) and `grad` still holds
/// the previous step's gradient.
pub(crate) fn before_compute(
    algorithm: &mut dyn crate::algorithms::Algorithm,
    comm: &mut dyn Communicator,
    (params, grad): (&mut [f32], &mut [f32]),
    step: u64,
    window: &LossWindow,
    lr: f32,
) -> Result<()> {
    algorithm.before_compute(&mut StepContext {
        comm,
        params,
        grad,
        step,
        loss: f64::NAN,
        metric: window.mean(),
        lr,
    })
}

/// One local step once its compute is charged: the mini-batch gradient (a NaN/∞ loss stops the
/// run naming the worker), the leader metric, and the algorithm's hooks around the local
/// optimizer. Returns the mini-batch loss. Shared by the synchronous and asynchronous loops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn local_step(
    comm: &mut dyn Communicator,
    learner: &mut dyn crate::learner::Learner,
    algorithm: &mut dyn crate::algorithms::Algorithm,
    optimizer: &mut crate::optim::Sgd,
    (params, grad): (&mut [f32], &mut [f32]),
    window: &mut LossWindow,
    step: u64,
    lr: f32,
    guard: Option<&mut DivergenceGuard>,
) -> Result<f64> {
    let mut loss = learner.loss_and_grad(params, grad)?;
    let finite = loss.is_finite() && grad.iter().all(|g| g.is_finite());
    match guard {
        None if !finite => {
            return Err(Error::Diverged {
                worker: comm.rank(),
                step,
                loss: if loss.is_finite() { f64::NAN } else { loss },
            })
        }
        None => window.push(loss),
        Some(guard) => {
            if finite {
                window.push(loss);
            }
            if guard.check(comm, params, finite, window.mean(), step, loss)? {
                // This worker diverged: it now holds the leader's parameters. Its momentum
                // belongs to the diverged trajectory, and its metric is NaN for K steps, so it
                // cannot lead before it has K good losses of its own.
                optimizer.clear();
                window.push(f64::NAN);
                loss = learner.loss_and_grad(params, grad)?;
                if !(loss.is_finite() && grad.iter().all(|g| g.is_finite())) {
                    return Err(Error::Diverged {
                        worker: comm.rank(),
                        step,
                        loss,
                    });
                }
            }
        }
    }
    let mut ctx = StepContext {
        comm,
        params,
        grad,
        step,
        loss,
        metric: window.mean(),
        lr,
    };
    algorithm.before_step(&mut ctx)?;
    optimizer.step(ctx.params, ctx.grad, lr);
    algorithm.after_step(&mut ctx).map(|()| loss)
}

/// Traffic counters that survive a resume: the transport's own counters restart at zero in
/// a new process, so the runner carries the checkpoint's totals as an offset.
#[derive(Default)]
struct Traffic {
    offset: CommStats,
}

impl Traffic {
    /// `now` is the fresh transport's counters right after the checkpoint was restored,
    /// `saved` the totals the checkpoint recorded.
    fn resume(&mut self, now: CommStats, saved: CommStats) {
        // Wrapping: offset + later counters is exact modulo 2⁶⁴ even if the fresh transport
        // already counted more than the checkpoint did.
        self.offset = CommStats {
            bytes_sent: saved.bytes_sent.wrapping_sub(now.bytes_sent),
            bytes_received: saved.bytes_received.wrapping_sub(now.bytes_received),
            operations: saved.operations.wrapping_sub(now.operations),
        };
    }

    /// Everything this worker sent and received since the run began.
    fn total(&self, now: CommStats) -> CommStats {
        CommStats {
            bytes_sent: now.bytes_sent.wrapping_add(self.offset.bytes_sent),
            bytes_received: now.bytes_received.wrapping_add(self.offset.bytes_received),
            operations: now.operations.wrapping_add(self.offset.operations),
        }
    }

    /// The algorithm's own traffic: diagnostics excluded.
    fn algorithm(&self, now: CommStats, diag: &DiagnosticTraffic) -> CommStats {
        self.total(now).since(&diag.0)
    }
}

fn stats_to(s: CommStats) -> [u64; 3] {
    [s.bytes_sent, s.bytes_received, s.operations]
}

fn stats_from(v: &[u64]) -> Result<CommStats> {
    match v {
        &[bytes_sent, bytes_received, operations] => Ok(CommStats {
            bytes_sent,
            bytes_received,
            operations,
        }),
        _ => Err(Error::Checkpoint(
            "traffic counters must be three numbers".into(),
        )),
    }
}

/// What a synchronous worker saves at a checkpoint, besides its algorithm's own state.
struct WorkerState<'a> {
    params: &'a mut [f32],
    losses: &'a [f64],
    interval: (f64, u64),
    window: &'a LossWindow,
    shared_state: &'a [f32],
    seconds: f64,
    diag: &'a DiagnosticTraffic,
    traffic: &'a Traffic,
    optimizer: &'a crate::optim::Sgd,
    learner: &'a mut dyn crate::learner::Learner,
    algorithm: &'a mut dyn crate::algorithms::Algorithm,
}

/// Writes this worker's file of the checkpoint at `step` (collective: messages still in
/// flight are drained first, so no push-sum mass is lost) and tells the caller.
fn save_checkpoint(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    identity: Option<&Identity>,
    step: u64,
    emit: &(dyn Fn(Event) + Sync),
    state: WorkerState<'_>,
) -> Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    state.algorithm.drain(comm, state.params)?;
    let transport = comm.checkpoint_cut(None)?.unwrap_or_default();
    let mut runner = StateDict::new();
    runner.put_f32s("params", state.params);
    runner.put_f64s("losses", state.losses);
    runner.put_f64("interval_sum", state.interval.0);
    runner.put_u64("interval_count", state.interval.1);
    runner.put_dict("window", state.window.save_state());
    runner.put_f32s("shared_state", state.shared_state);
    runner.put_f64("seconds", state.seconds);
    runner.put_u64s("diagnostic_traffic", &stats_to(state.diag.0));
    // After the drain: its messages are part of the traffic so far.
    runner.put_u64s("traffic", &stats_to(state.traffic.total(comm.stats())));
    write_checkpoint(
        config,
        identity,
        step,
        emit,
        CheckpointParts {
            runner,
            optimizer: state.optimizer,
            learner: state.learner,
            algorithm: state.algorithm,
            transport,
        },
    )
}

/// Who a worker's checkpoint files belong to, when the run takes checkpoints.
fn checkpoint_identity(
    config: &RunConfig,
    rank: usize,
    workers: usize,
    layout: u64,
) -> Option<Identity> {
    config.checkpoint.as_ref().map(|c| Identity {
        rank: rank as u64,
        workers: workers as u64,
        config: c.fingerprint,
        layout,
        algorithm: config.algorithm.name().to_string(),
    })
}

/// A resumed worker, after its runner's own state: restores the optimizer's, learner's and
/// algorithm's states from `saved`, checks that every worker resumes the same checkpoint (or
/// the run would mix two cuts), and puts back the transport's state at the cut (the
/// simulator's clocks, queues, counters and parameter server).
fn restore_components(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    saved: &WorkerCheckpoint,
    optimizer: &mut crate::optim::Sgd,
    learner: &mut dyn crate::learner::Learner,
    algorithm: &mut dyn crate::algorithms::Algorithm,
    diag: &mut DiagnosticTraffic,
) -> Result<()> {
    optimizer.load_state(&saved.optimizer)?;
    learner.load_state(&saved.learner)?;
    algorithm
        .load_state(&saved.algorithm)
        .map_err(|e| Error::Checkpoint(format!("{}: {}", config.algorithm.name(), e)))?;
    diag.run(comm, |c| {
        c.agree("the checkpoint step to resume", saved.step)
    })?;
    comm.restore_cut(&saved.transport)
}

/// What a worker's checkpoint file holds besides its identity.
pub(crate) struct CheckpointParts<'a> {
    /// The runner's own state (parameters, losses, counters).
    pub runner: StateDict,
    pub optimizer: &'a crate::optim::Sgd,
    pub learner: &'a mut dyn crate::learner::Learner,
    pub algorithm: &'a dyn crate::algorithms::Algorithm,
    /// The transport's state at the cut (world rank 0's file; empty elsewhere).
    pub transport: StateDict,
}

/// Writes this worker's file of the checkpoint at `step` (atomically) and tells the caller.
pub(crate) fn write_checkpoint(
    config: &RunConfig,
    identity: &Identity,
    step: u64,
    emit: &(dyn Fn(Event) + Sync),
    parts: CheckpointParts<'_>,
) -> Result<()> {
    let Some(c) = &config.checkpoint else {
        return Ok(());
    };
    let mut algorithm = StateDict::new();
    parts
        .algorithm
        .save_state(&mut algorithm)
        .map_err(|e| Error::Checkpoint(format!("{}: {}", config.algorithm.name(), e)))?;
    let mut learner = StateDict::new();
    parts.learner.save_state(&mut learner)?;
    let file = WorkerCheckpoint {
        identity: identity.clone(),
        step,
        runner: parts.runner,
        optimizer: parts.optimizer.save_state(),
        algorithm,
        learner,
        transport: parts.transport,
    };
    checkpoint::save(&c.worker_file(step, identity.rank as usize), &file)?;
    emit(Event::Checkpoint {
        step,
        worker: identity.rank as usize,
    });
    Ok(())
}

/// The `reset-to-leader` divergence policy: every step, workers learn who diverged (a NaN/∞
/// loss or gradient) and who leads among the others; the diverged ones take the leader's
/// parameters. One all-gather of one number per step; a broadcast only when someone diverged.
pub(crate) struct DivergenceGuard {
    diag: DiagnosticTraffic,
    /// Resets of this worker not yet reported: (step, the diverged loss, the leader it took).
    resets: Vec<(u64, f64, usize)>,
}

impl DivergenceGuard {
    fn new() -> Self {
        Self {
            diag: DiagnosticTraffic::default(),
            resets: Vec::new(),
        }
    }

    /// Collective. Returns whether this worker diverged (and now holds the leader's
    /// parameters).
    fn check(
        &mut self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        finite: bool,
        metric: f64,
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
        let mut staging = params.to_vec();
        self.diag.run(comm, |c| c.broadcast(&mut staging, leader))?;
        if finite {
            return Ok(false);
        }
        params.copy_from_slice(&staging);
        self.resets.push((step, loss, leader));
        Ok(true)
    }
}

/// One worker's state after the collective preparation shared by every algorithm.
struct Prepared {
    learner: Box<dyn crate::learner::Learner>,
    params: Vec<f32>,
    total_steps: Option<u64>,
    state_len: usize,
    shared_state: Vec<f32>,
    diag: DiagnosticTraffic,
    layout_fingerprint: u64,
}

/// Builds the learner, agrees on the model, initializes the parameters and the algorithm,
/// and works out the step budget (collective: every worker calls it).
fn prepare(
    comm: &mut dyn Communicator,
    factory: &dyn LearnerFactory,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<(Prepared, Worker)> {
    let rank = comm.rank();
    let n = comm.size();
    let mut learner = factory.build(LearnerContext {
        rank,
        workers: n,
        seed: config.seed,
    })?;
    let len = learner.layout().len();
    let mut diag = DiagnosticTraffic::default();

    // Ranks agree on the model before anything else moves.
    let fingerprint = learner.layout().fingerprint();
    diag.run(comm, |c| {
        c.agree("the model size (parameter count)", len as u64)?;
        c.agree("the model layout (tensor names and shapes)", fingerprint)
    })?;

    let state_len = learner.shared_state_len();
    diag.run(comm, |c| {
        c.agree(
            "the size of the averaged model state (BatchNorm statistics)",
            state_len as u64,
        )
    })?;
    let shared_state = vec![0.0f32; state_len];

    let mut params = vec![0.0f32; len];
    learner.init_params(&mut params);
    if config.sync_init {
        comm.broadcast(&mut params, 0)?;
    }
    let run = RunShape {
        workers: n,
        seed: config.seed,
        optimizer: &config.optimizer,
    };
    let mut algorithm = config.algorithm.build(&run, len)?;
    algorithm.as_algorithm_mut().setup(comm, &mut params)?;

    let total_steps = match (config.steps, config.epochs) {
        (steps, None) => steps,
        (steps, Some(epochs)) => {
            let per_epoch = learner.steps_per_epoch().ok_or_else(|| {
                Error::Config(
                    "an epochs budget needs a problem with a finite dataset; give steps instead"
                        .into(),
                )
            })?;
            // Shards may differ by a sample: every worker must run the same number of steps.
            let fewest = diag.run(comm, |c| {
                Ok(c.gather_scalar(per_epoch as f64)?
                    .into_iter()
                    .fold(f64::INFINITY, f64::min))
            })?;
            let from_epochs = (epochs * fewest).ceil().max(1.0) as u64;
            Some(steps.map_or(from_epochs, |s| s.min(from_epochs)))
        }
    };
    if rank == 0 {
        emit(Event::Started {
            workers: n,
            params: len,
            steps: total_steps,
        });
    }

    Ok((
        Prepared {
            learner,
            params,
            total_steps,
            state_len,
            shared_state,
            diag,
            layout_fingerprint: fingerprint,
        },
        algorithm,
    ))
}

fn link_traffic(links: &mut LinkStats) -> Vec<LinkTraffic> {
    let peers: std::collections::BTreeSet<usize> = links
        .bytes_sent()
        .keys()
        .chain(links.bytes_received().keys())
        .copied()
        .collect();
    peers
        .into_iter()
        .map(|peer| LinkTraffic {
            peer,
            bytes_sent: links.bytes_sent().get(&peer).copied().unwrap_or(0),
            bytes_received: links.bytes_received().get(&peer).copied().unwrap_or(0),
        })
        .collect()
}

/// Traffic spent on diagnostics (agreement checks, consensus distance, evaluation models,
/// budget checks), kept out of the algorithm's byte counts.
#[derive(Default)]
struct DiagnosticTraffic(CommStats);

impl DiagnosticTraffic {
    /// Adds (and clears) traffic counted elsewhere.
    fn absorb(&mut self, other: &mut DiagnosticTraffic) {
        self.0.bytes_sent += other.0.bytes_sent;
        self.0.bytes_received += other.0.bytes_received;
        self.0.operations += other.0.operations;
        other.0 = CommStats::default();
    }

    fn run<T>(
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

/// Orders events by step so that a run's event stream does not depend on thread timing.
struct Reorder {
    workers: usize,
    pending: BTreeMap<u64, Pending>,
}

/// What arrived for one step.
#[derive(Default)]
struct Pending {
    /// Divergence resets, delivered before the step's evaluations.
    notes: Vec<Event>,
    evals: Vec<EvalRecord>,
    records: Vec<WorkerRecord>,
    /// Workers that wrote their file of this step's checkpoint.
    checkpoints: usize,
}

impl Reorder {
    fn push(&mut self, event: Event, out: &mut dyn FnMut(&Event)) {
        let step = match &event {
            Event::Started { .. } => return out(&event),
            Event::Worker(r) => r.step,
            Event::Eval(e) => e.step,
            Event::Checkpoint { step, .. } | Event::Diverged { step, .. } => *step,
        };
        let entry = self.pending.entry(step).or_default();
        match event {
            Event::Worker(r) => entry.records.push(r),
            Event::Eval(e) => entry.evals.push(e),
            Event::Checkpoint { .. } => entry.checkpoints += 1,
            Event::Diverged { .. } => entry.notes.push(event),
            Event::Started { .. } => unreachable!(),
        }
        // A worker sends its events in step order (a checkpoint after its record of the same
        // step), so once every worker's record — or every worker's checkpoint — of a step is
        // in, every earlier step is complete too.
        if entry.records.len() == self.workers || entry.checkpoints == self.workers {
            let ready: Vec<u64> = self.pending.range(..=step).map(|(s, _)| *s).collect();
            for s in ready {
                let entry = self.pending.get_mut(&s).expect("listed above");
                Self::flush(entry, out);
                if entry.checkpoints == self.workers {
                    out(&Event::Checkpoint { step: s, worker: 0 });
                    entry.checkpoints = 0;
                }
                if entry.checkpoints == 0 {
                    self.pending.remove(&s);
                }
            }
        }
    }

    fn flush(entry: &mut Pending, out: &mut dyn FnMut(&Event)) {
        let mut notes = std::mem::take(&mut entry.notes);
        notes.sort_by_key(|e| match e {
            Event::Diverged { worker, .. } => *worker,
            _ => 0,
        });
        notes.iter().for_each(&mut *out);
        let mut evals = std::mem::take(&mut entry.evals);
        let mut records = std::mem::take(&mut entry.records);
        evals.sort_by_key(|e| e.worker);
        records.sort_by_key(|r| r.worker);
        evals.into_iter().for_each(|e| out(&Event::Eval(e)));
        records.into_iter().for_each(|r| out(&Event::Worker(r)));
    }

    /// Delivers what is left when the workers are done (a failed run's partial steps). An
    /// incomplete checkpoint is not passed on: it must never be committed.
    fn finish(mut self, out: &mut dyn FnMut(&Event)) {
        for (_, mut entry) in std::mem::take(&mut self.pending) {
            Self::flush(&mut entry, out);
        }
    }
}

/// The error that explains a failed run: the first worker's own error, not the "aborted"
/// errors it caused on the others.
pub fn root_cause(errors: Vec<Error>) -> Error {
    let is_consequence = |e: &Error| matches!(e, Error::Aborted { .. } | Error::Left { .. });
    let first = errors.iter().position(|e| !is_consequence(e)).unwrap_or(0);
    errors.into_iter().nth(first).expect("at least one error")
}

/// Runs `config` on the threads transport: one thread per worker, events delivered to
/// `on_event` on the calling thread in a deterministic order.
pub fn run_threads(
    config: &RunConfig,
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunReport> {
    config.validate()?;
    ensure_config!(
        config.workers <= MAX_THREAD_WORKERS,
        "the threads transport runs at most {MAX_THREAD_WORKERS} workers, got {}",
        config.workers
    );
    run_threads_with_faults(config, &[], factory, on_event)
}

/// [`run_threads`] with injected faults: `slow` workers sleep to take `factor` times longer
/// per step, `stop` faults end a worker at a wall-clock time (see [`threads::world_with_faults`]).
pub fn run_threads_with_faults(
    config: &RunConfig,
    faults: &[crate::transport::Fault],
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunReport> {
    config.validate()?;
    for f in faults {
        f.validate(config.workers)
            .map_err(|e| Error::Config(format!("transport.faults: {e}")))?;
    }
    ensure_config!(
        config.checkpoint.is_none() || !config.algorithm.is_async(),
        "checkpoints of asynchronous algorithms ({}) need the simulator: on threads the workers' interleaving, and so any cut of it, cannot be reproduced",
        config.algorithm.name()
    );
    let watchdog = config
        .watchdog
        .map(|w| crate::limits::seconds("watchdog_seconds", w))
        .transpose()?;
    run_with(config, factory, on_event, &|work| {
        threads::run_workers_with_options(config.workers, faults, watchdog, |comm| work(comm))
    })
}

/// One worker's whole run on a communicator (what a transport's launcher calls per worker).
pub type WorkerFn<'a> = dyn Fn(&mut dyn Communicator) -> Result<WorkerOutcome> + Sync + 'a;

/// Runs `config` on any in-process transport: `launch` starts one worker per rank, calls
/// `work` on each with its communicator, and returns the results in rank order. Events reach
/// `on_event` on the calling thread in a deterministic order (by step; evaluations, then
/// worker records by rank). `config` must be validated by the caller.
pub fn run_with(
    config: &RunConfig,
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
    launch: &(dyn Fn(&WorkerFn<'_>) -> Vec<Result<WorkerOutcome>> + Sync),
) -> Result<RunReport> {
    let (tx, rx) = mpsc::channel::<Event>();
    let results = std::thread::scope(|s| {
        let workers = s.spawn(move || {
            let emit = move |e: Event| {
                // The receiver outlives the workers; a send can only fail if it panicked.
                let _ = tx.send(e);
            };
            let work = |comm: &mut dyn Communicator| run_worker(comm, factory, config, &emit);
            launch(&work)
        });
        if config.algorithm.is_async() {
            let mut order = asynchronous::TimeOrder::new(config.workers);
            for event in rx {
                order.push(event, on_event);
            }
            order.finish(on_event);
        } else {
            let mut reorder = Reorder {
                workers: config.workers,
                pending: BTreeMap::new(),
            };
            for event in rx {
                reorder.push(event, on_event);
            }
            reorder.finish(on_event);
        }
        workers.join()
    });
    let results = results.map_err(|_| Error::Panic {
        worker: 0,
        message: "runner thread died".into(),
    })?;
    let mut outcomes = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(root_cause(errors));
    }
    let mut final_evals: Vec<EvalRecord> = outcomes
        .iter()
        .flat_map(|o| o.final_evals.clone())
        .collect();
    if config.algorithm.is_async() {
        // Asynchronous workers never gather: the runner evaluates the final average, leader
        // or center model itself.
        for e in asynchronous::final_evaluations(config, factory, &outcomes)? {
            on_event(&Event::Eval(e.clone()));
            final_evals.push(e);
        }
    }
    Ok(RunReport {
        steps: outcomes.iter().map(|o| o.steps).max().unwrap_or(0),
        seconds: outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max),
        final_evals,
        workers: outcomes,
    })
}
