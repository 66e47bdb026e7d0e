//! The runner's asynchronous mode: one worker's loop for an algorithm registered with [`Asynchronous`](crate::algorithms::Asynchronous) timing.
//!
//! Differences from the synchronous loop, all so that no worker ever waits for the group:
//! * work comes from the global work counter ([`TicketPlan`]): a worker does local steps or
//!   takes part in a collective round (asynchronous LSGD) until the run's total budget
//!   (`N × steps`, or the time budget) is spent; fast workers do more steps;
//! * the learning rate follows global progress (global step / N, ALGORITHMS.md §9.2);
//! * log records are taken at the worker's own step counts, with no collective: no
//!   consensus distance, no budget gather; evaluations during the run are of the worker's own
//!   model (`eval.model = "worker"`) or of the server's center (`"center"`, by worker 0). The
//!   average and leader models are evaluated once, at the end, by the runner itself
//!   ([`final_evaluations`]) from the workers' final parameters;
//! * a worker stopped by an injected fault leaves the run (its outcome says when) and the others
//!   go on, except for algorithms with collective rounds, which cannot complete without it:
//!   those stop with the fault's error, like synchronous algorithms.
//!
//! On the simulator every shared operation is ordered by virtual time, so asynchronous runs are
//! reproducible bit for bit; on threads the interleaving follows the OS scheduler and runs
//! differ from one another (the same config and seed give statistically, not bitwise, equal
//! results).
//!
//! **Checkpoints** (simulator only: on threads the interleaving, and so any cut, is not
//! reproducible). There is no step at which asynchronous workers meet, so a checkpoint is a
//! *cut* in ticket order ([`Cuts`]): checkpoint k falls at ticket T_k, the ticket of global
//! step k·every·N, rounded up to the start of a round cycle for algorithms with rounds (so
//! every started round completes before anyone waits). The worker that draws a step ticket
//! ≥ T_k keeps it and waits at the cut ([`Communicator::checkpoint_cut`]); so does every other
//! worker at its next ticket, after finishing the step (or round) it is in. A passive AD-PSGD
//! worker keeps answering requests while it waits, since an active peer may still be inside
//! its exchange. Once every worker waits, nothing is in flight: each writes its state (the
//! held ticket included) and world rank 0 adds the simulator's (clocks, queues, counters,
//! the parameter server). Waiting costs no virtual time, but operations just after the cut
//! can be ordered differently from a run without checkpoints, so a run with checkpoints is
//! reproducible bit for bit — resumed or not — yet not bit-identical to one without.

use super::checkpointing::{self, CheckpointParts};
use super::records::Seen;
use super::worker::{before_compute, local_step, Clock, Local, Prepared};
use super::{
    EvalModel, EvalRecord, Event, RunConfig, WorkerOutcome, WorkerRecord, RECORD_PARAMS_MAX,
};
use crate::algorithms::asynchronous::{Ticket, TicketPlan, DONE};
use crate::algorithms::leader::elect;
use crate::algorithms::AsyncAlgorithm;
use crate::checkpoint::{Identity, StateDict};
use crate::learner::{Access, HostBuffers, LearnerContext, LearnerFactory};
use crate::transport::{Communicator, CounterOp};
use crate::{Error, Result};

/// One worker's whole asynchronous run (after the shared preparation).
pub(super) fn run_async_worker(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
    prepared: Prepared,
    algorithm: Box<dyn AsyncAlgorithm>,
) -> Result<WorkerOutcome> {
    let mut run = AsyncRun::new(comm, config, emit, prepared, algorithm);
    run.resume()?;
    run.work()?;
    run.leave()
}

/// An asynchronous worker's state through its run.
struct AsyncRun<'a> {
    comm: &'a mut dyn Communicator,
    config: &'a RunConfig,
    emit: &'a (dyn Fn(Event) + Sync),
    algorithm: Box<dyn AsyncAlgorithm>,
    local: Local,
    rank: usize,
    n: u64,
    /// Local steps per worker between collective rounds (algorithms with rounds).
    round_tau: Option<u64>,
    plan: TicketPlan,
    clock: Clock,
    progress: Progress,
    /// When an injected fault stopped this worker.
    stopped_at: Option<f64>,
    /// The evaluation this worker made at the end (`eval.model = "worker"`).
    final_evals: Vec<EvalRecord>,
    /// Who this worker's checkpoint files belong to (runs with checkpoints).
    identity: Option<Identity>,
    cuts: Option<Cuts>,
    /// A ticket drawn at a checkpoint cut, kept across it (and across a resume).
    held: Option<u64>,
}

