//! A user-defined algorithm, added from outside peloton: **gossip averaging on a ring with a
//! decaying weight**. After every local step each worker swaps parameters with its two ring
//! neighbours and moves toward their mean,
//!
//! ```text
//! x_i ← x_i + w_t · ((x_{i−1} + x_{i+1}) / 2 − x_i),      w_t = w₀ / (1 + decay · t)
//! ```
//!
//! a symmetric, doubly-stochastic mixing (the workers' average is kept) that fades as training
//! goes on, so workers agree early and explore on their own late.
//!
//! Everything peloton needs is in this file: the config type (its keys, defaults, validation),
//! the registry entry ([`AlgorithmSpec`]: name, summary, timing, how to build one worker's
//! state) and the per-step hook. `main` registers it and hands over to peloton's own command
//! line, so this binary is `peloton` with one more algorithm — on threads, the simulator and
//! MPI, with checkpoints, metrics and reports:
//!
//! ```text
//! cargo run --release -p peloton-examples --bin decaying_gossip_algorithm -- list
//! cargo run --release -p peloton-examples --bin decaying_gossip_algorithm -- \
//!     train --problem softmax --workers 4 --steps 300 --set algorithm.name=decaying-gossip \
//!     --set algorithm.decay=0.05 --transport sim
//! ```
//!
//! docs/ADDING_AN_ALGORITHM.md walks through it.

use std::process::ExitCode;

use peloton_core::algorithms::{
    register, Algorithm, AlgorithmSpec, Registration, RunShape, StepContext, Synchronous,
};
use peloton_core::checkpoint::StateDict;
use peloton_core::transport::Tag;
use peloton_core::{ensure_config, Result};
use serde::{Deserialize, Serialize};

/// `[algorithm] name = "decaying-gossip"`: the keys a config may set (others are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecayingGossipConfig {
    /// w₀, the mixing weight at the first step (default 0.5).
    #[serde(default = "default_weight")]
    pub weight: f32,
    /// How fast the weight fades: w_t = w₀ / (1 + decay · t) (default 0.01).
    #[serde(default = "default_decay")]
    pub decay: f32,
}

fn default_weight() -> f32 {
    0.5
}

fn default_decay() -> f32 {
    0.01
}

impl AlgorithmSpec for DecayingGossipConfig {
    const NAME: &'static str = "decaying-gossip";
    const SUMMARY: &'static str =
        "ring gossip averaging whose weight w0 / (1 + decay * t) fades over training";
    type Timing = Synchronous;

    fn validate(&self, _run: &RunShape<'_>) -> Result<()> {
        ensure_config!(
            self.weight > 0.0 && self.weight <= 1.0,
            "algorithm.weight must be in (0, 1], got {}",
            self.weight
        );
        ensure_config!(
            self.decay >= 0.0 && self.decay.is_finite(),
            "algorithm.decay must be finite and at least 0, got {}",
            self.decay
        );
        Ok(())
    }

    fn build(&self, _run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(DecayingGossip {
            config: self.clone(),
            from_left: vec![0.0; len],
            from_right: vec![0.0; len],
        }))
    }
}

/// Messages travelling clockwise and counter-clockwise get their own tags, so that with two
/// workers (left and right neighbour are the same worker) they cannot be confused. Tags up to
/// 32767 work on every MPI library (the standard's least `MPI_TAG_UB`).
const CLOCKWISE: Tag = 0x7D01;
const COUNTER_CLOCKWISE: Tag = 0x7D02;

/// One worker's state: its config and two receive buffers (scratch, rewritten every step).
struct DecayingGossip {
    config: DecayingGossipConfig,
    from_left: Vec<f32>,
    from_right: Vec<f32>,
}

impl Algorithm for DecayingGossip {
    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let (rank, n) = (ctx.comm.rank(), ctx.comm.size());
        if n == 1 {
            return Ok(());
        }
        let (left, right) = ((rank + n - 1) % n, (rank + 1) % n);
        // Post both sends first, then receive: no worker waits on another's receive.
        let to_right = ctx.comm.isend(right, CLOCKWISE, ctx.params)?;
        let to_left = ctx.comm.isend(left, COUNTER_CLOCKWISE, ctx.params)?;
        ctx.comm.recv(left, CLOCKWISE, &mut self.from_left)?;
        ctx.comm
            .recv(right, COUNTER_CLOCKWISE, &mut self.from_right)?;
        ctx.comm.wait_send(to_right)?;
        ctx.comm.wait_send(to_left)?;

        let w = self.config.weight / (1.0 + self.config.decay * ctx.step as f32);
        for ((x, l), r) in ctx
            .params
            .iter_mut()
            .zip(&self.from_left)
            .zip(&self.from_right)
        {
            *x += w * (0.5 * (l + r) - *x);
        }
        Ok(())
    }

    // The step count (kept by the runner) is all that decides what comes next, and the
    // buffers are scratch: a checkpoint of this algorithm is empty, and exact.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Ok(())
    }

    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Ok(())
    }
}

fn main() -> ExitCode {
    if let Err(e) = register(Registration::of::<DecayingGossipConfig>()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    peloton_cli::command_line::main()
}
