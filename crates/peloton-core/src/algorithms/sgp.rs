//! Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat; ICML 2019) and overlap SGP,
//! ALGORITHMS.md §3.
//!
//! Each worker keeps a numerator x_i and a push-sum weight w_i (initially 1); its model is the
//! de-biased z_i = x_i / w_i. Every step:
//!
//! ```text
//! g   = ∇F(z_i; ξ)                          gradient at the de-biased point
//! x_i ← x_i − γ·(momentum-processed g)      local step on the numerator
//! send W_ji·(x_i, w_i) to every out-peer j  the sender splits its own mass (W column-stochastic)
//! x_i ← W_ii·x_i + Σ received numerators;  w_i likewise;  z_i = x_i / w_i
//! ```
//!
//! Between steps the runner's parameter buffer holds z_i (so evaluation, consensus distance and
//! checkpoints see the model); `before_step` re-biases it into the numerator after the gradient
//! is computed, `after_step` de-biases after mixing — the reference's forward pre-hook and
//! backward hook.
//!
//! **Lazy mixing.** When every round is doubly stochastic (the default exponential graphs are
//! regular circulants with uniform weights) all weights provably stay exactly 1, and the
//! multiply/divide is skipped: the worker sends its raw parameters and the receiver computes
//! `(x_i + Σ x_j)·1/(k+1)`. With one peer (weights ½) this equals the general form bit for bit,
//! which a test checks.
//!
//! **Overlap SGP** (`overlap = true`): messages are sent right after the local step and folded
//! in `staleness` = τ steps later, with a blocking wait if they have not arrived yet, so
//! communication overlaps τ steps of computation and the staleness bound is enforced. By
//! default a message is folded in exactly τ steps after it was sent, which keeps threads runs
//! deterministic; `eager = true` also folds in messages that arrived earlier, as the reference
//! does (then results depend on timing on the threads transport). Lazy mixing is off in overlap
//! mode. [`Algorithm::drain`] folds in everything in flight (before evaluations and at the end),
//! so no mass is lost.
//!
//! Messages are the flat parameters followed by the push-sum weight as an f64 stored in two f32
//! slots (bit-exact), B + 8 bytes, to each of the round's out-peers. Momentum buffers stay local.

use std::collections::VecDeque;

use peloton_topology::{Directions, NodeRound, Protocol, Schedule, ScheduleConfig};
use serde::{Deserialize, Serialize};

use super::dpsgd::build_checked;
use super::gossip::LinkStats;
use super::{Algorithm, AlgorithmSpec, Observation, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::learner::HostBuffers;
use crate::transport::{Communicator, RecvRequest, ReduceOp, SendRequest, Tag};
use crate::{Error, Result};

/// Tag of push-sum messages.
pub const TAG_PUSH_SUM: Tag = 0x5055;

/// Whether the push-sum weight is tracked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Debias {
    /// Skip the weights exactly when they provably stay 1 (and not in overlap mode).
    #[default]
    Auto,
    /// Always track weights and de-bias (the general push-sum form).
    Always,
}

/// `name = "sgp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgpConfig {
    /// The directed gossip schedule; SGP's one-peer exponential graph by default.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    /// Overlap SGP: fold messages in `staleness` steps after they were sent.
    #[serde(default)]
    pub overlap: bool,
    /// τ ≥ 1: the staleness bound of overlap SGP, enforced by a blocking wait.
    #[serde(default = "default_staleness")]
    pub staleness: u64,
    /// Overlap SGP: also fold in messages that arrived before their deadline (timing-dependent).
    #[serde(default)]
    pub eager: bool,
    #[serde(default)]
    pub debias: Debias,
}

fn default_schedule() -> ScheduleConfig {
    ScheduleConfig::Exponential {
        peers: 1,
        directions: Directions::Forward,
    }
}
fn default_staleness() -> u64 {
    1
}

impl Default for SgpConfig {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            overlap: false,
            staleness: default_staleness(),
            eager: false,
            debias: Debias::Auto,
        }
    }
}

