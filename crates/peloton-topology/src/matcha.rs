//! MATCHA (Wang, Sahu, Yang, Joshi, Kar 2019): activate each matching G_j of a decomposed base
//! graph independently with probability p_j, and mix with W = I − α·Σ_j B_j·L_j.
//!
//! Two offline problems choose p and α:
//! * **Activation probabilities.** Maximize the algebraic connectivity λ₂(Σ_j p_j L_j) of the
//!   expected graph under a communication budget Σ_j p_j ≤ C_b·M, 0 ≤ p_j ≤ 1. λ₂ is the minimum
//!   of the eigenvalues on 1^⊥ of a matrix affine in p, hence concave; the reference solves it
//!   with cvxpy. Here every worker solves it deterministically (no broadcast needed) by projected
//!   gradient ascent on a smoothed λ₂, see [`optimize_probabilities`].
//! * **Neighbour weight.** Minimize ρ(α) = λ_max(E\[WᵀW\] − J), the expected contraction of the
//!   squared disagreement per step, see [`optimize_alpha`].

use nalgebra::{DMatrix, SymmetricEigen};

use crate::graph::{Graph, Matching};
use crate::spectral::{self, averaging_matrix};
use crate::{ensure, Result, TopologyError};

/// MATCHA's offline solution for a decomposed graph and a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchaSolution {
    /// p_j, the activation probability of matching j.
    pub probabilities: Vec<f64>,
    /// The neighbour weight α.
    pub alpha: f64,
    /// λ₂(E\[L\]) with E\[L\] = Σ_j p_j L_j.
    pub algebraic_connectivity: f64,
    /// λ_max(E\[WᵀW\] − J) at α: the expected contraction per step.
    pub rho: f64,
}

/// Smoothing levels of the continuation, relative to λ₂ at the uniform starting point.
const SMOOTHING_STAGES: i32 = 7;
/// Accepted ascent steps per smoothing level (it usually converges much earlier).
const STEPS_PER_STAGE: usize = 400;

/// The activation probabilities maximizing λ₂(Σ_j p_j L_j) subject to Σ_j p_j ≤ budget·M and
/// 0 ≤ p_j ≤ 1.
///
/// λ₂ is non-smooth where eigenvalues cross — which is typical at the optimum of symmetric
/// graphs — so plain supergradient steps zigzag. Instead the smallest eigenvalue on 1^⊥ is
/// replaced by the soft minimum f_μ = −μ·ln Σ_i exp(−λ_i/μ), which is smooth, concave and
/// within μ·ln n of λ₂, with gradient ∂f_μ/∂p_j = Σ_i w_i·Σ_{(a,b)∈G_j} (v_ia − v_ib)² (w the
/// softmax weights, v_i the unit eigenvectors): near a repeated λ₂ it averages the gradients
/// of the whole cluster. Accelerated projected gradient ascent runs on f_μ for
/// μ = λ₂(p₀)·10⁻¹, …, 10⁻⁷, warm-started, from the uniform p₀ = budget; the iterate with the
/// best true λ₂ is returned, so the result is never worse than uniform activation. Every step
/// costs a dense symmetric eigendecomposition: milliseconds for 16 nodes, about a second for
/// 128 (release build).
///
/// Budget 1 activates everything (λ₂ only grows with p). Errors when the budget is not in
/// (0, 1], a matching is invalid, or there are no matchings on n ≥ 2 nodes.
pub fn optimize_probabilities(n: usize, matchings: &[Matching], budget: f64) -> Result<Vec<f64>> {
    validate_matchings(n, matchings)?;
    ensure!(
        budget > 0.0 && budget <= 1.0,
        "matcha budget must be in (0, 1], got {budget}"
    );
    let m = matchings.len();
    if m == 0 {
        ensure!(
            n <= 1,
            "matcha needs at least one matching, but the graph on {n} nodes has no edges"
        );
        return Ok(Vec::new());
    }
    if budget == 1.0 {
        return Ok(vec![1.0; m]);
    }
    let start = vec![budget; m];
    let union = Graph::new(n, matchings.iter().flat_map(|g| g.edges.iter().copied()))?;
    if !union.is_connected() {
        // λ₂ = 0 for every p: nothing to optimize.
        return Ok(start);
    }
    Ok(Connectivity { n, matchings }.maximize(start, budget * m as f64))
}

