//! Laplacian smoothing of gradients (LS-SGD, ALGORITHMS.md §7).
//!
//! Each parameter tensor's gradient, flattened row-major, is treated as its own periodic 1-D
//! signal g of length m and replaced by A_σ⁻¹g with A_σ = I + σ(−Δ)ⁿ, Δ the periodic discrete
//! Laplacian. A_σ is circulant, so in the Fourier basis it is diagonal with the *real* entries
//!
//!   d_k = 1 + σ·(4·sin²(πk/m))ⁿ,  k = 0..m−1,
//!
//! and A_σ⁻¹g = IFFT(FFT(g) / d). d_0 = 1 keeps the mean; d_k ≥ 1 means the ℓ2 norm never
//! grows. Only the m/2+1 bins of a real FFT are needed. (A third-party port divides the
//! complex spectrum by re² + re² instead of |z|²; dividing by the real d_k directly cannot make
//! that mistake.) The operator is linear and the same on every worker, so it commutes with
//! gradient averaging.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

use crate::ensure_config;
use crate::layout::ParamLayout;
use crate::Result;

/// `[optimizer.laplacian]`: smooth every tensor's gradient before weight decay and momentum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaplacianConfig {
    /// σ ≥ 0; 0 is plain SGD. The reference runs use 0.5 (ResNet-20) and 1.5 (LeNet).
    pub sigma: f32,
    /// n, the power of the Laplacian (1 in the deep-learning experiments).
    #[serde(default = "one")]
    pub order: u32,
}

fn one() -> u32 {
    1
}

impl LaplacianConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(
            self.sigma.is_finite() && self.sigma >= 0.0,
            "optimizer.laplacian.sigma must be ≥ 0, got {}",
            self.sigma
        );
        ensure_config!(
            (1..=8).contains(&self.order),
            "optimizer.laplacian.order must be in 1..=8, got {}",
            self.order
        );
        Ok(())
    }

    /// Plans the transforms for every tensor of `layout`.
    pub fn init(&self, layout: &ParamLayout) -> LaplacianSmoother {
        let mut planner = RealFftPlanner::<f64>::new();
        let segments = layout
            .segments()
            .iter()
            .filter(|s| s.numel() >= 2)
            .map(|s| {
                let m = s.numel();
                let forward = planner.plan_fft_forward(m);
                let inverse = planner.plan_fft_inverse(m);
                let divisor = (0..m / 2 + 1)
                    .map(|k| self.divisor(k, m) * m as f64) // folds IFFT's missing 1/m in
                    .collect();
                SegmentPlan {
                    range: s.range(),
                    signal: forward.make_input_vec(),
                    spectrum: forward.make_output_vec(),
                    forward,
                    inverse,
                    divisor,
                }
            })
            .collect();
        LaplacianSmoother { segments }
    }

    /// d_k for a signal of length m.
    pub fn divisor(&self, k: usize, m: usize) -> f64 {
        let s = (std::f64::consts::PI * k as f64 / m as f64).sin();
        1.0 + self.sigma as f64 * (4.0 * s * s).powi(self.order as i32)
    }
}

#[derive(Clone)]
struct SegmentPlan {
    range: std::ops::Range<usize>,
    forward: Arc<dyn RealToComplex<f64>>,
    inverse: Arc<dyn ComplexToReal<f64>>,
    /// m·d_k for k = 0..=m/2.
    divisor: Vec<f64>,
    signal: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
}

/// The planned transforms and buffers; smoothing allocates nothing.
#[derive(Clone)]
pub struct LaplacianSmoother {
    segments: Vec<SegmentPlan>,
}

