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

use std::collections::BTreeMap;

use super::{
    CheckpointParts, DiagnosticTraffic, EvalModel, EvalRecord, Event, Prepared, RunConfig,
    WorkerOutcome, WorkerRecord,
};
use crate::algorithms::asynchronous::{Ticket, TicketPlan, DONE};
use crate::algorithms::leader::{elect, LossWindow};
use crate::algorithms::AsyncAlgorithm;
use crate::checkpoint::{self, StateDict};
use crate::learner::{LearnerContext, LearnerFactory};
use crate::transport::{Communicator, CounterOp};
use crate::{Error, Result};

/// One worker's whole asynchronous run (after the shared preparation).
pub(super) fn run_async_worker(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
    prepared: Prepared,
    mut algorithm: Box<dyn AsyncAlgorithm>,
) -> Result<WorkerOutcome> {
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
    let n = comm.size() as u64;
    let len = params.len();
    let round_tau = algorithm.round_tau();
    let plan = TicketPlan {
        workers: n,
        round_steps: round_tau.map(|tau| tau * n),
        budget: total_steps.map(|s| s * n),
    };
    let mut grad = vec![0.0f32; len];
    let mut scratch = vec![0.0f32; len];
    let mut optimizer = config.optimizer.init(learner.layout());
    let mut window = LossWindow::new(config.leader_window);
    let mut losses = Vec::new();
    let start = std::time::Instant::now();
    let clock =
        |comm: &dyn Communicator| comm.now().unwrap_or_else(|| start.elapsed().as_secs_f64());
    let mut progress = Progress {
        rank,
        lr: config.optimizer.lr,
        ..Default::default()
    };
    let mut stopped_at = None;
    let mut final_evals = Vec::new();
    let identity = super::checkpoint_identity(config, rank, n as usize, layout_fingerprint);
    let mut cuts = config
        .checkpoint
        .as_ref()
        .map(|c| Cuts::new(plan, c.every, total_steps));
    // A ticket drawn at a checkpoint cut, kept across it (and across a resume).
    let mut held: Option<u64> = None;
    if let (Some(c), Some(identity), Some(cuts)) = (&config.checkpoint, &identity, &mut cuts) {
        if let Some(at) = c.resume {
            let saved = checkpoint::load(&c.worker_file(at, rank))?;
            saved.check(identity, at)?;
            let r = &saved.runner;
            r.f32s_into("params", &mut params)?;
            losses = r.f64s("losses")?.to_vec();
            window.load_state(r.dict("window")?)?;
            r.f32s_into("shared_state", &mut shared_state)?;
            progress.load_state(r.dict("progress")?)?;
            held = Some(r.u64("held_ticket")?);
            cuts.next = r.u64("next_cut")?;
            super::restore_components(
                comm,
                config,
                &saved,
                &mut optimizer,
                learner.as_mut(),
                algorithm.as_mut(),
                &mut diag,
            )?;
            // After the agreement above: the restored totals do not hold its traffic.
            diag.0 = super::stats_from(r.u64s("diagnostic_traffic")?)?;
        }
    }

    loop {
        // A stopped worker leaves before drawing more work (without collective rounds the
        // others go on), even one the scheduler starved of every step so far.
        if round_tau.is_none() && held.is_none() {
            if let Some(at) = comm.stopped_by_fault() {
                stopped_at = Some(at);
                break;
            }
        }
        let out_of_time = config.time_budget.is_some_and(|b| clock(comm) >= b);
        let (number, ticket) = match held.take() {
            // Time budgets are refused with checkpoints, so no stop was requested.
            Some(number) => (number, plan.decide(number, 0)),
            None => plan.next(comm, out_of_time)?,
        };
        if let (Some(cuts), Some(identity), Ticket::Step { .. }) = (&mut cuts, &identity, ticket) {
            if cuts.due(number) {
                let label = cuts.label();
                cuts.advance();
                // Wait for everyone (a passive AD-PSGD worker answering its peers meanwhile),
                // then write this worker's state with the ticket it holds.
                let transport = if algorithm.serves_at_cut(rank) {
                    let mut serve =
                        |c: &mut dyn Communicator| algorithm.serve_at_cut(c, &mut params);
                    comm.checkpoint_cut(Some(&mut serve))?
                } else {
                    comm.checkpoint_cut(None)?
                };
                let mut runner = StateDict::new();
                runner.put_f32s("params", &params);
                runner.put_f64s("losses", &losses);
                runner.put_dict("window", window.save_state());
                runner.put_f32s("shared_state", &shared_state);
                runner.put_dict("progress", progress.save_state());
                runner.put_u64("held_ticket", number);
                runner.put_u64("next_cut", cuts.next);
                runner.put_u64s("diagnostic_traffic", &super::stats_to(diag.0));
                super::write_checkpoint(
                    config,
                    identity,
                    label,
                    emit,
                    CheckpointParts {
                        runner,
                        optimizer: &optimizer,
                        learner: learner.as_mut(),
                        algorithm: algorithm.as_ref(),
                        transport: transport.unwrap_or_default(),
                    },
                )?;
            }
        }
        let global = match ticket {
            Ticket::Stop => break,
            Ticket::Round { index } => {
                algorithm.round(comm, &mut params, index, window.mean())?;
                continue;
            }
            Ticket::Step { global } => global,
        };
        progress.work = global + 1;
        progress.lr = config.optimizer.lr_at(global / n, clock(comm));
        let step = progress.step;
        super::before_compute(
            algorithm.as_mut(),
            comm,
            (&mut params, &mut grad),
            step,
            &window,
            progress.lr,
        )?;
        match comm.compute(step) {
            // Without collective rounds the others can go on: leave the run.
            Err(Error::Stopped { at, .. }) if round_tau.is_none() => {
                stopped_at = Some(at);
                break;
            }
            other => other?,
        }
        let loss = super::local_step(
            comm,
            learner.as_mut(),
            algorithm.as_mut(),
            &mut optimizer,
            (&mut params, &mut grad),
            &mut window,
            step,
            progress.lr,
            // Asynchronous workers never meet every step: a divergence stops the run.
            None,
        )?;
        losses.push(loss);
        progress.add_loss(loss);
        let step = step + 1;
        progress.step = step;

        if config.eval_every > 0 && step.is_multiple_of(config.eval_every) {
            let seconds = clock(comm);
            for e in evaluate_local(
                comm,
                config,
                &mut *learner,
                &params,
                &mut scratch,
                &mut diag,
                step,
                seconds,
            )? {
                emit(Event::Eval(e));
            }
        }
        if step.is_multiple_of(config.log_every) {
            let seconds = clock(comm);
            emit(Event::Worker(progress.record(
                comm,
                algorithm.as_mut(),
                &diag,
                &window,
                &params,
                seconds,
            )));
        }
    }

    // Leave: count this worker out, then let the algorithm finish (a passive AD-PSGD worker
    // answers its peers until everybody is done; EASGD reads the final center).
    comm.counter(DONE, CounterOp::Add(1))?;
    if stopped_at.is_none() {
        algorithm.finish(comm, &mut params)?;
    }
    let seconds = clock(comm);
    let step = progress.step;
    if step > progress.logged_at || step == 0 {
        emit(Event::Worker(progress.record(
            comm,
            algorithm.as_mut(),
            &diag,
            &window,
            &params,
            seconds,
        )));
    }
    if stopped_at.is_none() && config.eval_model == EvalModel::Workers {
        let eval = learner.evaluate(&params)?;
        let record = EvalRecord {
            step,
            model: config.eval_model.name().to_string(),
            worker: Some(rank),
            eval,
            seconds,
        };
        emit(Event::Eval(record.clone()));
        final_evals.push(record);
    }
    if state_len > 0 {
        learner.read_shared_state(&mut shared_state);
    }
    let (links, center, leader_changes) = super::at_the_end(algorithm.as_mut());
    Ok(WorkerOutcome {
        rank,
        stats: comm.stats().since(&diag.0),
        links,
        center,
        params,
        losses,
        final_evals,
        steps: step,
        seconds,
        metric: window.mean(),
        shared_state,
        stopped_at,
        leader_changes,
    })
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
        diag: &DiagnosticTraffic,
        window: &LossWindow,
        params: &[f32],
        seconds: f64,
    ) -> WorkerRecord {
        let staleness = algorithm.staleness();
        let seen = super::Seen::at_record(algorithm);
        let traffic = comm.stats().since(&diag.0);
        let record = WorkerRecord {
            step: self.step,
            worker: self.rank,
            loss: self.interval_sum / self.interval_count.max(1) as f64,
            metric: window.mean(),
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
            params: (params.len() <= super::RECORD_PARAMS_MAX).then(|| params.to_vec()),
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
#[allow(clippy::too_many_arguments)]
fn evaluate_local(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    learner: &mut dyn crate::learner::Learner,
    params: &[f32],
    scratch: &mut [f32],
    diag: &mut DiagnosticTraffic,
    step: u64,
    seconds: f64,
) -> Result<Vec<EvalRecord>> {
    let record = |eval, worker| EvalRecord {
        step,
        model: config.eval_model.name().to_string(),
        worker,
        eval,
        seconds,
    };
    Ok(match config.eval_model {
        EvalModel::Workers => vec![record(learner.evaluate(params)?, Some(comm.rank()))],
        EvalModel::Center if comm.rank() == 0 => {
            diag.run(comm, |c| c.server_pull(scratch))?;
            vec![record(learner.evaluate(scratch)?, None)]
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
        learner.write_shared_state(&average(survivors.iter().map(|o| &o.shared_state[..])));
    }
    let steps = outcomes.iter().map(|o| o.steps).sum::<u64>() / outcomes.len().max(1) as u64;
    Ok(vec![EvalRecord {
        step: steps,
        model: config.eval_model.name().to_string(),
        worker,
        eval: learner.evaluate(&model)?,
        seconds: outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max),
    }])
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

/// Orders an asynchronous run's events by time (then worker): workers log at their own step
/// counts, so there is no common step to wait for. An event is released once every worker has
/// reported a later time, so the stream is in time order; on the simulator (virtual time) it
/// is identical from run to run.
///
/// A checkpoint cut splits the stream: every event before it is sent before any worker's
/// `Checkpoint` (they were all waiting at the cut), so the first `Checkpoint` releases
/// everything pending, and nothing more is released until the last worker's `Checkpoint` is
/// passed on: the committed metrics then end exactly at the cut, where a resumed run goes on.
pub(super) struct TimeOrder {
    latest: Vec<f64>,
    pending: BTreeMap<(u64, usize, u64), Event>,
    sequence: u64,
    /// Workers that wrote their file of the checkpoint in progress.
    checkpoints: usize,
}

impl TimeOrder {
    pub(super) fn new(workers: usize) -> Self {
        Self {
            latest: vec![0.0; workers],
            pending: BTreeMap::new(),
            sequence: 0,
            checkpoints: 0,
        }
    }

    pub(super) fn push(&mut self, event: Event, out: &mut dyn FnMut(&Event)) {
        let (seconds, worker) = match &event {
            Event::Checkpoint { step, .. } => {
                if self.checkpoints == 0 {
                    std::mem::take(&mut self.pending)
                        .into_values()
                        .for_each(|e| out(&e));
                }
                self.checkpoints += 1;
                if self.checkpoints == self.latest.len() {
                    self.checkpoints = 0;
                    out(&Event::Checkpoint {
                        step: *step,
                        worker: 0,
                    });
                    self.release(out);
                }
                return;
            }
            // Asynchronous runs never reset diverged workers (RunConfig::validate).
            Event::Started { .. } | Event::Diverged { .. } => return out(&event),
            Event::Worker(r) => (r.seconds, r.worker),
            Event::Eval(e) => (e.seconds, e.worker.unwrap_or(0)),
        };
        if let Some(latest) = self.latest.get_mut(worker) {
            *latest = latest.max(seconds);
        }
        // Seconds are ≥ 0, so their bit patterns sort like the numbers.
        let key = (seconds.max(0.0).to_bits(), worker, self.sequence);
        self.sequence += 1;
        self.pending.insert(key, event);
        if self.checkpoints == 0 {
            self.release(out);
        }
    }

    /// Passes on the events every worker has reported a *later* time than: any event still
    /// to come has a time at least its worker's latest, so it sorts after them whatever the
    /// order in which the workers' threads delivered theirs (a tie would not).
    fn release(&mut self, out: &mut dyn FnMut(&Event)) {
        let watermark = self.latest.iter().copied().fold(f64::INFINITY, f64::min);
        while let Some(entry) = self.pending.first_entry() {
            if f64::from_bits(entry.key().0) >= watermark {
                break;
            }
            out(&entry.remove());
        }
    }

    pub(super) fn finish(self, out: &mut dyn FnMut(&Event)) {
        self.pending.into_values().for_each(|e| out(&e));
    }
}