/// The neighbour weight α minimizing ρ(α) = λ_max(E\[WᵀW\] − J), and that ρ.
///
/// Derivation: W = I − αL with L = Σ_j B_j L_j, B_j ~ Bernoulli(p_j) independent, W symmetric.
/// E\[WᵀW\] = E\[W²\] = I − 2α·E\[L\] + α²·E\[L²\], and
/// E\[L²\] = Σ_{j≠k} p_j p_k L_j L_k + Σ_j p_j L_j² = E\[L\]² + Σ_j p_j(1 − p_j) L_j².
/// A matching's Laplacian is a sum of disjoint blocks \[\[1, −1\], \[−1, 1\]\] whose square is twice
/// the block, so L_j² = 2L_j and E\[L²\] = E\[L\]² + 2·Var\[L\] with Var\[L\] = Σ_j p_j(1 − p_j) L_j.
/// Every L_j annihilates 1, so subtracting J only removes the consensus direction.
///
/// ρ is convex in α (λ_max of a matrix quadratic in α with a PSD α² coefficient), ρ(0) = 1,
/// and ρ(α) ≥ (1 − αλ_max(E\[L\]))² ≥ 1 for α ≥ 2/λ_max(E\[L\]) (look along the top eigenvector),
/// so a golden-section search over \[0, 2/λ_max(E\[L\])\] finds the minimum. α = 0 when no
/// matching can be active.
pub fn optimize_alpha(
    n: usize,
    matchings: &[Matching],
    probabilities: &[f64],
) -> Result<(f64, f64)> {
    let moments = Moments::new(n, matchings, probabilities)?;
    let lambda_max = spectral::symmetric_eigenvalues(&moments.expected)
        .last()
        .copied()
        .unwrap_or(0.0);
    if lambda_max <= 0.0 {
        return Ok((0.0, moments.rho(0.0)));
    }
    let inverse_golden = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = (0.0, 2.0 / lambda_max);
    let mut a = hi - inverse_golden * (hi - lo);
    let mut b = lo + inverse_golden * (hi - lo);
    let (mut rho_a, mut rho_b) = (moments.rho(a), moments.rho(b));
    while hi - lo > 1e-12 * hi {
        if rho_a <= rho_b {
            (hi, b, rho_b) = (b, a, rho_a);
            a = hi - inverse_golden * (hi - lo);
            rho_a = moments.rho(a);
        } else {
            (lo, a, rho_a) = (a, b, rho_b);
            b = lo + inverse_golden * (hi - lo);
            rho_b = moments.rho(b);
        }
    }
    let alpha = (lo + hi) / 2.0;
    Ok((alpha, moments.rho(alpha)))
}

/// ρ(α) = λ_max(E\[WᵀW\] − J) for given probabilities and α (see [`optimize_alpha`]); used when
/// α is set by hand.
pub fn rho(n: usize, matchings: &[Matching], probabilities: &[f64], alpha: f64) -> Result<f64> {
    ensure!(
        alpha.is_finite(),
        "matcha alpha must be finite, got {alpha}"
    );
    Ok(Moments::new(n, matchings, probabilities)?.rho(alpha))
}

/// Probabilities, then α, then the diagnostics of both.
pub fn solve(n: usize, matchings: &[Matching], budget: f64) -> Result<MatchaSolution> {
    let probabilities = optimize_probabilities(n, matchings, budget)?;
    let (alpha, rho) = optimize_alpha(n, matchings, &probabilities)?;
    let moments = Moments::new(n, matchings, &probabilities)?;
    Ok(MatchaSolution {
        algebraic_connectivity: spectral::algebraic_connectivity(&moments.expected),
        probabilities,
        alpha,
        rho,
    })
}

fn validate_matchings(n: usize, matchings: &[Matching]) -> Result<()> {
    for (j, matching) in matchings.iter().enumerate() {
        matching
            .validate(n)
            .map_err(|e| TopologyError(format!("matching {j}: {e}")))?;
    }
    Ok(())
}

/// The first two moments of MATCHA's random Laplacian L = Σ_j B_j L_j.
#[derive(Debug, Clone)]
pub(crate) struct Moments {
    /// E\[L\] = Σ_j p_j L_j.
    pub(crate) expected: DMatrix<f64>,
    /// E\[L²\] = E\[L\]² + 2·Var\[L\].
    second: DMatrix<f64>,
}

