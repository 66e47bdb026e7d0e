//! SlowMo, slow momentum (Wang, Tantia, Ballas, Rabbat; ICLR 2020), ALGORITHMS.md §8.3.
//!
//! A base algorithm runs every step — local SGD averaging every `local_period` steps, or SGP —
//! and every `frequency` steps the workers take an exact average and a slow momentum step,
//! with γ the current (base) learning rate, α = `slow_lr`, β = `slow_momentum`:
//!
//! ```text
//! x_avg  = exact average of the workers' parameters
//! u     ← β·u + (x_old − x_avg)/γ
//! x_old ← x_old − α·γ·u
//! x     ← x_old                                   (on every worker)
//! ```
//!
//! x_old and u are identical on every worker. With `sharded = true` (the reference's
//! memory-efficient mode) each worker stores only its 1/N slice of them, updates that slice
//! and the slices are all-gathered back into x; the reference does a reduce-to-owner plus
//! broadcast, peloton an all-reduce plus all-gather (same memory saving, ≈1.5× the bytes).
//! The base optimizer's momentum buffers stay local, never reset or averaged.
//!
//! On a slow step the local-SGD base skips its own averaging (the exact average subsumes it);
//! the SGP base still gossips first (it must, to de-bias), which does not change the exact
//! average since push-sum preserves Σx/Σw. With γ = 0 (a learning-rate schedule at zero) the
//! momentum step is skipped and x_old ← x_avg.

use peloton_topology::ScheduleConfig;
use serde::{Deserialize, Serialize};

use super::local_sgd::{LocalSgd, LocalSgdConfig};
use super::sgp::{Sgp, SgpConfig};
use super::{
    Algorithm, AlgorithmSpec, Every, RunShape, StepContext, Synchronous, Touches, Wrapper,
};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::transport::{Communicator, ReduceOp};
use crate::Result;

/// The algorithm SlowMo runs between its slow steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowMoBase {
    /// Local SGD averaging every `local_period` steps (fairscale's default).
    #[default]
    LocalSgd,
    /// Stochastic gradient push on `schedule`.
    Sgp,
}

/// `name = "slowmo"`. Defaults are fairscale's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowMoConfig {
    #[serde(default)]
    pub base: SlowMoBase,
    /// Local SGD base: steps between parameter averages (`localsgd_frequency`).
    #[serde(default = "default_local_period")]
    pub local_period: u64,
    /// SGP base: the gossip schedule (SGP's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleConfig>,
    /// Steps between slow momentum steps (`slowmo_frequency`).
    #[serde(default = "default_frequency")]
    pub frequency: u64,
    /// α, the slow learning rate (`slowmo_lr`).
    #[serde(default = "default_slow_lr")]
    pub slow_lr: f32,
    /// β, the slow momentum (`slowmo_momentum`).
    #[serde(default = "default_slow_momentum")]
    pub slow_momentum: f32,
    /// Keep only a 1/N slice of x_old and u per worker.
    #[serde(default)]
    pub sharded: bool,
}

fn default_local_period() -> u64 {
    3
}
fn default_frequency() -> u64 {
    48
}
fn default_slow_lr() -> f32 {
    1.0
}
fn default_slow_momentum() -> f32 {
    0.5
}

impl Default for SlowMoConfig {
    fn default() -> Self {
        Self {
            base: SlowMoBase::default(),
            local_period: default_local_period(),
            schedule: None,
            frequency: default_frequency(),
            slow_lr: default_slow_lr(),
            slow_momentum: default_slow_momentum(),
            sharded: false,
        }
    }
}

impl SlowMoConfig {
    fn sgp(&self) -> SgpConfig {
        let mut sgp = SgpConfig::default();
        if let Some(s) = &self.schedule {
            sgp.schedule = s.clone();
        }
        sgp
    }

    fn local_sgd(&self) -> LocalSgdConfig {
        LocalSgdConfig {
            period: self.local_period,
            ..LocalSgdConfig::default()
        }
    }

    pub fn validate(&self, workers: usize, seed: u64) -> Result<()> {
        ensure_config!(
            self.frequency >= 1,
            "algorithm.frequency must be at least 1"
        );
        ensure_config!(
            self.slow_lr.is_finite() && self.slow_lr > 0.0,
            "algorithm.slow_lr must be positive, got {}",
            self.slow_lr
        );
        ensure_config!(
            self.slow_momentum.is_finite() && (0.0..1.0).contains(&self.slow_momentum),
            "algorithm.slow_momentum must be in [0, 1), got {}",
            self.slow_momentum
        );
        match self.base {
            SlowMoBase::LocalSgd => {
                ensure_config!(
                    self.schedule.is_none(),
                    "algorithm.schedule only applies to base = \"sgp\""
                );
                self.local_sgd().validate(workers)
            }
            SlowMoBase::Sgp => self.sgp().validate(workers, seed),
        }
    }

    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<SlowMo> {
        let base = match self.base {
            SlowMoBase::LocalSgd => Base::LocalSgd(self.local_sgd().init()),
            SlowMoBase::Sgp => Base::Sgp(Box::new(self.sgp().init(workers, len, seed)?)),
        };
        Ok(SlowMo {
            config: self.clone(),
            base,
            slow: Vec::new(),
            momentum: Vec::new(),
            slice: 0..len,
            gathered: Vec::new(),
        })
    }
}

