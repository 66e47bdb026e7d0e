//! PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019): a gradient all-reduce that moves
//! rank-r factors of every matrix-shaped parameter instead of the matrix.
//!
//! For each matrix M (n × m: a weight's first dimension by the product of the others), with a
//! right factor Q (m × r) kept from the previous step (the warm start: one power iteration per
//! step):
//!
//! ```text
//! M ← M + e                      (error feedback: this worker's residual)
//! P ← mean over workers of M·Q   (all-reduce 1, with every vector-shaped parameter)
//! P ← orthonormal columns of P   (Gram–Schmidt)
//! Q ← mean over workers of Mᵀ·P  (all-reduce 2)
//! M̂ = P·Qᵀ;   e ← M − M̂
//! ```
//!
//! Both factors are reduced, so M̂ is the same on every worker; since P·Qᵀ is linear in M,
//! M̂ is the rank-r approximation (one power step) of the mean gradient. Vectors (biases,
//! BatchNorm) and matrices too small to gain ((n + m)·r ≥ n·m) travel exact in all-reduce 1.
//! Every worker starts Q from the same seed, so the factors agree from the first step.

use std::ops::Range;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// One matrix-shaped parameter PowerSGD approximates.
#[derive(Debug, Clone, PartialEq)]
struct Matrix {
    /// Where its values lie in the flat buffer (row-major n × m).
    offset: usize,
    rows: usize,
    cols: usize,
    rank: usize,
    /// Where its Q lies in [`PowerSgd::q`], and its P in the first message.
    q_offset: usize,
    p_offset: usize,
}

/// PowerSGD's state for one worker: the warm-started right factors and the residual.
#[derive(Debug, Clone)]
pub struct PowerSgd {
    len: usize,
    matrices: Vec<Matrix>,
    /// The ranges that travel exact (vectors, small matrices).
    exact: Vec<Range<usize>>,
    exact_len: usize,
    /// Every matrix's Q, one after the other (r vectors of m values each).
    q: Vec<f32>,
    /// The residual of error feedback (`None`: off).
    residual: Option<Vec<f32>>,
    /// All-reduce 1's message: the exact values, then every P (r vectors of n values each).
    first: Vec<f32>,
    /// All-reduce 2's message: every Q.
    second: Vec<f32>,
}

/// A parameter as the layout describes it: its offset in the flat buffer and its shape.
pub type Shape<'a> = (usize, &'a [usize]);

impl PowerSgd {
    /// The plan for a flat buffer of `len` values holding `shapes`; matrices (two or more
    /// dimensions) with room to gain get rank `min(rank, n, m)`. Fails when none has.
    pub fn new(
        shapes: &[Shape<'_>],
        len: usize,
        rank: usize,
        error_feedback: bool,
        seed: u64,
    ) -> Result<Self, String> {
        let mut matrices = Vec::new();
        let mut exact = Vec::new();
        let (mut q_len, mut p_len) = (0, 0);
        let mut covered = 0;
        for &(offset, shape) in shapes {
            let numel: usize = shape.iter().product();
            covered += numel;
            let rows = shape.first().copied().unwrap_or(1);
            let cols = numel / rows.max(1);
            let r = rank.min(rows).min(cols);
            if shape.len() >= 2 && (rows + cols) * r < rows * cols {
                matrices.push(Matrix {
                    offset,
                    rows,
                    cols,
                    rank: r,
                    q_offset: q_len,
                    p_offset: p_len,
                });
                q_len += cols * r;
                p_len += rows * r;
            } else {
                exact.push(offset..offset + numel);
            }
        }
        if covered != len {
            return Err(format!(
                "powersgd: the layout's shapes hold {covered} values, the buffer {len}"
            ));
        }
        if matrices.is_empty() {
            return Err("compression.kind = \"powersgd\" needs a matrix-shaped parameter large enough to gain from rank-r factors, and this model has none: choose fp16, bf16, int8, topk or randomk".into());
        }
        let exact_len: usize = exact.iter().map(|r| r.len()).sum();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x706f_7765_7273_6764);
        let q = (0..q_len)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Ok(PowerSgd {
            len,
            matrices,
            exact,
            exact_len,
            q,
            residual: error_feedback.then(|| vec![0.0; len]),
            first: vec![0.0; exact_len + p_len],
            second: vec![0.0; q_len],
        })
    }