impl Moments {
    pub(crate) fn new(n: usize, matchings: &[Matching], probabilities: &[f64]) -> Result<Moments> {
        validate_matchings(n, matchings)?;
        ensure!(
            probabilities.len() == matchings.len(),
            "{} probabilities for {} matchings",
            probabilities.len(),
            matchings.len()
        );
        let mut expected = DMatrix::zeros(n, n);
        let mut variance = DMatrix::zeros(n, n);
        for (j, (matching, &p)) in matchings.iter().zip(probabilities).enumerate() {
            ensure!(
                (0.0..=1.0).contains(&p),
                "probability of matching {j} must be in [0, 1], got {p}"
            );
            let laplacian = matching.laplacian(n);
            expected += &laplacian * p;
            variance += &laplacian * (p * (1.0 - p));
        }
        let second = &expected * &expected + variance * 2.0;
        Ok(Moments { expected, second })
    }

    /// E\[WᵀW\] = I − 2α·E\[L\] + α²·E\[L²\].
    pub(crate) fn second_moment(&self, alpha: f64) -> DMatrix<f64> {
        let n = self.expected.nrows();
        DMatrix::identity(n, n) - &self.expected * (2.0 * alpha) + &self.second * (alpha * alpha)
    }

    /// λ_max(E\[WᵀW\] − J).
    pub(crate) fn rho(&self, alpha: f64) -> f64 {
        let n = self.expected.nrows();
        spectral::symmetric_eigenvalues(&(self.second_moment(alpha) - averaging_matrix(n)))
            .last()
            .copied()
            .unwrap_or(0.0)
    }
}

/// The smoothed λ₂ maximization of [`optimize_probabilities`].
struct Connectivity<'a> {
    n: usize,
    matchings: &'a [Matching],
}

/// One evaluation: the true λ₂, the smoothed value and its gradient.
#[derive(Clone)]
struct Evaluation {
    lambda2: f64,
    smooth: f64,
    gradient: Vec<f64>,
}

