//! Softmax (multinomial logistic) regression on a synthetic classification dataset.
//!
//! Data: a random teacher `W*` (C×D); inputs `x ~ N(0, I_D)`; labels drawn from
//! `softmax(W*x)`, so the Bayes error is above zero and the problem is realistic. The training
//! set is sharded over workers (worker r gets samples r, r+N, r+2N, …); each worker walks its
//! shard in a fresh seeded permutation every epoch. Objective on a batch B:
//! `(1/|B|)·Σ_{i∈B} −log p(y_i | x_i) + (l2/2)·‖W‖²` (the bias is not regularized).

use peloton_core::checkpoint::StateDict;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext};
use peloton_core::limits::ensure_values;
use peloton_core::{ensure_config, seed, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::normal;

/// `kind = "softmax"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftmaxConfig {
    pub classes: usize,
    pub features: usize,
    /// Training samples over all workers.
    pub train_samples: usize,
    pub test_samples: usize,
    /// Samples per mini-batch; 0 = the whole shard (full gradient).
    pub batch_size: usize,
    pub l2: f32,
    /// Scale of the teacher's logits: larger is more separable.
    pub teacher_scale: f32,
}

impl Default for SoftmaxConfig {
    fn default() -> Self {
        Self {
            classes: 10,
            features: 32,
            train_samples: 8192,
            test_samples: 2048,
            batch_size: 32,
            l2: 1e-4,
            teacher_scale: 4.0,
        }
    }
}

/// A dataset: row-major inputs and labels.
#[derive(Debug, Clone)]
struct Data {
    x: Vec<f32>,
    y: Vec<u32>,
}

impl SoftmaxConfig {
    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(self.classes >= 2, "problem.classes must be at least 2");
        ensure_config!(self.features >= 1, "problem.features must be at least 1");
        ensure_config!(
            self.train_samples >= workers,
            "problem.train_samples = {} is less than the number of workers ({workers}): some shards would be empty",
            self.train_samples
        );
        ensure_config!(
            self.test_samples >= 1,
            "problem.test_samples must be at least 1"
        );
        ensure_values(
            "problem.train_samples × problem.features",
            &[self.train_samples, self.features],
        )?;
        ensure_values(
            "problem.test_samples × problem.features",
            &[self.test_samples, self.features],
        )?;
        ensure_values(
            "problem.classes × problem.features (the model)",
            &[self.classes, self.features],
        )?;
        ensure_config!(
            self.l2.is_finite() && self.l2 >= 0.0,
            "problem.l2 must be ≥ 0"
        );
        ensure_config!(
            self.teacher_scale.is_finite(),
            "problem.teacher_scale must be finite"
        );
        Ok(())
    }

    fn generate(&self, teacher: &[f32], rng: &mut seed::Rng, n: usize) -> Data {
        let (c, d) = (self.classes, self.features);
        let mut x = vec![0.0f32; n * d];
        let mut y = vec![0u32; n];
        let mut logits = vec![0.0f64; c];
        for i in 0..n {
            let row = &mut x[i * d..(i + 1) * d];
            row.iter_mut().for_each(|v| *v = normal(rng));
            for (k, l) in logits.iter_mut().enumerate() {
                *l = teacher[k * d..(k + 1) * d]
                    .iter()
                    .zip(row.iter())
                    .map(|(w, v)| (w * v) as f64)
                    .sum();
            }
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let mut u: f64 = rng.random::<f64>() * total;
            y[i] = (c - 1) as u32;
            for (k, l) in logits.iter().enumerate() {
                u -= (l - max).exp();
                if u <= 0.0 {
                    y[i] = k as u32;
                    break;
                }
            }
        }
        Data { x, y }
    }

    pub fn build(&self, ctx: LearnerContext) -> SoftmaxRegression {
        let (c, d) = (self.classes, self.features);
        let mut shared = seed::rng(ctx.seed, "softmax/data", 0);
        let scale = self.teacher_scale / (d as f32).sqrt();
        let teacher: Vec<f32> = (0..c * d).map(|_| scale * normal(&mut shared)).collect();
        let train = self.generate(&teacher, &mut shared, self.train_samples);
        let test = self.generate(&teacher, &mut shared, self.test_samples);
        let shard: Vec<usize> = (ctx.rank..self.train_samples)
            .step_by(ctx.workers)
            .collect();
        SoftmaxRegression {
            config: self.clone(),
            layout: ParamLayout::new()
                .with("weight", &[c, d])
                .with("bias", &[c]),
            train,
            test,
            order: shard.clone(),
            shard,
            cursor: usize::MAX,
            sampler: seed::rng(ctx.seed, "softmax/sampler", ctx.rank as u64),
            batch: Vec::new(),
            probs: vec![0.0; c],
        }
    }
}

