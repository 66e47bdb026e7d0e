//! Spectral diagnostics: how fast a schedule's mixing drives workers to consensus.
//!
//! For a mixing matrix W with W·1 = 1, the disagreement x − x̄ shrinks by ‖W − J‖₂ per step
//! (J = 11ᵀ/n), and in mean square by λ_max(E\[WᵀW\] − J) for random or time-varying W. These
//! numbers are what the decentralized-SGD bounds (D-PSGD, SGP, MATCHA) depend on, so
//! printing them next to a run makes topologies comparable before training.

use std::fmt;

use nalgebra::DMatrix;

/// Spectral summary of a schedule's expected mixing.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics {
    pub n: usize,
    /// ‖E\[W\] − J‖₂: how much one expected step keeps of the disagreement.
    pub mixing_rate: f64,
    /// 1 − mixing_rate.
    pub spectral_gap: f64,
    /// Second largest |eigenvalue| of E\[W\] when it is symmetric, else its second singular value.
    pub second_eigenvalue: f64,
    /// λ_max(E\[WᵀW\] − J): the expected contraction of the squared disagreement per step (for
    /// MATCHA from the analytic formula).
    pub rho: f64,
    /// λ₂ of the expected Laplacian, for graph-based schedules.
    pub algebraic_connectivity: Option<f64>,
}

impl Diagnostics {
    /// Diagnostics from E\[W\], E\[WᵀW\] and (when there is one) the expected Laplacian's λ₂.
    pub fn compute(
        expected: &DMatrix<f64>,
        second_moment: &DMatrix<f64>,
        algebraic_connectivity: Option<f64>,
    ) -> Diagnostics {
        let n = expected.nrows();
        let j = averaging_matrix(n);
        let mixing_rate = spectral_norm(&(expected - &j));
        let second_eigenvalue = if is_symmetric(expected) {
            let mut magnitudes: Vec<f64> = symmetric_eigenvalues(expected)
                .into_iter()
                .map(f64::abs)
                .collect();
            magnitudes.sort_by(|a, b| b.total_cmp(a));
            magnitudes.get(1).copied().unwrap_or(0.0)
        } else {
            singular_values(expected).get(1).copied().unwrap_or(0.0)
        };
        let rho = symmetric_eigenvalues(&(second_moment - &j))
            .last()
            .copied()
            .unwrap_or(0.0);
        Diagnostics {
            n,
            mixing_rate,
            spectral_gap: 1.0 - mixing_rate,
            second_eigenvalue,
            rho,
            algebraic_connectivity,
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<24}{}", "nodes", self.n)?;
        writeln!(
            f,
            "{:<24}{:.6}  ‖E[W] − J‖₂",
            "mixing rate", self.mixing_rate
        )?;
        writeln!(f, "{:<24}{:.6}", "spectral gap", self.spectral_gap)?;
        writeln!(
            f,
            "{:<24}{:.6}",
            "second eigenvalue", self.second_eigenvalue
        )?;
        write!(f, "{:<24}{:.6}  λ_max(E[WᵀW] − J)", "rho", self.rho)?;
        if let Some(lambda2) = self.algebraic_connectivity {
            write!(f, "\n{:<24}{lambda2:.6}", "algebraic connectivity")?;
        }
        Ok(())
    }
}

/// J = 11ᵀ/n, the projection onto consensus.
pub fn averaging_matrix(n: usize) -> DMatrix<f64> {
    DMatrix::from_element(n, n, 1.0 / n as f64)
}

