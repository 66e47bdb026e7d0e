//! The flat-buffer kernels every algorithm is built from.
//!
//! Each kernel is one pass over contiguous `f32` slices written so that the compiler
//! vectorizes it (fixed-width chunks, no bounds checks in the loop body). They are memory-bound:
//! `peloton bench` and the `kernels` criterion benchmark report each one's bandwidth as a ratio
//! to `copy_from_slice` of the same size.
//!
//! All kernels panic only on mismatched lengths, which is a programming error inside peloton
//! (transports and algorithms check user-facing sizes before calling them).

const LANES: usize = 16;

/// `x ← (1−c)·x + c·y`: the pull / mix / convex-combination kernel.
///
/// `c = 0` leaves `x` untouched (even if `y` holds NaN or ∞) and `c = 1` copies `y` exactly,
/// so that "λ = 0 means independent workers" holds bit for bit.
pub fn mix(x: &mut [f32], y: &[f32], c: f32) {
    assert_eq!(x.len(), y.len(), "mix: length mismatch");
    if c == 0.0 {
        return;
    }
    if c == 1.0 {
        x.copy_from_slice(y);
        return;
    }
    let keep = 1.0 - c;
    let mut xc = x.chunks_exact_mut(LANES);
    let mut yc = y.chunks_exact(LANES);
    for (xs, ys) in (&mut xc).zip(&mut yc) {
        for (a, b) in xs.iter_mut().zip(ys) {
            *a = keep * *a + c * *b;
        }
    }
    for (a, b) in xc.into_remainder().iter_mut().zip(yc.remainder()) {
        *a = keep * *a + c * *b;
    }
}

/// `acc ← acc + w·y`: weighted accumulation (neighbour averaging, elastic deltas).
pub fn axpy(acc: &mut [f32], w: f32, y: &[f32]) {
    assert_eq!(acc.len(), y.len(), "axpy: length mismatch");
    let mut ac = acc.chunks_exact_mut(LANES);
    let mut yc = y.chunks_exact(LANES);
    for (xs, ys) in (&mut ac).zip(&mut yc) {
        for (a, b) in xs.iter_mut().zip(ys) {
            *a += w * *b;
        }
    }
    for (a, b) in ac.into_remainder().iter_mut().zip(yc.remainder()) {
        *a += w * *b;
    }
}

/// `x ← s·x`.
pub fn scale(x: &mut [f32], s: f32) {
    let mut xc = x.chunks_exact_mut(LANES);
    for xs in &mut xc {
        for a in xs.iter_mut() {
            *a *= s;
        }
    }
    for a in xc.into_remainder() {
        *a *= s;
    }
}

/// `out ← (y₁ + … + y_k) / k`, summed in the order given (so the result is deterministic).
pub fn average_into(out: &mut [f32], inputs: &[&[f32]]) {
    assert!(!inputs.is_empty(), "average_into: no inputs");
    for y in inputs {
        assert_eq!(out.len(), y.len(), "average_into: length mismatch");
    }
    // Blocked so that the partial sums stay in L1 while every input streams once.
    const BLOCK: usize = 1024;
    let inv = 1.0 / inputs.len() as f32;
    let mut start = 0;
    while start < out.len() {
        let end = (start + BLOCK).min(out.len());
        let o = &mut out[start..end];
        o.copy_from_slice(&inputs[0][start..end]);
        for y in &inputs[1..] {
            for (a, b) in o.iter_mut().zip(&y[start..end]) {
                *a += *b;
            }
        }
        for a in o.iter_mut() {
            *a *= inv;
        }
        start = end;
    }
}

/// `out ← x − y`.
pub fn sub_into(out: &mut [f32], x: &[f32], y: &[f32]) {
    assert!(
        out.len() == x.len() && x.len() == y.len(),
        "sub_into: length mismatch"
    );
    for ((o, a), b) in out.iter_mut().zip(x).zip(y) {
        *o = *a - *b;
    }
}

/// `x ← x − y`.
pub fn sub_assign(x: &mut [f32], y: &[f32]) {
    axpy(x, -1.0, y);
}