impl SgpConfig {
    pub fn validate(&self, workers: usize, seed: u64) -> Result<()> {
        ensure_config!(
            !self.overlap || self.staleness >= 1,
            "algorithm.staleness must be at least 1 with overlap = true (staleness 0 is plain SGP: set overlap = false)"
        );
        ensure_config!(
            self.overlap || !self.eager,
            "algorithm.eager only applies to overlap SGP: set overlap = true or remove eager"
        );
        build_checked(&self.schedule, workers, seed, Protocol::PushSum)?;
        Ok(())
    }

    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<Sgp> {
        let schedule = build_checked(&self.schedule, workers, seed, Protocol::PushSum)?;
        let lazy = self.debias == Debias::Auto && !self.overlap && schedule.weights_stay_one();
        Ok(Sgp {
            schedule,
            lazy,
            overlap: self.overlap,
            staleness: self.staleness,
            eager: self.eager,
            weight: 1.0,
            outgoing: vec![0.0; len + 2],
            incoming: vec![0.0; len + 2],
            pending: VecDeque::new(),
            sent_weights: VecDeque::new(),
            sends: Vec::new(),
            links: LinkStats::default(),
        })
    }
}

impl AlgorithmSpec for SgpConfig {
    const NAME: &'static str = "sgp";
    const SUMMARY: &'static str =
        "stochastic gradient push on a directed time-varying graph; overlap SGP";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers, run.seed)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len, run.seed)?))
    }

    fn variants() -> Vec<Self> {
        vec![SgpConfig {
            overlap: true,
            staleness: 2,
            ..Default::default()
        }]
    }
}

/// One worker's SGP state.
pub struct Sgp {
    schedule: Schedule,
    lazy: bool,
    overlap: bool,
    staleness: u64,
    eager: bool,
    /// The push-sum weight w_i.
    weight: f64,
    outgoing: Vec<f32>,
    incoming: Vec<f32>,
    /// Overlap mode: receives posted and not yet folded in, oldest first, with their round.
    pending: VecDeque<(u64, RecvRequest)>,
    /// Overlap mode: the weight this worker sent in each round still in flight.
    sent_weights: VecDeque<(u64, f64)>,
    sends: Vec<SendRequest>,
    links: LinkStats,
}

impl Sgp {
    /// True when the weights are not tracked (they provably stay 1).
    pub fn is_lazy(&self) -> bool {
        self.lazy
    }

    /// The push-sum weight held here, and the weight this worker sent that is still in flight
    /// (overlap mode; always 0 otherwise). Over all workers the two sum to N at every step.
    pub fn mass(&self) -> (f64, f64) {
        (self.weight, self.sent_weights.iter().map(|s| s.1).sum())
    }

    /// `params ← x_i / w_i`.
    fn debias(&self, params: &mut [f32]) {
        if self.weight != 1.0 {
            kernels::scale(params, (1.0 / self.weight) as f32);
        }
    }

    /// `params ← z_i · w_i`.
    fn rebias(&self, params: &mut [f32]) {
        if self.weight != 1.0 {
            kernels::scale(params, self.weight as f32);
        }
    }

    /// Sends this round's shares of (x_i, w_i) and keeps W_ii of them. `params` holds x_i.
    fn push(
        &mut self,
        comm: &mut dyn Communicator,
        node: &NodeRound,
        params: &mut [f32],
        round: u64,
    ) -> Result<()> {
        let d = params.len();
        let mut sent = 0.0;
        for &(peer, share) in &node.send {
            let (values, slots) = self.outgoing.split_at_mut(d);
            values.copy_from_slice(params);
            kernels::scale(values, share as f32);
            super::asynchronous::encode_f64(self.weight * share, slots);
            self.sends
                .push(comm.isend(peer, TAG_PUSH_SUM, &self.outgoing)?);
            self.links.sent_to(peer, d + 2);
            sent += self.weight * share;
        }
        kernels::scale(params, node.self_weight as f32);
        self.weight *= node.self_weight;
        if self.overlap {
            self.sent_weights.push_back((round, sent));
        }
        Ok(())
    }

    /// Adds one received message to (x_i, w_i).
    fn fold(&mut self, params: &mut [f32]) {
        let d = params.len();
        kernels::axpy(params, 1.0, &self.incoming[..d]);
        self.weight += super::asynchronous::decode_f64(&self.incoming[d..]);
    }

    fn complete_sends(&mut self, comm: &mut dyn Communicator) -> Result<()> {
        for request in self.sends.drain(..) {
            comm.wait_send(request)?;
        }
        Ok(())
    }