    /// The values each all-reduce moves: (first, second). Their sum against the buffer's
    /// length is the compression ratio.
    pub fn message_lens(&self) -> (usize, usize) {
        (self.first.len(), self.second.len())
    }

    /// Replaces `buf` (this worker's gradient) with PowerSGD's approximation of the mean over
    /// `workers` workers; `all_reduce_sum` sums a buffer over them (in the same order on every
    /// worker, so that every worker gets the same bits).
    pub fn all_reduce<E>(
        &mut self,
        buf: &mut [f32],
        workers: usize,
        mut all_reduce_sum: impl FnMut(&mut [f32]) -> Result<(), E>,
    ) -> Result<(), E> {
        assert_eq!(buf.len(), self.len, "powersgd: a buffer of another length");
        let scale = 1.0 / workers as f32;
        if let Some(residual) = &self.residual {
            buf.iter_mut().zip(residual).for_each(|(g, e)| *g += *e);
        }
        // All-reduce 1: the exact values and every P = M·Q.
        let mut at = 0;
        for range in &self.exact {
            self.first[at..at + range.len()].copy_from_slice(&buf[range.clone()]);
            at += range.len();
        }
        let ps = &mut self.first[self.exact_len..];
        for m in &self.matrices {
            let matrix = &buf[m.offset..m.offset + m.rows * m.cols];
            let q = &self.q[m.q_offset..m.q_offset + m.cols * m.rank];
            let p = &mut ps[m.p_offset..m.p_offset + m.rows * m.rank];
            multiply(matrix, q, p, m.rows, m.cols, m.rank);
        }
        all_reduce_sum(&mut self.first)?;
        self.first.iter_mut().for_each(|v| *v *= scale);
        let (exact, ps) = self.first.split_at_mut(self.exact_len);
        let mut at = 0;
        for range in &self.exact {
            buf[range.clone()].copy_from_slice(&exact[at..at + range.len()]);
            at += range.len();
        }
        // All-reduce 2: every Q = Mᵀ·P, with P made orthonormal first.
        for m in &self.matrices {
            let p = &mut ps[m.p_offset..m.p_offset + m.rows * m.rank];
            orthonormalize(p, m.rows, m.rank);
            let matrix = &buf[m.offset..m.offset + m.rows * m.cols];
            let q = &mut self.second[m.q_offset..m.q_offset + m.cols * m.rank];
            multiply_transposed(matrix, p, q, m.rows, m.cols, m.rank);
        }
        all_reduce_sum(&mut self.second)?;
        self.second.iter_mut().for_each(|v| *v *= scale);
        // M̂ = P·Qᵀ, the residual M − M̂, and Q kept for the next step.
        for m in &self.matrices {
            let p = &ps[m.p_offset..m.p_offset + m.rows * m.rank];
            let q = &self.second[m.q_offset..m.q_offset + m.cols * m.rank];
            let matrix = &mut buf[m.offset..m.offset + m.rows * m.cols];
            if let Some(residual) = &mut self.residual {
                residual[m.offset..m.offset + m.rows * m.cols].copy_from_slice(matrix);
            }
            reconstruct(matrix, p, q, m.rows, m.cols, m.rank);
            if let Some(residual) = &mut self.residual {
                let r = &mut residual[m.offset..m.offset + m.rows * m.cols];
                r.iter_mut().zip(matrix.iter()).for_each(|(e, a)| *e -= *a);
            }
        }
        if let Some(residual) = &mut self.residual {
            for range in &self.exact {
                residual[range.clone()].fill(0.0);
            }
        }
        self.q.copy_from_slice(&self.second);
        Ok(())
    }

    /// The state a checkpoint keeps: every Q, and the residual (empty when error feedback is
    /// off).
    pub fn state(&self) -> (&[f32], &[f32]) {
        (&self.q, self.residual.as_deref().unwrap_or(&[]))
    }

