//! D-PSGD, decentralized parallel SGD (Lian et al., NeurIPS 2017), ALGORITHMS.md §5.1 and §3.6.
//!
//! Every worker mixes its parameters with its neighbours' through a doubly-stochastic W(t)
//! from a [`Schedule`] (static graph with Metropolis–Hastings weights by default, the
//! bipartite exponential graph of the SGP repository's D-PSGD baseline, cycling matchings, …).
//! Two orders, both in the literature:
//!
//! * **adapt-then-combine** (`variant = "adapt-then-combine"`, the default, as MATCHA and the
//!   SGP repository run it): `x_i ← Σ_j W_ij·(x_j − γ·g_j)` — local step, then mix;
//! * **combine-while-computing** (`variant = "combine-while-computing"`, Lian et al.'s
//!   formula): `x_i ← Σ_j W_ij·x_j − γ·g_i(x_i)` — the parameters are sent *before* the
//!   gradient is computed and mixed in after it, so communication overlaps computation.
//!
//! Doubly-stochastic rounds preserve the workers' average exactly (up to f32 rounding), which
//! `validate` checks for every round of the schedule, together with the connectivity of the
//! links the schedule uses. Momentum buffers stay local.
//!
//! Communication: B bytes to every out-peer and from every in-peer of the round.

use std::collections::BTreeMap;
use std::sync::Mutex;

use peloton_topology::{Protocol, Schedule, ScheduleConfig};
use serde::{Deserialize, Serialize};

use super::gossip::Gossip;
use super::{Algorithm, AlgorithmSpec, Observation, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::learner::HostBuffers;
use crate::Result;

/// When the neighbours' parameters are mixed in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Local step, then mix the stepped parameters.
    #[default]
    AdaptThenCombine,
    /// Send before the gradient, mix after it, then step: `x ← W·x − γ·g(x)`.
    CombineWhileComputing,
}

/// `name = "d-psgd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpsgdConfig {
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub variant: Variant,
}

/// Lian et al.'s experiments: a ring, ⅓ to self and to each neighbour.
pub(crate) fn default_schedule() -> ScheduleConfig {
    ScheduleConfig::Static {
        graph: peloton_topology::GraphSpec::Ring,
        weights: peloton_topology::MixingWeights::MetropolisHastings,
    }
}

impl Default for DpsgdConfig {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            variant: Variant::default(),
        }
    }
}

impl DpsgdConfig {
    pub fn validate(&self, workers: usize, seed: u64) -> Result<()> {
        build_checked(&self.schedule, workers, seed, Protocol::DoublyStochastic)?;
        Ok(())
    }

    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<Dpsgd> {
        Ok(Dpsgd {
            schedule: build_checked(&self.schedule, workers, seed, Protocol::DoublyStochastic)?,
            variant: self.variant,
            gossip: Gossip::new(len),
        })
    }
}

impl AlgorithmSpec for DpsgdConfig {
    const NAME: &'static str = "d-psgd";
    const SUMMARY: &'static str =
        "decentralized SGD: mix with neighbours through a doubly-stochastic schedule";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers, run.seed)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len, run.seed)?))
    }

    fn variants() -> Vec<Self> {
        vec![DpsgdConfig {
            variant: Variant::CombineWhileComputing,
            ..Default::default()
        }]
    }
}

/// Builds a schedule and checks it against what the protocol needs; topology errors become
/// config errors naming the schedule key.
///
/// Built schedules are memoized per process: on the threads transport every worker asks for
/// the same schedule at once, and MATCHA's optimization (eigen-decompositions of an N×N
/// Laplacian) would otherwise run N times. The first caller builds, the others clone.
pub(crate) fn build_checked(
    config: &ScheduleConfig,
    workers: usize,
    seed: u64,
    protocol: Protocol,
) -> Result<Schedule> {
    type Key = (String, usize, u64, String);
    static BUILT: Mutex<BTreeMap<Key, Schedule>> = Mutex::new(BTreeMap::new());
    /// Enough for every schedule of a sweep; the map is cleared when full.
    const CAPACITY: usize = 64;

    let fail = |e: peloton_topology::TopologyError| {
        crate::Error::Config(format!("algorithm.schedule ({}): {e}", config.kind()))
    };
    let key = (
        format!("{config:?}"),
        workers,
        seed,
        format!("{protocol:?}"),
    );
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(schedule) = built.get(&key) {
        return Ok(schedule.clone());
    }
    let schedule = config.build(workers, seed).map_err(fail)?;
    schedule.check(protocol).map_err(fail)?;
    if built.len() >= CAPACITY {
        built.clear();
    }
    built.insert(key, schedule.clone());
    Ok(schedule)
}

/// One worker's D-PSGD state.
pub struct Dpsgd {
    schedule: Schedule,
    variant: Variant,
    gossip: Gossip,
}

impl Algorithm for Dpsgd {
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_dict("links", self.gossip.links.save_state());
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.gossip.links.load_state(state.dict("links")?)
    }
    fn before_compute(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if self.variant == Variant::CombineWhileComputing {
            let node = self.schedule.node(ctx.step, ctx.comm.rank());
            self.gossip.start(ctx.comm, &node, ctx.params)?;
        }
        Ok(())
    }

    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if self.variant == Variant::CombineWhileComputing {
            let node = self.schedule.node(ctx.step, ctx.comm.rank());
            self.gossip.finish(ctx.comm, &node, ctx.params)?;
        }
        Ok(())
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if self.variant == Variant::AdaptThenCombine {
            let node = self.schedule.node(ctx.step, ctx.comm.rank());
            self.gossip.mix(ctx.comm, &node, ctx.params)?;
        }
        Ok(())
    }

    fn touches(&self, _step: u64) -> Touches {
        match self.variant {
            Variant::CombineWhileComputing => Touches {
                before_compute: HostBuffers::PARAMS,
                before_step: HostBuffers::PARAMS,
                ..Touches::NONE
            },
            Variant::AdaptThenCombine => Touches::after_step_params(true),
        }
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            links: Some(&mut self.gossip.links),
            ..Default::default()
        }
    }
}
