//! Leader SGD (Teng et al., NeurIPS 2019), synchronous, single- and multi-leader.
//! Specification: ALGORITHMS.md §1.1 and §1.3.
//!
//! Every worker takes its own SGD steps. Every τ steps the workers elect a leader — the worker
//! with the lowest leader metric (mean of its last K mini-batch losses; ties go to the lowest
//! rank; NaN/∞ never wins) — and every other worker is pulled toward it:
//!
//! ```text
//! x ← (1 − λ)·x + λ·x̃          (the leader itself does not move)
//! ```
//!
//! **Multi-leader.** Workers form groups of `group_size` consecutive ranks (a node). Every τ
//! steps each group pulls toward its *local* leader with λ; every τ_G steps (a multiple of τ)
//! everybody also pulls toward the *global* leader with λ_G. When both fall on the same step
//! they are applied in this order, with both leaders elected from the same gathered metrics:
//! `x ← (1−λ_G)·[(1−λ)·x + λ·x̃_L] + λ_G·x̃_G`. The global leader is also its group's local
//! leader, so neither pull moves it.
//!
//! **Proximal variant** (`prox`, `prox_global`; the reference's p1, p2): after every local
//! step, `x ← (1 − p/τ)·x + (p/τ)·x̃_last`, where x̃_last is the leader vector received at the
//! latest round (initially the starting point). The anchors are dedicated buffers, never
//! reused as scratch (a bug of the reference code, §1.3).
//!
//! λ and λ_G are dimensionless pull fractions, not multiplied by the learning rate.
//!
//! Communication per round: an all-gather of one f64 metric per worker, then a broadcast of
//! the leader's B bytes inside the group (local) or the world (global).

use serde::{Deserialize, Serialize};

use super::leader::{elect, pull_toward_leader};
use super::{
    Algorithm, AlgorithmSpec, Every, Observation, RunShape, StepContext, Synchronous, Touches,
};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::transport::{Communicator, CommunicatorExt};
use crate::Result;

/// `name = "lsgd"`. Defaults follow the reference scripts (c1 = c2 = 0.1, l_comm = g_comm/4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LsgdConfig {
    /// τ: local steps between two (local) leader rounds.
    #[serde(default = "default_tau")]
    pub tau: u64,
    /// λ ∈ [0, 1]: pull toward the (local) leader.
    #[serde(default = "default_lambda")]
    pub lambda: f32,
    /// p ≥ 0: per-step proximal pull toward the last (local) leader, as p/τ (0 = off).
    #[serde(default)]
    pub prox: f32,
    /// Workers per group for multi-leader LSGD; all workers (one group) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// τ_G: steps between global rounds (multi-leader only; a multiple of τ; default 4τ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau_global: Option<u64>,
    /// λ_G ∈ [0, 1]: pull toward the global leader (multi-leader only; default λ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_global: Option<f32>,
    /// Per-step proximal pull toward the last global leader, as p_G/τ_G (multi-leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prox_global: Option<f32>,
}

fn default_tau() -> u64 {
    4
}
fn default_lambda() -> f32 {
    0.1
}

impl Default for LsgdConfig {
    fn default() -> Self {
        Self {
            tau: default_tau(),
            lambda: default_lambda(),
            prox: 0.0,
            group_size: None,
            tau_global: None,
            lambda_global: None,
            prox_global: None,
        }
    }
}

