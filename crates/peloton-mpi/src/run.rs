//! One rank's run, the gathering of every rank's events and results on rank 0, and the
//! detection of which ranks share a node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mpi::topology::Communicator as _;
use mpi::traits::*;
use peloton_core::checkpoint;
use peloton_core::learner::LearnerFactory;
use peloton_core::runner::{
    final_evaluations, run_worker, EvalRecord, Event, LinkTraffic, RunConfig, RunReport,
    WorkerOutcome, WorkerRecord,
};
use peloton_core::transport::compressed::CompressionStats;
use peloton_core::transport::{CommStats, Communicator};
use peloton_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::{MpiComm, SHARED_ERROR_MARK};

/// Which node (shared-memory domain, as `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)` sees it)
/// each rank runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    /// Node index of every rank; nodes are numbered in order of their lowest rank.
    pub node_of_rank: Vec<usize>,
}

impl NodeLayout {
    /// Collective over `comm`: every member learns the layout.
    pub fn detect(comm: &MpiComm) -> NodeLayout {
        let raw = comm.raw();
        let shared = raw.split_shared(raw.rank());
        // The lowest rank of each node names it.
        let mut leader = raw.rank() as u64;
        shared.process_at_rank(0).broadcast_into(&mut leader);
        let mut leaders = vec![0u64; raw.size() as usize];
        raw.all_gather_into(&leader, &mut leaders[..]);
        let mut index = BTreeMap::new();
        let node_of_rank = leaders
            .iter()
            .map(|l| {
                let next = index.len();
                *index.entry(*l).or_insert(next)
            })
            .collect();
        NodeLayout { node_of_rank }
    }

    pub fn nodes(&self) -> usize {
        self.node_of_rank.iter().max().map_or(0, |m| m + 1)
    }

    /// The ranks per node when every node holds the same number of consecutive ranks (the
    /// groups multi-leader LSGD forms: ranks `k·g .. (k+1)·g`), else `None`.
    pub fn uniform_group_size(&self) -> Option<usize> {
        let n = self.node_of_rank.len();
        let nodes = self.nodes();
        if nodes == 0 || !n.is_multiple_of(nodes) {
            return None;
        }
        let g = n / nodes;
        self.node_of_rank
            .iter()
            .enumerate()
            .all(|(r, &node)| node == r / g)
            .then_some(g)
    }
}

/// A worker record as it travels to rank 0. JSON has no ∞ or NaN (serde_json writes `null`,
/// which does not read back as a number), yet a record may hold them: the leader metric of a
/// worker that has not taken a step yet is ∞ (an asynchronous worker may take none), a diverged
/// run's loss is NaN. The fields that may hold them travel as bit patterns, next to a copy of
/// the record where they are 0.
#[derive(Serialize, Deserialize)]
struct WireRecord {
    record: WorkerRecord,
    loss: u64,
    metric: u64,
    params: Option<Vec<u32>>,
}

impl From<&WorkerRecord> for WireRecord {
    fn from(r: &WorkerRecord) -> Self {
        let params = r
            .params
            .as_ref()
            .map(|p| p.iter().map(|v| v.to_bits()).collect());
        WireRecord {
            record: WorkerRecord {
                loss: 0.0,
                metric: 0.0,
                params: None,
                ..r.clone()
            },
            loss: r.loss.to_bits(),
            metric: r.metric.to_bits(),
            params,
        }
    }
}

impl From<WireRecord> for WorkerRecord {
    fn from(w: WireRecord) -> Self {
        WorkerRecord {
            loss: f64::from_bits(w.loss),
            metric: f64::from_bits(w.metric),
            params: w
                .params
                .map(|p| p.into_iter().map(f32::from_bits).collect()),
            ..w.record
        }
    }
}

/// An evaluation as it travels to rank 0: its loss as a bit pattern (∞ or NaN when diverged;
/// see [`WireRecord`]).
#[derive(Serialize, Deserialize)]
struct WireEval {
    record: EvalRecord,
    loss: u64,
}

