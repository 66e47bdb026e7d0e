//! The compute model: how much virtual time one local step (gradient + optimizer) takes on
//! each worker. A pure function of (config, seed, worker, step), so runs repeat exactly.
//!
//! `t(worker, step) = base · speed[worker] · noise · straggle · fault`, where
//! * base is `seconds`, or FLOPs per step / device throughput;
//! * `speeds` gives per-worker factors (heterogeneous clusters; > 1 is slower);
//! * noise is log-normal with mean 1 and shape `sigma` (0 = none);
//! * a step straggles with probability `straggler_probability`, taking `straggler_slowdown`×;
//! * a `slow` fault multiplies every step after its time.

use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use peloton_core::{ensure_config, seed, Result};

/// `[transport.cluster.compute]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeModel {
    /// Seconds per step (measure it beforehand: `calibrate` in the CLI), unless FLOPs are
    /// given.
    #[serde(default = "default_seconds")]
    pub seconds: f64,
    /// FLOPs per step (forward + backward ≈ 3 × forward FLOPs × batch); with `tflops`, the
    /// base time is flops_per_step / (tflops · 10¹²) instead of `seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops_per_step: Option<f64>,
    /// The device's sustained throughput in TFLOP/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflops: Option<f64>,
    /// Per-worker slowdown factors (missing workers: 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speeds: Vec<f64>,
    /// Log-normal noise shape σ (mean stays 1).
    #[serde(default)]
    pub sigma: f64,
    #[serde(default)]
    pub straggler_probability: f64,
    #[serde(default = "default_slowdown")]
    pub straggler_slowdown: f64,
}

fn default_seconds() -> f64 {
    0.05
}
fn default_slowdown() -> f64 {
    5.0
}

impl Default for ComputeModel {
    fn default() -> Self {
        Self {
            seconds: default_seconds(),
            flops_per_step: None,
            tflops: None,
            speeds: Vec::new(),
            sigma: 0.0,
            straggler_probability: 0.0,
            straggler_slowdown: default_slowdown(),
        }
    }
}

impl ComputeModel {
    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(
            self.seconds.is_finite() && self.seconds >= 0.0,
            "transport.cluster.compute.seconds must be ≥ 0, got {}",
            self.seconds
        );
        match (self.flops_per_step, self.tflops) {
            (None, None) => {}
            (Some(flops), Some(tflops)) => {
                ensure_config!(
                    flops.is_finite() && flops >= 0.0,
                    "transport.cluster.compute.flops_per_step must be ≥ 0, got {flops}"
                );
                ensure_config!(
                    tflops.is_finite() && tflops > 0.0,
                    "transport.cluster.compute.tflops must be positive, got {tflops}"
                );
            }
            _ => {
                return Err(peloton_core::Error::Config(
                    "transport.cluster.compute: give both flops_per_step and tflops, or neither"
                        .into(),
                ))
            }
        }
        ensure_config!(
            self.speeds.len() <= workers,
            "transport.cluster.compute.speeds has {} entries for {workers} workers",
            self.speeds.len()
        );
        for (w, s) in self.speeds.iter().enumerate() {
            ensure_config!(
                s.is_finite() && *s > 0.0,
                "transport.cluster.compute.speeds[{w}] must be positive, got {s}"
            );
        }
        ensure_config!(
            self.sigma.is_finite() && (0.0..=3.0).contains(&self.sigma),
            "transport.cluster.compute.sigma must be in [0, 3], got {}",
            self.sigma
        );
        ensure_config!(
            (0.0..=1.0).contains(&self.straggler_probability),
            "transport.cluster.compute.straggler_probability must be in [0, 1], got {}",
            self.straggler_probability
        );
        ensure_config!(
            self.straggler_slowdown.is_finite() && self.straggler_slowdown >= 1.0,
            "transport.cluster.compute.straggler_slowdown must be ≥ 1, got {}",
            self.straggler_slowdown
        );
        Ok(())
    }

    /// Seconds per step before per-worker factors and noise.
    pub fn base_seconds(&self) -> f64 {
        match (self.flops_per_step, self.tflops) {
            (Some(flops), Some(tflops)) => flops / (tflops * 1e12),
            _ => self.seconds,
        }
    }

    /// The virtual duration of `worker`'s local step `step` (faults aside).
    pub fn step_seconds(&self, run_seed: u64, worker: usize, step: u64) -> f64 {
        let mut t = self.base_seconds() * self.speeds.get(worker).copied().unwrap_or(1.0);
        if self.sigma > 0.0 || self.straggler_probability > 0.0 {
            let mut rng = seed::rng(run_seed, "sim-compute", ((worker as u64) << 40) ^ step);
            if self.sigma > 0.0 {
                let z: f64 = StandardNormal.sample(&mut rng);
                t *= (self.sigma * z - 0.5 * self.sigma * self.sigma).exp();
            }
            if self.straggler_probability > 0.0 && rng.random::<f64>() < self.straggler_probability
            {
                t *= self.straggler_slowdown;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_flops_bases() {
        let c = ComputeModel::default();
        assert_eq!(c.step_seconds(0, 3, 7), 0.05);
        let f = ComputeModel {
            flops_per_step: Some(2e12),
            tflops: Some(100.0),
            speeds: vec![1.0, 2.0],
            ..Default::default()
        };
        // 2e12 / 1e14 = 0.02 s; worker 1 is twice as slow.
        assert!((f.step_seconds(0, 0, 0) - 0.02).abs() < 1e-15);
        assert!((f.step_seconds(0, 1, 0) - 0.04).abs() < 1e-15);
        assert!((f.step_seconds(0, 2, 0) - 0.02).abs() < 1e-15);
    }

    #[test]
    fn noise_has_mean_one_and_repeats() {
        let c = ComputeModel {
            sigma: 0.5,
            straggler_probability: 0.1,
            straggler_slowdown: 4.0,
            ..Default::default()
        };
        assert_eq!(c.step_seconds(9, 2, 5), c.step_seconds(9, 2, 5));
        assert_ne!(c.step_seconds(9, 2, 5), c.step_seconds(9, 2, 6));
        let n = 20_000;
        let mean: f64 = (0..n).map(|s| c.step_seconds(1, 0, s)).sum::<f64>() / n as f64;
        // E = 0.05 · 1 · (0.9 + 0.1·4) = 0.065; the sample mean is within a few percent.
        assert!((mean - 0.065).abs() < 0.003, "{mean}");
    }

    #[test]
    fn bad_models_are_named() {
        let c = ComputeModel {
            speeds: vec![1.0, -1.0],
            ..Default::default()
        };
        assert!(c.validate(4).unwrap_err().to_string().contains("speeds[1]"));
        let c = ComputeModel {
            straggler_probability: 2.0,
            ..Default::default()
        };
        assert!(c
            .validate(4)
            .unwrap_err()
            .to_string()
            .contains("straggler_probability"));
    }
}
