//! Symmetric low-rank matrix completion (LSGD §1.6, ALGORITHMS.md):
//!
//! `min_X f(X) = (1/|Ω|)·Σ_{(i,j)∈Ω} ((XXᵀ)_ij − M_ij)²`,  X ∈ R^{d×r},  M = X*X*ᵀ.
//!
//! Ω is a symmetric random set of observed entries (each pair i ≤ j kept with probability
//! `observed`, counted twice off the diagonal). X, −X and XQ for orthogonal Q are all
//! solutions and their average is the saddle X = 0 — the "curse of symmetry" that stalls
//! averaging methods. A mini-batch samples `batch_size` observed pairs (0 = all: the exact
//! gradient, LGD).

use peloton_core::checkpoint::StateDict;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext};
use peloton_core::{ensure_config, seed, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::normal;

/// `kind = "matrix-completion"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixCompletionConfig {
    /// Rows of M (M is d×d).
    pub d: usize,
    pub rank: usize,
    /// Probability that a pair (i, j), i ≤ j, is observed.
    pub observed: f64,
    /// Observed pairs per mini-batch; 0 = all (exact gradient).
    pub batch_size: usize,
    /// Standard deviation of the initial entries of X.
    pub init_scale: f32,
}

impl Default for MatrixCompletionConfig {
    fn default() -> Self {
        Self {
            d: 100,
            rank: 2,
            observed: 0.3,
            batch_size: 0,
            init_scale: 0.5,
        }
    }
}

/// An observed pair i ≤ j with its target value and weight (2 off the diagonal, 1 on it).
#[derive(Debug, Clone, Copy)]
struct Entry {
    i: u32,
    j: u32,
    m: f32,
    weight: f32,
}

impl MatrixCompletionConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(self.d >= 1, "problem.d must be at least 1");
        // Every entry of the upper triangle is visited to draw the observed ones.
        peloton_core::limits::ensure_values("problem.d × problem.d", &[self.d, self.d])?;
        ensure_config!(
            self.rank >= 1 && self.rank <= self.d,
            "problem.rank must be in 1..=d"
        );
        ensure_config!(
            self.observed > 0.0 && self.observed <= 1.0,
            "problem.observed must be in (0, 1]"
        );
        ensure_config!(
            self.init_scale.is_finite() && self.init_scale > 0.0,
            "problem.init_scale must be positive"
        );
        Ok(())
    }

    pub fn build(&self, ctx: LearnerContext) -> MatrixCompletion {
        let (d, r) = (self.d, self.rank);
        let mut shared = seed::rng(ctx.seed, "matrix-completion/data", 0);
        let scale = (r as f32).powf(-0.25);
        let truth: Vec<f32> = (0..d * r).map(|_| scale * normal(&mut shared)).collect();
        let mut entries = Vec::new();
        for i in 0..d {
            for j in i..d {
                if shared.random::<f64>() < self.observed {
                    let m = (0..r).map(|k| truth[i * r + k] * truth[j * r + k]).sum();
                    entries.push(Entry {
                        i: i as u32,
                        j: j as u32,
                        m,
                        weight: if i == j { 1.0 } else { 2.0 },
                    });
                }
            }
        }
        if entries.is_empty() {
            // Keep the problem well defined for tiny d: observe the first diagonal entry.
            let m = (0..r).map(|k| truth[k] * truth[k]).sum();
            entries.push(Entry {
                i: 0,
                j: 0,
                m,
                weight: 1.0,
            });
        }
        MatrixCompletion {
            config: self.clone(),
            layout: ParamLayout::new().with("x", &[d, r]),
            entries,
            sampler: seed::rng(ctx.seed, "matrix-completion/sampler", ctx.rank as u64),
            init: seed::rng(ctx.seed, "matrix-completion/init", ctx.rank as u64),
            batch: Vec::new(),
        }
    }
}

/// One worker's matrix-completion problem.
pub struct MatrixCompletion {
    config: MatrixCompletionConfig,
    layout: ParamLayout,
    entries: Vec<Entry>,
    sampler: seed::Rng,
    init: seed::Rng,
    batch: Vec<u32>,
}

