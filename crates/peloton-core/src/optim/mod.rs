//! Local optimizers on flat buffers and learning-rate schedules.
//!
//! The update follows PyTorch's `torch.optim.SGD` exactly, because the reference experiments
//! use it: with weight decay `wd`, momentum `μ`, learning rate `η`,
//! `g ← g + wd·x;  v ← μ·v + g;  d ← g + μ·v (Nesterov) or v;  x ← x − η·d`.
//! With `[optimizer.laplacian]` the gradient is first replaced by its Laplacian-smoothed
//! version ([`laplacian`]), before weight decay and momentum, as the LS-SGD reference does.
//! Momentum buffers stay local: no algorithm communicates, resets or rescales them (the policy
//! of every reference code, ALGORITHMS.md §9.2).

pub mod laplacian;

use serde::{Deserialize, Serialize};

use crate::ensure_config;
use crate::layout::ParamLayout;
use crate::Result;
pub use laplacian::{LaplacianConfig, LaplacianSmoother};

/// The local optimizer: SGD with optional momentum, Nesterov momentum and weight decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Base learning rate η.
    #[serde(default = "default_lr")]
    pub lr: f32,
    /// Momentum μ ∈ [0, 1); 0 is plain SGD.
    #[serde(default)]
    pub momentum: f32,
    /// Nesterov momentum (needs momentum > 0).
    #[serde(default)]
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    #[serde(default)]
    pub weight_decay: f32,
    /// Linear warm-up from lr/warmup_steps to lr over the first steps (0 = none).
    #[serde(default)]
    pub warmup_steps: u64,
    /// The learning-rate schedule after warm-up.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Laplacian smoothing of each tensor's gradient (LS-SGD); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub laplacian: Option<LaplacianConfig>,
}

fn default_lr() -> f32 {
    0.1
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            laplacian: None,
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(
            self.lr.is_finite() && self.lr > 0.0,
            "optimizer.lr must be positive, got {}",
            self.lr
        );
        ensure_config!(
            (0.0..1.0).contains(&self.momentum),
            "optimizer.momentum must be in [0, 1), got {}",
            self.momentum
        );
        ensure_config!(
            !self.nesterov || self.momentum > 0.0,
            "optimizer.nesterov needs optimizer.momentum > 0"
        );
        ensure_config!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "optimizer.weight_decay must be ≥ 0, got {}",
            self.weight_decay
        );
        if let Some(l) = &self.laplacian {
            l.validate()?;
        }
        self.schedule.validate()
    }

    /// Builds the optimizer state for a parameter buffer laid out as `layout`.
    pub fn init(&self, layout: &ParamLayout) -> Sgd {
        let len = layout.len();
        Sgd {
            smoother: self.laplacian.as_ref().map(|l| l.init(layout)),
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            velocity: if self.momentum > 0.0 {
                vec![0.0; len]
            } else {
                Vec::new()
            },
        }
    }

    /// The learning rate for local step `step` (0-based) at `elapsed` seconds of training.
    pub fn lr_at(&self, step: u64, elapsed: f64) -> f32 {
        let base = self.lr * self.schedule.factor(step, elapsed);
        if step < self.warmup_steps {
            base * (step + 1) as f32 / self.warmup_steps as f32
        } else {
            base
        }
    }
}

/// Learning-rate schedules, as multipliers of the base rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// ×gamma every `every` steps.
    Step { every: u64, gamma: f32 },
    /// ×gamma at each milestone step.
    MultiStep { milestones: Vec<u64>, gamma: f32 },
    /// Cosine decay from the base rate to `min_factor`·base over `total_steps`.
    Cosine {
        total_steps: u64,
        #[serde(default)]
        min_factor: f32,
    },
    /// ×gamma once the worker has trained for each of `after_seconds` (LSGD's time-budgeted
    /// runs: "×0.1 after 500 s"). Wall-clock on real transports, virtual time in the simulator.
    TimeDrop { after_seconds: Vec<f64>, gamma: f32 },
}

