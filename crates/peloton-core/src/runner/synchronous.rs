//! The runner's synchronous loop: every worker takes the same local steps, and all of them meet
//! at every log point (the time budget, the consensus distance, evaluations, records) and at
//! every checkpoint.

use super::checkpointing::{self, WorkerState};
use super::divergence::DivergenceGuard;
use super::records::Seen;
use super::traffic::Traffic;
use super::worker::{before_compute, local_step, Clock, Local, Prepared};
use super::{
    DivergencePolicy, EvalModel, EvalRecord, Event, RunConfig, WorkerOutcome, WorkerRecord,
    RECORD_PARAMS_MAX,
};
use crate::algorithms::leader::elect;
use crate::algorithms::Algorithm;
use crate::checkpoint::Identity;
use crate::kernels;
use crate::learner::{Access, Evaluation, HostBuffers};
use crate::transport::{Communicator, CommunicatorExt, ReduceOp};
use crate::{Error, Result};

/// One worker's whole synchronous run (after the shared preparation).
pub(super) fn run_sync_worker(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
    prepared: Prepared,
    algorithm: Box<dyn Algorithm>,
) -> Result<WorkerOutcome> {
    let mut run = SyncRun::new(comm, config, emit, prepared, algorithm);
    run.resume()?;
    loop {
        if run.total_steps.is_some_and(|t| run.step >= t) {
            break;
        }
        let (lr, metric) = run.take_step()?;
        let step = run.step;
        let last = run.total_steps == Some(step);
        let eval_point = config.eval_every > 0 && step.is_multiple_of(config.eval_every);
        let checkpoint_point = config
            .checkpoint
            .as_ref()
            .is_some_and(|c| step.is_multiple_of(c.every));
        // A step that is not a log point goes on to the checkpoint.
        if (last || eval_point || step.is_multiple_of(config.log_every))
            && run.log_point(lr, metric, last, eval_point)?
        {
            break;
        }
        if checkpoint_point {
            run.checkpoint()?;
        }
    }
    run.host_params(Access::Read)?;
    Ok(run.outcome())
}

/// A synchronous worker's state through its run.
struct SyncRun<'a> {
    comm: &'a mut dyn Communicator,
    config: &'a RunConfig,
    emit: &'a (dyn Fn(Event) + Sync),
    algorithm: Box<dyn Algorithm>,
    local: Local,
    rank: usize,
    n: usize,
    total_steps: Option<u64>,
    /// Local steps taken.
    step: u64,
    /// The sum and count of the mini-batch losses since the previous record.
    interval_sum: f64,
    interval_count: u64,
    /// The evaluations made at the last step.
    final_evals: Vec<EvalRecord>,
    guard: Option<DivergenceGuard>,
    /// A resumed run continues the traffic counters and the clock where the checkpoint was.
    traffic: Traffic,
    clock: Clock,
    /// Who this worker's checkpoint files belong to (runs with checkpoints).
    identity: Option<Identity>,
}

impl<'a> SyncRun<'a> {
    fn new(
        comm: &'a mut dyn Communicator,
        config: &'a RunConfig,
        emit: &'a (dyn Fn(Event) + Sync),
        prepared: Prepared,
        algorithm: Box<dyn Algorithm>,
    ) -> Self {
        let total_steps = prepared.total_steps;
        let layout_fingerprint = prepared.layout_fingerprint;
        let rank = comm.rank();
        let n = comm.size();
        let capacity = total_steps.unwrap_or(1024).min(1 << 24) as usize;
        let local = Local::new(prepared, config, capacity);
        let clock = Clock::start();
        let guard =
            (config.on_divergence == DivergencePolicy::ResetToLeader).then(DivergenceGuard::new);
        let identity = checkpointing::checkpoint_identity(config, rank, n, layout_fingerprint);
        Self {
            comm,
            config,
            emit,
            algorithm,
            local,
            rank,
            n,
            total_steps,
            step: 0,
            interval_sum: 0.0,
            interval_count: 0,
            final_evals: Vec::new(),
            guard,
            traffic: Traffic::default(),
            clock,
            identity,
        }
    }