impl std::fmt::Debug for LaplacianSmoother {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaplacianSmoother")
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl LaplacianSmoother {
    /// Replaces every tensor's slice of `grad` by its smoothed version (tensors of one
    /// element are left as they are: their only frequency is the mean).
    pub fn smooth(&mut self, grad: &mut [f32]) {
        for seg in &mut self.segments {
            let g = &mut grad[seg.range.clone()];
            for (s, &v) in seg.signal.iter_mut().zip(g.iter()) {
                *s = v as f64;
            }
            // The lengths come from the plans themselves, so these calls cannot fail.
            seg.forward
                .process(&mut seg.signal, &mut seg.spectrum)
                .expect("buffers sized by the plan");
            for (z, d) in seg.spectrum.iter_mut().zip(&seg.divisor) {
                *z /= *d;
            }
            // A real signal's spectrum has real DC and (even m) Nyquist bins; rounding can
            // leave a tiny imaginary part that the inverse transform rejects.
            seg.spectrum[0].im = 0.0;
            if seg.signal.len().is_multiple_of(2) {
                if let Some(last) = seg.spectrum.last_mut() {
                    last.im = 0.0;
                }
            }
            seg.inverse
                .process(&mut seg.spectrum, &mut seg.signal)
                .expect("buffers sized by the plan");
            for (v, &s) in g.iter_mut().zip(seg.signal.iter()) {
                *v = s as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Solves (I + σ(−Δ)ⁿ) x = g densely (Gauss–Jordan elimination), the reference answer.
    #[allow(clippy::needless_range_loop)] // index notation mirrors the textbook algorithm
    fn dense_solve(g: &[f32], sigma: f64, order: u32) -> Vec<f64> {
        let m = g.len();
        // −Δ as a matrix: 2 on the diagonal, −1 on the periodic off-diagonals (for m = 2 the
        // two neighbours coincide: −2).
        let mut lap = vec![vec![0f64; m]; m];
        for i in 0..m {
            lap[i][i] += 2.0;
            lap[i][(i + 1) % m] -= 1.0;
            lap[i][(i + m - 1) % m] -= 1.0;
        }
        let mut power = (0..m)
            .map(|i| (0..m).map(|j| (i == j) as u8 as f64).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        for _ in 0..order {
            power = (0..m)
                .map(|i| {
                    (0..m)
                        .map(|j| (0..m).map(|k| power[i][k] * lap[k][j]).sum())
                        .collect()
                })
                .collect();
        }
        let mut a: Vec<Vec<f64>> = (0..m)
            .map(|i| {
                let mut row: Vec<f64> = (0..m)
                    .map(|j| (i == j) as u8 as f64 + sigma * power[i][j])
                    .collect();
                row.push(g[i] as f64);
                row
            })
            .collect();
        for c in 0..m {
            let p = (c..m)
                .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
                .unwrap();
            a.swap(c, p);
            for r in 0..m {
                if r != c {
                    let f = a[r][c] / a[c][c];
                    for k in c..=m {
                        a[r][k] -= f * a[c][k];
                    }
                }
            }
        }
        (0..m).map(|i| a[i][m] / a[i][i]).collect()
    }

    fn smooth(values: &[f32], sigma: f32, order: u32, shape: &[usize]) -> Vec<f32> {
        let layout = ParamLayout::new().with("w", shape);
        let mut g = values.to_vec();
        LaplacianConfig { sigma, order }
            .init(&layout)
            .smooth(&mut g);
        g
    }

    #[test]
    fn matches_a_dense_solve() {
        for m in [2usize, 3, 5, 8, 17] {
            for order in [1, 2] {
                let g: Vec<f32> = (0..m).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
                let fast = smooth(&g, 1.5, order, &[m]);
                let exact = dense_solve(&g, 1.5, order);
                for (a, b) in fast.iter().zip(&exact) {
                    assert!((*a as f64 - b).abs() < 1e-5, "m={m} n={order}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn worked_example() {
        // m = 2, g = (1, −1): the signal is pure Nyquist (k = 1), d_1 = 1 + 4σ. With σ = 1:
        // smoothed = (0.2, −0.2). g = (3, 1) = mean 2 + Nyquist (1, −1) → (2.2, 1.8).
        assert_eq!(smooth(&[1.0, -1.0], 1.0, 1, &[2]), vec![0.2, -0.2]);
        let s = smooth(&[3.0, 1.0], 1.0, 1, &[2]);
        assert!(
            (s[0] - 2.2).abs() < 1e-6 && (s[1] - 1.8).abs() < 1e-6,
            "{s:?}"
        );
    }

    #[test]
    fn tensors_are_smoothed_separately_and_scalars_untouched() {
        let layout = ParamLayout::new()
            .with("a", &[2])
            .with("b", &[1])
            .with("c", &[2]);
        let mut g = vec![1.0, -1.0, 5.0, 3.0, 1.0];
        LaplacianConfig {
            sigma: 1.0,
            order: 1,
        }
        .init(&layout)
        .smooth(&mut g);
        let want = [0.2, -0.2, 5.0, 2.2, 1.8];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    proptest! {
        #[test]
        fn keeps_the_mean_and_never_grows_the_norm(
            g in proptest::collection::vec(-100f32..100.0, 1..300), sigma in 0f32..20.0, order in 1u32..4,
        ) {
            let s = smooth(&g, sigma, order, &[g.len()]);
            let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            prop_assert!((mean(&s) - mean(&g)).abs() <= 1e-4 * (1.0 + norm(&g) / (g.len() as f64).sqrt()));
            prop_assert!(norm(&s) <= norm(&g) * (1.0 + 1e-6) + 1e-6);
        }
    }

    #[test]
    fn sigma_zero_is_the_identity() {
        let g: Vec<f32> = (0..10).map(|i| i as f32 * 0.7 - 2.0).collect();
        let s = smooth(&g, 0.0, 1, &[10]);
        for (a, b) in s.iter().zip(&g) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