impl Connectivity<'_> {
    /// Evaluates at `p` with smoothing `mu`. The consensus eigenvalue 0 of L(p) is moved out of
    /// the way by adding s·J with s = 2·Σ|p| + 1 > λ_max(L(p)) (each L_j has norm 2), so the
    /// smallest eigenvalue of L(p) + s·J is λ₂ and its other eigenvectors are ⊥ 1. (The
    /// extrapolated points of the ascent may leave the feasible set, hence |p|.)
    fn evaluate(&self, p: &[f64], mu: f64) -> Evaluation {
        let shift = 2.0 * p.iter().map(|x| x.abs()).sum::<f64>() + 1.0;
        let mut a = averaging_matrix(self.n) * shift;
        for (matching, &pj) in self.matchings.iter().zip(p) {
            for &(x, y) in &matching.edges {
                a[(x, x)] += pj;
                a[(y, y)] += pj;
                a[(x, y)] -= pj;
                a[(y, x)] -= pj;
            }
        }
        let eigen = SymmetricEigen::new(a);
        let lambda2 = eigen.eigenvalues.min();
        let mut total = 0.0;
        let mut gradient = vec![0.0; p.len()];
        for (i, &lambda) in eigen.eigenvalues.iter().enumerate() {
            let weight = (-(lambda - lambda2) / mu).exp();
            if weight < 1e-30 {
                continue;
            }
            total += weight;
            let v = eigen.eigenvectors.column(i);
            for (g, matching) in gradient.iter_mut().zip(self.matchings) {
                let stretch: f64 = matching
                    .edges
                    .iter()
                    .map(|&(x, y)| (v[x] - v[y]).powi(2))
                    .sum();
                *g += weight * stretch;
            }
        }
        gradient.iter_mut().for_each(|g| *g /= total);
        Evaluation {
            lambda2,
            smooth: lambda2 - mu * total.ln(),
            gradient,
        }
    }

    /// Accelerated projected gradient ascent (FISTA with backtracking and adaptive restart)
    /// through the smoothing levels. Near a non-smooth optimum the smoothed problem is
    /// ill-conditioned (its curvature grows like 1/μ), where momentum needs far fewer steps
    /// than plain gradient ascent; the momentum restarts whenever a step loses ground.
    fn maximize(&self, start: Vec<f64>, cap: f64) -> Vec<f64> {
        let scale = self.evaluate(&start, 1.0).lambda2;
        let mut best = (scale, start.clone());
        let mut x = start;
        for stage in 1..=SMOOTHING_STAGES {
            let mu = scale * 10f64.powi(-stage);
            let mut step = 1.0;
            let mut at_x = self.evaluate(&x, mu);
            let (mut y, mut at_y) = (x.clone(), at_x.clone());
            let mut momentum: f64 = 1.0;
            for _ in 0..STEPS_PER_STAGE {
                match self.ascent_step(&y, &at_y, cap, mu, &mut step, &mut best) {
                    Some((q, at_q, squared)) if at_q.smooth >= at_x.smooth => {
                        let next = (1.0 + (1.0 + 4.0 * momentum * momentum).sqrt()) / 2.0;
                        let beta = (momentum - 1.0) / next;
                        y = q.iter().zip(&x).map(|(a, b)| a + beta * (a - b)).collect();
                        at_y = if beta == 0.0 {
                            at_q.clone()
                        } else {
                            self.evaluate(&y, mu)
                        };
                        (x, at_x, momentum) = (q, at_q, next);
                        step *= 1.25;
                        if squared <= 1e-24 {
                            break;
                        }
                    }
                    // Stuck, or the extrapolation lost ground: restart the momentum from x.
                    _ if momentum > 1.0 => {
                        (y, at_y, momentum) = (x.clone(), at_x.clone(), 1.0);
                    }
                    _ => break,
                }
            }
        }
        best.1
    }

    /// One projected gradient step from y with backtracking: accepts q = Π(y + t·∇f) once
    /// f(q) ≥ f(y) + ∇f·(q − y) − |q − y|²/2t, halving t otherwise. Records the best true λ₂
    /// seen; None when the step no longer moves.
    fn ascent_step(
        &self,
        y: &[f64],
        at_y: &Evaluation,
        cap: f64,
        mu: f64,
        step: &mut f64,
        best: &mut (f64, Vec<f64>),
    ) -> Option<(Vec<f64>, Evaluation, f64)> {
        loop {
            let trial: Vec<f64> = y
                .iter()
                .zip(&at_y.gradient)
                .map(|(x, g)| x + *step * g)
                .collect();
            let q = project(&trial, cap);
            let moved: Vec<f64> = q.iter().zip(y).map(|(a, b)| a - b).collect();
            let squared: f64 = moved.iter().map(|d| d * d).sum();
            if squared <= 1e-26 || *step < 1e-15 {
                return None;
            }
            let at_q = self.evaluate(&q, mu);
            if at_q.lambda2 > best.0 {
                *best = (at_q.lambda2, q.clone());
            }
            let linear: f64 = moved.iter().zip(&at_y.gradient).map(|(d, g)| d * g).sum();
            if at_q.smooth >= at_y.smooth + linear - squared / (2.0 * *step) {
                return Some((q, at_q, squared));
            }
            *step *= 0.5;
        }
    }
}