    /// The lazy round: raw parameters out, `(x + Σ x_j)·u` in (u = the uniform weight), or the
    /// receiver-weighted mix when the round's weights are not uniform.
    fn lazy_round(
        &mut self,
        comm: &mut dyn Communicator,
        node: &NodeRound,
        params: &mut [f32],
    ) -> Result<()> {
        let d = params.len();
        for &(peer, _) in &node.send {
            self.sends.push(comm.isend(peer, TAG_PUSH_SUM, params)?);
            self.links.sent_to(peer, d);
        }
        let uniform = node.recv.iter().all(|&(_, w)| w == node.self_weight);
        if !uniform {
            kernels::scale(params, node.self_weight as f32);
        }
        for &(peer, w) in &node.recv {
            comm.recv(peer, TAG_PUSH_SUM, &mut self.incoming[..d])?;
            self.links.received_from(peer, d);
            let w = if uniform { 1.0 } else { w as f32 };
            kernels::axpy(params, w, &self.incoming[..d]);
        }
        if uniform && node.self_weight != 1.0 {
            kernels::scale(params, node.self_weight as f32);
        }
        self.complete_sends(comm)
    }

    /// Folds in every pending message due by step `t` (all of them when `t` is None).
    fn fold_due(
        &mut self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        t: Option<u64>,
    ) -> Result<()> {
        let d = params.len();
        while let Some((round, request)) = self.pending.front() {
            let due = t.is_none_or(|t| round + self.staleness <= t);
            if !(due || (self.eager && comm.test_recv(request)?)) {
                break;
            }
            let (_, request) = self.pending.pop_front().expect("front exists");
            let peer = request.src;
            comm.wait_recv(request, &mut self.incoming)?;
            self.links.received_from(peer, d + 2);
            self.fold(params);
        }
        // Shares sent in rounds whose receivers have folded them in are no longer in flight.
        while let Some(&(round, _)) = self.sent_weights.front() {
            if t.is_some_and(|t| round + self.staleness > t) {
                break;
            }
            self.sent_weights.pop_front();
        }
        Ok(())
    }

    /// Makes every worker hold the exact average Σx/Σw with weight 1 (SlowMo's exact
    /// averaging). Collective. `params` holds z_i on entry and on exit.
    pub fn exact_average(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        self.drain(comm, params)?;
        if self.lazy {
            return comm.all_reduce(params, ReduceOp::Mean);
        }
        let d = params.len();
        let (values, slots) = self.outgoing.split_at_mut(d);
        values.copy_from_slice(params);
        kernels::scale(values, self.weight as f32);
        slots[0] = self.weight as f32;
        slots[1] = 0.0;
        comm.all_reduce(&mut self.outgoing, ReduceOp::Sum)?;
        let total = self.outgoing[d];
        params.copy_from_slice(&self.outgoing[..d]);
        kernels::scale(params, 1.0 / total);
        self.weight = 1.0;
        Ok(())
    }
}

impl Algorithm for Sgp {
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        // `drain` ran first: no push-sum mass may be in flight, or it would be lost.
        if !self.pending.is_empty() || !self.sent_weights.is_empty() || !self.sends.is_empty() {
            return Err(Error::Checkpoint(
                "sgp has messages in flight; checkpoints are taken after a drain".into(),
            ));
        }
        state.put_f64("weight", self.weight);
        state.put_dict("links", self.links.save_state());
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.weight = state.f64("weight")?;
        self.links.load_state(state.dict("links")?)
    }
    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        // The gradient was taken at z_i; the optimizer steps the numerator.
        if !self.lazy {
            self.rebias(ctx.params);
        }
        Ok(())
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let t = ctx.step;
        let node = self.schedule.node(t, ctx.comm.rank());
        if self.lazy {
            return self.lazy_round(ctx.comm, &node, ctx.params);
        }
        self.push(ctx.comm, &node, ctx.params, t)?;
        let d = ctx.params.len();
        for &(peer, _) in &node.recv {
            let request = ctx.comm.irecv(peer, TAG_PUSH_SUM, d + 2)?;
            self.pending.push_back((t, request));
        }
        let deadline = if self.overlap { Some(t) } else { None };
        self.fold_due(ctx.comm, ctx.params, deadline)?;
        self.complete_sends(ctx.comm)?;
        self.debias(ctx.params);
        Ok(())
    }

    /// The parameters: re-biased before the step (unless lazy), pushed and folded after it.
    fn touches(&self, _step: u64) -> Touches {
        Touches {
            before_step: if self.lazy {
                HostBuffers::NONE
            } else {
                HostBuffers::PARAMS
            },
            ..Touches::after_step_params(true)
        }
    }

    fn drain(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.rebias(params);
        self.fold_due(comm, params, None)?;
        self.sent_weights.clear();
        self.debias(params);
        Ok(())
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            links: Some(&mut self.links),
            ..Default::default()
        }
    }
}
