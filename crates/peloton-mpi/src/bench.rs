//! Bandwidth of peloton's MPI transport against bare rsmpi calls in the same processes, and
//! against the threads transport (as many threads in one process) on the same host.
//!
//! Every repetition runs each variant once, back to back, after a barrier; an operation's time
//! is the slowest rank's, and the table reports the median over repetitions. Interleaving the
//! variants keeps a noisy machine from favouring one of them.

use std::os::raw::c_int;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::Communicator as _;
use mpi::traits::*;
use mpi::Count;
use peloton_core::transport::{threads, Communicator, ReduceOp};
use peloton_core::Result;

use crate::MpiComm;

/// One operation at one size.
#[derive(Debug, Clone)]
pub struct Row {
    pub op: &'static str,
    /// Bytes of the result every rank holds (all-gather: all ranks' contributions together).
    pub bytes: usize,
    pub ranks: usize,
    /// Median seconds through peloton's `MpiComm`.
    pub peloton: f64,
    /// Median seconds of the bare rsmpi call (`MPI_Allreduce`, `MPI_Bcast`, `MPI_Allgather`).
    pub bare: f64,
    /// All-reduce only: the same rank-ordered algorithm as bare rsmpi calls
    /// (`MPI_Alltoallv` + local sum + `MPI_Allgatherv`), isolating peloton's own overhead.
    pub bare_ordered: Option<f64>,
    /// Median seconds on the threads transport with as many threads in one process.
    pub threads: Option<f64>,
}