/// Eigenvalues of the symmetric part (M + Mᵀ)/2, ascending.
pub fn symmetric_eigenvalues(m: &DMatrix<f64>) -> Vec<f64> {
    let symmetric = (m + m.transpose()) * 0.5;
    let mut values: Vec<f64> = symmetric.symmetric_eigenvalues().iter().copied().collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Singular values, descending.
pub fn singular_values(m: &DMatrix<f64>) -> Vec<f64> {
    m.singular_values().iter().copied().collect()
}

/// ‖M‖₂, the largest singular value (0 for an empty matrix).
pub fn spectral_norm(m: &DMatrix<f64>) -> f64 {
    singular_values(m).first().copied().unwrap_or(0.0)
}

/// λ₂ of a Laplacian (second smallest eigenvalue): positive exactly when the graph is
/// connected, and the rate-determining quantity of consensus on it. 0 for a single node.
pub fn algebraic_connectivity(laplacian: &DMatrix<f64>) -> f64 {
    symmetric_eigenvalues(laplacian)
        .get(1)
        .copied()
        .unwrap_or(0.0)
}

/// Xiao–Boyd's best constant edge weight α = 2/(λ₂ + λ_max): it minimizes ‖I − αL − J‖₂ by
/// balancing the extreme eigenvalues 1 − αλ₂ and 1 − αλ_max around 0. 0 for a graph without
/// edges (nothing to mix).
pub fn best_constant_alpha(laplacian: &DMatrix<f64>) -> f64 {
    let values = symmetric_eigenvalues(laplacian);
    let lambda_max = values.last().copied().unwrap_or(0.0);
    if lambda_max <= 0.0 {
        return 0.0;
    }
    2.0 / (values.get(1).copied().unwrap_or(0.0) + lambda_max)
}

/// True when M equals its transpose up to rounding.
pub fn is_symmetric(m: &DMatrix<f64>) -> bool {
    (m - m.transpose()).amax() <= 1e-12 * m.amax().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;

    #[test]
    fn ring_spectrum() {
        // The n-cycle Laplacian has eigenvalues 2 − 2cos(2πk/n).
        let l = Graph::ring(8).unwrap().laplacian();
        let lambda2 = 2.0 - 2.0 * (std::f64::consts::PI / 4.0).cos();
        assert!((algebraic_connectivity(&l) - lambda2).abs() < 1e-12);
        assert!((best_constant_alpha(&l) - 2.0 / (lambda2 + 4.0)).abs() < 1e-12);
        assert_eq!(
            best_constant_alpha(&Graph::ring(1).unwrap().laplacian()),
            0.0
        );
        assert_eq!(
            algebraic_connectivity(&Graph::ring(1).unwrap().laplacian()),
            0.0
        );
    }

    #[test]
    fn diagnostics_of_ring_averaging() {
        // W = (I + A)/3 on the 4-cycle: eigenvalues 1, 1/3, 1/3, −1/3; WᵀW − J has λ_max 1/9.
        let a = Graph::ring(4).unwrap().laplacian();
        let w = (DMatrix::identity(4, 4) * 3.0 - &a) / 3.0;
        let d = Diagnostics::compute(&w, &(w.transpose() * &w), Some(2.0));
        assert!((d.mixing_rate - 1.0 / 3.0).abs() < 1e-12);
        assert!((d.spectral_gap - 2.0 / 3.0).abs() < 1e-12);
        assert!((d.second_eigenvalue - 1.0 / 3.0).abs() < 1e-12);
        assert!((d.rho - 1.0 / 9.0).abs() < 1e-12);
        let text = d.to_string();
        assert!(text.contains("mixing rate") && text.contains("algebraic connectivity"));
        assert_eq!(text.lines().count(), 6);
    }

    #[test]
    fn non_symmetric_uses_singular_values() {
        // A directed 3-cycle shift with ½–½ weights: E[W] = (I + P)/2 is normal; its second
        // singular value is |1 + ω|/2 = ½ for ω = e^{2πi/3}.
        let mut w = DMatrix::identity(3, 3) * 0.5;
        for i in 0..3 {
            w[((i + 1) % 3, i)] = 0.5;
        }
        assert!(!is_symmetric(&w));
        let d = Diagnostics::compute(&w, &(w.transpose() * &w), None);
        assert!((d.second_eigenvalue - 0.5).abs() < 1e-12);
        assert!((d.mixing_rate - 0.5).abs() < 1e-12);
        assert!(!d.to_string().contains("algebraic"));
    }

    #[test]
    fn single_node() {
        let one = DMatrix::identity(1, 1);
        let d = Diagnostics::compute(&one, &one, None);
        assert_eq!((d.n, d.mixing_rate, d.second_eigenvalue), (1, 0.0, 0.0));
        assert!(d.rho.abs() < 1e-15);
    }
}
