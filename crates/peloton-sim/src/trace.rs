//! A Chrome / Perfetto trace of a simulated run (`trace.json`; open it at ui.perfetto.dev or
//! chrome://tracing): one process per node, one thread per worker, spans for compute,
//! collectives and waits, instants for sends, all in virtual microseconds.

use serde_json::{json, Value};

/// Events collected during a run, up to a cap per worker (a long run's trace would not fit in
/// memory). Workers record concurrently, so events are sorted by (time, worker, order within
/// the worker) when written, and the cap applies per worker: the file is the same on every run.
#[derive(Debug)]
pub struct Trace {
    events: Vec<Event>,
    per_worker: Vec<usize>,
    cap_per_worker: usize,
    dropped: u64,
}

#[derive(Debug)]
struct Event {
    worker: usize,
    /// Index of the event among its worker's events.
    order: usize,
    name: &'static str,
    /// Virtual seconds.
    start: f64,
    /// None for an instant.
    duration: Option<f64>,
    /// (peer, bytes) of a send.
    message: Option<(usize, usize)>,
}

impl Trace {
    /// At most `cap` events over `workers` workers.
    pub fn new(cap: usize, workers: usize) -> Self {
        Self {
            events: Vec::new(),
            per_worker: vec![0; workers],
            cap_per_worker: cap / workers.max(1),
            dropped: 0,
        }
    }

    fn push(&mut self, mut event: Event) {
        let count = &mut self.per_worker[event.worker];
        if *count < self.cap_per_worker {
            event.order = *count;
            *count += 1;
            self.events.push(event);
        } else {
            self.dropped += 1;
        }
    }

    /// A span of `duration` virtual seconds from `start` on `worker`.
    pub fn span(&mut self, worker: usize, name: &'static str, start: f64, duration: f64) {
        self.push(Event {
            worker,
            order: 0,
            name,
            start,
            duration: Some(duration),
            message: None,
        });
    }

    /// An instant: `worker` sent `bytes` to `peer` at `time`.
    pub fn instant(
        &mut self,
        worker: usize,
        name: &'static str,
        time: f64,
        peer: usize,
        bytes: usize,
    ) {
        self.push(Event {
            worker,
            order: 0,
            name,
            start: time,
            duration: None,
            message: Some((peer, bytes)),
        });
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events that did not fit under the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The trace in the Chrome trace-event JSON format, with process and thread names.
    pub fn to_json(&self, workers: usize, node_of: impl Fn(usize) -> usize) -> String {
        let micros = |s: f64| (s * 1e6 * 1000.0).round() / 1000.0;
        let mut out: Vec<Value> = Vec::with_capacity(self.events.len() + 2 * workers);
        let mut nodes: Vec<usize> = (0..workers).map(&node_of).collect();
        nodes.dedup();
        for node in nodes {
            out.push(json!({"name": "process_name", "ph": "M", "pid": node, "args": {"name": format!("node {node}")}}));
        }
        for w in 0..workers {
            out.push(json!({"name": "thread_name", "ph": "M", "pid": node_of(w), "tid": w, "args": {"name": format!("worker {w}")}}));
        }
        let mut sorted: Vec<&Event> = self.events.iter().collect();
        sorted.sort_by(|a, b| {
            a.start
                .total_cmp(&b.start)
                .then(a.worker.cmp(&b.worker))
                .then(a.order.cmp(&b.order))
        });
        for e in sorted {
            let mut v = json!({
                "name": e.name,
                "pid": node_of(e.worker),
                "tid": e.worker,
                "ts": micros(e.start),
            });
            match e.duration {
                Some(d) => {
                    v["ph"] = json!("X");
                    v["dur"] = json!(micros(d));
                }
                None => {
                    v["ph"] = json!("i");
                    v["s"] = json!("t");
                }
            }
            if let Some((peer, bytes)) = e.message {
                v["args"] = json!({"to": peer, "bytes": bytes});
            }
            out.push(v);
        }
        json!({"traceEvents": out, "displayTimeUnit": "ms", "otherData": {"clock": "virtual", "dropped_events": self.dropped}})
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_is_chrome_json_with_a_cap() {
        // One event per worker.
        let mut t = Trace::new(2, 2);
        t.span(1, "compute", 0.5, 0.25);
        t.instant(0, "send", 0.75, 1, 400);
        t.span(0, "compute", 1.0, 1.0);
        assert_eq!((t.len(), t.dropped()), (2, 1));
        let v: Value = serde_json::from_str(&t.to_json(2, |w| w / 2)).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        // 1 process name + 2 thread names + 2 events.
        assert_eq!(events.len(), 5);
        let span = events.iter().find(|e| e["ph"] == "X").unwrap();
        assert_eq!(span["ts"], 500000.0);
        assert_eq!(span["dur"], 250000.0);
        assert_eq!(span["tid"], 1);
        let send = events.iter().find(|e| e["ph"] == "i").unwrap();
        assert_eq!(send["args"]["bytes"], 400);
        assert_eq!(v["otherData"]["dropped_events"], 1);
    }
}