    /// Restores the checkpoint the config resumes from, if any.
    fn resume(&mut self) -> Result<()> {
        let Some(saved) = checkpointing::resumed(self.config, self.identity.as_ref(), self.rank)?
        else {
            return Ok(());
        };
        self.host_params(Access::Write)?;
        let (r, local) = (&saved.runner, &mut self.local);
        self.step = saved.step;
        r.f32s_into("params", &mut local.params)?;
        local.losses = r.f64s("losses")?.to_vec();
        self.interval_sum = r.f64("interval_sum")?;
        self.interval_count = r.u64("interval_count")?;
        local.window.load_state(r.dict("window")?)?;
        r.f32s_into("shared_state", &mut local.shared_state)?;
        self.clock.offset = r.f64("seconds")?;
        checkpointing::restore_components(
            self.comm,
            self.config,
            &saved,
            local,
            self.algorithm.as_mut(),
            Some(&mut self.traffic),
        )
    }

    /// Brings the parameters to the host buffer (from a learner's model on a GPU), before the
    /// runner reads them, or changes them (`Access::Write`).
    fn host_params(&mut self, access: Access) -> Result<()> {
        self.local.learner.host_access(HostBuffers::PARAMS, access)
    }

    /// One local step: the algorithm's hooks, the compute, the divergence guard's check and
    /// report. Returns the step's learning rate and the leader metric after it.
    fn take_step(&mut self) -> Result<(f32, f64)> {
        let step = self.step;
        let lr = self.config.optimizer.lr_at(step, self.clock.now(self.comm));
        before_compute(
            self.algorithm.as_mut(),
            self.comm,
            &mut self.local,
            step,
            lr,
        )?;
        // Charged before the real work: the simulator then knows this worker's next virtual
        // time while the gradient is being computed, so other workers need not wait for it.
        self.comm.compute(step)?;
        let loss = local_step(
            self.comm,
            &mut self.local,
            self.algorithm.as_mut(),
            step,
            lr,
            self.guard.as_mut(),
        )?;
        if let Some(g) = self.guard.as_mut() {
            g.report(&mut self.local.diag, self.rank, self.emit);
        }
        self.local.losses.push(loss);
        self.interval_sum += loss;
        self.interval_count += 1;
        let metric = self.local.window.mean();
        self.step += 1;
        Ok((lr, metric))
    }

    /// A log point (collective): the time budget, the consensus distance, the evaluations at
    /// an evaluation point or the last step, and this worker's record. Returns whether the run
    /// stops here.
    fn log_point(&mut self, lr: f32, metric: f64, last: bool, eval_point: bool) -> Result<bool> {
        let mut stop = last;
        if let Some(budget) = self.config.time_budget {
            let elapsed = self.clock.now(self.comm);
            // Any worker out of time stops everyone at the same step.
            stop |= self.local.diag.run(self.comm, |c| {
                Ok(c.gather_scalar(elapsed)?.iter().any(|&t| t >= budget))
            })?;
        }
        if eval_point || stop {
            // Evaluated models and the final parameters hold all their mass (overlap SGP).
            self.host_params(Access::Write)?;
            self.algorithm.drain(self.comm, &mut self.local.params)?;
        }
        let seconds = self.clock.now(self.comm);
        let (averaged, consensus) = self.consensus()?;
        if eval_point || stop {
            let evals = self.evaluate(averaged, seconds)?;
            for e in &evals {
                (self.emit)(Event::Eval(e.clone()));
            }
            if stop {
                self.final_evals = evals;
            }
        }
        if self.local.params.len() <= RECORD_PARAMS_MAX {
            // The record carries small models' parameters.
            self.host_params(Access::Read)?;
        }
        self.record(lr, metric, consensus, seconds);
        Ok(stop)
    }

