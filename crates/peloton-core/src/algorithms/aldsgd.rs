//! AL-DSGD, adjacent-leader decentralized SGD (He, Wang, Choromanska 2024), exactly as
//! ALGORITHMS.md §4.2 specifies the reference code's update.
//!
//! A MATCHA-style round (by default on dynamic graphs: rotation between relabeled copies of
//! the base graph, each with its own activations) where every message carries two extra
//! scalars, the sender's current mini-batch loss and its degree in this round:
//!
//! ```text
//! y_i   = (1 − α·deg_i)·x_i + α·Σ_{j ∈ N_t(i)} x_j              the usual MATCHA average
//! b     = argmin loss over {i} ∪ N_t(i),  m = argmax degree over {i} ∪ N_t(i)
//! z     = (1 − c1 − c2)·y_i + c1·x_b + c2·x_m
//! x_i  ← z − p1·(z − x_b) − p2·(z − x_m)  =  (1 − p1 − p2)·z + p1·x_b + p2·x_m
//! ```
//!
//! where x_b, x_m are the chosen neighbours' received (post-local-step, pre-averaging)
//! parameters, or the worker's own when it is itself the best / the highest-degree node.
//! Ties go to the worker itself first, then to the lower-ranked partner (the reference takes
//! partners in matching order). A worker with no active partner this step is not updated.
//!
//! Coefficients as the *code* applies them, not as its help text describes them: c1 and p1
//! belong to the **best-loss** neighbour, c2 and p2 to the **max-degree** neighbour. The loss is
//! the current mini-batch loss (no running mean). With `period` > 1 the leader terms are
//! applied every `period` steps and plain MATCHA averaging in between (the reference's
//! `iteration`). The reference does not synchronize the initial models; set
//! `sync_init = false` in `[run]` for that. Only two candidate vectors are kept while
//! streaming the partners' messages, not every partner's model.
//!
//! Communication: B + 8 bytes each way per active matching containing the worker.

use peloton_topology::{GraphSpec, Protocol, Schedule, ScheduleConfig};
use serde::{Deserialize, Serialize};

use super::dpsgd::build_checked;
use super::gossip::{Gossip, TAG_GOSSIP};
use super::{Algorithm, AlgorithmSpec, Observation, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::transport::SendRequest;
use crate::Result;

/// `name = "al-dsgd"`. Defaults are the reference README's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlDsgdConfig {
    /// A symmetric matching schedule; MATCHA (budget 0.5) on an 8-node-style Erdős–Rényi
    /// graph rotated between two relabeled copies by default.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    /// Pull of the averaged model toward the best-loss neighbour.
    #[serde(default = "default_c1")]
    pub c1: f32,
    /// Pull of the averaged model toward the max-degree neighbour.
    #[serde(default = "default_c2")]
    pub c2: f32,
    /// Second (corrective) pull toward the best-loss neighbour.
    #[serde(default = "default_p")]
    pub p1: f32,
    /// Second (corrective) pull toward the max-degree neighbour.
    #[serde(default = "default_p")]
    pub p2: f32,
    /// Leader terms every this many steps (the reference's `iteration`).
    #[serde(default = "default_period")]
    pub period: u64,
}

fn default_schedule() -> ScheduleConfig {
    ScheduleConfig::Rotation {
        base: Box::new(ScheduleConfig::Matcha {
            graph: GraphSpec::ErdosRenyi { p: 0.5, seed: 0 },
            budget: 0.5,
            alpha: None,
        }),
        copies: 2,
        seed: 0,
    }
}
fn default_c1() -> f32 {
    0.3
}
fn default_c2() -> f32 {
    0.1
}
fn default_p() -> f32 {
    0.2
}
fn default_period() -> u64 {
    1
}

impl Default for AlDsgdConfig {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            c1: default_c1(),
            c2: default_c2(),
            p1: default_p(),
            p2: default_p(),
            period: default_period(),
        }
    }
}