impl<'a> AsyncRun<'a> {
    fn new(
        comm: &'a mut dyn Communicator,
        config: &'a RunConfig,
        emit: &'a (dyn Fn(Event) + Sync),
        prepared: Prepared,
        algorithm: Box<dyn AsyncAlgorithm>,
    ) -> Self {
        let total_steps = prepared.total_steps;
        let layout_fingerprint = prepared.layout_fingerprint;
        let rank = comm.rank();
        let n = comm.size() as u64;
        let round_tau = algorithm.round_tau();
        let plan = TicketPlan {
            workers: n,
            round_steps: round_tau.map(|tau| tau * n),
            budget: total_steps.map(|s| s * n),
        };
        let local = Local::new(prepared, config, 0);
        let clock = Clock::start();
        let progress = Progress {
            rank,
            lr: config.optimizer.lr,
            ..Default::default()
        };
        let identity =
            checkpointing::checkpoint_identity(config, rank, n as usize, layout_fingerprint);
        let cuts = config
            .checkpoint
            .as_ref()
            .map(|c| Cuts::new(plan, c.every, total_steps));
        Self {
            comm,
            config,
            emit,
            algorithm,
            local,
            rank,
            n,
            round_tau,
            plan,
            clock,
            progress,
            stopped_at: None,
            final_evals: Vec::new(),
            identity,
            cuts,
            held: None,
        }
    }

    /// Restores the checkpoint the config resumes from, if any.
    fn resume(&mut self) -> Result<()> {
        let Some(cuts) = self.cuts.as_mut() else {
            return Ok(());
        };
        let Some(saved) = checkpointing::resumed(self.config, self.identity.as_ref(), self.rank)?
        else {
            return Ok(());
        };
        let (r, local) = (&saved.runner, &mut self.local);
        local
            .learner
            .host_access(HostBuffers::PARAMS, Access::Write)?;
        r.f32s_into("params", &mut local.params)?;
        local.losses = r.f64s("losses")?.to_vec();
        local.window.load_state(r.dict("window")?)?;
        r.f32s_into("shared_state", &mut local.shared_state)?;
        self.progress.load_state(r.dict("progress")?)?;
        self.held = Some(r.u64("held_ticket")?);
        cuts.next = r.u64("next_cut")?;
        checkpointing::restore_components(
            self.comm,
            self.config,
            &saved,
            local,
            self.algorithm.as_mut(),
            None,
        )
    }

    /// Brings the parameters to the host buffer (from a learner's model on a GPU), before the
    /// runner or a round reads them, or changes them (`Access::Write`).
    fn host_params(&mut self, access: Access) -> Result<()> {
        self.local.learner.host_access(HostBuffers::PARAMS, access)
    }

    /// Draws tickets until the run's budget is spent or a fault stops this worker: local
    /// steps, collective rounds, and the checkpoint cuts they reach.
    fn work(&mut self) -> Result<()> {
        loop {
            // A stopped worker leaves before drawing more work (without collective rounds the
            // others go on), even one the scheduler starved of every step so far.
            if self.round_tau.is_none() && self.held.is_none() {
                if let Some(at) = self.comm.stopped_by_fault() {
                    self.stopped_at = Some(at);
                    return Ok(());
                }
            }
            let out_of_time = self
                .config
                .time_budget
                .is_some_and(|b| self.clock.now(self.comm) >= b);
            let (number, ticket) = match self.held.take() {
                // Time budgets are refused with checkpoints, so no stop was requested.
                Some(number) => (number, self.plan.decide(number, 0)),
                None => self.plan.next(self.comm, out_of_time)?,
            };
            if let Ticket::Step { .. } = ticket {
                self.cut_if_due(number)?;
            }
            let global = match ticket {
                Ticket::Stop => return Ok(()),
                Ticket::Round { index } => {
                    let metric = self.local.window.mean();
                    self.host_params(Access::Write)?;
                    self.algorithm
                        .round(self.comm, &mut self.local.params, index, metric)?;
                    continue;
                }
                Ticket::Step { global } => global,
            };
            if !self.take_step(global)? {
                return Ok(());
            }
        }
    }