impl LsgdConfig {
    fn groups(&self, workers: usize) -> usize {
        workers / self.group_size.unwrap_or(workers).max(1)
    }

    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(self.tau > 0, "algorithm.tau must be at least 1");
        let fraction = |key: &str, v: f32| -> Result<()> {
            ensure_config!(
                (0.0..=1.0).contains(&v),
                "algorithm.{key} must be in [0, 1], got {v}"
            );
            Ok(())
        };
        fraction("lambda", self.lambda)?;
        ensure_config!(
            self.prox.is_finite() && self.prox >= 0.0,
            "algorithm.prox must be ≥ 0, got {}",
            self.prox
        );
        ensure_config!(
            self.prox <= self.tau as f32,
            "algorithm.prox = {} exceeds tau = {}: the per-step pull prox/tau would exceed 1",
            self.prox,
            self.tau
        );
        let l = self.group_size.unwrap_or(workers);
        ensure_config!(
            l >= 1 && l <= workers,
            "algorithm.group_size = {l} must be between 1 and the number of workers ({workers})"
        );
        ensure_config!(
            workers.is_multiple_of(l),
            "the number of workers ({workers}) is not divisible by algorithm.group_size ({l})"
        );
        if self.groups(workers) == 1 {
            for (key, set) in [
                ("lambda_global", self.lambda_global.is_some()),
                ("tau_global", self.tau_global.is_some()),
                ("prox_global", self.prox_global.is_some()),
            ] {
                ensure_config!(
                    !set,
                    "algorithm.{key} needs more than one group, but all {workers} workers form one group: set algorithm.group_size below {workers} (single-leader LSGD uses lambda, tau and prox)"
                );
            }
            return Ok(());
        }
        fraction("lambda_global", self.lambda_global())?;
        let tg = self.tau_global();
        ensure_config!(
            tg >= self.tau && tg.is_multiple_of(self.tau),
            "algorithm.tau_global = {tg} must be a multiple of algorithm.tau = {}",
            self.tau
        );
        let pg = self.prox_global.unwrap_or(0.0);
        ensure_config!(
            pg.is_finite() && pg >= 0.0 && pg <= tg as f32,
            "algorithm.prox_global must be in [0, tau_global], got {pg}"
        );
        Ok(())
    }

    fn tau_global(&self) -> u64 {
        // Saturating: a huge tau is then refused by validation instead of overflowing.
        self.tau_global.unwrap_or(self.tau.saturating_mul(4))
    }

    fn lambda_global(&self) -> f32 {
        self.lambda_global.unwrap_or(self.lambda)
    }

    pub fn init(&self, workers: usize, len: usize) -> Lsgd {
        let group_size = self.group_size.unwrap_or(workers);
        let multi = self.groups(workers) > 1;
        let prox_global = if multi {
            self.prox_global.unwrap_or(0.0)
        } else {
            0.0
        };
        Lsgd {
            tau: self.tau,
            lambda: self.lambda,
            prox: self.prox,
            group_size,
            multi,
            tau_global: self.tau_global(),
            lambda_global: self.lambda_global(),
            prox_global,
            group: None,
            staging: vec![0.0; len],
            anchor: if self.prox > 0.0 {
                vec![0.0; len]
            } else {
                Vec::new()
            },
            anchor_global: if prox_global > 0.0 {
                vec![0.0; len]
            } else {
                Vec::new()
            },
            leader: None,
            local_leader: None,
            leader_changes: 0,
        }
    }
}

impl AlgorithmSpec for LsgdConfig {
    const NAME: &'static str = "lsgd";
    const SUMMARY: &'static str =
        "Leader SGD: pull toward the best worker every tau steps; multi-leader with groups";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len)))
    }

    fn variants() -> Vec<Self> {
        vec![
            LsgdConfig {
                prox: 0.5,
                ..Default::default()
            },
            LsgdConfig {
                group_size: Some(2),
                tau_global: Some(8),
                lambda_global: Some(0.2),
                prox_global: Some(0.3),
                ..Default::default()
            },
        ]
    }
}

/// One worker's Leader SGD state.
pub struct Lsgd {
    tau: u64,
    lambda: f32,
    prox: f32,
    group_size: usize,
    multi: bool,
    tau_global: u64,
    lambda_global: f32,
    prox_global: f32,
    /// This worker's group (multi-leader only), created collectively in `setup`.
    group: Option<Box<dyn Communicator>>,
    /// Receives the leader's parameters.
    staging: Vec<f32>,
    /// Last (local) leader vector, for the proximal pull.
    anchor: Vec<f32>,
    /// Last global leader vector, for the proximal pull (multi-leader).
    anchor_global: Vec<f32>,
    leader: Option<usize>,
    local_leader: Option<usize>,
    /// Rounds in which the global leader changed (leader churn).
    leader_changes: u64,
}

/// One pull round toward `leader` (a rank of the communicator it runs on). `anchor` is the
/// proximal anchor of this level: empty when the proximal variant is off, otherwise refreshed
/// with the received leader vector.
struct Pull<'a> {
    leader: usize,
    strength: f32,
    anchor: &'a mut Vec<f32>,
}

impl Pull<'_> {
    fn run(
        self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        staging: &mut [f32],
    ) -> Result<()> {
        let proximal = !self.anchor.is_empty();
        if self.strength == 0.0 && !proximal {
            return Ok(()); // nothing would change: skip the broadcast
        }
        pull_toward_leader(comm, params, staging, self.leader, self.strength)?;
        if proximal {
            self.anchor.copy_from_slice(staging);
        }
        Ok(())
    }
}

impl Lsgd {
    /// The world rank of this worker's local leader after the latest round (multi-leader).
    pub fn local_leader(&self) -> Option<usize> {
        self.local_leader
    }

    /// Steps of one worker between two global rounds, as a multiple of τ (multi-leader).
    pub(crate) fn global_every(&self) -> u64 {
        if self.multi {
            (self.tau_global / self.tau).max(1)
        } else {
            1
        }
    }

    pub(crate) fn tau(&self) -> u64 {
        self.tau
    }

    /// The proximal variant's pulls toward the last leader vectors, after every local step.
    /// Whether [`Lsgd::proximal_pulls`] moves the parameters (at every step).
    pub(crate) fn pulls_every_step(&self) -> bool {
        self.prox > 0.0 || self.prox_global > 0.0
    }

