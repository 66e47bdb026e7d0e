//! The deterministic order in which a whole run's events reach the caller: by step for
//! synchronous runs ([`Reorder`]), by time for asynchronous ones ([`TimeOrder`]), so that the
//! event stream does not depend on thread timing.

use std::collections::BTreeMap;

use super::{EvalRecord, Event, WorkerRecord};

/// Orders events by step so that a run's event stream does not depend on thread timing.
pub(super) struct Reorder {
    workers: usize,
    pending: BTreeMap<u64, Pending>,
}

/// What arrived for one step.
#[derive(Default)]
struct Pending {
    /// Divergence resets, delivered before the step's evaluations.
    notes: Vec<Event>,
    evals: Vec<EvalRecord>,
    records: Vec<WorkerRecord>,
    /// Workers that wrote their file of this step's checkpoint.
    checkpoints: usize,
}

impl Reorder {
    pub(super) fn new(workers: usize) -> Self {
        Self {
            workers,
            pending: BTreeMap::new(),
        }
    }

    pub(super) fn push(&mut self, event: Event, out: &mut dyn FnMut(&Event)) {
        let step = match &event {
            Event::Started { .. } => return out(&event),
            Event::Worker(r) => r.step,
            Event::Eval(e) => e.step,
            Event::Checkpoint { step, .. } | Event::Diverged { step, .. } => *step,
        };
        let entry = self.pending.entry(step).or_default();
        match event {
            Event::Worker(r) => entry.records.push(r),
            Event::Eval(e) => entry.evals.push(e),
            Event::Checkpoint { .. } => entry.checkpoints += 1,
            Event::Diverged { .. } => entry.notes.push(event),
            Event::Started { .. } => unreachable!(),
        }
        // A worker sends its events in step order (a checkpoint after its record of the same
        // step), so once every worker's record — or every worker's checkpoint — of a step is
        // in, every earlier step is complete too.
        if entry.records.len() == self.workers || entry.checkpoints == self.workers {
            let ready: Vec<u64> = self.pending.range(..=step).map(|(s, _)| *s).collect();
            for s in ready {
                let entry = self.pending.get_mut(&s).expect("listed above");
                Self::flush(entry, out);
                if entry.checkpoints == self.workers {
                    out(&Event::Checkpoint { step: s, worker: 0 });
                    entry.checkpoints = 0;
                }
                if entry.checkpoints == 0 {
                    self.pending.remove(&s);
                }
            }
        }
    }

    fn flush(entry: &mut Pending, out: &mut dyn FnMut(&Event)) {
        let mut notes = std::mem::take(&mut entry.notes);
        notes.sort_by_key(|e| match e {
            Event::Diverged { worker, .. } => *worker,
            _ => 0,
        });
        notes.iter().for_each(&mut *out);
        let mut evals = std::mem::take(&mut entry.evals);
        let mut records = std::mem::take(&mut entry.records);
        evals.sort_by_key(|e| e.worker);
        records.sort_by_key(|r| r.worker);
        evals.into_iter().for_each(|e| out(&Event::Eval(e)));
        records.into_iter().for_each(|r| out(&Event::Worker(r)));
    }

    /// Delivers what is left when the workers are done (a failed run's partial steps). An
    /// incomplete checkpoint is not passed on: it must never be committed.
    pub(super) fn finish(mut self, out: &mut dyn FnMut(&Event)) {
        for (_, mut entry) in std::mem::take(&mut self.pending) {
            Self::flush(&mut entry, out);
        }
    }
}

/// Orders an asynchronous run's events by time (then worker): workers log at their own step
/// counts, so there is no common step to wait for. An event is released once every worker has
/// reported a later time, so the stream is in time order; on the simulator (virtual time) it
/// is identical from run to run.
///
/// A checkpoint cut splits the stream: every event before it is sent before any worker's
/// `Checkpoint` (they were all waiting at the cut), so the first `Checkpoint` releases
/// everything pending, and nothing more is released until the last worker's `Checkpoint` is
/// passed on: the committed metrics then end exactly at the cut, where a resumed run goes on.
pub(super) struct TimeOrder {
    latest: Vec<f64>,
    pending: BTreeMap<(u64, usize, u64), Event>,
    sequence: u64,
    /// Workers that wrote their file of the checkpoint in progress.
    checkpoints: usize,
}

impl TimeOrder {
    pub(super) fn new(workers: usize) -> Self {
        Self {
            latest: vec![0.0; workers],
            pending: BTreeMap::new(),
            sequence: 0,
            checkpoints: 0,
        }
    }

    pub(super) fn push(&mut self, event: Event, out: &mut dyn FnMut(&Event)) {
        let (seconds, worker) = match &event {
            Event::Checkpoint { step, .. } => {
                if self.checkpoints == 0 {
                    std::mem::take(&mut self.pending)
                        .into_values()
                        .for_each(|e| out(&e));
                }
                self.checkpoints += 1;
                if self.checkpoints == self.latest.len() {
                    self.checkpoints = 0;
                    out(&Event::Checkpoint {
                        step: *step,
                        worker: 0,
                    });
                    self.release(out);
                }
                return;
            }
            // Asynchronous runs never reset diverged workers (RunConfig::validate).
            Event::Started { .. } | Event::Diverged { .. } => return out(&event),
            Event::Worker(r) => (r.seconds, r.worker),
            Event::Eval(e) => (e.seconds, e.worker.unwrap_or(0)),
        };
        if let Some(latest) = self.latest.get_mut(worker) {
            *latest = latest.max(seconds);
        }
        // Seconds are ≥ 0, so their bit patterns sort like the numbers.
        let key = (seconds.max(0.0).to_bits(), worker, self.sequence);
        self.sequence += 1;
        self.pending.insert(key, event);
        if self.checkpoints == 0 {
            self.release(out);
        }
    }

    /// Passes on the events every worker has reported a *later* time than: any event still
    /// to come has a time at least its worker's latest, so it sorts after them whatever the
    /// order in which the workers' threads delivered theirs (a tie would not).
    fn release(&mut self, out: &mut dyn FnMut(&Event)) {
        let watermark = self.latest.iter().copied().fold(f64::INFINITY, f64::min);
        while let Some(entry) = self.pending.first_entry() {
            if f64::from_bits(entry.key().0) >= watermark {
                break;
            }
            out(&entry.remove());
        }
    }

    pub(super) fn finish(self, out: &mut dyn FnMut(&Event)) {
        self.pending.into_values().for_each(|e| out(&e));
    }
}