impl LrSchedule {
    pub fn validate(&self) -> Result<()> {
        let gamma_ok = |g: f32| g.is_finite() && g > 0.0;
        match self {
            LrSchedule::Constant => {}
            LrSchedule::Step { every, gamma } => {
                ensure_config!(*every > 0, "optimizer.schedule.every must be > 0");
                ensure_config!(
                    gamma_ok(*gamma),
                    "optimizer.schedule.gamma must be positive, got {gamma}"
                );
            }
            LrSchedule::MultiStep { milestones, gamma } => {
                ensure_config!(
                    milestones.windows(2).all(|w| w[0] < w[1]),
                    "optimizer.schedule.milestones must be strictly increasing"
                );
                ensure_config!(
                    gamma_ok(*gamma),
                    "optimizer.schedule.gamma must be positive, got {gamma}"
                );
            }
            LrSchedule::Cosine {
                total_steps,
                min_factor,
            } => {
                ensure_config!(
                    *total_steps > 0,
                    "optimizer.schedule.total_steps must be > 0"
                );
                ensure_config!(
                    (0.0..=1.0).contains(min_factor),
                    "optimizer.schedule.min_factor must be in [0, 1], got {min_factor}"
                );
            }
            LrSchedule::TimeDrop {
                after_seconds,
                gamma,
            } => {
                ensure_config!(
                    after_seconds.iter().all(|s| s.is_finite() && *s >= 0.0)
                        && after_seconds.windows(2).all(|w| w[0] < w[1]),
                    "optimizer.schedule.after_seconds must be non-negative and increasing"
                );
                ensure_config!(
                    gamma_ok(*gamma),
                    "optimizer.schedule.gamma must be positive, got {gamma}"
                );
            }
        }
        Ok(())
    }

    /// The multiplier of the base rate at `step` and `elapsed` seconds.
    pub fn factor(&self, step: u64, elapsed: f64) -> f32 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Step { every, gamma } => gamma.powi((step / every) as i32),
            LrSchedule::MultiStep { milestones, gamma } => {
                gamma.powi(milestones.iter().filter(|&&m| step >= m).count() as i32)
            }
            LrSchedule::Cosine {
                total_steps,
                min_factor,
            } => {
                let t = (step.min(*total_steps) as f64) / (*total_steps as f64);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                (*min_factor as f64 + (1.0 - *min_factor as f64) * cos) as f32
            }
            LrSchedule::TimeDrop {
                after_seconds,
                gamma,
            } => gamma.powi(after_seconds.iter().filter(|&&s| elapsed >= s).count() as i32),
        }
    }
}

/// SGD state of one worker. Built by [`OptimizerConfig::init`].
#[derive(Debug, Clone)]
pub struct Sgd {
    smoother: Option<LaplacianSmoother>,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
    velocity: Vec<f32>,
}

impl Sgd {
    /// One step: `params ← params − lr·direction(grad)`. `grad` is used as scratch.
    pub fn step(&mut self, params: &mut [f32], grad: &mut [f32], lr: f32) {
        assert_eq!(
            params.len(),
            grad.len(),
            "optimizer: gradient length differs from parameters"
        );
        if let Some(smoother) = &mut self.smoother {
            smoother.smooth(grad);
        }
        let wd = self.weight_decay;
        if wd != 0.0 {
            grad.iter_mut()
                .zip(params.iter())
                .for_each(|(g, x)| *g += wd * *x);
        }
        if self.momentum == 0.0 {
            params
                .iter_mut()
                .zip(grad.iter())
                .for_each(|(x, g)| *x -= lr * *g);
            return;
        }
        let mu = self.momentum;
        if self.nesterov {
            for ((x, g), v) in params
                .iter_mut()
                .zip(grad.iter())
                .zip(self.velocity.iter_mut())
            {
                *v = mu * *v + *g;
                *x -= lr * (*g + mu * *v);
            }
        } else {
            for ((x, g), v) in params
                .iter_mut()
                .zip(grad.iter())
                .zip(self.velocity.iter_mut())
            {
                *v = mu * *v + *g;
                *x -= lr * *v;
            }
        }
    }

    /// The momentum buffer, for a checkpoint (the Laplacian smoother has no state).
    pub fn save_state(&self) -> crate::checkpoint::StateDict {
        let mut state = crate::checkpoint::StateDict::new();
        state.put_f32s("velocity", &self.velocity);
        state
    }

    pub fn load_state(&mut self, state: &crate::checkpoint::StateDict) -> crate::Result<()> {
        state.f32s_into("velocity", &mut self.velocity)
    }

    /// Forgets the momentum (a worker reset to another's parameters starts afresh).
    pub fn clear(&mut self) {
        self.velocity.iter_mut().for_each(|v| *v = 0.0);
    }

