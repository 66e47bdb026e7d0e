//! Building blocks shared by the leader-based and averaging algorithms: the leader metric,
//! leader election, and the pull toward a broadcast vector.

use crate::kernels;
use crate::transport::Communicator;
use crate::Result;

/// The leader metric of one worker: the mean of its last `K` mini-batch losses.
///
/// Unlike the LSGD reference code (a zero-initialized window averaged over all K slots, which
/// is biased low for the first K−1 steps), the mean is taken over the losses seen so far, so
/// the metric is unbiased from the first step. A non-finite loss makes the metric non-finite
/// for the next K steps, so a worker that diverged cannot become leader until its last K
/// losses are finite again.
#[derive(Debug, Clone)]
pub struct LossWindow {
    values: Vec<f64>,
    next: usize,
    filled: usize,
}

impl LossWindow {
    /// A window of the last `k ≥ 1` losses.
    pub fn new(k: usize) -> Self {
        Self {
            values: vec![0.0; k.max(1)],
            next: 0,
            filled: 0,
        }
    }

    pub fn push(&mut self, loss: f64) {
        self.values[self.next] = loss;
        self.next = (self.next + 1) % self.values.len();
        self.filled = (self.filled + 1).min(self.values.len());
    }

    /// The window's slots and position, for a checkpoint.
    pub fn save_state(&self) -> crate::checkpoint::StateDict {
        let mut state = crate::checkpoint::StateDict::new();
        state.put_f64s("values", &self.values);
        state.put_u64s("position", &[self.next as u64, self.filled as u64]);
        state
    }

    pub fn load_state(&mut self, state: &crate::checkpoint::StateDict) -> crate::Result<()> {
        state.f64s("values").and_then(|v| {
            if v.len() != self.values.len() {
                return Err(crate::Error::Checkpoint(format!(
                    "the leader window held {} losses, this run keeps {}",
                    v.len(),
                    self.values.len()
                )));
            }
            self.values.copy_from_slice(v);
            Ok(())
        })?;
        match state.u64s("position")? {
            &[next, filled]
                if (next as usize) < self.values.len() && filled as usize <= self.values.len() =>
            {
                self.next = next as usize;
                self.filled = filled as usize;
                Ok(())
            }
            _ => Err(crate::Error::Checkpoint(
                "the leader window's position is out of range".into(),
            )),
        }
    }

    /// Mean of the stored losses (in slot order, so it is deterministic); +∞ before any loss.
    pub fn mean(&self) -> f64 {
        if self.filled == 0 {
            return f64::INFINITY;
        }
        self.values[..self.filled].iter().sum::<f64>() / self.filled as f64
    }
}

/// The argmin of `metrics[candidates]`: finite values only, the lowest index wins ties.
/// `None` when no candidate has a finite metric (then nobody pulls).
///
/// Every worker calls this on the same gathered vector, so every worker elects the same leader.
pub fn elect(metrics: &[f64], candidates: std::ops::Range<usize>) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in candidates {
        let m = metrics[i];
        if m.is_finite() && best.is_none_or(|b| m < metrics[b]) {
            best = Some(i);
        }
    }
    best
}

/// Broadcasts `leader`'s parameters (a rank of `comm`) into `staging` on every member and moves
/// every other member by `x ← (1−strength)·x + strength·x̃`. The leader itself is never
/// touched, so a pull never moves the leader, bit for bit.
pub fn pull_toward_leader(
    comm: &mut dyn Communicator,
    params: &mut [f32],
    staging: &mut [f32],
    leader: usize,
    strength: f32,
) -> Result<()> {
    if comm.rank() == leader {
        staging.copy_from_slice(params);
    }
    comm.broadcast(staging, leader)?;
    if comm.rank() != leader {
        kernels::mix(params, staging, strength);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_is_unbiased_from_the_first_step() {
        let mut w = LossWindow::new(3);
        assert_eq!(w.mean(), f64::INFINITY);
        w.push(6.0);
        assert_eq!(w.mean(), 6.0);
        w.push(3.0);
        assert_eq!(w.mean(), 4.5);
        w.push(0.0);
        w.push(9.0); // window is now [9, 3, 0]
        assert_eq!(w.mean(), 4.0);
    }

    #[test]
    fn diverged_worker_is_ineligible_for_k_steps() {
        let mut w = LossWindow::new(2);
        w.push(f64::NAN);
        w.push(1.0);
        assert!(w.mean().is_nan());
        w.push(1.0);
        assert_eq!(w.mean(), 1.0);
    }

    #[test]
    fn election_rules() {
        // Ties go to the lowest rank; NaN and ∞ never win.
        assert_eq!(elect(&[2.0, 1.0, 1.0, 3.0], 0..4), Some(1));
        assert_eq!(elect(&[f64::NAN, 5.0, f64::NEG_INFINITY], 0..3), Some(1));
        assert_eq!(elect(&[f64::NAN, f64::INFINITY], 0..2), None);
        // Within a group (ranks 2..4) only the group's members count.
        assert_eq!(elect(&[0.0, 0.0, 7.0, 6.0], 2..4), Some(3));
    }

    proptest! {
        #[test]
        fn elected_leader_is_a_finite_minimum(ms in proptest::collection::vec(
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -10.0f64..10.0], 1..40)) {
            match elect(&ms, 0..ms.len()) {
                None => prop_assert!(ms.iter().all(|m| !m.is_finite())),
                Some(l) => {
                    prop_assert!(ms[l].is_finite());
                    for (i, m) in ms.iter().enumerate() {
                        if m.is_finite() {
                            prop_assert!(ms[l] < *m || (ms[l] == *m && l <= i));
                        }
                    }
                }
            }
        }
    }
}