impl From<&EvalRecord> for WireEval {
    fn from(e: &EvalRecord) -> Self {
        let mut record = e.clone();
        record.eval.loss = 0.0;
        WireEval {
            record,
            loss: e.eval.loss.to_bits(),
        }
    }
}

impl From<WireEval> for EvalRecord {
    fn from(w: WireEval) -> Self {
        let mut record = w.record;
        record.eval.loss = f64::from_bits(w.loss);
        record
    }
}

/// An event as it travels to rank 0.
#[derive(Serialize, Deserialize)]
enum WireEvent {
    Started {
        workers: usize,
        params: usize,
        steps: Option<u64>,
    },
    Worker(WireRecord),
    Eval(WireEval),
    Checkpoint {
        step: u64,
        worker: usize,
    },
    Diverged {
        step: u64,
        worker: usize,
        /// The diverged loss as a bit pattern (NaN or ∞; see [`WireRecord`]).
        loss: u64,
        reset_to: usize,
    },
}

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> Self {
        match e {
            Event::Started {
                workers,
                params,
                steps,
            } => WireEvent::Started {
                workers: *workers,
                params: *params,
                steps: *steps,
            },
            Event::Worker(r) => WireEvent::Worker(r.into()),
            Event::Eval(e) => WireEvent::Eval(e.into()),
            &Event::Checkpoint { step, worker } => WireEvent::Checkpoint { step, worker },
            &Event::Diverged {
                step,
                worker,
                loss,
                reset_to,
            } => WireEvent::Diverged {
                step,
                worker,
                loss: loss.to_bits(),
                reset_to,
            },
        }
    }
}

impl From<WireEvent> for Event {
    fn from(e: WireEvent) -> Self {
        match e {
            WireEvent::Started {
                workers,
                params,
                steps,
            } => Event::Started {
                workers,
                params,
                steps,
            },
            WireEvent::Worker(r) => Event::Worker(r.into()),
            WireEvent::Eval(e) => Event::Eval(e.into()),
            WireEvent::Checkpoint { step, worker } => Event::Checkpoint { step, worker },
            WireEvent::Diverged {
                step,
                worker,
                loss,
                reset_to,
            } => Event::Diverged {
                step,
                worker,
                loss: f64::from_bits(loss),
                reset_to,
            },
        }
    }
}

/// A rank's outcome without its long vectors (they travel as raw bytes after it).
#[derive(Serialize, Deserialize)]
struct WireOutcome {
    rank: usize,
    final_evals: Vec<WireEval>,
    stats: CommStats,
    links: Vec<LinkTraffic>,
    steps: u64,
    seconds: f64,
    params: usize,
    center: Option<usize>,
    losses: usize,
    events: Vec<WireEvent>,
    /// The final leader metric; `None` stands for a non-finite one (JSON has no ∞).
    metric: Option<f64>,
    shared_state: Vec<f32>,
    stopped_at: Option<f64>,
    leader_changes: Option<u64>,
    compression: Option<CompressionStats>,
}

