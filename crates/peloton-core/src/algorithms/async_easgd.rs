//! Asynchronous EASGD and EAMSGD (Zhang, Choromanska, LeCun 2015, Algorithms 1 and 2),
//! ALGORITHMS.md §2.1–2.2, with the center on a parameter server sharded over S servers.
//!
//! Each worker, every τ of its *own* steps, independently of the others:
//!
//! ```text
//! x̃ ← pull the center from the server
//! δ = α·(x − x̃);   push δ (the server does x̃ ← x̃ + δ);   x ← x − δ
//! ```
//!
//! The gradient of that step is taken at the pre-pull point x and applied after the pull, as
//! the author's code does (`optim-eamsgd.lua`: receive the center, compute δ, send it, do the
//! local update, then `w ← w − δ`). EAMSGD is the same exchange with a Nesterov-momentum local
//! optimizer (the config requires one).
//!
//! The server adds every δ shard by shard under a lock per shard (the author's server adds
//! lock-free and accepts inconsistent reads; we keep every update), so the center always
//! equals its initial value plus the sum of all pushed δ. The server's version counter (the
//! number of pushes so far) gives the **staleness** this worker reports: how many elastic
//! updates of *other* workers the center received since this worker's previous exchange.
//!
//! Communication per exchange: pull B bytes, push B bytes, every τ own steps.

use serde::{Deserialize, Serialize};

use super::asynchronous::{Staleness, DONE};
use super::easgd::EasgdConfig;
use super::{
    Algorithm, AlgorithmSpec, AsyncAlgorithm, Asynchronous, Every, Observation, RunShape,
    StepContext, Touches,
};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::transport::{Communicator, CounterOp};
use crate::Result;

/// `name = "async-easgd"` (and, through [`AsyncEamsgdConfig`], `"async-eamsgd"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncEasgdConfig {
    /// τ: own local steps between two exchanges with the server (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<u64>,
    /// α, each worker's moving rate. Give α or β, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// β = N·α (default 0.9, the paper's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f32>,
    /// S, the number of parameter-server shards (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<usize>,
}

impl AsyncEasgdConfig {
    fn elastic(&self) -> EasgdConfig {
        EasgdConfig {
            tau: self.tau,
            alpha: self.alpha,
            beta: self.beta,
        }
    }

    pub fn servers(&self) -> usize {
        self.servers.unwrap_or(1)
    }

    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(
            self.servers() >= 1,
            "algorithm.servers must be at least 1 (parameter-server shards)"
        );
        self.elastic().validate(workers)
    }

    pub fn init(&self, workers: usize, len: usize) -> AsyncEasgd {
        let elastic = self.elastic();
        AsyncEasgd {
            tau: elastic.tau(),
            alpha: elastic.alpha(workers),
            servers: self.servers(),
            workers,
            center: vec![0.0; len],
            delta: vec![0.0; len],
            pending: false,
            last_version: None,
            staleness: Staleness::default(),
        }
    }
}

impl AlgorithmSpec for AsyncEasgdConfig {
    const NAME: &'static str = "async-easgd";
    const SUMMARY: &'static str = "asynchronous EASGD: every tau own steps pull the center from a sharded parameter server, push the elastic difference";
    const HAS_CENTER: bool = true;
    type Timing = Asynchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn AsyncAlgorithm>> {
        Ok(Box::new(self.init(run.workers, len)))
    }

    fn variants() -> Vec<Self> {
        vec![AsyncEasgdConfig {
            servers: Some(2),
            ..Default::default()
        }]
    }
}

/// `name = "async-eamsgd"`: the keys of `async-easgd`, with a Nesterov-momentum local optimizer
/// (checked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AsyncEamsgdConfig {
    pub easgd: AsyncEasgdConfig,
}