    /// The momentum buffer (empty without momentum).
    pub fn velocity(&self) -> &[f32] {
        &self.velocity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(momentum: f32, nesterov: bool, wd: f32) -> OptimizerConfig {
        OptimizerConfig {
            momentum,
            nesterov,
            weight_decay: wd,
            ..Default::default()
        }
    }

    #[test]
    fn plain_sgd_with_weight_decay() {
        // g = 1 + 0.5·2 = 2 ; x = 2 − 0.1·2 = 1.8
        let mut s = opt(0.0, false, 0.5).init(&ParamLayout::new().with("x", &[1]));
        let mut x = [2.0f32];
        s.step(&mut x, &mut [1.0], 0.1);
        assert!((x[0] - 1.8).abs() < 1e-6);
    }

    #[test]
    fn momentum_and_nesterov_match_pytorch() {
        // Constant gradient 1, μ = 0.9, η = 1.
        // Heavy ball: v1 = 1, x1 = −1 ; v2 = 1.9, x2 = −2.9.
        let mut s = opt(0.9, false, 0.0).init(&ParamLayout::new().with("x", &[1]));
        let mut x = [0.0f32];
        s.step(&mut x, &mut [1.0], 1.0);
        s.step(&mut x, &mut [1.0], 1.0);
        assert!((x[0] + 2.9).abs() < 1e-6);
        // Nesterov: v1 = 1, d1 = 1 + 0.9 = 1.9, x1 = −1.9 ; v2 = 1.9, d2 = 1 + 1.71 = 2.71, x2 = −4.61.
        let mut s = opt(0.9, true, 0.0).init(&ParamLayout::new().with("x", &[1]));
        let mut x = [0.0f32];
        s.step(&mut x, &mut [1.0], 1.0);
        s.step(&mut x, &mut [1.0], 1.0);
        assert!((x[0] + 4.61).abs() < 1e-5);
    }

    #[test]
    fn laplacian_smoothing_comes_before_weight_decay() {
        // Reference order (ALGORITHMS.md §7.2): smooth the raw gradient, then add the
        // unsmoothed weight decay. g = (1, −1) is pure Nyquist: smoothed by 1/(1 + 4σ) = 0.2
        // at σ = 1 → (0.2, −0.2); + 0.5·x = (0.7, 0.3); x = (1, 1) − 1·(0.7, 0.3) = (0.3, 0.7).
        let config = OptimizerConfig {
            weight_decay: 0.5,
            laplacian: Some(LaplacianConfig {
                sigma: 1.0,
                order: 1,
            }),
            ..Default::default()
        };
        let mut s = config.init(&ParamLayout::new().with("w", &[2]));
        let mut x = [1.0f32, 1.0];
        s.step(&mut x, &mut [1.0, -1.0], 1.0);
        assert!(
            (x[0] - 0.3).abs() < 1e-6 && (x[1] - 0.7).abs() < 1e-6,
            "{x:?}"
        );
        let bad = OptimizerConfig {
            laplacian: Some(LaplacianConfig {
                sigma: -1.0,
                order: 1,
            }),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("sigma"));
    }

    #[test]
    fn schedules() {
        let c = |schedule| OptimizerConfig {
            lr: 1.0,
            schedule,
            ..Default::default()
        };
        let step = c(LrSchedule::Step {
            every: 10,
            gamma: 0.5,
        });
        assert_eq!(
            (step.lr_at(9, 0.0), step.lr_at(10, 0.0), step.lr_at(25, 0.0)),
            (1.0, 0.5, 0.25)
        );
        let ms = c(LrSchedule::MultiStep {
            milestones: vec![5, 8],
            gamma: 0.1,
        });
        assert_eq!(ms.lr_at(4, 0.0), 1.0);
        assert!((ms.lr_at(8, 0.0) - 0.01).abs() < 1e-7);
        let cos = c(LrSchedule::Cosine {
            total_steps: 100,
            min_factor: 0.0,
        });
        assert!((cos.lr_at(50, 0.0) - 0.5).abs() < 1e-6 && cos.lr_at(100, 0.0).abs() < 1e-7);
        let td = c(LrSchedule::TimeDrop {
            after_seconds: vec![500.0],
            gamma: 0.1,
        });
        assert_eq!(td.lr_at(1000, 499.9), 1.0);
        assert!((td.lr_at(0, 500.0) - 0.1).abs() < 1e-7);
        let warm = OptimizerConfig {
            lr: 1.0,
            warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(
            (warm.lr_at(0, 0.0), warm.lr_at(3, 0.0), warm.lr_at(4, 0.0)),
            (0.25, 1.0, 1.0)
        );
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert!(opt(1.0, false, 0.0).validate().is_err());
        assert!(opt(0.0, true, 0.0).validate().is_err());
        assert!(opt(0.0, false, -1.0).validate().is_err());
        let bad = OptimizerConfig {
            lr: -0.1,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("optimizer.lr"));
        let bad = OptimizerConfig {
            schedule: LrSchedule::Step {
                every: 0,
                gamma: 0.1,
            },
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
