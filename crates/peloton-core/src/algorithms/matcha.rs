//! MATCHA (Wang, Sahu, Yang, Joshi, Kar 2019), ALGORITHMS.md §5.2: decentralized SGD that
//! talks over a random subset of a base graph's matchings each step.
//!
//! The base graph is decomposed into matchings G_1..G_M. Matching j is active at step t with
//! probability p_j, drawn identically on every worker from the run seed; the p_j maximize the
//! algebraic connectivity of the expected Laplacian under the budget Σ_j p_j ≤ C_b·M, and the
//! neighbour weight α minimizes the expected contraction ρ (both solved by peloton-topology,
//! deterministically on every worker). After its local step every worker mixes
//!
//! ```text
//! x_i ← (1 − α·deg_t(i))·x_i + α·Σ_{j ∈ N_t(i)} x_j        (W(t) = I − α·Σ_j B_j(t)·L_j)
//! ```
//!
//! with one pairwise exchange per active matching containing it. The expected number of
//! exchanges per step is Σ_j p_j ≤ C_b·M, which is how the budget saves time.
//!
//! Unlike the reference's "D-PSGD" baseline (which alternates two matchings and can leave
//! nodes disconnected), every schedule here is checked for connectivity before training.
//! Communication: B bytes each way per active matching containing the worker.

use peloton_topology::{GraphSpec, Protocol, Schedule, ScheduleConfig};
use serde::{Deserialize, Serialize};

use super::dpsgd::build_checked;
use super::gossip::Gossip;
use super::{Algorithm, AlgorithmSpec, Observation, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::Result;

/// `name = "matcha"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchaConfig {
    /// The base graph, decomposed into matchings.
    #[serde(default = "default_graph")]
    pub graph: GraphSpec,
    /// C_b ∈ (0, 1]: the expected fraction of matchings active per step.
    #[serde(default = "default_budget")]
    pub budget: f64,
    /// Overrides the optimized neighbour weight α.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

/// MATCHA's experiments use an 8-node Erdős–Rényi base graph.
fn default_graph() -> GraphSpec {
    GraphSpec::ErdosRenyi { p: 0.5, seed: 0 }
}
fn default_budget() -> f64 {
    0.5
}

impl Default for MatchaConfig {
    fn default() -> Self {
        Self {
            graph: default_graph(),
            budget: default_budget(),
            alpha: None,
        }
    }
}

impl MatchaConfig {
    /// The schedule this config stands for.
    pub fn schedule(&self) -> ScheduleConfig {
        ScheduleConfig::Matcha {
            graph: self.graph.clone(),
            budget: self.budget,
            alpha: self.alpha,
        }
    }

    pub fn validate(&self, workers: usize, seed: u64) -> Result<()> {
        build_checked(&self.schedule(), workers, seed, Protocol::Symmetric)?;
        Ok(())
    }

    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<Matcha> {
        Ok(Matcha {
            schedule: build_checked(&self.schedule(), workers, seed, Protocol::Symmetric)?,
            gossip: Gossip::new(len),
        })
    }
}

impl AlgorithmSpec for MatchaConfig {
    const NAME: &'static str = "matcha";
    const SUMMARY: &'static str =
        "decentralized SGD over random matchings under a communication budget";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers, run.seed)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len, run.seed)?))
    }
}

/// One worker's MATCHA state.
pub struct Matcha {
    schedule: Schedule,
    gossip: Gossip,
}

impl Algorithm for Matcha {
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_dict("links", self.gossip.links.save_state());
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.gossip.links.load_state(state.dict("links")?)
    }
    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let node = self.schedule.node(ctx.step, ctx.comm.rank());
        self.gossip.mix(ctx.comm, &node, ctx.params)
    }

    fn touches(&self, _step: u64) -> Touches {
        Touches::after_step_params(true)
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            links: Some(&mut self.gossip.links),
            ..Default::default()
        }
    }
}