    /// At step ticket `number`: if it reaches the next checkpoint cut, waits there for
    /// everyone (a passive AD-PSGD worker answering its peers meanwhile), then writes this
    /// worker's state with the ticket it holds.
    fn cut_if_due(&mut self, number: u64) -> Result<()> {
        let (Some(cuts), Some(identity)) = (&mut self.cuts, &self.identity) else {
            return Ok(());
        };
        if !cuts.due(number) {
            return Ok(());
        }
        let label = cuts.label();
        cuts.advance();
        // A passive worker serves its peers' averaging at the cut, and the checkpoint reads.
        self.local
            .learner
            .host_access(HostBuffers::PARAMS, Access::Write)?;
        let transport = if self.algorithm.serves_at_cut(self.rank) {
            let mut serve =
                |c: &mut dyn Communicator| self.algorithm.serve_at_cut(c, &mut self.local.params);
            self.comm.checkpoint_cut(Some(&mut serve))?
        } else {
            self.comm.checkpoint_cut(None)?
        };
        let mut runner = checkpointing::runner_state(&self.local);
        runner.put_dict("progress", self.progress.save_state());
        runner.put_u64("held_ticket", number);
        runner.put_u64("next_cut", cuts.next);
        checkpointing::write_checkpoint(
            self.config,
            identity,
            label,
            self.emit,
            CheckpointParts {
                runner,
                optimizer: &self.local.optimizer,
                learner: self.local.learner.as_mut(),
                algorithm: self.algorithm.as_ref(),
                transport: transport.unwrap_or_default(),
            },
        )
    }

    /// The local step of step ticket `global`, then the evaluation and the record due at this
    /// worker's new step count. Returns false when an injected fault stopped this worker and
    /// it leaves the run.
    fn take_step(&mut self, global: u64) -> Result<bool> {
        self.progress.work = global + 1;
        self.progress.lr = self
            .config
            .optimizer
            .lr_at(global / self.n, self.clock.now(self.comm));
        let (step, lr) = (self.progress.step, self.progress.lr);
        before_compute(
            self.algorithm.as_mut(),
            self.comm,
            &mut self.local,
            step,
            lr,
        )?;
        match self.comm.compute(step) {
            // Without collective rounds the others can go on: leave the run.
            Err(Error::Stopped { at, .. }) if self.round_tau.is_none() => {
                self.stopped_at = Some(at);
                return Ok(false);
            }
            other => other?,
        }
        let loss = local_step(
            self.comm,
            &mut self.local,
            self.algorithm.as_mut(),
            step,
            lr,
            // Asynchronous workers never meet every step: a divergence stops the run.
            None,
        )?;
        self.local.losses.push(loss);
        self.progress.add_loss(loss);
        let step = step + 1;
        self.progress.step = step;

        if self.config.eval_every > 0 && step.is_multiple_of(self.config.eval_every) {
            let seconds = self.clock.now(self.comm);
            for e in evaluate_local(self.comm, self.config, &mut self.local, step, seconds)? {
                (self.emit)(Event::Eval(e));
            }
        }
        if step.is_multiple_of(self.config.log_every) {
            let seconds = self.clock.now(self.comm);
            self.record_params()?;
            self.emit_record(seconds);
        }
        Ok(true)
    }

    /// Brings the parameters to the host before a record, which carries small models'.
    fn record_params(&mut self) -> Result<()> {
        if self.local.params.len() <= RECORD_PARAMS_MAX {
            self.host_params(Access::Read)?;
        }
        Ok(())
    }

    /// Emits this worker's record now (no collective) and starts a new interval.
    fn emit_record(&mut self, seconds: f64) {
        let record = self
            .progress
            .record(self.comm, self.algorithm.as_mut(), &self.local, seconds);
        (self.emit)(Event::Worker(record));
    }

    /// Leaves the run: the last record and (`eval.model = "worker"`) evaluation, and the
    /// outcome.
    fn leave(mut self) -> Result<WorkerOutcome> {
        // Leave: count this worker out, then let the algorithm finish (a passive AD-PSGD worker
        // answers its peers until everybody is done; EASGD reads the final center).
        self.comm.counter(DONE, CounterOp::Add(1))?;
        if self.stopped_at.is_none() {
            self.host_params(Access::Write)?;
            self.algorithm.finish(self.comm, &mut self.local.params)?;
        }
        let seconds = self.clock.now(self.comm);
        let step = self.progress.step;
        // The outcome carries the parameters.
        self.host_params(Access::Read)?;
        if step > self.progress.logged_at || step == 0 {
            self.emit_record(seconds);
        }
        if self.stopped_at.is_none() && self.config.eval_model == EvalModel::Workers {
            let eval = self.local.learner.evaluate(&self.local.params)?;
            let record = EvalRecord::new(self.config, step, Some(self.rank), eval, seconds);
            (self.emit)(Event::Eval(record.clone()));
            self.final_evals.push(record);
        }
        if self.local.state_len > 0 {
            self.local
                .learner
                .host_access(HostBuffers::STATE, Access::Read)?;
            self.local
                .learner
                .read_shared_state(&mut self.local.shared_state);
        }
        let stats = self.comm.stats().since(&self.local.diag.0);
        Ok(WorkerOutcome {
            final_evals: self.final_evals,
            stopped_at: self.stopped_at,
            ..self
                .local
                .outcome(self.algorithm.as_mut(), self.rank, step, seconds, stats)
        })
    }
}

