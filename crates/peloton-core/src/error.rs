//! One error type for the whole core: every bad input and every failure is a value, never a
//! panic. Messages are single lines that name the offending key, worker or file.

use thiserror::Error;

/// Everything that can go wrong inside peloton-core.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid config: {0}")]
    Config(String),
    /// A transport operation failed (mismatched sizes, bad rank, ...).
    #[error("transport: {0}")]
    Transport(String),
    /// Another worker aborted the run; `reason` is its error.
    #[error("worker {worker} stopped the run: {reason}")]
    Aborted { worker: usize, reason: String },
    /// A worker's loss became NaN or infinite.
    #[error("worker {worker} diverged at step {step}: loss is {loss}")]
    Diverged { worker: usize, step: u64, loss: f64 },
    /// A dataset file is missing, truncated or corrupted (the message names the file and,
    /// where it applies, the byte offset).
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint is missing, damaged, of another run, or cannot be written.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A learner (model + data) failed.
    #[error("learner on worker {worker}: {message}")]
    Learner { worker: usize, message: String },
    /// A worker this one waits for (a collective's member, a message's sender) has left the
    /// run: finished, stopped or failed. Asynchronous algorithms go on without it.
    #[error("transport: worker {worker} left the run while others were waiting for it")]
    Left { worker: usize },
    /// A worker was stopped by an injected fault at `at` seconds (virtual on the simulator).
    #[error("worker {worker} stopped at {at:.3} s (injected fault)")]
    Stopped { worker: usize, at: f64 },
    /// The watchdog: `worker` waited `seconds` in `what` for workers that never arrived (a
    /// deadlock, a dead or hung worker, or a limit set too tight for a slow one).
    #[error("watchdog: worker {worker} waited {seconds} s in {what} for worker(s) {} that did not arrive (raise watchdog_seconds if they are only slow)", list(.missing))]
    Timeout {
        worker: usize,
        what: String,
        missing: Vec<usize>,
        seconds: f64,
    },
    /// A worker thread panicked; this is always a bug in peloton or in a learner.
    #[error("worker {worker} panicked: {message}")]
    Panic { worker: usize, message: String },
}

fn list(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(usize::to_string).collect();
    names.join(", ")
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns `Err(Error::Config)` with the formatted message when `cond` is false.
#[macro_export]
macro_rules! ensure_config {
    ($cond:expr, $($arg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err($crate::Error::Config(format!($($arg)+)));
        }
    };
}