/// `[json length: u64][json][params: f32…][center: f32…][losses: f64…]`, little-endian.
fn encode(outcome: &WorkerOutcome, events: &[Event]) -> Result<Vec<u8>> {
    let head = WireOutcome {
        metric: outcome.metric.is_finite().then_some(outcome.metric),
        shared_state: outcome.shared_state.clone(),
        stopped_at: outcome.stopped_at,
        leader_changes: outcome.leader_changes,
        compression: outcome.compression,
        rank: outcome.rank,
        final_evals: outcome.final_evals.iter().map(WireEval::from).collect(),
        stats: outcome.stats,
        links: outcome.links.clone(),
        steps: outcome.steps,
        seconds: outcome.seconds,
        params: outcome.params.len(),
        center: outcome.center.as_ref().map(Vec::len),
        losses: outcome.losses.len(),
        events: events.iter().map(WireEvent::from).collect(),
    };
    let json = serde_json::to_vec(&head)
        .map_err(|e| Error::Transport(format!("cannot encode the results: {e}")))?;
    let mut out =
        Vec::with_capacity(8 + json.len() + 4 * outcome.params.len() + 8 * outcome.losses.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    let center = outcome.center.as_deref().unwrap_or(&[]);
    for v in outcome.params.iter().chain(center) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in &outcome.losses {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

fn decode(bytes: &[u8], rank: usize) -> Result<(WorkerOutcome, Vec<Event>)> {
    let bad = |what: &str| Error::Transport(format!("the results of rank {rank} are {what}"));
    let take = |at: usize, n: usize| bytes.get(at..at + n).ok_or_else(|| bad("truncated"));
    let json_len = u64::from_le_bytes(take(0, 8)?.try_into().expect("8 bytes")) as usize;
    let head: WireOutcome = serde_json::from_slice(take(8, json_len)?)
        .map_err(|e| bad(&format!("unreadable ({e})")))?;
    let mut at = 8 + json_len;
    let mut floats = |n: usize| -> Result<Vec<f32>> {
        let raw = take(at, 4 * n)?;
        at += 4 * n;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    };
    let params = floats(head.params)?;
    let center = head.center.map(&mut floats).transpose()?;
    let losses = take(at, 8 * head.losses)?
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let outcome = WorkerOutcome {
        rank: head.rank,
        params,
        losses,
        final_evals: head.final_evals.into_iter().map(EvalRecord::from).collect(),
        stats: head.stats,
        links: head.links,
        center,
        steps: head.steps,
        seconds: head.seconds,
        metric: head.metric.unwrap_or(f64::INFINITY),
        shared_state: head.shared_state,
        stopped_at: head.stopped_at,
        leader_changes: head.leader_changes,
        compression: head.compression,
    };
    Ok((outcome, head.events.into_iter().map(Event::from).collect()))
}

/// Where rank `rank` keeps its events up to the checkpoint of `step`, beside its worker file.
pub fn events_file(checkpoints: &Path, step: u64, rank: usize) -> PathBuf {
    checkpoint::step_dir(checkpoints, step).join(format!("events-{rank}.json"))
}

/// Writes `events` (JSON; ∞ and NaN as bit patterns) atomically.
fn save_events(path: &Path, events: &[Event]) -> Result<()> {
    let wire: Vec<WireEvent> = events.iter().map(WireEvent::from).collect();
    let json = serde_json::to_vec(&wire)
        .map_err(|e| Error::Checkpoint(format!("cannot encode the events: {e}")))?;
    checkpoint::write_atomic(path, &json)
        .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))
}

/// Reads what [`save_events`] wrote.
pub fn load_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    let wire: Vec<WireEvent> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{} is corrupted: {e}", path.display())))?;
    Ok(wire.into_iter().map(Event::from).collect())
}

/// One step's evaluations, worker records and divergence resets.
type StepEvents = (Vec<EvalRecord>, Vec<WorkerRecord>, Vec<Event>);

/// Orders the events of all ranks as the threads runner delivers them: `Started`, then by
/// step the evaluations (by worker) and the worker records (by worker).
fn deliver(per_rank: Vec<Vec<Event>>, on_event: &mut dyn FnMut(&Event)) {
    let mut steps: BTreeMap<u64, StepEvents> = BTreeMap::new();
    for event in per_rank.into_iter().flatten() {
        match event {
            Event::Started { .. } => on_event(&event),
            Event::Worker(r) => steps.entry(r.step).or_default().1.push(r),
            Event::Eval(e) => steps.entry(e.step).or_default().0.push(e),
            // Rank 0 committed each checkpoint during the run; none is left to commit.
            Event::Checkpoint { .. } => {}
            Event::Diverged { step, .. } => steps.entry(step).or_default().2.push(event),
        }
    }
    for (_, (mut evals, mut records, notes)) in steps {
        // Divergence resets first, by worker (each rank's events are already in rank order).
        notes.iter().for_each(&mut *on_event);
        evals.sort_by_key(|e| e.worker);
        records.sort_by_key(|r| r.worker);
        evals.into_iter().for_each(|e| on_event(&Event::Eval(e)));
        records
            .into_iter()
            .for_each(|r| on_event(&Event::Worker(r)));
    }
}