impl AlDsgdConfig {
    pub fn validate(&self, workers: usize, seed: u64) -> Result<()> {
        for (key, v) in [
            ("c1", self.c1),
            ("c2", self.c2),
            ("p1", self.p1),
            ("p2", self.p2),
        ] {
            ensure_config!(
                v.is_finite() && (0.0..=1.0).contains(&v),
                "algorithm.{key} must be in [0, 1], got {v}"
            );
        }
        ensure_config!(
            self.c1 + self.c2 <= 1.0,
            "algorithm.c1 + algorithm.c2 must be at most 1, got {}",
            self.c1 + self.c2
        );
        ensure_config!(
            self.p1 + self.p2 <= 1.0,
            "algorithm.p1 + algorithm.p2 must be at most 1, got {}",
            self.p1 + self.p2
        );
        ensure_config!(self.period >= 1, "algorithm.period must be at least 1");
        build_checked(&self.schedule, workers, seed, Protocol::Symmetric)?;
        Ok(())
    }

    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<AlDsgd> {
        Ok(AlDsgd {
            schedule: build_checked(&self.schedule, workers, seed, Protocol::Symmetric)?,
            config: self.clone(),
            gossip: Gossip::new(len),
            outgoing: vec![0.0; len + 2],
            incoming: vec![0.0; len + 2],
            averaged: vec![0.0; len],
            best: vec![0.0; len],
            busiest: vec![0.0; len],
            sends: Vec::new(),
        })
    }
}

impl AlgorithmSpec for AlDsgdConfig {
    const NAME: &'static str = "al-dsgd";
    const SUMMARY: &'static str = "adjacent-leader decentralized SGD on dynamic (rotated) graphs";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers, run.seed)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len, run.seed)?))
    }
}

/// One worker's AL-DSGD state.
pub struct AlDsgd {
    schedule: Schedule,
    config: AlDsgdConfig,
    gossip: Gossip,
    outgoing: Vec<f32>,
    incoming: Vec<f32>,
    /// y_i, the MATCHA average.
    averaged: Vec<f32>,
    /// The best-loss partner's parameters (when a partner wins).
    best: Vec<f32>,
    /// The max-degree partner's parameters (when a partner wins).
    busiest: Vec<f32>,
    sends: Vec<SendRequest>,
}

impl Algorithm for AlDsgd {
    // `averaged`, `best` and `busiest` are rewritten every step: only the link counters persist.
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_dict("links", self.gossip.links.save_state());
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.gossip.links.load_state(state.dict("links")?)
    }
    /// The parameters, after the step, every step.
    fn touches(&self, _step: u64) -> Touches {
        Touches::after_step_params(true)
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let node = self.schedule.node(ctx.step, ctx.comm.rank());
        if node.recv.is_empty() {
            return Ok(());
        }
        if !ctx.step.is_multiple_of(self.config.period) {
            return self.gossip.mix(ctx.comm, &node, ctx.params);
        }
        let d = ctx.params.len();
        let own_loss = ctx.loss as f32;
        let own_degree = node.recv.len() as f32;
        self.outgoing[..d].copy_from_slice(ctx.params);
        self.outgoing[d] = own_loss;
        self.outgoing[d + 1] = own_degree;
        for &(peer, _) in &node.send {
            self.sends
                .push(ctx.comm.isend(peer, TAG_GOSSIP, &self.outgoing)?);
            self.gossip.links.sent_to(peer, d + 2);
        }

        self.averaged.copy_from_slice(ctx.params);
        kernels::scale(&mut self.averaged, node.self_weight as f32);
        // (value, true when a partner holds it): self first, so ties stay with self.
        let (mut best_loss, mut best_is_partner) = (own_loss, false);
        let (mut top_degree, mut busiest_is_partner) = (own_degree, false);
        for &(peer, weight) in &node.recv {
            ctx.comm.recv(peer, TAG_GOSSIP, &mut self.incoming)?;
            self.gossip.links.received_from(peer, d + 2);
            let (model, scalars) = self.incoming.split_at(d);
            kernels::axpy(&mut self.averaged, weight as f32, model);
            // NaN never compares less, so a diverged partner is never the best.
            if scalars[0] < best_loss {
                best_loss = scalars[0];
                best_is_partner = true;
                self.best.copy_from_slice(model);
            }
            if scalars[1] > top_degree {
                top_degree = scalars[1];
                busiest_is_partner = true;
                self.busiest.copy_from_slice(model);
            }
        }
        for request in self.sends.drain(..) {
            ctx.comm.wait_send(request)?;
        }

        let own: &[f32] = ctx.params;
        let x_b: &[f32] = if best_is_partner { &self.best } else { own };
        let x_m: &[f32] = if busiest_is_partner {
            &self.busiest
        } else {
            own
        };
        let c = &self.config;
        let z = &mut self.averaged;
        kernels::scale(z, 1.0 - c.c1 - c.c2);
        kernels::axpy(z, c.c1, x_b);
        kernels::axpy(z, c.c2, x_m);
        kernels::scale(z, 1.0 - c.p1 - c.p2);
        kernels::axpy(z, c.p1, x_b);
        kernels::axpy(z, c.p2, x_m);
        ctx.params.copy_from_slice(z);
        Ok(())
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            links: Some(&mut self.gossip.links),
            ..Default::default()
        }
    }
}