    pub(crate) fn proximal_pulls(&self, params: &mut [f32]) {
        if self.prox > 0.0 {
            kernels::mix(params, &self.anchor, self.prox / self.tau as f32);
        }
        if self.prox_global > 0.0 {
            kernels::mix(
                params,
                &self.anchor_global,
                self.prox_global / self.tau_global as f32,
            );
        }
    }

    /// One leader round (collective): gather every worker's `metric`, pull toward the local
    /// leader (multi-leader), then toward the global leader when `global` (always with a
    /// single group).
    pub(crate) fn leader_round(
        &mut self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        metric: f64,
        global: bool,
    ) -> Result<()> {
        let metrics = comm.gather_scalar(metric)?;
        let n = metrics.len();
        let previous = self.leader;
        if self.multi {
            let rank = comm.rank();
            let first = rank / self.group_size * self.group_size;
            let group = self.group.as_mut().expect("setup creates the group");
            self.local_leader = elect(&metrics, first..first + self.group_size);
            if let Some(local) = self.local_leader {
                let pull = Pull {
                    leader: local - first,
                    strength: self.lambda,
                    anchor: &mut self.anchor,
                };
                pull.run(group.as_mut(), params, &mut self.staging)?;
            }
            if global {
                self.leader = elect(&metrics, 0..n);
                if let Some(global) = self.leader {
                    let pull = Pull {
                        leader: global,
                        strength: self.lambda_global,
                        anchor: &mut self.anchor_global,
                    };
                    pull.run(comm, params, &mut self.staging)?;
                }
            }
        } else {
            self.leader = elect(&metrics, 0..n);
            self.local_leader = self.leader;
            if let Some(leader) = self.leader {
                let pull = Pull {
                    leader,
                    strength: self.lambda,
                    anchor: &mut self.anchor,
                };
                pull.run(comm, params, &mut self.staging)?;
            }
        }
        if previous.is_some() && self.leader != previous {
            self.leader_changes += 1;
        }
        Ok(())
    }
}

impl Algorithm for Lsgd {
    // `staging` only carries a leader's parameters within a round; the group is rebuilt by
    // `setup`.
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_f32s("anchor", &self.anchor);
        state.put_f32s("anchor_global", &self.anchor_global);
        state.put_opt_usize("leader", self.leader);
        state.put_opt_usize("local_leader", self.local_leader);
        state.put_u64("leader_changes", self.leader_changes);
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        state.f32s_to_vec("anchor", &mut self.anchor)?;
        state.f32s_to_vec("anchor_global", &mut self.anchor_global)?;
        self.leader = state.opt_usize("leader")?;
        self.local_leader = state.opt_usize("local_leader")?;
        self.leader_changes = state.u64("leader_changes")?;
        Ok(())
    }
    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        if self.multi {
            // Every worker creates its group collectively, in the same call order.
            let rank = comm.rank();
            self.group = Some(comm.split(rank / self.group_size, rank)?);
        }
        if !self.anchor.is_empty() {
            self.anchor.copy_from_slice(params);
        }
        if !self.anchor_global.is_empty() {
            self.anchor_global.copy_from_slice(params);
        }
        Ok(())
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        self.proximal_pulls(ctx.params);
        if !Every::steps(self.tau).due(ctx.step) {
            return Ok(());
        }
        let global = Every::steps(self.tau_global).due(ctx.step);
        self.leader_round(ctx.comm, ctx.params, ctx.metric, global)
    }

    fn touches(&self, step: u64) -> Touches {
        Touches::after_step_params(self.pulls_every_step() || Every::steps(self.tau).due(step))
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            leader: self.leader,
            leader_changes: Some(self.leader_changes),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(group_size: Option<usize>) -> LsgdConfig {
        LsgdConfig {
            group_size,
            ..Default::default()
        }
    }

    #[test]
    fn validation_messages_name_the_key() {
        let err = |c: LsgdConfig, n| c.validate(n).unwrap_err().to_string();
        assert!(err(
            LsgdConfig {
                lambda: -0.1,
                ..cfg(None)
            },
            4
        )
        .contains("algorithm.lambda"));
        assert!(err(
            LsgdConfig {
                tau: 0,
                ..cfg(None)
            },
            4
        )
        .contains("algorithm.tau"));
        assert!(err(
            LsgdConfig {
                lambda_global: Some(0.1),
                ..cfg(None)
            },
            4
        )
        .contains("lambda_global needs more than one group"));
        assert!(err(cfg(Some(4)), 6).contains("not divisible by algorithm.group_size"));
        assert!(err(
            LsgdConfig {
                tau_global: Some(6),
                ..cfg(Some(2))
            },
            4
        )
        .contains("multiple of algorithm.tau"));
        assert!(cfg(Some(2)).validate(4).is_ok());
        assert!(
            cfg(Some(4)).validate(4).is_ok(),
            "one group of all workers is single-leader LSGD"
        );
    }
}
