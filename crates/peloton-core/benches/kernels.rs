//! Criterion benchmarks of the flat-buffer kernels and of the threads transport's all-reduce,
//! on 16 MiB buffers.
//!
//! * Group `kernels`: `memcpy` (`copy_from_slice`, the baseline), `mix`, `axpy`, `scale`,
//!   `average_into` of 4 inputs and `dist_sq`. The throughput of each is the bytes it touches
//!   per call, counting every buffer streamed once (memcpy 2, mix 3, axpy 3, scale 2,
//!   average_into 5, dist_sq 2 buffers), so criterion's GiB/s compare directly with memcpy.
//! * Group `all_reduce_threads`: one `ReduceOp::Sum` all-reduce on p = 2 and 4 worker threads.
//!   The throughput is the buffer size (NCCL-tests algbw convention; busbw = algbw·2(p−1)/p).
//!   Workers are spawned once per measurement; rank 0 times the back-to-back all-reduces
//!   between two barriers.
//!
//! `peloton bench` (module `peloton_core::bench`) reports the same quantities as ratios to
//! memcpy measured in the same run. Samples are few and short so that the whole run takes well
//! under two minutes on a small machine; use `cargo bench -p peloton-core --bench kernels --
//! --measurement-time 10` for steadier numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use peloton_core::kernels;
use peloton_core::transport::threads;
use peloton_core::transport::{Communicator, ReduceOp};

/// Size of every buffer, in bytes.
const BYTES: usize = 16 << 20;
/// Values in every buffer.
const N: usize = BYTES / 4;

/// Few, short samples: these benchmarks are memory-bound and steady.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Throughput of a call that streams `buffers` buffers of [`BYTES`].
fn streams(buffers: usize) -> Throughput {
    Throughput::Bytes((buffers * BYTES) as u64)
}

fn bench_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernels");
    configure(&mut group);
    // Non-zero fills write every page (zeroed pages could all map to the shared zero page).
    // The kernel arguments keep the values away from subnormals and overflow however many
    // iterations criterion runs.
    let src = vec![1.0f32; N];
    let mut dst = vec![2.0f32; N];
    let mut x = vec![1.0f32; N];
    let y = vec![2.0f32; N];
    let z: Vec<Vec<f32>> = (0..3).map(|i| vec![3.0 + i as f32; N]).collect();

    group.throughput(streams(2));
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            black_box(dst.as_mut_slice()).copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });

    group.throughput(streams(3));
    group.bench_function("mix", |b| {
        b.iter(|| {
            kernels::mix(black_box(&mut x), black_box(&y), black_box(0.25));
            black_box(&mut x);
        })
    });

    group.throughput(streams(3));
    group.bench_function("axpy", |b| {
        b.iter(|| {
            kernels::axpy(black_box(&mut x), black_box(1e-3), black_box(&y));
            black_box(&mut x);
        })
    });

    group.throughput(streams(2));
    group.bench_function("scale", |b| {
        b.iter(|| {
            kernels::scale(black_box(&mut x), black_box(-1.0));
            black_box(&mut x);
        })
    });

    group.throughput(streams(5));
    group.bench_function("average_into_4", |b| {
        let inputs: [&[f32]; 4] = [&y, &z[0], &z[1], &z[2]];
        b.iter(|| {
            kernels::average_into(black_box(&mut x), black_box(&inputs));
            black_box(&mut x);
        })
    });

    group.throughput(streams(2));
    group.bench_function("dist_sq", |b| {
        b.iter(|| black_box(kernels::dist_sq(black_box(&x), black_box(&y))))
    });

    group.finish();
}

/// Spawns `p` workers, and returns rank 0's time for `iters` back-to-back all-reduces of
/// [`N`] values, measured between two barriers (after one untimed warm-up all-reduce).
fn timed_all_reduces(p: usize, iters: u64) -> Duration {
    let results = threads::run_workers(p, |comm| {
        // The fills sum to exactly zero, so after the warm-up every buffer holds written
        // zeros that stay zeros: no overflow and no subnormals however many iterations run.
        let centre = (p - 1) as f32 / 2.0;
        let mut buf = vec![comm.rank() as f32 - centre; N];
        comm.all_reduce(&mut buf, ReduceOp::Sum)?;
        comm.barrier()?;
        let start = Instant::now();
        for _ in 0..iters {
            comm.all_reduce(black_box(&mut buf), ReduceOp::Sum)?;
        }
        comm.barrier()?;
        Ok(start.elapsed())
    });
    let times: Vec<Duration> = results
        .into_iter()
        .map(|r| r.expect("all-reduce on the threads transport failed"))
        .collect();
    times[0]
}

fn bench_all_reduce(c: &mut Criterion) {
    let mut group = c.benchmark_group("all_reduce_threads");
    configure(&mut group);
    group.throughput(Throughput::Bytes(BYTES as u64));
    for p in [2usize, 4] {
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("p={p}")),
            &p,
            |b, &p| b.iter_custom(|iters| timed_all_reduces(p, iters)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_kernels, bench_all_reduce);
criterion_main!(benches);
