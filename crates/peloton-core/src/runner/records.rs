//! What a run reports: events, worker and evaluation records, each worker's outcome and the
//! whole run's report, and what they take from the algorithm's observations.

use serde::{Deserialize, Serialize};

use super::RunConfig;
use crate::algorithms::{Algorithm, LinkStats};
use crate::learner::Evaluation;
use crate::transport::CommStats;

/// One worker's metrics at a log point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub step: u64,
    pub worker: usize,
    /// Mean mini-batch loss since the previous record.
    pub loss: f64,
    /// The leader metric (mean of the last K losses).
    pub metric: f64,
    pub lr: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader: Option<usize>,
    /// ‖x_i − x̄‖, distance to the workers' average.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consensus: Option<f64>,
    /// Distinct peers this worker exchanged messages with since the previous record
    /// (algorithms that talk to individual peers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peers: Option<usize>,
    /// Bytes of the algorithm's own traffic so far (diagnostics excluded).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Wall-clock seconds since training started.
    pub seconds: f64,
    /// Asynchronous algorithms: local steps of the whole run handed out so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub work: Option<u64>,
    /// Asynchronous algorithms: mean and max staleness of the models this worker pulled or
    /// averaged with since the previous record (see each algorithm for its unit).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staleness: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staleness_max: Option<u64>,
    /// Leader-based algorithms: rounds so far in which the global leader changed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader_changes: Option<u64>,
    /// The worker's parameters, for models of at most [`RECORD_PARAMS_MAX`] parameters
    /// (toy problems: the report draws every worker's trajectory from them).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub params: Option<Vec<f32>>,
}

/// Models this small have their parameters in every worker record: a 2-D toy objective's
/// trajectories cost a few bytes per record, while a network's would be megabytes.
pub const RECORD_PARAMS_MAX: usize = 4;

/// Point-to-point traffic between a worker and one peer over the whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTraffic {
    pub peer: usize,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// An evaluation at a log point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    /// "average", "leader", "center" or "worker".
    pub model: String,
    /// The evaluated worker ("leader" and "worker" models).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub worker: Option<usize>,
    #[serde(flatten)]
    pub eval: Evaluation,
    pub seconds: f64,
}

/// What the runner reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Sent once, by worker 0, when training starts.
    Started {
        workers: usize,
        params: usize,
        steps: Option<u64>,
    },
    Worker(WorkerRecord),
    Eval(EvalRecord),
    /// Worker `worker` wrote its file of the checkpoint at `step`. The runner of a whole run
    /// ([`run_with`](super::run_with)) passes one `Checkpoint` per step on, with `worker` 0, once every worker's
    /// file is written and every record up to `step` is out: the caller then commits it.
    Checkpoint {
        step: u64,
        worker: usize,
    },
    /// Worker `worker`'s loss or gradient was NaN/∞ at local step `step` (counted from 1, like
    /// records); under `reset-to-leader` it took worker `reset_to`'s parameters and went on.
    Diverged {
        step: u64,
        worker: usize,
        loss: f64,
        reset_to: usize,
    },
}

/// One worker's results.
#[derive(Debug, Clone)]
pub struct WorkerOutcome {
    pub rank: usize,
    pub params: Vec<f32>,
    /// Every step's mini-batch loss.
    pub losses: Vec<f64>,
    /// The evaluations this worker made at the last step.
    pub final_evals: Vec<EvalRecord>,
    /// The algorithm's traffic (diagnostics excluded).
    pub stats: CommStats,
    /// Traffic per peer, for algorithms that talk to individual peers (else empty).
    pub links: Vec<LinkTraffic>,
    pub center: Option<Vec<f32>>,
    pub steps: u64,
    pub seconds: f64,
    /// The leader metric at the end (mean of the last K losses).
    pub metric: f64,
    /// The model state averaged before evaluations (BatchNorm statistics), at the end.
    pub shared_state: Vec<f32>,
    /// When an injected fault stopped this worker (asynchronous algorithms go on without it).
    pub stopped_at: Option<f64>,
    pub leader_changes: Option<u64>,
    /// What the compression layer compressed (`None`: `[compression]` is off).
    pub compression: Option<crate::transport::compressed::CompressionStats>,
}

/// The results of a whole run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Per worker, in rank order.
    pub workers: Vec<WorkerOutcome>,
    /// The evaluations made at the last step, by every worker.
    pub final_evals: Vec<EvalRecord>,
    pub steps: u64,
    pub seconds: f64,
}

impl EvalRecord {
    /// The record of `eval`, an evaluation of the config's evaluation model.
    pub(super) fn new(
        config: &RunConfig,
        step: u64,
        worker: Option<usize>,
        eval: Evaluation,
        seconds: f64,
    ) -> Self {
        EvalRecord {
            step,
            model: config.eval_model.name().to_string(),
            worker,
            eval,
            seconds,
        }
    }
}

/// What a worker record takes from the algorithm's observation at a log point; the
/// per-link window (distinct peers since the previous record) restarts.
pub(super) struct Seen {
    pub leader: Option<usize>,
    pub peers: Option<usize>,
    pub leader_changes: Option<u64>,
}

impl Seen {
    pub(super) fn at_record(algorithm: &mut dyn Algorithm) -> Self {
        let seen = algorithm.observe();
        Seen {
            leader: seen.leader,
            peers: seen.links.map(|l| l.take_window()),
            leader_changes: seen.leader_changes,
        }
    }
}

/// What a worker's outcome takes from the algorithm's observation at the end: per-link
/// traffic, the center, the leader changes.
pub(super) fn at_the_end(
    algorithm: &mut dyn Algorithm,
) -> (Vec<LinkTraffic>, Option<Vec<f32>>, Option<u64>) {
    let seen = algorithm.observe();
    (
        seen.links.map(link_traffic).unwrap_or_default(),
        seen.center.map(<[f32]>::to_vec),
        seen.leader_changes,
    )
}

/// Per-peer traffic, in peer order, from an algorithm's link counters.
fn link_traffic(links: &mut LinkStats) -> Vec<LinkTraffic> {
    let peers: std::collections::BTreeSet<usize> = links
        .bytes_sent()
        .keys()
        .chain(links.bytes_received().keys())
        .copied()
        .collect();
    peers
        .into_iter()
        .map(|peer| LinkTraffic {
            peer,
            bytes_sent: links.bytes_sent().get(&peer).copied().unwrap_or(0),
            bytes_received: links.bytes_received().get(&peer).copied().unwrap_or(0),
        })
        .collect()
}