/// One worker's softmax regression.
pub struct SoftmaxRegression {
    config: SoftmaxConfig,
    layout: ParamLayout,
    train: Data,
    test: Data,
    /// This worker's training indices, and their order in the current epoch.
    shard: Vec<usize>,
    order: Vec<usize>,
    cursor: usize,
    sampler: seed::Rng,
    batch: Vec<usize>,
    probs: Vec<f64>,
}

impl SoftmaxRegression {
    /// Draws the indices (into the whole training set) of the next mini-batch.
    pub fn sample_batch(&mut self) -> Vec<usize> {
        self.fill_batch();
        self.batch.clone()
    }

    fn fill_batch(&mut self) {
        self.batch.clear();
        if self.config.batch_size == 0 {
            self.batch.extend_from_slice(&self.shard);
            return;
        }
        while self.batch.len() < self.config.batch_size {
            if self.cursor >= self.order.len() {
                self.order.copy_from_slice(&self.shard);
                self.order.shuffle(&mut self.sampler);
                self.cursor = 0;
            }
            self.batch.push(self.order[self.cursor]);
            self.cursor += 1;
        }
    }

    /// Mean cross-entropy (plus the L2 term) of `indices` of `data`, with its gradient added to
    /// `grad` when given. Returns (loss, correct predictions).
    fn pass(
        &self,
        data: &Data,
        indices: &[usize],
        params: &[f32],
        mut grad: Option<&mut [f32]>,
        probs: &mut [f64],
    ) -> (f64, usize) {
        let (c, d) = (self.config.classes, self.config.features);
        let (w, b) = params.split_at(c * d);
        if let Some(g) = grad.as_deref_mut() {
            g.fill(0.0);
        }
        let inv = 1.0 / indices.len() as f64;
        let mut loss = 0.0f64;
        let mut correct = 0;
        for &i in indices {
            let xi = &data.x[i * d..(i + 1) * d];
            let yi = data.y[i] as usize;
            let mut best = 0;
            for k in 0..c {
                probs[k] = b[k] as f64
                    + w[k * d..(k + 1) * d]
                        .iter()
                        .zip(xi)
                        .map(|(a, v)| (a * v) as f64)
                        .sum::<f64>();
                if probs[k] > probs[best] {
                    best = k;
                }
            }
            correct += (best == yi) as usize;
            let max = probs[best];
            let total: f64 = probs.iter().map(|l| (l - max).exp()).sum();
            loss += total.ln() + max - probs[yi];
            if let Some(g) = grad.as_deref_mut() {
                let (gw, gb) = g.split_at_mut(c * d);
                for k in 0..c {
                    let p = (probs[k] - max).exp() / total;
                    let coef = ((p - (k == yi) as u8 as f64) * inv) as f32;
                    gb[k] += coef;
                    gw[k * d..(k + 1) * d]
                        .iter_mut()
                        .zip(xi)
                        .for_each(|(g, v)| *g += coef * v);
                }
            }
        }
        let l2 = self.config.l2;
        let reg = 0.5 * l2 as f64 * w.iter().map(|v| (v * v) as f64).sum::<f64>();
        if let Some(g) = grad {
            g[..c * d].iter_mut().zip(w).for_each(|(g, v)| *g += l2 * v);
        }
        (loss * inv + reg, correct)
    }

    /// The objective and its gradient on the given training samples (a whole batch at once).
    pub fn loss_and_grad_on(&self, params: &[f32], indices: &[usize], grad: &mut [f32]) -> f64 {
        let mut probs = vec![0.0; self.config.classes];
        self.pass(&self.train, indices, params, Some(grad), &mut probs)
            .0
    }
}