/// Sums `term(xᵢ, yᵢ)`: f32 lanes within blocks of 4096 elements (so the loop vectorizes),
/// f64 across blocks (so long vectors keep their precision).
fn blocked_sum(x: &[f32], y: &[f32], term: impl Fn(f32, f32) -> f32) -> f64 {
    assert_eq!(x.len(), y.len(), "length mismatch");
    const BLOCK: usize = 4096;
    let mut total = 0.0f64;
    for (xb, yb) in x.chunks(BLOCK).zip(y.chunks(BLOCK)) {
        let mut lanes = [0.0f32; LANES];
        let mut xc = xb.chunks_exact(LANES);
        let mut yc = yb.chunks_exact(LANES);
        for (xs, ys) in (&mut xc).zip(&mut yc) {
            for i in 0..LANES {
                lanes[i] += term(xs[i], ys[i]);
            }
        }
        let mut block: f64 = lanes.iter().map(|&v| v as f64).sum();
        for (a, b) in xc.remainder().iter().zip(yc.remainder()) {
            block += term(*a, *b) as f64;
        }
        total += block;
    }
    total
}

/// `Σ xᵢ·yᵢ`.
pub fn dot(x: &[f32], y: &[f32]) -> f64 {
    blocked_sum(x, y, |a, b| a * b)
}

/// `‖x‖²`.
pub fn norm_sq(x: &[f32]) -> f64 {
    dot(x, x)
}

/// `‖x − y‖²`, the consensus-distance kernel.
pub fn dist_sq(x: &[f32], y: &[f32]) -> f64 {
    blocked_sum(x, y, |a, b| (a - b) * (a - b))
}

/// True when every value is finite.
pub fn all_finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mix_matches_formula() {
        // (1 − 0.25)·4 + 0.25·8 = 3 + 2 = 5 ; (0.75)·(−2) + 0.25·2 = −1.5 + 0.5 = −1
        let mut x = vec![4.0, -2.0];
        mix(&mut x, &[8.0, 2.0], 0.25);
        assert_eq!(x, vec![5.0, -1.0]);
    }

    #[test]
    fn mix_endpoints_are_exact() {
        let mut x = vec![0.1f32, 0.7, 1e-30];
        let y = vec![f32::NAN, f32::INFINITY, 3.0];
        let before = x.clone();
        mix(&mut x, &y, 0.0);
        assert_eq!(x, before, "c = 0 must not touch x even with NaN in y");
        let y = vec![0.3f32, 0.9, 7.0];
        mix(&mut x, &y, 1.0);
        assert_eq!(x, y);
    }

    #[test]
    fn average_of_three() {
        let a = vec![1.0f32; 2500];
        let b = vec![2.0f32; 2500];
        let c = vec![6.0f32; 2500];
        let mut out = vec![0.0; 2500];
        average_into(&mut out, &[&a, &b, &c]);
        assert!(out.iter().all(|&v| v == 3.0));
    }

    #[test]
    fn dot_and_distances() {
        let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let y = vec![1.0f32; 37];
        // Σ i for i < 37 = 666
        assert_eq!(dot(&x, &y), 666.0);
        // Σ i² for i < 37 = 36·37·73/6 = 16206
        assert_eq!(norm_sq(&x), 16206.0);
        // Σ (i − 1)² = Σ i² − 2Σ i + 37 = 16206 − 1332 + 37 = 14911
        assert_eq!(dist_sq(&x, &y), 14911.0);
    }

    proptest! {
        #[test]
        fn kernels_agree_with_scalar_reference(
            xs in proptest::collection::vec(-100.0f32..100.0, 0..200),
            c in 0.0f32..1.0,
            w in -3.0f32..3.0,
        ) {
            let ys: Vec<f32> = xs.iter().map(|v| v * 0.5 - 1.0).collect();
            let mut m = xs.clone();
            mix(&mut m, &ys, c);
            let mut a = xs.clone();
            axpy(&mut a, w, &ys);
            let mut s = xs.clone();
            scale(&mut s, w);
            for i in 0..xs.len() {
                if c != 0.0 {
                    prop_assert_eq!(m[i], (1.0 - c) * xs[i] + c * ys[i]);
                }
                prop_assert_eq!(a[i], xs[i] + w * ys[i]);
                prop_assert_eq!(s[i], xs[i] * w);
            }
            let d: f64 = xs.iter().zip(&ys).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            prop_assert!((dist_sq(&xs, &ys) - d).abs() <= 1e-4 * d.max(1.0));
        }

        #[test]
        fn mix_of_equal_vectors_stays_put_in_the_limit(
            xs in proptest::collection::vec(-10.0f32..10.0, 1..100),
            c in 0.0f32..1.0,
        ) {
            // A mix toward itself moves a value by at most one rounding error.
            let mut m = xs.clone();
            mix(&mut m, &xs, c);
            for (a, b) in m.iter().zip(&xs) {
                prop_assert!((a - b).abs() <= 2.0 * f32::EPSILON * b.abs().max(1e-30));
            }
        }
    }
}