impl AlgorithmSpec for AsyncEamsgdConfig {
    const NAME: &'static str = "async-eamsgd";
    const SUMMARY: &'static str = "asynchronous EASGD with a Nesterov-momentum local optimizer";
    const HAS_CENTER: bool = true;
    type Timing = Asynchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        ensure_config!(
            run.optimizer.momentum > 0.0 && run.optimizer.nesterov,
            "async-eamsgd needs a Nesterov-momentum local optimizer: set optimizer.momentum > 0 (the paper uses 0.99) and optimizer.nesterov = true"
        );
        self.easgd.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn AsyncAlgorithm>> {
        Ok(Box::new(self.easgd.init(run.workers, len)))
    }
}

/// One worker's asynchronous EASGD state.
pub struct AsyncEasgd {
    tau: u64,
    alpha: f32,
    servers: usize,
    workers: usize,
    /// The center as of this worker's latest pull.
    center: Vec<f32>,
    delta: Vec<f32>,
    pending: bool,
    /// The server's version right after this worker's previous push.
    last_version: Option<u64>,
    staleness: Staleness,
}

impl AsyncEasgd {
    /// The elastic difference δ this worker pushed at its latest exchange (zeros before it).
    pub fn last_push(&self) -> &[f32] {
        &self.delta
    }
}

impl Algorithm for AsyncEasgd {
    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        // The first worker to arrive initializes the server with its parameters (identical on
        // every worker when the run synchronizes the initialization, the default).
        comm.server_init(params, self.servers)?;
        comm.server_pull(&mut self.center)?;
        Ok(())
    }
    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if !Every::steps(self.tau).due(ctx.step) {
            return Ok(());
        }
        let version = ctx.comm.server_pull(&mut self.center)?;
        if let Some(last) = self.last_version {
            self.staleness.record(version - last);
        }
        kernels::sub_into(&mut self.delta, ctx.params, &self.center);
        kernels::scale(&mut self.delta, self.alpha);
        ctx.comm.server_push(&self.delta)?;
        self.last_version = Some(version + 1);
        self.pending = true;
        Ok(())
    }
    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if self.pending {
            kernels::sub_assign(ctx.params, &self.delta);
            self.pending = false;
        }
        Ok(())
    }
    /// The elastic difference is taken before the step and applied after it.
    fn touches(&self, step: u64) -> Touches {
        Touches::params_around_step(Every::steps(self.tau).due(step))
    }
    // Between two steps `pending` is false; the server's center is the transport's state.
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_f32s("center", &self.center);
        state.put_f32s("delta", &self.delta);
        state.put_u64s(
            "last_version",
            &self.last_version.map_or(vec![], |v| vec![v]),
        );
        state.put_dict("staleness", self.staleness.save_state());
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        state.f32s_into("center", &mut self.center)?;
        state.f32s_into("delta", &mut self.delta)?;
        self.last_version = state.u64s("last_version")?.first().copied();
        self.staleness.load_state(state.dict("staleness")?)?;
        self.pending = false;
        Ok(())
    }
    fn observe(&mut self) -> Observation<'_> {
        Observation {
            center: Some(&self.center),
            ..Default::default()
        }
    }
}

impl AsyncAlgorithm for AsyncEasgd {
    fn finish(&mut self, comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        // The final center includes every worker's last push.
        while comm.counter(DONE, CounterOp::Get)? < self.workers as u64 {
            comm.pause()?;
        }
        comm.server_pull(&mut self.center)?;
        Ok(())
    }

    fn staleness(&mut self) -> Option<(f64, u64)> {
        self.staleness.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let bad = AsyncEasgdConfig {
            servers: Some(0),
            ..Default::default()
        };
        assert!(bad.validate(4).unwrap_err().to_string().contains("servers"));
        let both = AsyncEasgdConfig {
            alpha: Some(0.1),
            beta: Some(0.5),
            ..Default::default()
        };
        assert!(both.validate(4).is_err());
        AsyncEasgdConfig::default().validate(4).unwrap();
    }
}