impl MatrixCompletion {
    /// Loss and (optionally) gradient over the given entries.
    fn pass(
        &self,
        x: &[f32],
        entries: impl Iterator<Item = Entry>,
        mut grad: Option<&mut [f32]>,
    ) -> f64 {
        let r = self.config.rank;
        if let Some(g) = grad.as_deref_mut() {
            g.fill(0.0);
        }
        let (mut loss, mut total_weight) = (0.0f64, 0.0f64);
        let mut contributions: Vec<(Entry, f32)> = Vec::new();
        for e in entries {
            let (i, j) = (e.i as usize, e.j as usize);
            let dot: f32 = (0..r).map(|k| x[i * r + k] * x[j * r + k]).sum();
            let res = dot - e.m;
            loss += e.weight as f64 * (res as f64).powi(2);
            total_weight += e.weight as f64;
            if grad.is_some() {
                contributions.push((e, res));
            }
        }
        if let Some(g) = grad {
            let inv = (1.0 / total_weight) as f32;
            for (e, res) in contributions {
                let (i, j) = (e.i as usize, e.j as usize);
                if i == j {
                    // d/dX_i (⟨X_i, X_i⟩ − m)² = 4·res·X_i
                    for k in 0..r {
                        g[i * r + k] += 4.0 * res * x[i * r + k] * inv;
                    }
                } else {
                    // weight 2 for (i, j) and (j, i): d/dX_i = 2·2·res·X_j, and symmetrically.
                    let c = 2.0 * e.weight * res * inv;
                    for k in 0..r {
                        let (xi, xj) = (x[i * r + k], x[j * r + k]);
                        g[i * r + k] += c * xj;
                        g[j * r + k] += c * xi;
                    }
                }
            }
        }
        loss / total_weight
    }

    /// The full objective f(X).
    pub fn objective(&self, x: &[f32]) -> f64 {
        self.pass(x, self.entries.iter().copied(), None)
    }
}

impl Learner for MatrixCompletion {
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        state.put_rng("sampler", &self.sampler);
        state.put_rng("init", &self.init);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.sampler = state.rng("sampler")?;
        self.init = state.rng("init")?;
        Ok(())
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn init_params(&mut self, params: &mut [f32]) {
        let s = self.config.init_scale;
        params
            .iter_mut()
            .for_each(|p| *p = s * normal(&mut self.init));
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        if self.config.batch_size == 0 {
            return Ok(self.pass(params, self.entries.iter().copied(), Some(grad)));
        }
        self.batch.clear();
        for _ in 0..self.config.batch_size {
            self.batch
                .push(self.sampler.random_range(0..self.entries.len() as u32));
        }
        let entries = &self.entries;
        Ok(self.pass(
            params,
            self.batch.iter().map(|&k| entries[k as usize]),
            Some(grad),
        ))
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let mut g = vec![0.0; params.len()];
        let loss = self.pass(params, self.entries.iter().copied(), Some(&mut g));
        let grad_norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        Ok(Evaluation {
            loss,
            accuracy: None,
            grad_norm: Some(grad_norm),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences_and_truth_is_optimal() {
        let cfg = MatrixCompletionConfig {
            d: 6,
            rank: 2,
            observed: 0.7,
            batch_size: 0,
            init_scale: 0.5,
        };
        let mut mc = cfg.build(LearnerContext {
            rank: 0,
            workers: 1,
            seed: 4,
        });
        let mut x = vec![0.0; 12];
        mc.init_params(&mut x);
        let mut g = vec![0.0; 12];
        mc.loss_and_grad(&x, &mut g).unwrap();
        let h = 1e-3f32;
        for j in 0..12 {
            let (mut a, mut b) = (x.clone(), x.clone());
            a[j] += h;
            b[j] -= h;
            let fd = (mc.objective(&a) - mc.objective(&b)) / (2.0 * h as f64);
            assert!(
                (fd - g[j] as f64).abs() < 1e-2 * (1.0 + fd.abs()),
                "coord {j}: fd {fd} vs {}",
                g[j]
            );
        }
        // The objective is symmetric under X → −X and zero gradient at X = 0 (the saddle).
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        assert_eq!(mc.objective(&x), mc.objective(&neg));
        let zero = vec![0.0; 12];
        assert_eq!(mc.evaluate(&zero).unwrap().grad_norm, Some(0.0));
    }
}
