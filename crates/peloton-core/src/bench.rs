//! Bandwidth measurements behind `peloton bench`.
//!
//! The kernels of [`crate::kernels`] and the all-reduce of the threads transport are
//! memory-bound, so each is reported as an effective bandwidth and as a ratio to
//! `copy_from_slice` of the same size, measured in the same run. The ratio says how close an
//! operation comes to what the memory system delivers for a plain copy on this machine, and it
//! is far more stable across machines than the absolute numbers.
//!
//! ## Conventions
//! * Every buffer holds `bytes / 4` `f32` values; [`BenchRow::bytes`] is the size of one
//!   buffer (rounded down to a whole number of `f32`).
//! * [`BenchRow::seconds`] is the median of `repeats` timed calls that follow one untimed
//!   warm-up call (which also faults the pages in). Times are floored at 1 ns so that
//!   bandwidths stay finite.
//! * [`kernels`]: bandwidth = bytes touched / time, where every buffer streamed through memory
//!   counts once (`mix` reads `x`, reads `y` and writes `x`: three streams). The memcpy
//!   baseline touches two streams (read the source, write the destination).
//! * [`all_reduce`]: bandwidth is the *algorithm bandwidth* of NCCL-tests, algbw = buffer
//!   bytes / time, and the memcpy baseline of that table follows the same convention (buffer
//!   bytes / time, not 2·bytes / time), so the ratio is simply t_memcpy / t_all-reduce. Each
//!   member of the threads transport moves about 2·bytes per all-reduce, like one memcpy, so
//!   the ideal ratio is about 1 when every worker has a core of its own. The bus bandwidth
//!   busbw = algbw·2(p−1)/p (NCCL-tests convention) is given in the note.
//! * GB/s means 10⁹ bytes per second; MiB means 2²⁰ bytes.

use std::hint::black_box;
use std::time::Instant;

use crate::kernels;
use crate::transport::threads;
use crate::transport::{Communicator, ReduceOp};

/// One line of a benchmark table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// What was measured, e.g. `"mix"` or `"all-reduce threads p=4"`.
    pub name: String,
    /// Size of one buffer in bytes.
    pub bytes: usize,
    /// Median time of one call, in seconds.
    pub seconds: f64,
    /// Effective bandwidth in GB/s (10⁹ bytes per second): bytes touched / `seconds`.
    pub gbps: f64,
    /// `gbps` divided by the bandwidth of the memcpy baseline measured in the same run
    /// (exactly 1 for the baseline row itself).
    pub ratio: f64,
    /// How the bytes were counted, and anything else needed to read the row.
    pub note: String,
}

/// Name of the baseline row that starts both tables.
const BASELINE: &str = "memcpy (copy_from_slice)";

/// The memcpy row both tables start with (ratio 1 by definition).
fn baseline_row(bytes: usize, seconds: f64, gbps: f64, note: &str) -> BenchRow {
    BenchRow {
        name: BASELINE.into(),
        bytes,
        seconds,
        gbps,
        ratio: 1.0,
        note: note.into(),
    }
}

/// Shortest time a measurement reports, in seconds (keeps bandwidths finite).
const MIN_SECONDS: f64 = 1e-9;

