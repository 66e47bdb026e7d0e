//! A noisy quadratic with a known optimum.
//!
//! `f(x) = E_z ½(x − z)ᵀA(x − z)` with `z ~ N(x*, σ²I)` and diagonal `A` whose eigenvalues
//! are log-spaced in [1/condition, 1]. Its minimizer is x* and `f(x) − f* = ½(x − x*)ᵀA(x − x*)`,
//! which is what [`Learner::evaluate`] reports. A mini-batch of b samples gives the
//! gradient `A(x − z̄)`, an unbiased estimate with variance shrinking as σ²/b; σ = 0 gives the
//! exact gradient.

use peloton_core::checkpoint::StateDict;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext};
use peloton_core::{ensure_config, seed, Result};
use serde::{Deserialize, Serialize};

use crate::normal;

/// `kind = "quadratic"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuadraticConfig {
    pub dim: usize,
    /// Ratio of the largest to the smallest curvature.
    pub condition: f32,
    /// σ, the spread of the samples around the optimum.
    pub noise: f32,
    pub batch_size: usize,
    /// Standard deviation of the initial parameters.
    pub init_scale: f32,
}

impl Default for QuadraticConfig {
    fn default() -> Self {
        Self {
            dim: 20,
            condition: 10.0,
            noise: 0.5,
            batch_size: 8,
            init_scale: 1.0,
        }
    }
}

impl QuadraticConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(self.dim >= 1, "problem.dim must be at least 1");
        peloton_core::limits::ensure_values("problem.dim", &[self.dim])?;
        ensure_config!(
            self.condition >= 1.0,
            "problem.condition must be ≥ 1, got {}",
            self.condition
        );
        ensure_config!(
            self.noise.is_finite() && self.noise >= 0.0,
            "problem.noise must be ≥ 0"
        );
        ensure_config!(
            self.batch_size >= 1,
            "problem.batch_size must be at least 1"
        );
        ensure_config!(
            self.init_scale.is_finite() && self.init_scale >= 0.0,
            "problem.init_scale must be ≥ 0"
        );
        Ok(())
    }

    pub fn build(&self, ctx: LearnerContext) -> Quadratic {
        let d = self.dim;
        let curvature = (0..d)
            .map(|k| {
                let t = if d > 1 {
                    k as f32 / (d - 1) as f32
                } else {
                    0.0
                };
                self.condition.powf(-t)
            })
            .collect();
        let mut shared = seed::rng(ctx.seed, "quadratic/optimum", 0);
        let optimum = (0..d).map(|_| normal(&mut shared)).collect();
        Quadratic {
            config: self.clone(),
            layout: ParamLayout::new().with("x", &[d]),
            curvature,
            optimum,
            samples: seed::rng(ctx.seed, "quadratic/samples", ctx.rank as u64),
            init: seed::rng(ctx.seed, "quadratic/init", ctx.rank as u64),
            mean_sample: vec![0.0; d],
        }
    }
}

/// One worker's quadratic.
pub struct Quadratic {
    config: QuadraticConfig,
    layout: ParamLayout,
    curvature: Vec<f32>,
    optimum: Vec<f32>,
    samples: seed::Rng,
    init: seed::Rng,
    mean_sample: Vec<f32>,
}

impl Quadratic {
    /// The minimizer x*.
    pub fn optimum(&self) -> &[f32] {
        &self.optimum
    }

    /// `f(x) − f*`.
    pub fn excess(&self, x: &[f32]) -> f64 {
        x.iter()
            .zip(&self.optimum)
            .zip(&self.curvature)
            .map(|((x, o), a)| 0.5 * (*a as f64) * ((x - o) as f64).powi(2))
            .sum()
    }
}

impl Learner for Quadratic {
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        state.put_rng("samples", &self.samples);
        state.put_rng("init", &self.init);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.samples = state.rng("samples")?;
        self.init = state.rng("init")?;
        Ok(())
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn init_params(&mut self, params: &mut [f32]) {
        for p in params.iter_mut() {
            *p = self.config.init_scale * normal(&mut self.init);
        }
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        let b = self.config.batch_size;
        let sigma = self.config.noise;
        self.mean_sample.fill(0.0);
        let mut loss = 0.0f64;
        for _ in 0..b {
            let coords = params
                .iter()
                .zip(&self.optimum)
                .zip(&self.curvature)
                .zip(self.mean_sample.iter_mut());
            for (((x, opt), a), mean) in coords {
                let z = opt + sigma * normal(&mut self.samples);
                let diff = (x - z) as f64;
                loss += 0.5 * *a as f64 * diff * diff;
                *mean += z;
            }
        }
        let inv_b = 1.0 / b as f32;
        for (((g, x), a), mean) in grad
            .iter_mut()
            .zip(params)
            .zip(&self.curvature)
            .zip(&self.mean_sample)
        {
            *g = a * (x - mean * inv_b);
        }
        Ok(loss / b as f64)
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let grad_norm = params
            .iter()
            .zip(&self.optimum)
            .zip(&self.curvature)
            .map(|((x, o), a)| ((a * (x - o)) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok(Evaluation {
            loss: self.excess(params),
            accuracy: None,
            grad_norm: Some(grad_norm),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(rank: usize) -> LearnerContext {
        LearnerContext {
            rank,
            workers: 2,
            seed: 3,
        }
    }

    #[test]
    fn exact_gradient_without_noise() {
        let cfg = QuadraticConfig {
            dim: 3,
            condition: 4.0,
            noise: 0.0,
            batch_size: 2,
            init_scale: 1.0,
        };
        let mut q = cfg.build(ctx(0));
        // curvatures: 4^0, 4^-0.5, 4^-1 = 1, 0.5, 0.25
        let x: Vec<f32> = q.optimum().iter().map(|o| o + 2.0).collect();
        let mut g = vec![0.0; 3];
        let loss = q.loss_and_grad(&x, &mut g).unwrap();
        for (gi, want) in g.iter().zip([2.0, 1.0, 0.5]) {
            assert!((gi - want).abs() < 1e-5);
        }
        // ½·(1 + 0.5 + 0.25)·2² = 3.5
        assert!((loss - 3.5).abs() < 1e-5);
        assert!((q.evaluate(&x).unwrap().loss - 3.5).abs() < 1e-5);
    }

    #[test]
    fn optimum_is_shared_and_streams_are_not() {
        let cfg = QuadraticConfig::default();
        let (mut a, mut b) = (cfg.build(ctx(0)), cfg.build(ctx(1)));
        assert_eq!(a.optimum(), b.optimum());
        let x = vec![0.0; cfg.dim];
        let (mut ga, mut gb) = (vec![0.0; cfg.dim], vec![0.0; cfg.dim]);
        assert_ne!(
            a.loss_and_grad(&x, &mut ga).unwrap(),
            b.loss_and_grad(&x, &mut gb).unwrap()
        );
    }
}