impl AlgorithmSpec for SlowMoConfig {
    const NAME: &'static str = "slowmo";
    const SUMMARY: &'static str = "slow momentum every `frequency` steps over local SGD or SGP";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers, run.seed)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len, run.seed)?))
    }

    fn variants() -> Vec<Self> {
        vec![
            SlowMoConfig {
                frequency: 4,
                ..Default::default()
            },
            SlowMoConfig {
                base: SlowMoBase::Sgp,
                frequency: 6,
                ..Default::default()
            },
        ]
    }
}

enum Base {
    LocalSgd(LocalSgd),
    Sgp(Box<Sgp>),
}

impl Base {
    fn get(&mut self) -> &mut dyn Algorithm {
        match self {
            Base::LocalSgd(a) => a,
            Base::Sgp(a) => a.as_mut(),
        }
    }

    fn get_ref(&self) -> &dyn Algorithm {
        match self {
            Base::LocalSgd(a) => a,
            Base::Sgp(a) => a.as_ref(),
        }
    }
}

/// One worker's SlowMo state.
pub struct SlowMo {
    config: SlowMoConfig,
    base: Base,
    /// x_old (this worker's slice of it when sharded, zero-padded to the common width).
    slow: Vec<f32>,
    /// u (this worker's slice of it when sharded).
    momentum: Vec<f32>,
    /// The parameter range `slow` and `momentum` cover.
    slice: std::ops::Range<usize>,
    /// Sharded mode: every worker's slice, padded to equal lengths.
    gathered: Vec<f32>,
}

impl SlowMo {
    fn slow_step(
        &mut self,
        comm: &mut dyn Communicator,
        params: &mut [f32],
        lr: f32,
    ) -> Result<()> {
        match &mut self.base {
            Base::LocalSgd(_) => comm.all_reduce(params, ReduceOp::Mean)?,
            Base::Sgp(sgp) => sgp.exact_average(comm, params)?,
        }
        let (alpha, beta) = (self.config.slow_lr, self.config.slow_momentum);
        let average = &params[self.slice.clone()];
        for ((old, u), &avg) in self.slow.iter_mut().zip(&mut self.momentum).zip(average) {
            if lr > 0.0 {
                *u = beta * *u + (*old - avg) / lr;
                *old -= alpha * lr * *u;
            } else {
                *old = avg;
            }
        }
        if !self.config.sharded {
            params.copy_from_slice(&self.slow);
            return Ok(());
        }
        // `slow` is padded to the common slice width, so it is gathered as it is.
        comm.all_gather(&self.slow, &mut self.gathered)?;
        let d = params.len();
        params.copy_from_slice(&self.gathered[..d]);
        Ok(())
    }
}

/// The base algorithm's gradient hook, drain and per-link traffic pass through; the setup, the
/// step (a slow step every `frequency` steps) and the checkpoint state are SlowMo's.
impl Wrapper for SlowMo {
    fn inner(&mut self) -> &mut dyn Algorithm {
        self.base.get()
    }

    fn inner_ref(&self) -> &dyn Algorithm {
        self.base.get_ref()
    }

    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        self.base.get().setup(comm, params)?;
        let d = params.len();
        if self.config.sharded {
            let n = comm.size();
            let width = d.div_ceil(n);
            let start = (comm.rank() * width).min(d);
            self.slice = start..(start + width).min(d);
            self.gathered = vec![0.0; width * n];
        }
        self.slow = params[self.slice.clone()].to_vec();
        self.momentum = vec![0.0; self.slow.len()];
        if self.config.sharded {
            // Every worker's slice has the same width for the all-gather; the padding stays 0.
            let width = self.gathered.len() / comm.size();
            self.slow.resize(width, 0.0);
            self.momentum.resize(width, 0.0);
        }
        Ok(())
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let slow_step = Every::steps(self.config.frequency).due(ctx.step);
        if !slow_step || matches!(self.base, Base::Sgp(_)) {
            self.base.get().after_step(ctx)?;
        }
        if slow_step {
            self.slow_step(ctx.comm, ctx.params, ctx.lr)?;
        }
        Ok(())
    }

    fn touches(&self, step: u64) -> Touches {
        let slow_step = Every::steps(self.config.frequency).due(step);
        self.base
            .get_ref()
            .touches(step)
            .union(Touches::after_step_params(slow_step))
    }

    // `gathered` is rewritten by every slow step; `slice` is recomputed by `setup`.
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_f32s("slow", &self.slow);
        state.put_f32s("momentum", &self.momentum);
        let mut base = StateDict::new();
        self.base.get_ref().save_state(&mut base)?;
        state.put_dict("base", base);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        state.f32s_into("slow", &mut self.slow)?;
        state.f32s_into("momentum", &mut self.momentum)?;
        self.base.get().load_state(state.dict("base")?)
    }
}