/// Euclidean projection onto {0 ≤ p ≤ 1, Σp ≤ cap}: clamp(y − τ, 0, 1) with the smallest τ ≥ 0
/// meeting the budget (the KKT form), τ found by bisection. The returned point takes the upper
/// end of the final bracket so the budget holds exactly.
fn project(y: &[f64], cap: f64) -> Vec<f64> {
    let shifted = |tau: f64| y.iter().map(move |v| (v - tau).clamp(0.0, 1.0));
    if shifted(0.0).sum::<f64>() <= cap {
        return shifted(0.0).collect();
    }
    let (mut lo, mut hi) = (0.0, y.iter().copied().fold(0.0, f64::max));
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if shifted(mid).sum::<f64>() > cap {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    shifted(hi).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn lambda2(n: usize, matchings: &[Matching], p: &[f64]) -> f64 {
        let moments = Moments::new(n, matchings, p).unwrap();
        spectral::algebraic_connectivity(&moments.expected)
    }

    #[test]
    fn weighted_path_hand_checked() {
        // Path 0-1-2-3 with M1 = {(0,1)}, M2 = {(2,3)}, M3 = {(1,2)}, budget 0.5: Σp ≤ 1.5.
        // By symmetry p1 = p2 = a, p3 = b, and λ₂ only grows with p so 2a + b = 1.5. The path
        // with edge weights (a, b, a) has mirror-symmetric eigenvectors (v, w, w, v) with
        // eigenvalues 0 and 2a, and antisymmetric ones (v, w, −w, −v) with
        // a(v − w) = λv, (a + 2b)w − av = λw ⇒ λ² − 2(a + b)λ + 2ab = 0 ⇒ λ = a + b ± √(a² + b²).
        // So λ₂ = min(2a, a + b − √(a² + b²)). Along b = 1.5 − 2a, setting the derivative of
        // 1.5 − a − √(a² + (1.5 − 2a)²) to 0 gives 3 − 5a = √(5a² − 6a + 2.25), i.e.
        // 80a² − 96a + 27 = 0, a = 0.45 (the root 0.75 has 3 − 5a < 0), b = 0.6,
        // λ₂ = 1.05 − 0.75 = 0.3 < 2a = 0.9.
        let m = |a, b| Matching::new(4, [(a, b)]).unwrap();
        let matchings = [m(0, 1), m(2, 3), m(1, 2)];
        let p = optimize_probabilities(4, &matchings, 0.5).unwrap();
        for (got, want) in p.iter().zip([0.45, 0.45, 0.6]) {
            assert!((got - want).abs() < 1e-3, "{p:?}");
        }
        assert!((lambda2(4, &matchings, &p) - 0.3).abs() < 1e-4);
        let solution = solve(4, &matchings, 0.5).unwrap();
        assert!((solution.algebraic_connectivity - 0.3).abs() < 1e-4);
    }

    #[test]
    fn ring_of_four_uses_both_matchings_equally() {
        // Alternating weights a, b on the 4-cycle give eigenvalues 0, 2a, 2b, 2(a + b), so
        // λ₂ = 2·min(a, b) peaks at a = b = 0.5 with λ₂ = 1 (a repeated eigenvalue).
        let matchings = Graph::ring(4).unwrap().matchings();
        assert_eq!(matchings.len(), 2);
        let p = optimize_probabilities(4, &matchings, 0.5).unwrap();
        assert!(p.iter().all(|&x| (x - 0.5).abs() < 1e-9), "{p:?}");
        assert!((lambda2(4, &matchings, &p) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn budget_edge_cases() {
        let matchings = Graph::complete(5).unwrap().matchings();
        let m = matchings.len();
        assert_eq!(
            optimize_probabilities(5, &matchings, 1.0).unwrap(),
            vec![1.0; m]
        );
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let err = optimize_probabilities(5, &matchings, bad).unwrap_err().0;
            assert!(err.contains("budget"), "{err}");
        }
        let err = optimize_probabilities(3, &[], 0.5).unwrap_err().0;
        assert!(err.contains("no edges"), "{err}");
        assert_eq!(
            optimize_probabilities(1, &[], 0.5).unwrap(),
            Vec::<f64>::new()
        );
        let bad = [Matching {
            edges: vec![(0, 1), (1, 2)],
        }];
        assert!(optimize_probabilities(3, &bad, 0.5)
            .unwrap_err()
            .0
            .starts_with("matching 0"));
    }

    #[test]
    fn disconnected_matchings_keep_uniform_probabilities() {
        let matchings = [Matching::new(4, [(0, 1)]).unwrap()];
        assert_eq!(
            optimize_probabilities(4, &matchings, 0.3).unwrap(),
            vec![0.3]
        );
    }

    #[test]
    fn alpha_on_a_single_edge() {
        // Two nodes, one matching, p = 1: on 1^⊥ ρ(α) = (1 − 2α)², so α = ½ and ρ = 0.
        let edge = [Matching::new(2, [(0, 1)]).unwrap()];
        let (alpha, contraction) = optimize_alpha(2, &edge, &[1.0]).unwrap();
        // ρ is flat (quadratic) at its minimum, so α is only determined to about √ε.
        assert!((alpha - 0.5).abs() < 1e-6 && contraction.abs() < 1e-12);
        // p = ½: E[L] = L/2, Var[L] = L/4, and on 1^⊥ (L = 2) ρ(α) = 1 − 2α + 2α², minimal at
        // α = ½ with ρ = ½.
        let (alpha, contraction) = optimize_alpha(2, &edge, &[0.5]).unwrap();
        assert!((alpha - 0.5).abs() < 1e-6 && (contraction - 0.5).abs() < 1e-12);
        let (alpha, contraction) = optimize_alpha(2, &edge, &[0.0]).unwrap();
        assert!(alpha == 0.0 && (contraction - 1.0).abs() < 1e-12);
        assert!(optimize_alpha(2, &edge, &[1.5]).is_err());
        assert!(optimize_alpha(2, &edge, &[0.5, 0.5]).is_err());
        assert!(rho(2, &edge, &[0.5], f64::INFINITY).is_err());
    }

    #[test]
    fn projection_meets_bounds() {
        let q = project(&[2.0, 0.5, -1.0, 0.9], 1.2);
        assert!(q.iter().all(|&x| (0.0..=1.0).contains(&x)));
        assert!(q.iter().sum::<f64>() <= 1.2);
        assert!((q.iter().sum::<f64>() - 1.2).abs() < 1e-12);
        assert_eq!(q[2], 0.0);
        assert_eq!(project(&[0.2, 0.3], 1.0), vec![0.2, 0.3]);
    }

    fn connected_graph() -> impl Strategy<Value = Graph> {
        (3usize..=12, 0.25f64..0.9, any::<u64>())
            .prop_map(|(n, p, seed)| Graph::erdos_renyi(n, p, seed).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn optimized_connectivity_beats_other_feasible_points(
            g in connected_graph(), budget in 0.1f64..0.95, seed in any::<u64>()
        ) {
            let n = g.n();
            let matchings = g.matchings();
            let m = matchings.len();
            let p = optimize_probabilities(n, &matchings, budget).unwrap();
            prop_assert!(p.iter().all(|&x| (0.0..=1.0).contains(&x)));
            prop_assert!(p.iter().sum::<f64>() <= budget * m as f64 + 1e-9);
            let best = lambda2(n, &matchings, &p);
            prop_assert!(best >= lambda2(n, &matchings, &vec![budget; m]) - 1e-6);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..20 {
                let raw: Vec<f64> = (0..m).map(|_| rng.random::<f64>()).collect();
                let feasible = project(&raw, budget * m as f64);
                prop_assert!(best >= lambda2(n, &matchings, &feasible) - 1e-6);
            }
        }

        #[test]
        fn optimized_alpha_beats_a_grid(g in connected_graph(), budget in 0.1f64..1.0) {
            let n = g.n();
            let matchings = g.matchings();
            let p = optimize_probabilities(n, &matchings, budget).unwrap();
            let (alpha, best) = optimize_alpha(n, &matchings, &p).unwrap();
            prop_assert!(alpha > 0.0 && best < 1.0);
            for k in 0..=200 {
                let a = k as f64 * 0.01;
                prop_assert!(best <= rho(n, &matchings, &p, a).unwrap() + 1e-9);
            }
        }

        #[test]
        fn second_moment_matches_enumeration(
            g in connected_graph(), seed in any::<u64>(), alpha in 0.05f64..0.6
        ) {
            // E[WᵀW] by summing over all 2^M activation patterns equals the closed form.
            let n = g.n();
            let matchings = g.matchings();
            prop_assume!(matchings.len() <= 8);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p: Vec<f64> = matchings.iter().map(|_| rng.random::<f64>()).collect();
            let mut exact = DMatrix::zeros(n, n);
            for pattern in 0u32..(1 << matchings.len()) {
                let mut probability = 1.0;
                let mut w = DMatrix::identity(n, n);
                for (j, matching) in matchings.iter().enumerate() {
                    if pattern & (1 << j) != 0 {
                        probability *= p[j];
                        w -= matching.laplacian(n) * alpha;
                    } else {
                        probability *= 1.0 - p[j];
                    }
                }
                exact += w.transpose() * &w * probability;
            }
            let closed = Moments::new(n, &matchings, &p).unwrap().second_moment(alpha);
            prop_assert!((exact - closed).amax() < 1e-12);
        }
    }
}