/// Orders the events of an asynchronous run as the threads runner does (its `TimeOrder`):
/// `Started`, then by time, then by worker, each worker's events in the order it emitted them.
fn deliver_by_time(per_rank: Vec<Vec<Event>>, on_event: &mut dyn FnMut(&Event)) {
    let mut timed = Vec::new();
    for event in per_rank.into_iter().flatten() {
        let (seconds, worker) = match &event {
            // Asynchronous runs take no checkpoints and stop on a divergence: these never come.
            Event::Started { .. } | Event::Checkpoint { .. } | Event::Diverged { .. } => {
                on_event(&event);
                continue;
            }
            Event::Worker(r) => (r.seconds, r.worker),
            Event::Eval(e) => (e.seconds, e.worker.unwrap_or(0)),
        };
        timed.push((seconds.max(0.0), worker, event));
    }
    // Stable: ties keep each rank's own order.
    timed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    timed.iter().for_each(|(_, _, e)| on_event(e));
}

/// Runs this rank's worker of `config` on `comm` (the world: rank = worker), then gathers
/// every rank's events and results on rank 0, which delivers the events to `on_event` in the
/// threads runner's order and returns the whole run's report; other ranks return `None`.
/// `live` sees this rank's own events as they happen (progress display). `config` must be
/// validated, with `workers` equal to the number of ranks.
///
/// With checkpoints, each rank also writes its events so far beside its worker file
/// ([`events_file`]) when the runner reports the file written, and a resumed run starts from
/// them: the metrics of an MPI run exist only at its end.
///
/// Asynchronous algorithms get the services of [`MpiComm::start_services`] for the run; rank 0
/// then evaluates the final average, leader or center model from the gathered outcomes, as
/// the threads runner does after its join. After an error that is not shared
/// ([`crate::is_shared_error`]) the caller must end the job ([`crate::abort_job`]): the other
/// ranks may be waiting for this one.
pub fn run(
    comm: &mut MpiComm,
    config: &RunConfig,
    factory: &dyn LearnerFactory,
    live: &(dyn Fn(&Event) + Sync),
    on_event: &mut dyn FnMut(&Event),
) -> Result<Option<RunReport>> {
    if config.workers != comm.size() {
        return Err(Error::Config(format!(
            "the config has {} workers but MPI started {} ranks (one worker per rank) {SHARED_ERROR_MARK}",
            config.workers,
            comm.size()
        )));
    }
    // The watchdog's limit (validated: positive when set). Every wait of the run respects it.
    comm.set_watchdog(
        config
            .watchdog
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
    );
    // A resumed run starts with this rank's events up to the checkpoint (rank 0 writes the
    // metrics only at the end, so they live with the checkpoint, not in metrics.jsonl).
    let resumed = match &config.checkpoint {
        Some(c) => match c.resume {
            Some(step) => Some(load_events(&events_file(&c.dir, step, comm.rank()))?),
            None => None,
        },
        None => None,
    };
    let is_resumed = resumed.is_some();
    let events = Mutex::new(resumed.unwrap_or_default());
    let failed_save = Mutex::new(None);
    let emit = |e: Event| {
        let mut events = events.lock().unwrap_or_else(|e| e.into_inner());
        // First the events file, then `live`: rank 0's commits the checkpoint once every
        // rank's files, its own included, are written.
        match (&e, &config.checkpoint) {
            // The worker file of `step` is written: so are this rank's events so far.
            (Event::Checkpoint { step, worker }, Some(c)) => {
                if let Err(err) = save_events(&events_file(&c.dir, *step, *worker), &events) {
                    failed_save
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(err);
                }
            }
            // The original run's start is among the events restored.
            (Event::Started { .. }, _) if is_resumed => {}
            _ => events.push(e.clone()),
        }
        drop(events);
        live(&e);
    };
    let asynchronous = config.algorithm.is_async();
    if asynchronous {
        comm.start_services()?;
    }
    let outcome = match run_worker(comm, factory, config, &emit) {
        Ok(outcome) => outcome,
        Err(e) => {
            // Every rank stops here together: end the services cleanly. Any other error
            // aborts the job, service thread included.
            if asynchronous && crate::is_shared_error(&e) {
                comm.stop_services()?;
            }
            return Err(e);
        }
    };
    if asynchronous {
        comm.stop_services()?;
    }
    if let Some(e) = failed_save.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let events = events.into_inner().unwrap_or_else(|e| e.into_inner());
    let bytes = encode(&outcome, &events)?;
    let Some(all) = comm.gather_bytes(&bytes, 0)? else {
        return Ok(None);
    };
    let mut outcomes = Vec::with_capacity(all.len());
    let mut per_rank = Vec::with_capacity(all.len());
    for (rank, bytes) in all.iter().enumerate() {
        let (o, e) = decode(bytes, rank)?;
        outcomes.push(o);
        per_rank.push(e);
    }
    let mut final_evals: Vec<EvalRecord> = outcomes
        .iter()
        .flat_map(|o| o.final_evals.clone())
        .collect();
    if asynchronous {
        deliver_by_time(per_rank, on_event);
        // Asynchronous workers never gather: the final average, leader or center model is
        // evaluated here, from the outcomes, as the threads runner does.
        for e in final_evaluations(config, factory, &outcomes)? {
            on_event(&Event::Eval(e.clone()));
            final_evals.push(e);
        }
    } else {
        deliver(per_rank, on_event);
    }
    Ok(Some(RunReport {
        steps: outcomes.iter().map(|o| o.steps).max().unwrap_or(0),
        seconds: outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max),
        final_evals,
        workers: outcomes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(nodes: &[usize]) -> NodeLayout {
        NodeLayout {
            node_of_rank: nodes.to_vec(),
        }
    }

    #[test]
    fn node_groups_need_equal_blocks_of_consecutive_ranks() {
        assert_eq!(layout(&[0, 0, 1, 1]).uniform_group_size(), Some(2));
        assert_eq!(layout(&[0, 0, 0, 0]).uniform_group_size(), Some(4));
        assert_eq!(layout(&[0, 1, 2]).uniform_group_size(), Some(1));
        // Round-robin placement (mpirun --map-by node) and uneven nodes form no groups.
        assert_eq!(layout(&[0, 1, 0, 1]).uniform_group_size(), None);
        assert_eq!(layout(&[0, 0, 0, 1]).uniform_group_size(), None);
        assert_eq!(layout(&[0, 0, 1, 1]).nodes(), 2);
    }

    #[test]
    fn non_finite_values_survive_the_trip_to_rank_0() {
        let record = WorkerRecord {
            step: 3,
            worker: 1,
            loss: f64::NAN,
            // A worker that has taken no step yet.
            metric: f64::INFINITY,
            lr: 0.1,
            leader: None,
            consensus: Some(0.5),
            peers: None,
            bytes_sent: 8,
            bytes_received: 16,
            seconds: 0.25,
            work: Some(7),
            staleness: None,
            staleness_max: None,
            leader_changes: None,
            params: Some(vec![f32::NEG_INFINITY, 1.5]),
        };
        let eval = EvalRecord {
            step: 3,
            model: "worker".into(),
            worker: Some(1),
            eval: peloton_core::learner::Evaluation {
                loss: f64::INFINITY,
                accuracy: Some(0.5),
                grad_norm: None,
            },
            seconds: 0.5,
        };
        let outcome = WorkerOutcome {
            rank: 1,
            params: vec![1.0, f32::NAN],
            losses: vec![f64::NAN, 2.0],
            final_evals: vec![eval.clone()],
            stats: CommStats::default(),
            links: Vec::new(),
            center: None,
            steps: 3,
            seconds: 0.5,
            metric: f64::INFINITY,
            shared_state: Vec::new(),
            stopped_at: None,
            leader_changes: None,
            compression: Some(CompressionStats {
                operations: 2,
                bytes_sent: 10,
                fp32_bytes_sent: 40,
            }),
        };
        let events = [Event::Worker(record.clone()), Event::Eval(eval.clone())];
        let bytes = encode(&outcome, &events).unwrap();
        let (back, got) = decode(&bytes, 1).unwrap();
        let Event::Worker(r) = &got[0] else {
            panic!("{got:?}")
        };
        assert!(r.loss.is_nan() && r.metric == f64::INFINITY);
        assert_eq!(r.params, record.params);
        assert_eq!((r.step, r.consensus, r.work), (3, Some(0.5), Some(7)));
        assert_eq!(got[1], Event::Eval(eval.clone()));
        assert_eq!(back.final_evals, vec![eval]);
        assert_eq!(back.metric, f64::INFINITY);
        assert!(back.params[1].is_nan() && back.losses[0].is_nan());
    }

    #[test]
    fn asynchronous_events_are_delivered_by_time_then_worker() {
        let record = |seconds, worker| {
            Event::Worker(WorkerRecord {
                step: 1,
                worker,
                loss: 0.0,
                metric: 0.0,
                lr: 0.1,
                leader: None,
                consensus: None,
                peers: None,
                bytes_sent: 0,
                bytes_received: 0,
                seconds,
                work: None,
                staleness: None,
                staleness_max: None,
                leader_changes: None,
                params: None,
            })
        };
        let per_rank = vec![
            vec![
                Event::Started {
                    workers: 2,
                    params: 3,
                    steps: Some(2),
                },
                record(0.3, 0),
                record(0.5, 0),
            ],
            vec![record(0.1, 1), record(0.3, 1), record(0.4, 1)],
        ];
        let mut seen = Vec::new();
        deliver_by_time(per_rank, &mut |e| {
            seen.push(match e {
                Event::Started { .. } => "start".to_string(),
                Event::Worker(r) => format!("w{}@{}", r.worker, r.seconds),
                Event::Eval(_) | Event::Checkpoint { .. } | Event::Diverged { .. } => {
                    "other".into()
                }
            })
        });
        assert_eq!(
            seen,
            ["start", "w1@0.1", "w0@0.3", "w1@0.3", "w1@0.4", "w0@0.5"]
        );
    }

    #[test]
    fn events_are_delivered_in_the_threads_runners_order() {
        let record = |step, worker| {
            Event::Worker(WorkerRecord {
                step,
                worker,
                loss: 0.0,
                metric: 0.0,
                lr: 0.1,
                leader: None,
                consensus: None,
                peers: None,
                bytes_sent: 0,
                bytes_received: 0,
                seconds: 0.0,
                work: None,
                staleness: None,
                staleness_max: None,
                leader_changes: None,
                params: None,
            })
        };
        let eval = |step, worker| {
            Event::Eval(EvalRecord {
                step,
                model: "worker".into(),
                worker: Some(worker),
                eval: Default::default(),
                seconds: 0.0,
            })
        };
        let per_rank = vec![
            vec![
                Event::Started {
                    workers: 2,
                    params: 3,
                    steps: Some(2),
                },
                record(1, 0),
                eval(2, 0),
                record(2, 0),
            ],
            vec![record(1, 1), eval(2, 1), record(2, 1)],
        ];
        let mut seen = Vec::new();
        deliver(per_rank, &mut |e| {
            seen.push(match e {
                Event::Started { .. } => "start".to_string(),
                Event::Worker(r) => format!("w{}@{}", r.worker, r.step),
                Event::Eval(e) => format!("e{}@{}", e.worker.unwrap_or(9), e.step),
                Event::Checkpoint { step, .. } => format!("c@{step}"),
                Event::Diverged { step, worker, .. } => format!("d{worker}@{step}"),
            })
        });
        assert_eq!(
            seen,
            ["start", "w0@1", "w1@1", "e0@2", "e1@2", "w0@2", "w1@2"]
        );
    }
}