/// A worker's counters between two log records of an asynchronous run.
#[derive(Default)]
struct Progress {
    rank: usize,
    /// Local steps this worker took.
    step: u64,
    /// Local steps of the whole run handed out so far.
    work: u64,
    lr: f32,
    interval_sum: f64,
    interval_count: u64,
    /// The step of the latest record.
    logged_at: u64,
}

impl Progress {
    fn save_state(&self) -> StateDict {
        let mut s = StateDict::new();
        s.put_u64s(
            "counts",
            &[self.step, self.work, self.interval_count, self.logged_at],
        );
        s.put_f64("interval_sum", self.interval_sum);
        s.put_f64("lr", f64::from(self.lr));
        s
    }

    fn load_state(&mut self, s: &StateDict) -> Result<()> {
        let &[step, work, interval_count, logged_at] = s.u64s("counts")? else {
            return Err(Error::Checkpoint(
                "progress: counts must be four numbers".into(),
            ));
        };
        (self.step, self.work, self.interval_count, self.logged_at) =
            (step, work, interval_count, logged_at);
        self.interval_sum = s.f64("interval_sum")?;
        self.lr = s.f64("lr")? as f32;
        Ok(())
    }

    fn add_loss(&mut self, loss: f64) {
        self.interval_sum += loss;
        self.interval_count += 1;
    }

    /// This worker's record now (no collective), and a new interval.
    fn record(
        &mut self,
        comm: &dyn Communicator,
        algorithm: &mut dyn AsyncAlgorithm,
        local: &Local,
        seconds: f64,
    ) -> WorkerRecord {
        let staleness = algorithm.staleness();
        let seen = Seen::at_record(algorithm);
        let traffic = comm.stats().since(&local.diag.0);
        let params = &local.params;
        let record = WorkerRecord {
            step: self.step,
            worker: self.rank,
            loss: self.interval_sum / self.interval_count.max(1) as f64,
            metric: local.window.mean(),
            lr: self.lr,
            leader: seen.leader,
            consensus: None,
            peers: seen.peers,
            bytes_sent: traffic.bytes_sent,
            bytes_received: traffic.bytes_received,
            seconds,
            work: Some(self.work),
            staleness: staleness.map(|s| s.0),
            staleness_max: staleness.map(|s| s.1),
            leader_changes: seen.leader_changes,
            params: (params.len() <= RECORD_PARAMS_MAX).then(|| params.to_vec()),
        };
        (self.interval_sum, self.interval_count, self.logged_at) = (0.0, 0, self.step);
        record
    }
}

/// Where an asynchronous run's checkpoint cuts fall, in tickets (see the module docs).
struct Cuts {
    plan: TicketPlan,
    /// Global steps between two cuts (`every × N`).
    every_global: u64,
    every: u64,
    /// The first ticket that is not a step or round ticket (the budget's end).
    end: Option<u64>,
    /// The next cut (1, 2, …).
    next: u64,
}

impl Cuts {
    fn new(plan: TicketPlan, every: u64, total_steps: Option<u64>) -> Self {
        let end = total_steps.map(|s| {
            let budget = s.saturating_mul(plan.workers);
            match plan.round_steps {
                Some(r) => budget.div_ceil(r).saturating_mul(r + plan.workers),
                None => budget,
            }
        });
        Self {
            plan,
            every_global: every.saturating_mul(plan.workers),
            every,
            end,
            next: 1,
        }
    }

    /// The ticket of cut `k`: global step k·every·N, rounded up to a cycle's start with rounds
    /// (its first N tickets are then step tickets: everyone draws one and waits, and no round
    /// is left half-entered).
    fn ticket(&self, k: u64) -> u64 {
        let global = k.saturating_mul(self.every_global);
        match self.plan.round_steps {
            Some(r) => global
                .div_ceil(r)
                .saturating_mul(r.saturating_add(self.plan.workers)),
            None => global,
        }
    }