/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// Measures the kernels of [`crate::kernels`] on buffers of `bytes` bytes (`bytes / 4` `f32`
/// values each).
///
/// Returns the baseline row `"memcpy (copy_from_slice)"` first, then `mix`, `axpy`, `scale`,
/// `average_into` of 4 inputs and `dist_sq`. Each row's time is the median of `repeats`
/// (at least 1) calls after one warm-up call; its bandwidth counts every buffer streamed
/// (see the module documentation) and its ratio is relative to the memcpy row.
///
/// Allocates five buffers of `bytes` bytes.
///
/// # Panics
/// When `bytes < 4` (a buffer needs at least one `f32`).
pub fn kernels(bytes: usize, repeats: usize) -> Vec<BenchRow> {
    let n = elements(bytes);
    let size = 4 * n;
    let base_seconds = time_memcpy(n, repeats);
    let base_gbps = gbps(2 * size, base_seconds);
    let mut rows = vec![baseline_row(
        size,
        base_seconds,
        base_gbps,
        "2 streams: read src, write dst",
    )];
    let mut push = |name: &str, streams: usize, seconds: f64, what: &str| {
        let g = gbps(streams * size, seconds);
        rows.push(BenchRow {
            name: name.into(),
            bytes: size,
            seconds,
            gbps: g,
            ratio: g / base_gbps,
            note: format!("{streams} streams: {what}"),
        });
    };

    // Non-zero fills write every page (a zeroed allocation could stay mapped to the shared
    // zero page and make reads look faster than memory). The arguments below keep the values
    // well away from subnormals and overflow however often the kernels run.
    let mut x = vec![1.0f32; n];
    let y = vec![2.0f32; n];
    let z: Vec<Vec<f32>> = (0..3).map(|i| vec![3.0 + i as f32; n]).collect();

    let t = median_seconds(repeats, || {
        kernels::mix(black_box(&mut x), black_box(&y), black_box(0.25));
        black_box(&mut x);
    });
    push("mix", 3, t, "read x, read y, write x (c = 0.25)");

    let t = median_seconds(repeats, || {
        kernels::axpy(black_box(&mut x), black_box(1e-3), black_box(&y));
        black_box(&mut x);
    });
    push("axpy", 3, t, "read acc, read y, write acc");

    let t = median_seconds(repeats, || {
        kernels::scale(black_box(&mut x), black_box(-1.0));
        black_box(&mut x);
    });
    push("scale", 2, t, "read x, write x");

    let t = median_seconds(repeats, || {
        let inputs: [&[f32]; 4] = [&y, &z[0], &z[1], &z[2]];
        kernels::average_into(black_box(&mut x), black_box(&inputs));
        black_box(&mut x);
    });
    push("average_into (4 inputs)", 5, t, "read 4 inputs, write out");

    let t = median_seconds(repeats, || {
        black_box(kernels::dist_sq(black_box(&x), black_box(&y)));
    });
    push("dist_sq", 2, t, "read x, read y");

    rows
}

/// Measures one all-reduce ([`ReduceOp::Sum`]) of a buffer of `bytes` bytes on the threads
/// transport, for each worker count in `workers`.
///
/// Returns the baseline row `"memcpy (copy_from_slice)"` of the same size first, then one row
/// `"all-reduce threads p={p}"` per entry of `workers`, in order. Bandwidths follow the
/// algbw convention (buffer bytes / time, for the baseline too); the note gives the busbw.
///
/// Timing: the `p` workers are spawned once per worker count and run one warm-up all-reduce.
/// Then, `repeats` times (at least once), every worker waits at a barrier and times its own
/// `all_reduce` call; the time of an iteration is the maximum over the workers (the slowest
/// member defines when the collective is done), and the row reports the median over the
/// iterations.
///
/// Allocates `p + 2` buffers of `bytes` bytes at a time.
///
/// # Panics
/// When `bytes < 4`, when a worker count is 0, or if the threads transport fails (which
/// would be a bug: every worker passes the same length).
pub fn all_reduce(bytes: usize, workers: &[usize], repeats: usize) -> Vec<BenchRow> {
    let n = elements(bytes);
    let size = 4 * n;
    let repeats = repeats.max(1);
    let base_seconds = time_memcpy(n, repeats);
    let base_gbps = gbps(size, base_seconds);
    let mut rows = vec![baseline_row(
        size,
        base_seconds,
        base_gbps,
        "algbw convention: buffer bytes / time (a copy moves 2× that)",
    )];
    for &p in workers {
        assert!(p >= 1, "bench: an all-reduce needs at least one worker");
        let seconds = time_all_reduce(p, n, repeats);
        let algbw = gbps(size, seconds);
        let busbw = algbw * 2.0 * (p - 1) as f64 / p as f64;
        rows.push(BenchRow {
            name: format!("all-reduce threads p={p}"),
            bytes: size,
            seconds,
            gbps: algbw,
            ratio: algbw / base_gbps,
            note: format!(
                "busbw {busbw:.2} GB/s = algbw·2(p−1)/p; time: median over {repeats} iterations \
                 of the slowest worker's call, each started after a barrier"
            ),
        });
    }
    rows
}

