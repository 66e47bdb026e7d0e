//! # peloton-core
//!
//! The engine of peloton: flat parameter buffers and their kernels, the transport trait and
//! the threads transport, the [`Learner`](learner::Learner) trait, local optimizers,
//! distributed algorithms, and the runner. It depends on no tensor library and on no CLI.
//!
//! ```text
//! Learner (batch → loss, gradient into a flat buffer)
//!    │
//! Algorithm hooks (before / after the local optimizer step)  ── leader election, pulls, averaging
//!    │
//! Communicator (collectives, point-to-point, sub-groups)     ── threads | mpi | sim
//!    │
//! Runner (workers, budgets, evaluation, metrics)
//! ```

pub mod algorithms;
pub mod bench;
pub mod checkpoint;
mod error;
pub mod external;
pub mod flat;
pub mod kernels;
pub mod layout;
pub mod learner;
pub mod limits;
pub mod optim;
pub mod runner;
pub mod seed;
pub mod transport;

pub use error::{Error, Result};
