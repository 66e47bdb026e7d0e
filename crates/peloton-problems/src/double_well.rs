//! The "curse of symmetry" objective (LSGD paper §1.6 stand-in, ALGORITHMS.md §1.6):
//!
//! `f(x) = ¼(x₀² − 1)² + ½·Σ_{k≥1} x_k²`
//!
//! Two minima at x = (±1, 0, …) with f = 0, and a saddle at the origin, their midpoint, with
//! f = ¼. Averaging two workers that sit in different wells lands on the saddle; following the
//! better worker does not. The exact 2-D function of the paper was not retrievable; any
//! objective with symmetric minima and a saddle at their midpoint shows the phenomenon.
//!
//! Starts: `mirrored` (default) puts workers 2k and 2k+1 at +v_k and −v_k with v_k drawn from
//! the shared seed, so every pair straddles the saddle exactly; `random` draws each worker's
//! start independently from [−1.5·spread, 1.5·spread].

use peloton_core::checkpoint::StateDict;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext};
use peloton_core::{ensure_config, seed, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::normal;

/// How workers start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    #[default]
    Mirrored,
    Random,
}

/// `kind = "double-well"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoubleWellConfig {
    pub dim: usize,
    /// Standard deviation of the noise added to each gradient coordinate and to the loss
    /// (0 = exact gradients and losses: LGD).
    pub noise: f32,
    pub start: Start,
    pub spread: f32,
}

impl Default for DoubleWellConfig {
    fn default() -> Self {
        Self {
            dim: 2,
            noise: 0.0,
            start: Start::Mirrored,
            spread: 1.0,
        }
    }
}

impl DoubleWellConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(self.dim >= 1, "problem.dim must be at least 1");
        ensure_config!(
            self.noise.is_finite() && self.noise >= 0.0,
            "problem.noise must be ≥ 0"
        );
        ensure_config!(
            self.spread.is_finite() && self.spread > 0.0,
            "problem.spread must be positive"
        );
        Ok(())
    }

    pub fn build(&self, ctx: LearnerContext) -> DoubleWell {
        DoubleWell {
            config: self.clone(),
            layout: ParamLayout::new().with("x", &[self.dim]),
            ctx,
            noise: seed::rng(ctx.seed, "double-well/noise", ctx.rank as u64),
        }
    }
}

/// `f(x)`.
pub fn objective(x: &[f32]) -> f64 {
    let x0 = x[0] as f64;
    0.25 * (x0 * x0 - 1.0).powi(2) + 0.5 * x[1..].iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
}

/// `∇f(x)`, written so that `∇f(−x) = −∇f(x)` holds exactly in floating point.
pub fn gradient(x: &[f32], grad: &mut [f32]) {
    grad[0] = x[0] * x[0] * x[0] - x[0];
    grad[1..].copy_from_slice(&x[1..]);
}

/// One worker's double well.
pub struct DoubleWell {
    config: DoubleWellConfig,
    layout: ParamLayout,
    ctx: LearnerContext,
    noise: seed::Rng,
}

impl Learner for DoubleWell {
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        state.put_rng("noise", &self.noise);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.noise = state.rng("noise")?;
        Ok(())
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn init_params(&mut self, params: &mut [f32]) {
        let spread = self.config.spread;
        match self.config.start {
            Start::Mirrored => {
                let pair = self.ctx.rank / 2;
                let mut shared = seed::rng(self.ctx.seed, "double-well/start", pair as u64);
                params[0] = spread * (0.5 + shared.random::<f32>());
                for p in params[1..].iter_mut() {
                    *p = 0.5 * spread * normal(&mut shared);
                }
                if self.ctx.rank % 2 == 1 {
                    params.iter_mut().for_each(|p| *p = -*p);
                }
            }
            Start::Random => {
                let mut own = seed::rng(
                    self.ctx.seed,
                    "double-well/start-random",
                    self.ctx.rank as u64,
                );
                params
                    .iter_mut()
                    .for_each(|p| *p = spread * (3.0 * own.random::<f32>() - 1.5));
            }
        }
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        gradient(params, grad);
        let mut loss = objective(params);
        if self.config.noise > 0.0 {
            let s = self.config.noise;
            grad.iter_mut()
                .for_each(|g| *g += s * normal(&mut self.noise));
            loss += (s * normal(&mut self.noise)) as f64;
        }
        Ok(loss)
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let mut g = vec![0.0; params.len()];
        gradient(params, &mut g);
        let grad_norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        Ok(Evaluation {
            loss: objective(params),
            accuracy: None,
            grad_norm: Some(grad_norm),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minima_and_saddle() {
        assert_eq!(objective(&[1.0, 0.0]), 0.0);
        assert_eq!(objective(&[-1.0, 0.0]), 0.0);
        assert_eq!(objective(&[0.0, 0.0]), 0.25);
        let mut g = [9.0f32; 2];
        gradient(&[0.0, 0.0], &mut g);
        assert_eq!(g, [0.0, 0.0]);
    }

    #[test]
    fn mirrored_pairs_are_exact_negatives() {
        let cfg = DoubleWellConfig {
            dim: 3,
            ..Default::default()
        };
        let mut a = vec![0.0; 3];
        let mut b = vec![0.0; 3];
        cfg.build(LearnerContext {
            rank: 2,
            workers: 4,
            seed: 5,
        })
        .init_params(&mut a);
        cfg.build(LearnerContext {
            rank: 3,
            workers: 4,
            seed: 5,
        })
        .init_params(&mut b);
        assert!(a[0] > 0.0);
        assert!(a.iter().zip(&b).all(|(x, y)| *x == -*y));
        let (mut ga, mut gb) = (vec![0.0; 3], vec![0.0; 3]);
        gradient(&a, &mut ga);
        gradient(&b, &mut gb);
        assert!(
            ga.iter().zip(&gb).all(|(x, y)| *x == -*y),
            "the gradient is exactly odd"
        );
    }
}