    /// Restores [`PowerSgd::state`].
    pub fn set_state(&mut self, q: &[f32], residual: &[f32]) -> Result<(), String> {
        let expected = self.residual.as_ref().map_or(0, Vec::len);
        if q.len() != self.q.len() || residual.len() != expected {
            return Err(format!(
                "powersgd: a state of {} factor values and {} residual values, expected {} and {expected}",
                q.len(),
                residual.len(),
                self.q.len()
            ));
        }
        self.q.copy_from_slice(q);
        if let Some(r) = &mut self.residual {
            r.copy_from_slice(residual);
        }
        Ok(())
    }
}

// The factors are stored vector by vector (P as r vectors of n values, Q as r of m), so every
// loop below runs over contiguous memory: dot products and axpys that vectorize.

/// P = M·Q for M (n × m, row-major): P_k[i] = ⟨row i, Q_k⟩.
fn multiply(matrix: &[f32], q: &[f32], p: &mut [f32], n: usize, m: usize, r: usize) {
    for (i, row) in matrix.chunks_exact(m).enumerate() {
        for k in 0..r {
            p[k * n + i] = dot(row, &q[k * m..(k + 1) * m]);
        }
    }
}

/// Q = Mᵀ·P: Q_k = Σ_i P_k[i]·(row i).
fn multiply_transposed(matrix: &[f32], p: &[f32], q: &mut [f32], n: usize, m: usize, r: usize) {
    q.fill(0.0);
    for (i, row) in matrix.chunks_exact(m).enumerate() {
        for k in 0..r {
            axpy(&mut q[k * m..(k + 1) * m], p[k * n + i], row);
        }
    }
}

/// M̂ = P·Qᵀ: row i = Σ_k P_k[i]·Q_k.
fn reconstruct(matrix: &mut [f32], p: &[f32], q: &[f32], n: usize, m: usize, r: usize) {
    for (i, row) in matrix.chunks_exact_mut(m).enumerate() {
        row.fill(0.0);
        for k in 0..r {
            axpy(row, p[k * n + i], &q[k * m..(k + 1) * m]);
        }
    }
}

