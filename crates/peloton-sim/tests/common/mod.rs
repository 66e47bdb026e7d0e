//! Helpers shared by the simulator crate's test suites.

use peloton_sim::{Fault, FaultKind};

/// Every worker sleeps as long again as each of its steps took (a `slow` fault of factor 2 on
/// all of them). A quadratic step takes about a microsecond, so without this one thread takes
/// thousands of steps in one time slice of an oversubscribed core while the others wait: seen
/// on 2 cores, AD-PSGD steps [87, 4, 5903, 6], and workers of asynchronous EASGD still at
/// their initial model pushing it into a converged center at the end (center 0.16, every
/// worker that ran below 1e-3). A sleeping thread gives up its core, so the OS interleaves
/// the workers step by step; the 8 × 1,500-step runs take about 0.5 s.
pub fn equal_speed(n: usize) -> Vec<Fault> {
    (0..n)
        .map(|worker| Fault {
            worker,
            at: 0.0,
            kind: FaultKind::Slow,
            factor: 2.0,
        })
        .collect()
}
