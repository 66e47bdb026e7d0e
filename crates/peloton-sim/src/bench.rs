//! How fast the simulator simulates: point-to-point messages per host second, against the
//! threads transport moving the same messages in the same run (`peloton bench --sim`).

use std::time::Instant;

use peloton_core::transport::{threads, Communicator};
use peloton_core::Result;

use crate::cluster::ClusterConfig;
use crate::engine::run_workers;

/// One measurement: `messages` delivered in `seconds` of host time.
#[derive(Debug, Clone)]
pub struct Rate {
    pub what: String,
    pub messages: u64,
    pub seconds: f64,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-12)
    }
}

/// Every worker sends `per_worker` one-float messages to its right neighbour, then receives
/// as many from its left one (a toy exchange: no computation, so the cost is the transport's).
fn exchange(comm: &mut dyn Communicator, per_worker: usize) -> Result<()> {
    let (rank, n) = (comm.rank(), comm.size());
    let (right, left) = ((rank + 1) % n, (rank + n - 1) % n);
    let mut one = [0.0f32];
    let mut requests = Vec::with_capacity(per_worker);
    for i in 0..per_worker {
        one[0] = i as f32;
        requests.push(comm.isend(right, 1, &one)?);
    }
    for _ in 0..per_worker {
        comm.recv(left, 1, &mut one)?;
    }
    for r in requests {
        comm.wait_send(r)?;
    }
    Ok(())
}

/// Message rates of the simulator (with and without NIC contention across nodes) and of the
/// threads transport, for `workers` workers sending `per_worker` messages each.
pub fn message_rates(workers: usize, per_worker: usize) -> Result<Vec<Rate>> {
    let total = (workers * per_worker) as u64;
    let mut rates = Vec::new();
    for (what, contention) in [
        ("simulator, 2 workers per node, NIC contention", true),
        ("simulator, 2 workers per node, no contention", false),
    ] {
        let cluster = ClusterConfig {
            workers_per_node: 2,
            contention,
            trace_events: 0,
            ..Default::default()
        };
        let start = Instant::now();
        let (results, _) = run_workers(workers, &cluster, 0, |c| exchange(c, per_worker))?;
        results.into_iter().collect::<Result<Vec<_>>>()?;
        rates.push(Rate {
            what: what.into(),
            messages: total,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let start = Instant::now();
    threads::run_workers(workers, |c| exchange(c, per_worker))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    rates.push(Rate {
        what: "threads transport (baseline)".into(),
        messages: total,
        seconds: start.elapsed().as_secs_f64(),
    });
    Ok(rates)
}

/// The rates as an aligned table with the ratio to the threads transport.
pub fn format_rates(rates: &[Rate]) -> String {
    let baseline = rates.last().map(Rate::per_second).unwrap_or(1.0);
    let mut out = format!(
        "{:<48} {:>10} {:>10} {:>14} {:>8}\n",
        "transport", "messages", "seconds", "messages/s", "ratio"
    );
    for r in rates {
        out += &format!(
            "{:<48} {:>10} {:>10.3} {:>14.0} {:>8.2}\n",
            r.what,
            r.messages,
            r.seconds,
            r.per_second(),
            r.per_second() / baseline
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_measured_for_every_transport() {
        let rates = message_rates(3, 50).unwrap();
        assert_eq!(rates.len(), 3);
        assert!(rates.iter().all(|r| r.messages == 150 && r.seconds > 0.0));
        assert!(format_rates(&rates).contains("threads transport"));
    }
}