    /// Whether drawing ticket `number` reaches the next cut. A cut so close to the end that
    /// the N tickets drawn at it would include a stop is skipped: a worker that leaves could
    /// not wait at it.
    fn due(&self, number: u64) -> bool {
        let at = self.ticket(self.next);
        number >= at
            && self
                .end
                .is_some_and(|end| at.saturating_add(self.plan.workers) <= end)
    }

    /// The checkpoint's step label: cut k is "step k·every" (every worker's average).
    fn label(&self) -> u64 {
        self.next.saturating_mul(self.every)
    }

    /// Moves past the cut just taken (and past later cuts at the same ticket).
    fn advance(&mut self) {
        let at = self.ticket(self.next);
        self.next += 1;
        while self.ticket(self.next) <= at {
            self.next += 1;
        }
    }
}

/// Evaluations during an asynchronous run, without any collective: the worker's own model, or
/// the parameter server's center read by worker 0 (a diagnostic read).
fn evaluate_local(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    local: &mut Local,
    step: u64,
    seconds: f64,
) -> Result<Vec<EvalRecord>> {
    let record = |eval, worker| EvalRecord::new(config, step, worker, eval, seconds);
    Ok(match config.eval_model {
        EvalModel::Workers => vec![record(
            local.learner.evaluate(&local.params)?,
            Some(comm.rank()),
        )],
        EvalModel::Center if comm.rank() == 0 => {
            local
                .diag
                .run(comm, |c| c.server_pull(&mut local.scratch))?;
            vec![record(local.learner.evaluate(&local.scratch)?, None)]
        }
        _ => Vec::new(),
    })
}

/// The final evaluation of an asynchronous run's average, leader or center model, made by the
/// runner from the workers' outcomes (workers that an injected fault stopped are left out).
/// Returns nothing for `eval.model = "worker"`: workers evaluated themselves. Public for
/// launchers that collect the outcomes themselves (the MPI transport's rank 0).
pub fn final_evaluations(
    config: &RunConfig,
    factory: &dyn LearnerFactory,
    outcomes: &[WorkerOutcome],
) -> Result<Vec<EvalRecord>> {
    let survivors: Vec<&WorkerOutcome> =
        outcomes.iter().filter(|o| o.stopped_at.is_none()).collect();
    let Some(first) = survivors.first() else {
        return Err(Error::Transport(
            "every worker was stopped by an injected fault: nothing left to evaluate".into(),
        ));
    };
    let (model, worker): (Vec<f32>, Option<usize>) = match config.eval_model {
        EvalModel::Workers => return Ok(Vec::new()),
        EvalModel::Average => (average(survivors.iter().map(|o| &o.params[..])), None),
        EvalModel::Leader => {
            let metrics: Vec<f64> = survivors.iter().map(|o| o.metric).collect();
            let best = elect(&metrics, 0..metrics.len()).unwrap_or(0);
            (survivors[best].params.clone(), Some(survivors[best].rank))
        }
        EvalModel::Center => (
            first.center.clone().ok_or_else(|| {
                Error::Config(format!(
                    "eval.model = \"center\" needs an algorithm with a center variable; {} has none",
                    config.algorithm.name()
                ))
            })?,
            None,
        ),
    };
    let mut learner = factory.build(LearnerContext {
        rank: 0,
        workers: config.workers,
        seed: config.seed,
    })?;
    if !first.shared_state.is_empty() {
        learner.host_access(HostBuffers::STATE, Access::Write)?;
        learner.write_shared_state(&average(survivors.iter().map(|o| &o.shared_state[..])));
    }
    let steps = outcomes.iter().map(|o| o.steps).sum::<u64>() / outcomes.len().max(1) as u64;
    Ok(vec![EvalRecord::new(
        config,
        steps,
        worker,
        learner.evaluate(&model)?,
        outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max),
    )])
}

/// The element-wise mean of equally long vectors, summed in the given (rank) order.
fn average<'a>(vectors: impl Iterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut sum: Vec<f32> = Vec::new();
    let mut count = 0usize;
    for v in vectors {
        if sum.is_empty() {
            sum = v.to_vec();
        } else {
            sum.iter_mut().zip(v).for_each(|(s, x)| *s += *x);
        }
        count += 1;
    }
    let inv = 1.0 / count.max(1) as f32;
    sum.iter_mut().for_each(|s| *s *= inv);
    sum
}
