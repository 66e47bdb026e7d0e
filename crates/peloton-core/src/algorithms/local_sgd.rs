//! Local SGD (Stich 2019) and post-local SGD (Lin et al. 2020), ALGORITHMS.md §8.1–8.2.
//!
//! Each worker takes local steps; every `period` steps all parameters are averaged (one
//! all-reduce). Post-local SGD runs ordinary all-reduce SGD for the first `warmup_steps`
//! steps and local SGD afterwards; with `group_size`, gradients keep being averaged inside
//! groups of that many consecutive workers after the warm-up (PyTorch's post-local hook
//! averages within a node). Momentum buffers stay local, as in PyTorch's averager.

use serde::{Deserialize, Serialize};

use super::{Algorithm, AlgorithmSpec, Every, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::transport::{Communicator, ReduceOp};
use crate::Result;

/// `name = "local-sgd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSgdConfig {
    /// H: local steps between two parameter averages.
    #[serde(default = "default_period")]
    pub period: u64,
    /// Steps of gradient all-reduce before switching to local SGD (post-local SGD).
    #[serde(default)]
    pub warmup_steps: u64,
    /// After the warm-up, average gradients inside groups of this many workers every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
}

fn default_period() -> u64 {
    8
}

impl Default for LocalSgdConfig {
    fn default() -> Self {
        Self {
            period: default_period(),
            warmup_steps: 0,
            group_size: None,
        }
    }
}

impl LocalSgdConfig {
    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(self.period > 0, "algorithm.period must be at least 1");
        if let Some(l) = self.group_size {
            ensure_config!(
                l >= 1 && l <= workers && workers.is_multiple_of(l),
                "algorithm.group_size = {l} must divide the number of workers ({workers})"
            );
        }
        Ok(())
    }

    pub fn init(&self) -> LocalSgd {
        LocalSgd {
            config: self.clone(),
            group: None,
        }
    }
}

impl AlgorithmSpec for LocalSgdConfig {
    const NAME: &'static str = "local-sgd";
    const SUMMARY: &'static str =
        "local steps, parameters averaged every `period` steps; post-local SGD with `warmup_steps`";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, _run: &RunShape<'_>, _len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init()))
    }

    fn variants() -> Vec<Self> {
        vec![
            LocalSgdConfig {
                period: 4,
                ..Default::default()
            },
            LocalSgdConfig {
                period: 4,
                warmup_steps: 10,
                group_size: Some(2),
            },
        ]
    }
}

/// One worker's local SGD state.
pub struct LocalSgd {
    config: LocalSgdConfig,
    group: Option<Box<dyn Communicator>>,
}

impl Algorithm for LocalSgd {
    // Stateless between steps (the groups are rebuilt by `setup`): nothing to save.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Ok(())
    }
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Ok(())
    }
    fn setup(&mut self, comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        if let Some(l) = self.config.group_size {
            self.group = Some(comm.split(comm.rank() / l, comm.rank())?);
        }
        Ok(())
    }

    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if ctx.step < self.config.warmup_steps {
            ctx.comm.all_reduce(ctx.grad, ReduceOp::Mean)
        } else if let Some(group) = self.group.as_mut() {
            group.all_reduce(ctx.grad, ReduceOp::Mean)
        } else {
            Ok(())
        }
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let averaging = Every {
            period: self.config.period,
            offset: self.config.warmup_steps,
        };
        if averaging.due(ctx.step) {
            ctx.comm.all_reduce(ctx.params, ReduceOp::Mean)?;
        }
        Ok(())
    }

    fn touches(&self, step: u64) -> Touches {
        let averaging = Every {
            period: self.config.period,
            offset: self.config.warmup_steps,
        };
        let reduces = step < self.config.warmup_steps || self.config.group_size.is_some();
        Touches::gradient_hook(reduces).union(Touches::after_step_params(averaging.due(step)))
    }
}