impl Learner for SoftmaxRegression {
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        let order: Vec<u64> = self.order.iter().map(|&i| i as u64).collect();
        state.put_u64s("order", &order);
        state.put_u64("cursor", self.cursor as u64);
        state.put_rng("sampler", &self.sampler);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        let order = state.u64s("order")?;
        let cursor = state.usize("cursor")?;
        // The epoch order is a permutation of this worker's shard: anything else is another run.
        // (A cursor past the end just means "reshuffle before the next batch".)
        let mut sorted: Vec<usize> = order.iter().map(|&i| i as usize).collect();
        sorted.sort_unstable();
        let mut shard = self.shard.clone();
        shard.sort_unstable();
        if sorted != shard {
            return Err(peloton_core::Error::Checkpoint(
                "the softmax data order does not match this worker's shard".into(),
            ));
        }
        self.order = order.iter().map(|&i| i as usize).collect();
        self.cursor = cursor;
        self.sampler = state.rng("sampler")?;
        Ok(())
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn init_params(&mut self, params: &mut [f32]) {
        // Zero is the standard start for a convex model; symmetry is broken by the data.
        params.fill(0.0);
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        self.fill_batch();
        let mut probs = std::mem::take(&mut self.probs);
        let loss = self
            .pass(&self.train, &self.batch, params, Some(grad), &mut probs)
            .0;
        self.probs = probs;
        Ok(loss)
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let mut probs = vec![0.0; self.config.classes];
        let all: Vec<usize> = (0..self.test.y.len()).collect();
        let (loss, correct) = self.pass(&self.test, &all, params, None, &mut probs);
        let train: Vec<usize> = (0..self.train.y.len()).collect();
        let mut grad = vec![0.0f32; params.len()];
        self.pass(&self.train, &train, params, Some(&mut grad), &mut probs);
        let grad_norm = grad.iter().map(|g| (g * g) as f64).sum::<f64>().sqrt();
        Ok(Evaluation {
            loss,
            accuracy: Some(correct as f64 / all.len() as f64),
            grad_norm: Some(grad_norm),
        })
    }

    fn steps_per_epoch(&self) -> Option<u64> {
        let b = self.config.batch_size;
        Some(if b == 0 {
            1
        } else {
            self.shard.len().div_ceil(b) as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SoftmaxConfig {
        SoftmaxConfig {
            classes: 3,
            features: 4,
            train_samples: 60,
            test_samples: 30,
            batch_size: 5,
            ..Default::default()
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let cfg = small();
        let mut m = cfg.build(LearnerContext {
            rank: 0,
            workers: 1,
            seed: 9,
        });
        let n = m.layout().len();
        let params: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.05).collect();
        let idx: Vec<usize> = (0..20).collect();
        let mut g = vec![0.0; n];
        m.loss_and_grad_on(&params, &idx, &mut g);
        let h = 1e-2f32;
        for j in [0, 5, n - 1] {
            let (mut p1, mut p2) = (params.clone(), params.clone());
            p1[j] += h;
            p2[j] -= h;
            let mut scratch = vec![0.0; n];
            let fd = (m.loss_and_grad_on(&p1, &idx, &mut scratch)
                - m.loss_and_grad_on(&p2, &idx, &mut scratch))
                / (2.0 * h as f64);
            assert!(
                (fd - g[j] as f64).abs() < 2e-3,
                "param {j}: fd {fd} vs grad {}",
                g[j]
            );
        }
        let _ = m.evaluate(&params).unwrap();
    }

    #[test]
    fn shards_partition_the_training_set() {
        let cfg = small();
        let mut seen = vec![0; cfg.train_samples];
        for r in 0..4 {
            let mut m = cfg.build(LearnerContext {
                rank: r,
                workers: 4,
                seed: 1,
            });
            assert_eq!(m.steps_per_epoch(), Some(3)); // 15 samples, batches of 5
            for _ in 0..3 {
                for i in m.sample_batch() {
                    assert_eq!(i % 4, r);
                    seen[i] += 1;
                }
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "one epoch visits every sample once"
        );
    }

    #[test]
    fn dataset_is_shared_and_learnable() {
        let cfg = SoftmaxConfig {
            train_samples: 2000,
            test_samples: 500,
            batch_size: 50,
            ..small()
        };
        let mut m = cfg.build(LearnerContext {
            rank: 0,
            workers: 1,
            seed: 2,
        });
        let n = m.layout().len();
        let mut x = vec![0.0; n];
        let mut g = vec![0.0; n];
        let before = m.evaluate(&x).unwrap();
        for _ in 0..400 {
            m.loss_and_grad(&x, &mut g).unwrap();
            x.iter_mut().zip(&g).for_each(|(p, g)| *p -= 0.5 * g);
        }
        let after = m.evaluate(&x).unwrap();
        // Zero weights predict class 0 for everything: about chance. Training must beat it.
        assert!(after.loss < before.loss - 0.2, "{before:?} -> {after:?}");
        assert!(after.accuracy.unwrap() > 0.6, "{after:?}");
    }
}
