//! # peloton-problems
//!
//! Analytic learning problems with exact gradients, each a [`Learner`] with a seeded data
//! stream. They make algorithm behaviour checkable against known answers:
//!
//! | problem | objective | what it checks |
//! |---|---|---|
//! | [`quadratic`] | ½(x − x*)ᵀA(x − x*) from noisy samples | convergence to a known optimum |
//! | [`softmax`] | multinomial logistic regression on synthetic data | a real classifier, sharded data, accuracy |
//! | [`double_well`] | ¼(x₀² − 1)² + ½Σx_k² | the "curse of symmetry": a saddle between two minima |
//! | [`matrix_completion`] | ‖P_Ω(XXᵀ − M)‖² / |Ω| | symmetric low-rank recovery (LSGD §1.6) |
//!
//! Every problem derives its shared data (dataset, optimum) from the run seed and its
//! per-worker streams (sampling, initialization) from (run seed, rank), so runs are
//! reproducible and a worker's stream does not depend on how many workers there are.

pub mod double_well;
pub mod matrix_completion;
pub mod quadratic;
pub mod softmax;

use peloton_core::learner::{Learner, LearnerContext, LearnerFactory};
use peloton_core::Result;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

pub use double_well::DoubleWellConfig;
pub use matrix_completion::MatrixCompletionConfig;
pub use quadratic::QuadraticConfig;
pub use softmax::SoftmaxConfig;

/// Every problem, selected by `kind` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProblemConfig {
    Quadratic(QuadraticConfig),
    Softmax(SoftmaxConfig),
    DoubleWell(DoubleWellConfig),
    MatrixCompletion(MatrixCompletionConfig),
}

impl Default for ProblemConfig {
    fn default() -> Self {
        ProblemConfig::Softmax(SoftmaxConfig::default())
    }
}

impl ProblemConfig {
    pub fn name(&self) -> &'static str {
        match self {
            ProblemConfig::Quadratic(_) => "quadratic",
            ProblemConfig::Softmax(_) => "softmax",
            ProblemConfig::DoubleWell(_) => "double-well",
            ProblemConfig::MatrixCompletion(_) => "matrix-completion",
        }
    }

    /// Every problem kind with a one-line description and its keys, for `peloton list`.
    pub fn catalog() -> &'static [(&'static str, &'static str, &'static str)] {
        &[
            (
                "quadratic",
                "noisy quadratic with a known optimum",
                "dim, condition, noise, batch_size, init_scale",
            ),
            (
                "softmax",
                "softmax regression on a synthetic dataset (sharded, with a test set)",
                "classes, features, train_samples, test_samples, batch_size, l2, teacher_scale",
            ),
            (
                "double-well",
                "¼(x₀²−1)² + ½Σx_k²: two minima, a saddle between them",
                "dim, noise, start, spread",
            ),
            (
                "matrix-completion",
                "symmetric low-rank completion ‖P_Ω(XXᵀ−M)‖²",
                "d, rank, observed, batch_size, init_scale",
            ),
        ]
    }

    /// Checks the config for a run of `workers`.
    pub fn validate(&self, workers: usize) -> Result<()> {
        match self {
            ProblemConfig::Quadratic(c) => c.validate(),
            ProblemConfig::Softmax(c) => c.validate(workers),
            ProblemConfig::DoubleWell(c) => c.validate(),
            ProblemConfig::MatrixCompletion(c) => c.validate(),
        }
    }
}

impl LearnerFactory for ProblemConfig {
    fn build(&self, ctx: LearnerContext) -> Result<Box<dyn Learner>> {
        self.validate(ctx.workers)?;
        Ok(match self {
            ProblemConfig::Quadratic(c) => Box::new(c.build(ctx)),
            ProblemConfig::Softmax(c) => Box::new(c.build(ctx)),
            ProblemConfig::DoubleWell(c) => Box::new(c.build(ctx)),
            ProblemConfig::MatrixCompletion(c) => Box::new(c.build(ctx)),
        })
    }
}

/// A standard normal draw as f32.
pub(crate) fn normal(rng: &mut peloton_core::seed::Rng) -> f32 {
    let v: f64 = StandardNormal.sample(rng);
    v as f32
}