const DONE_TAG: c_int = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f` on every rank after a barrier; returns the slowest rank's seconds.
fn timed(comm: &mut MpiComm, f: &mut dyn FnMut(&mut MpiComm) -> Result<()>) -> Result<f64> {
    comm.raw().barrier();
    let start = Instant::now();
    f(comm)?;
    let mine = start.elapsed().as_secs_f64();
    let mut slowest = 0.0f64;
    comm.raw()
        .all_reduce_into(&mine, &mut slowest, SystemOperation::max());
    Ok(slowest)
}

/// Rank-ordered all-reduce written directly against rsmpi (no checks, no statistics).
fn bare_ordered_all_reduce(comm: &MpiComm, buf: &mut [f32], scratch: &mut Vec<f32>) {
    let raw = comm.raw();
    let p = raw.size() as usize;
    let r = raw.rank() as usize;
    let n = buf.len();
    let displs: Vec<Count> = (0..p).map(|j| (j * n / p) as Count).collect();
    let counts: Vec<Count> = (0..p)
        .map(|j| ((j + 1) * n / p - j * n / p) as Count)
        .collect();
    let mine = counts[r] as usize;
    scratch.resize(p * mine, 0.0);
    let rc = vec![mine as Count; p];
    let rd: Vec<Count> = (0..p).map(|j| (j * mine) as Count).collect();
    raw.all_to_all_varcount_into(
        &Partition::new(&*buf, &counts[..], &displs[..]),
        &mut PartitionMut::new(&mut scratch[..], &rc[..], &rd[..]),
    );
    let (acc, rest) = scratch.split_at_mut(mine);
    for j in 1..p {
        acc.iter_mut()
            .zip(&rest[(j - 1) * mine..j * mine])
            .for_each(|(a, b)| *a += *b);
    }
    raw.all_gather_varcount_into(
        &scratch[..mine],
        &mut PartitionMut::new(buf, &counts[..], &displs[..]),
    );
}

/// Medians of the threads transport for `op` on `p` threads.
fn threads_time(op: &'static str, p: usize, n: usize, repeats: usize) -> Result<f64> {
    let per_thread = threads::run_workers(p, |c| {
        let mut buf = vec![1.0f32; n];
        let send = vec![1.0f32; n / p];
        let mut recv = vec![0.0f32; p * (n / p)];
        let mut times = Vec::with_capacity(repeats);
        for i in 0..=repeats {
            c.barrier()?;
            let start = Instant::now();
            match op {
                "all-reduce" => c.all_reduce(&mut buf, ReduceOp::Sum)?,
                "broadcast" => c.broadcast(&mut buf, 0)?,
                _ => c.all_gather(&send, &mut recv)?,
            }
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    })
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let slowest = (0..repeats)
        .map(|i| per_thread.iter().map(|t| t[i]).fold(0.0, f64::max))
        .collect();
    Ok(median(slowest))
}

/// Measures all-reduce (sum), broadcast (root 0) and all-gather for every size in `sizes`
/// (bytes). Collective over `comm`'s ranks; rows are complete on every rank, the threads
/// column (measured by rank 0 while the others sleep) only on rank 0.
pub fn measure(comm: &mut MpiComm, sizes: &[usize], repeats: usize) -> Result<Vec<Row>> {
    let p = comm.size();
    let mut rows = Vec::new();
    for &bytes in sizes {
        let n = (bytes / 4).max(p);
        let k = n / p;
        let mut buf = vec![1.0f32; n];
        let mut out = vec![0.0f32; n];
        let mut scratch = Vec::new();
        let send = vec![1.0f32; k];
        let mut recv = vec![0.0f32; p * k];
        for op in ["all-reduce", "broadcast", "all-gather"] {
            let (mut ours, mut bare, mut ordered) = (Vec::new(), Vec::new(), Vec::new());
            // Repetition 0 warms up (buffers paged in, MPI connections made) and is dropped.
            for i in 0..=repeats {
                let (a, b, o) = match op {
                    "all-reduce" => {
                        // Ones summed stay exact however often they are reduced.
                        buf.fill(1.0);
                        let a = timed(comm, &mut |c| c.all_reduce(&mut buf, ReduceOp::Sum))?;
                        buf.fill(1.0);
                        let b = timed(comm, &mut |c| {
                            c.raw()
                                .all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
                            Ok(())
                        })?;
                        let o = timed(comm, &mut |c| {
                            bare_ordered_all_reduce(c, &mut buf, &mut scratch);
                            Ok(())
                        })?;
                        (a, b, Some(o))
                    }
                    "broadcast" => {
                        let a = timed(comm, &mut |c| c.broadcast(&mut buf, 0))?;
                        let b = timed(comm, &mut |c| {
                            c.raw().process_at_rank(0).broadcast_into(&mut buf[..]);
                            Ok(())
                        })?;
                        (a, b, None)
                    }
                    _ => {
                        let a = timed(comm, &mut |c| c.all_gather(&send, &mut recv))?;
                        let b = timed(comm, &mut |c| {
                            c.raw().all_gather_into(&send[..], &mut recv[..]);
                            Ok(())
                        })?;
                        (a, b, None)
                    }
                };
                if i > 0 {
                    ours.push(a);
                    bare.push(b);
                    if let Some(o) = o {
                        ordered.push(o);
                    }
                }
            }
            rows.push(Row {
                op,
                bytes: 4 * n,
                ranks: p,
                peloton: median(ours),
                bare: median(bare),
                bare_ordered: (!ordered.is_empty()).then(|| median(ordered)),
                threads: None,
            });
        }
    }
    // The threads transport, in rank 0 alone; the other ranks wait without spinning.
    let raw = comm.raw();
    if comm.rank() == 0 {
        for row in &mut rows {
            row.threads = Some(threads_time(row.op, p, row.bytes / 4, repeats)?);
        }
        for r in 1..p {
            raw.process_at_rank(r as c_int)
                .send_with_tag(&1u8, DONE_TAG);
        }
    } else {
        let root = raw.process_at_rank(0);
        while root.immediate_probe_with_tag(DONE_TAG).is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _: (u8, _) = root.receive_with_tag(DONE_TAG);
    }
    Ok(rows)
}

/// A Markdown table of `rows`: median times as bandwidth (result bytes / time) and the ratio
/// peloton / bare rsmpi (1.00 = no overhead; above 1 = slower).
pub fn format_table(rows: &[Row]) -> String {
    let gbs = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    let mut out = String::from(
        "| op | size | ranks | peloton MPI GB/s | bare rsmpi GB/s | peloton / bare (time) | bare rank-ordered GB/s | peloton / bare rank-ordered | threads GB/s |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let size = if r.bytes >= 1 << 20 {
            format!("{} MiB", r.bytes >> 20)
        } else {
            format!("{} KiB", r.bytes >> 10)
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        out += &format!(
            "| {} | {size} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
            r.op,
            r.ranks,
            gbs(r.bytes, r.peloton),
            gbs(r.bytes, r.bare),
            r.peloton / r.bare,
            opt(r.bare_ordered.map(|s| format!("{:.2}", gbs(r.bytes, s)))),
            opt(r.bare_ordered.map(|s| format!("{:.2}", r.peloton / s))),
            opt(r.threads.map(|s| format!("{:.2}", gbs(r.bytes, s)))),
        );
    }
    out
}

/// One asynchronous service operation, every rank issuing it at once.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub op: String,
    pub ranks: usize,
    /// Mean seconds per operation on MPI, of the slowest rank (every rank is served by rank 0's
    /// service thread).
    pub mpi: f64,
    /// The same on the threads transport with as many threads, measured by rank 0 alone.
    pub threads: Option<f64>,
}

/// `ops` operations of one kind on one communicator; returns this member's seconds.
fn service_loop(c: &mut dyn Communicator, op: &str, ops: usize, n: usize) -> Result<f64> {
    use peloton_core::transport::CounterOp;
    let mut buf = vec![0.0f32; n];
    let delta = vec![0.0f32; n];
    c.barrier()?;
    let start = Instant::now();
    for _ in 0..ops {
        if op == "counter add" {
            c.counter(5, CounterOp::Add(1))?;
        } else {
            c.server_pull(&mut buf)?;
            c.server_push(&delta)?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Measures the asynchronous services: a counter add (the work counter's fetch-and-add), and
/// a parameter-server pull + push of `bytes` (one EASGD exchange), with every rank issuing them
/// at once. Collective over `comm` (the world); starts and stops the services itself.
pub fn measure_services(
    comm: &mut MpiComm,
    bytes: usize,
    repeats: usize,
) -> Result<Vec<ServiceRow>> {
    let p = comm.size();
    let n = (bytes / 4).max(1);
    let kinds = [
        ("counter add".to_string(), 100 * repeats),
        (format!("pull + push {} KiB", (4 * n) >> 10), repeats),
    ];
    comm.start_services()?;
    comm.server_init(&vec![0.0f32; n], 1)?;
    let mut rows = Vec::new();
    for (op, ops) in &kinds {
        // One warm-up pass, dropped.
        service_loop(comm, op, ops / 10 + 1, n)?;
        let mine = service_loop(comm, op, *ops, n)?;
        let mut slowest = 0.0f64;
        comm.raw()
            .all_reduce_into(&mine, &mut slowest, SystemOperation::max());
        rows.push(ServiceRow {
            op: op.clone(),
            ranks: p,
            mpi: slowest / *ops as f64,
            threads: None,
        });
    }
    comm.stop_services()?;
    let raw = comm.raw();
    if comm.rank() == 0 {
        for (row, (op, ops)) in rows.iter_mut().zip(&kinds) {
            let per_thread = threads::run_workers(p, |c| {
                c.server_init(&vec![0.0f32; n], 1)?;
                service_loop(c, op, ops / 10 + 1, n)?;
                service_loop(c, op, *ops, n)
            })
            .into_iter()
            .collect::<Result<Vec<f64>>>()?;
            row.threads = Some(per_thread.into_iter().fold(0.0, f64::max) / *ops as f64);
        }
        for r in 1..p {
            raw.process_at_rank(r as c_int)
                .send_with_tag(&1u8, DONE_TAG);
        }
    } else {
        let root = raw.process_at_rank(0);
        while root.immediate_probe_with_tag(DONE_TAG).is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _: (u8, _) = root.receive_with_tag(DONE_TAG);
    }
    Ok(rows)
}

/// A Markdown table of service rows: microseconds per operation.
pub fn format_service_table(rows: &[ServiceRow]) -> String {
    let mut out =
        String::from("| service op | ranks | MPI µs/op | threads µs/op |\n|---|---|---|---|\n");
    for r in rows {
        out += &format!(
            "| {} | {} | {:.1} | {} |\n",
            r.op,
            r.ranks,
            r.mpi * 1e6,
            r.threads
                .map(|s| format!("{:.1}", s * 1e6))
                .unwrap_or_else(|| "–".into()),
        );
    }
    out
}