/// Formats rows as an aligned plain-text table with a header line and a rule: name, buffer
/// size in MiB, time per call, GB/s, ratio to the baseline, and the note. Ends with a newline.
pub fn format_table(rows: &[BenchRow]) -> String {
    const HEADER: [&str; 6] = ["name", "size MiB", "time", "GB/s", "ratio", "note"];
    // Name and note read left-aligned; the numbers right-aligned.
    const RIGHT: [bool; 6] = [false, true, true, true, true, false];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                format!("{:.2}", r.bytes as f64 / MIB),
                format_seconds(r.seconds),
                format!("{:.2}", r.gbps),
                format!("{:.3}", r.ratio),
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = widths.map(|w| "-".repeat(w));
    let mut out = String::new();
    let lines = std::iter::once(HEADER.map(String::from))
        .chain(std::iter::once(rule))
        .chain(cells);
    for line in lines {
        let padded: Vec<String> = line
            .iter()
            .zip(widths)
            .zip(RIGHT)
            .map(|((cell, w), right)| {
                if right {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A duration in seconds with a unit that keeps 1–3 integer digits, e.g. `"1.25 ms"`.
fn format_seconds(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.1} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.2} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Number of `f32` values in a buffer of `bytes` bytes.
///
/// # Panics
/// When `bytes < 4`.
fn elements(bytes: usize) -> usize {
    assert!(
        bytes >= 4,
        "bench: a buffer needs at least 4 bytes (one f32), got {bytes}"
    );
    bytes / 4
}

/// Bandwidth in GB/s of moving `bytes` bytes in `seconds`.
fn gbps(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

/// Median time of `copy_from_slice` between two buffers of `n` values.
fn time_memcpy(n: usize, repeats: usize) -> f64 {
    let src = vec![1.0f32; n];
    let mut dst = vec![2.0f32; n];
    median_seconds(repeats, || {
        black_box(dst.as_mut_slice()).copy_from_slice(black_box(&src));
        black_box(&mut dst);
    })
}

/// Median over `repeats` iterations of the slowest worker's time for one all-reduce of `n`
/// values on `p` threads (see [`all_reduce`]).
fn time_all_reduce(p: usize, n: usize, repeats: usize) -> f64 {
    let results = threads::run_workers(p, |comm| {
        // The fills sum to exactly zero (r − (p−1)/2 over r < p, in halves), so after the
        // warm-up every buffer holds zeros, written (no zero-page reads) and stable: repeated
        // sums neither grow to infinity nor fall into subnormals.
        let centre = (p - 1) as f32 / 2.0;
        let mut buf = vec![comm.rank() as f32 - centre; n];
        comm.all_reduce(&mut buf, ReduceOp::Sum)?;
        let mut mine = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            comm.barrier()?;
            let start = Instant::now();
            comm.all_reduce(black_box(&mut buf), ReduceOp::Sum)?;
            mine.push(start.elapsed().as_secs_f64());
        }
        let mut all = vec![0.0f64; p * repeats];
        comm.all_gather_f64(&mine, &mut all)?;
        Ok(all)
    });
    // Every worker gathered the same table; check them all, keep rank 0's.
    let mut tables = results.into_iter().enumerate().map(|(rank, r)| {
        r.unwrap_or_else(|e| panic!("bench: all-reduce on {p} threads, worker {rank}: {e}"))
    });
    let all = tables
        .next()
        .expect("run_workers returns one result per worker");
    tables.for_each(drop);
    let mut per_iteration: Vec<f64> = (0..repeats)
        .map(|i| (0..p).map(|w| all[w * repeats + i]).fold(0.0, f64::max))
        .collect();
    median(&mut per_iteration)
}

/// Median of `repeats` (at least one) timings of `f` in seconds, after one untimed warm-up
/// call.
fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// Median of a non-empty slice (the mean of the two middle values for an even length),
/// floored at [`MIN_SECONDS`]. Sorts the slice.
fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of no values");
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    let mid = if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    };
    mid.max(MIN_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: usize = 64 * 1024;

    /// Structure only: timings are never compared with thresholds.
    fn check_rows(rows: &[BenchRow], names: &[&str]) {
        let got: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(got, names);
        assert_eq!(rows[0].ratio, 1.0);
        for r in rows {
            assert_eq!(r.bytes, SMALL, "{r:?}");
            for v in [r.seconds, r.gbps, r.ratio] {
                assert!(v.is_finite() && v > 0.0, "{r:?}");
            }
            assert!(!r.note.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn kernels_report_the_baseline_then_every_kernel() {
        let rows = kernels(SMALL, 3);
        check_rows(
            &rows,
            &[
                BASELINE,
                "mix",
                "axpy",
                "scale",
                "average_into (4 inputs)",
                "dist_sq",
            ],
        );
        // Two streams for the copy: 2·64 KiB per call.
        let r = &rows[0];
        assert!((r.gbps - 2.0 * SMALL as f64 / r.seconds / 1e9).abs() <= 1e-9 * r.gbps);
        assert_eq!(format_table(&rows).lines().count(), 2 + rows.len());
    }

    #[test]
    fn all_reduce_reports_the_baseline_then_one_row_per_worker_count() {
        let rows = all_reduce(SMALL, &[2], 3);
        check_rows(&rows, &[BASELINE, "all-reduce threads p=2"]);
        // algbw convention: buffer bytes per call, for the baseline too.
        let r = &rows[1];
        assert!((r.gbps - SMALL as f64 / r.seconds / 1e9).abs() <= 1e-9 * r.gbps);
        assert!(r.note.starts_with("busbw "), "{}", r.note);
    }

    #[test]
    fn odd_sizes_round_down_to_whole_values() {
        let rows = all_reduce(4 * 100 + 3, &[1, 3], 1);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.bytes == 400));
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [0.0]), MIN_SECONDS);
    }

    #[test]
    fn table_columns_line_up() {
        let row = |name: &str, bytes, seconds, gbps, ratio, note: &str| BenchRow {
            name: name.into(),
            bytes,
            seconds,
            gbps,
            ratio,
            note: note.into(),
        };
        let rows = [
            row(BASELINE, 1 << 24, 1.5e-3, 22.369, 1.0, "2 streams"),
            row("mix", 65536, 2.5e-6, 78.6, 3.5142, "µ·−"),
        ];
        let expected = "\
name                      size MiB     time   GB/s  ratio  note
------------------------  --------  -------  -----  -----  ---------
memcpy (copy_from_slice)     16.00  1.50 ms  22.37  1.000  2 streams
mix                           0.06  2.50 µs  78.60  3.514  µ·−
";
        assert_eq!(format_table(&rows), expected);
        assert_eq!(
            format_table(&[]),
            "name  size MiB  time  GB/s  ratio  note\n----  --------  ----  ----  -----  ----\n"
        );
    }

    /// `cargo test --release -p peloton-core --lib bench::tests::print_report -- --ignored
    /// --nocapture` prints the tables `peloton bench` shows by default.
    #[test]
    #[ignore]
    fn print_report() {
        let mib16 = 16 << 20;
        println!("{}", format_table(&kernels(mib16, 15)));
        println!("{}", format_table(&all_reduce(mib16, &[2, 3, 4], 10)));
    }
}