/// ⟨a, b⟩ in eight interleaved partial sums (vectorizes; the same order on every worker).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            sums[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// Makes the r vectors of P (each n values) orthonormal (modified Gram–Schmidt). A vector
/// that vanishes (a zero gradient) stays zero rather than dividing by zero.
fn orthonormalize(p: &mut [f32], n: usize, r: usize) {
    for c in 0..r {
        let (done, rest) = p.split_at_mut(c * n);
        let column = &mut rest[..n];
        for prev in done.chunks_exact(n) {
            let d = dot(column, prev);
            axpy(column, -d, prev);
        }
        let norm = dot(column, column).sqrt();
        if norm > 1e-30 {
            column.iter_mut().for_each(|v| *v /= norm);
        } else {
            column.fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs PowerSGD on `workers` buffers at once (the all-reduce sums the staged messages).
    fn reduce_all(states: &mut [PowerSgd], bufs: &mut [Vec<f32>]) {
        // Each worker's step is run in lock-step: the closure of worker w gets the sum of every
        // worker's message, computed from the others' messages staged beforehand. Simplest
        // faithful simulation: run worker by worker twice, first to collect, then to apply.
        let workers = states.len();
        // Phase 1 messages.
        let mut firsts = Vec::new();
        for (s, b) in states.iter().zip(bufs.iter()) {
            let mut s = s.clone();
            let mut b = b.clone();
            let mut captured = None;
            let _ = s.all_reduce(&mut b, workers, |m: &mut [f32]| {
                if captured.is_none() {
                    captured = Some(m.to_vec());
                }
                Err::<(), ()>(())
            });
            firsts.push(captured.unwrap());
        }
        let sum1: Vec<f32> = (0..firsts[0].len())
            .map(|i| firsts.iter().map(|f| f[i]).sum())
            .collect();
        // Phase 2 messages (the first all-reduce answered with the real sum).
        let mut seconds = Vec::new();
        for (s, b) in states.iter().zip(bufs.iter()) {
            let mut s = s.clone();
            let mut b = b.clone();
            let mut calls = 0;
            let mut captured = None;
            let _ = s.all_reduce(&mut b, workers, |m: &mut [f32]| {
                calls += 1;
                if calls == 1 {
                    m.copy_from_slice(&sum1);
                    Ok(())
                } else {
                    captured = Some(m.to_vec());
                    Err(())
                }
            });
            seconds.push(captured.unwrap());
        }
        let sum2: Vec<f32> = (0..seconds[0].len())
            .map(|i| seconds.iter().map(|f| f[i]).sum())
            .collect();
        for (s, b) in states.iter_mut().zip(bufs.iter_mut()) {
            let mut calls = 0;
            s.all_reduce(b, workers, |m: &mut [f32]| {
                calls += 1;
                m.copy_from_slice(if calls == 1 { &sum1 } else { &sum2 });
                Ok::<(), ()>(())
            })
            .unwrap();
        }
    }

    #[test]
    fn a_rank_one_mean_is_recovered_exactly_and_vectors_travel_exact() {
        // Two workers; a 4 × 3 weight whose mean over the workers is the rank-one u·vᵀ, and a
        // bias of 2. With rank 1, one power step recovers a rank-one matrix exactly (up to
        // rounding) whenever Q is not orthogonal to v.
        let u = [1.0f32, -2.0, 0.5, 3.0];
        let v = [2.0f32, 1.0, -1.0];
        let mean: Vec<f32> = u
            .iter()
            .flat_map(|a| v.iter().map(move |b| a * b))
            .collect();
        let noise: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
        let w0: Vec<f32> = mean.iter().zip(&noise).map(|(m, n)| m + n).collect();
        let w1: Vec<f32> = mean.iter().zip(&noise).map(|(m, n)| m - n).collect();
        let shapes: [Shape<'_>; 2] = [(0, &[4, 3]), (12, &[2])];
        let plan = PowerSgd::new(&shapes, 14, 1, false, 7).unwrap();
        assert_eq!(plan.message_lens(), (2 + 4, 3));
        let mut states = vec![plan.clone(), plan];
        let mut bufs = vec![
            [w0, vec![1.0, 5.0]].concat(),
            [w1, vec![3.0, -1.0]].concat(),
        ];
        reduce_all(&mut states, &mut bufs);
        assert_eq!(bufs[0], bufs[1], "every worker gets the same bits");
        for (got, want) in bufs[0].iter().zip(mean.iter().chain(&[2.0, 2.0])) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn error_feedback_keeps_what_the_approximation_dropped() {
        // One worker, a full-rank 3 × 3 matrix at rank 1: what was sent plus the residual is
        // the gradient, step after step (M̂_t + e_t = M_t + e_{t−1}).
        let shapes: [Shape<'_>; 1] = [(0, &[3, 3])];
        let mut ps = PowerSgd::new(&shapes, 9, 1, true, 1).unwrap();
        let mut meant = [0.0f32; 9];
        let mut sent = [0.0f32; 9];
        for step in 0..5 {
            let g: Vec<f32> = (0..9)
                .map(|i| ((i * 7 + step * 3) as f32 * 0.37).cos())
                .collect();
            meant.iter_mut().zip(&g).for_each(|(m, x)| *m += x);
            let mut buf = g.clone();
            ps.all_reduce(&mut buf, 1, |_| Ok::<(), ()>(())).unwrap();
            sent.iter_mut().zip(&buf).for_each(|(s, x)| *s += x);
        }
        let (_, residual) = ps.state();
        for i in 0..9 {
            assert!((sent[i] + residual[i] - meant[i]).abs() < 1e-4);
        }
    }

    #[test]
    fn a_model_without_a_matrix_to_gain_from_is_refused() {
        let shapes: [Shape<'_>; 2] = [(0, &[10]), (10, &[2, 2])];
        let e = PowerSgd::new(&shapes, 14, 2, true, 0).unwrap_err();
        assert!(e.contains("needs a matrix-shaped parameter"), "{e}");
    }

    #[test]
    fn orthonormal_columns() {
        // Two vectors of three values: (1, 3, 5) and (2, 4, 7).
        let mut p = vec![1.0f32, 3.0, 5.0, 2.0, 4.0, 7.0];
        orthonormalize(&mut p, 3, 2);
        let dot = |a: usize, b: usize| (0..3).map(|i| p[a * 3 + i] * p[b * 3 + i]).sum::<f32>();
        assert!((dot(0, 0) - 1.0).abs() < 1e-6 && (dot(1, 1) - 1.0).abs() < 1e-6);
        assert!(dot(0, 1).abs() < 1e-5, "{}", dot(0, 1));
    }
}