    /// The distance to the workers' average (a diagnostic all-reduce that leaves the average
    /// in `scratch`), when the config asks for it. Returns whether `scratch` holds the average.
    fn consensus(&mut self) -> Result<(bool, Option<f64>)> {
        if !(self.config.consensus && self.n > 1) {
            return Ok((false, None));
        }
        self.host_params(Access::Read)?;
        let local = &mut self.local;
        local.scratch.copy_from_slice(&local.params);
        local.diag.run(self.comm, |c| {
            c.all_reduce(&mut local.scratch, ReduceOp::Mean)
        })?;
        let consensus = kernels::dist_sq(&local.params, &local.scratch).sqrt();
        Ok((true, Some(consensus)))
    }

    /// The evaluations of the config's model (collective): `averaged` says whether `scratch`
    /// already holds the workers' average.
    fn evaluate(&mut self, averaged: bool, seconds: f64) -> Result<Vec<EvalRecord>> {
        let Self {
            comm,
            config,
            algorithm,
            local,
            rank,
            n,
            step,
            ..
        } = self;
        let (config, rank, step) = (*config, *rank, *step);
        if local.state_len > 0 {
            // Every evaluated model sees statistics gathered over the whole cluster's data.
            local
                .learner
                .host_access(HostBuffers::STATE, Access::Write)?;
            local.learner.read_shared_state(&mut local.shared_state);
            local.diag.run(*comm, |c| {
                c.all_reduce(&mut local.shared_state, ReduceOp::Mean)
            })?;
            local.learner.write_shared_state(&local.shared_state);
        }
        let mut evals = Vec::new();
        let record = |eval: Evaluation, worker: Option<usize>| {
            EvalRecord::new(config, step, worker, eval, seconds)
        };
        match config.eval_model {
            EvalModel::Average => {
                if !averaged {
                    local
                        .learner
                        .host_access(HostBuffers::PARAMS, Access::Read)?;
                    local.scratch.copy_from_slice(&local.params);
                    local
                        .diag
                        .run(*comm, |c| c.all_reduce(&mut local.scratch, ReduceOp::Mean))?;
                }
                if rank == 0 {
                    evals.push(record(local.learner.evaluate(&local.scratch)?, None));
                }
            }
            EvalModel::Leader => {
                let metrics = local
                    .diag
                    .run(*comm, |c| c.gather_scalar(local.window.mean()))?;
                if elect(&metrics, 0..*n) == Some(rank) {
                    evals.push(record(local.learner.evaluate(&local.params)?, Some(rank)));
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
                    evals.push(record(local.learner.evaluate(center)?, None));
                }
            }
            EvalModel::Workers => {
                evals.push(record(local.learner.evaluate(&local.params)?, Some(rank)))
            }
        }
        Ok(evals)
    }

    /// Emits this worker's record of the log point and starts a new interval.
    fn record(&mut self, lr: f32, metric: f64, consensus: Option<f64>, seconds: f64) {
        let spent = self.traffic.algorithm(self.comm.stats(), &self.local.diag);
        let seen = Seen::at_record(self.algorithm.as_mut());
        let params = &self.local.params;
        (self.emit)(Event::Worker(WorkerRecord {
            step: self.step,
            worker: self.rank,
            loss: self.interval_sum / self.interval_count.max(1) as f64,
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
            params: (params.len() <= RECORD_PARAMS_MAX).then(|| params.to_vec()),
        }));
        self.interval_sum = 0.0;
        self.interval_count = 0;
    }

    /// Writes this worker's file of the checkpoint at the current step.
    fn checkpoint(&mut self) -> Result<()> {
        self.host_params(Access::Read)?;
        let seconds = self.clock.now(self.comm);
        checkpointing::save_checkpoint(
            self.comm,
            self.config,
            self.identity.as_ref(),
            self.step,
            self.emit,
            WorkerState {
                local: &mut self.local,
                interval: (self.interval_sum, self.interval_count),
                seconds,
                traffic: &self.traffic,
                algorithm: self.algorithm.as_mut(),
            },
        )
    }

    fn outcome(mut self) -> WorkerOutcome {
        let stats = self.traffic.algorithm(self.comm.stats(), &self.local.diag);
        let seconds = self.clock.now(self.comm);
        WorkerOutcome {
            final_evals: self.final_evals,
            ..self.local.outcome(
                self.algorithm.as_mut(),
                self.rank,
                self.step,
                seconds,
                stats,
            )
        }
    }
}
