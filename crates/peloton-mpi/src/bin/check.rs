//! `mpirun -n P peloton-mpi-check`: runs one script of collectives, groups and messages on
//! this rank's MPI communicator and, in-process, on P threads of the threads transport with the
//! same inputs, and requires the same results bit for bit, and the same byte counts. Then
//! checks the errors every rank must see together, and the asynchronous services (counters,
//! parameter server, any-source polling) served by rank 0. Prints `check ok: rank R of P` on
//! success; any failure aborts the job with a line naming the rank.
//!
//! `peloton-mpi-check watchdog-collective` and `watchdog-receive` (3 ranks or more) test the
//! watchdog instead: with a 1-s limit, rank 2 arrives 30 s late at an all-reduce, or never
//! sends the message rank 1 waits for; the job must end with the watchdog's line naming rank 2.
//! `watchdog-services`: rank 2 ends its use of the asynchronous services 30 s late, rank 0's
//! wait for it must time out the same way.

use peloton_core::algorithms::async_easgd::AsyncEasgd;
use peloton_core::algorithms::asynchronous::DONE;
use peloton_core::algorithms::{Algorithm, AsyncAlgorithm, AsyncEasgdConfig, StepContext};
use peloton_core::transport::{threads, CommStats, Communicator, CounterOp, ReduceOp};
use peloton_core::{Error, Result};
use peloton_mpi::{abort_job, is_shared_error, Mpi, MpiComm};
use std::time::Duration;

/// Values whose sums depend on the order of summation (mixed magnitudes and signs).
fn input(rank: usize, n: usize, salt: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut x = (rank as u64 + 1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add((i as u64) << 20)
                .wrapping_add(salt);
            x ^= x >> 29;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 32;
            let mantissa = (x % 2001) as f32 / 1000.0 - 1.0;
            mantissa * 10f32.powi((x >> 12) as i32 % 9 - 4)
        })
        .collect()
}

fn bits(out: &mut Vec<u64>, values: &[f32]) {
    out.extend(values.iter().map(|v| v.to_bits() as u64));
}

fn stats(out: &mut Vec<u64>, s: CommStats) {
    out.extend([s.bytes_sent, s.bytes_received, s.operations]);
}

/// The script: every operation's result (as bit patterns) and the counters after it.
fn script(c: &mut dyn Communicator) -> Result<Vec<u64>> {
    let (r, p) = (c.rank(), c.size());
    let mut out = Vec::new();
    for (k, n) in [1usize, 3, 7, 1000, 4099].into_iter().enumerate() {
        let salt = k as u64;
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
            let mut buf = input(r, n, salt);
            if op == ReduceOp::Max && r == 1 {
                buf[0] = f32::NAN;
            }
            c.all_reduce(&mut buf, op)?;
            bits(&mut out, &buf);
            for root in 0..p {
                let mut buf = input(r, n, salt + 7);
                c.reduce(&mut buf, root, op)?;
                bits(&mut out, &buf);
            }
        }
        for root in 0..p {
            let mut buf = input(r, n, salt + 11);
            c.broadcast(&mut buf, root)?;
            bits(&mut out, &buf);
        }
        let send = input(r, n, salt + 13);
        let mut recv = vec![0.0f32; p * n];
        c.all_gather(&send, &mut recv)?;
        bits(&mut out, &recv);
        let mut recv = vec![0.0f64; p];
        c.all_gather_f64(&[r as f64 * 0.1], &mut recv)?;
        out.extend(recv.iter().map(|v| v.to_bits()));
        stats(&mut out, c.stats());
    }
    c.barrier()?;

    // Groups: odd and even ranks, in reverse order.
    let mut g = c.split(r % 2, p - r)?;
    out.extend([g.rank() as u64, g.size() as u64]);
    let mut buf = input(r, 1001, 99);
    g.all_reduce(&mut buf, ReduceOp::Sum)?;
    bits(&mut out, &buf);
    g.broadcast(&mut buf, g.size() - 1)?;
    bits(&mut out, &buf);
    stats(&mut out, c.stats());

    // Messages: a ring, blocking and non-blocking; one tag keeps its order.
    let next = (r + 1) % p;
    let prev = (r + p - 1) % p;
    for i in 0..3 {
        c.send(next, 5, &input(r, 10 + i, 40 + i as u64))?;
    }
    for i in 0..3 {
        let mut buf = vec![0.0f32; 10 + i];
        c.recv(prev, 5, &mut buf)?;
        bits(&mut out, &buf);
    }
    let big = input(r, 300_000, 77);
    let s = c.isend(next, 6, &big)?;
    let q = c.irecv(prev, 6, big.len())?;
    let mut buf = vec![0.0f32; big.len()];
    c.wait_recv(q, &mut buf)?;
    c.wait_send(s)?;
    bits(&mut out, &buf[..100]);
    // A message to oneself is buffered too.
    c.send(r, 8, &[r as f32])?;
    let mut me = [0.0f32];
    c.recv(r, 8, &mut me)?;
    bits(&mut out, &me);
    stats(&mut out, c.stats());
    c.barrier()?;
    Ok(out)
}

fn check(rank: usize, p: usize, world: &mut dyn Communicator) -> Result<()> {
    let mpi_out = script(world)?;
    let threads_out = threads::run_workers(p, |c| script(c))
        .into_iter()
        .nth(rank)
        .expect("one result per thread")?;
    if mpi_out != threads_out {
        let first = mpi_out
            .iter()
            .zip(&threads_out)
            .position(|(a, b)| a != b)
            .unwrap_or(mpi_out.len().min(threads_out.len()));
        return Err(Error::Transport(format!(
            "MPI and threads results differ at value {first} of {} / {}",
            mpi_out.len(),
            threads_out.len()
        )));
    }

    // Errors every rank sees together (a group of one has nobody to disagree with).
    let mut buf = vec![1.0f32; 10 + usize::from(rank == 0)];
    match world.all_reduce(&mut buf, ReduceOp::Sum) {
        Err(e) if is_shared_error(&e) => {}
        Ok(()) if p == 1 => {}
        other => {
            return Err(Error::Transport(format!(
                "a length mismatch gave {other:?}"
            )))
        }
    }
    // A message of the wrong length is an error on the receiver, and is consumed.
    if p >= 2 {
        if rank == 0 {
            world.send(1, 3, &[1.0, 2.0, 3.0])?;
            world.send(1, 3, &[4.0])?;
        } else if rank == 1 {
            let mut two = [0.0f32; 2];
            if world.recv(0, 3, &mut two).is_ok() {
                return Err(Error::Transport("a short receive succeeded".into()));
            }
            let mut one = [0.0f32; 1];
            world.recv(0, 3, &mut one)?;
            if one[0] != 4.0 {
                return Err(Error::Transport(format!("got {one:?} after the error")));
            }
        }
    }
    world.barrier()
}

fn fail(message: String) -> Result<()> {
    Err(Error::Transport(message))
}

/// Counter operations per rank in the linearizability check.
const ADDS: usize = 1000;

/// Counters are linearizable: N ranks adding 1 concurrently, `ADDS` times each, end at
/// N·ADDS, and the values the adds returned are 0 … N·ADDS − 1, each exactly once (no two adds
/// saw the same value), increasing on every rank. `SetMin` keeps the smallest request.
fn check_counters(world: &mut MpiComm) -> Result<()> {
    let p = world.size();
    let mut seen = Vec::with_capacity(ADDS);
    for _ in 0..ADDS {
        seen.push(world.counter(3, CounterOp::Add(1))? as f64);
    }
    if seen.windows(2).any(|w| w[0] >= w[1]) {
        return fail("one rank's adds returned values that do not increase".into());
    }
    world.counter(4, CounterOp::SetMin(10 + world.rank() as u64))?;
    world.barrier()?;
    let total = world.counter(3, CounterOp::Get)?;
    if total != (p * ADDS) as u64 {
        return fail(format!(
            "{p} ranks added 1 {ADDS} times each: counter holds {total}"
        ));
    }
    let min = world.counter(4, CounterOp::Get)?;
    if min != 10 {
        return fail(format!("SetMin kept {min}, not the smallest request 10"));
    }
    let mut all = vec![0.0f64; p * ADDS];
    world.all_gather_f64(&seen, &mut all)?;
    all.sort_by(f64::total_cmp);
    if all.iter().enumerate().any(|(i, v)| *v != i as f64) {
        return fail("the adds did not return every value 0 … N·ADDS − 1 exactly once".into());
    }
    world.barrier()
}

/// Exchanges of asynchronous EASGD with a synthetic gradient (τ = 1, 3 shards, every rank
/// pushing concurrently). Returns the sum of the δ this rank pushed (in f64) and the center it
/// read at the end.
fn easgd_worker(world: &mut MpiComm, steps: u64, init: &[f32]) -> Result<(Vec<f64>, Vec<f32>)> {
    let config = AsyncEasgdConfig {
        tau: Some(1),
        servers: Some(3),
        ..Default::default()
    };
    let rank = world.rank();
    let mut algo: AsyncEasgd = config.init(world.size(), init.len());
    let mut params: Vec<f32> = init.iter().map(|x| x + rank as f32).collect();
    algo.setup(world, &mut params)?;
    let mut pushed = vec![0.0f64; init.len()];
    let mut grad = vec![0.0f32; init.len()];
    for step in 0..steps {
        grad.iter_mut()
            .enumerate()
            .for_each(|(i, g)| *g = ((step as usize * 7 + i * 3 + rank) % 11) as f32 * 0.01);
        let mut ctx = StepContext {
            comm: &mut *world,
            params: &mut params,
            grad: &mut grad,
            step,
            loss: 1.0,
            metric: 1.0,
            lr: 0.1,
        };
        algo.before_step(&mut ctx)?;
        pushed
            .iter_mut()
            .zip(algo.last_push())
            .for_each(|(s, d)| *s += *d as f64);
        ctx.params
            .iter_mut()
            .zip(ctx.grad.iter())
            .for_each(|(x, g)| *x -= 0.1 * g);
        algo.after_step(&mut ctx)?;
    }
    world.counter(DONE, CounterOp::Add(1))?;
    algo.finish(world, &mut params)?;
    Ok((
        pushed,
        algo.observe().center.expect("easgd has a center").to_vec(),
    ))
}

/// No lost update: the final center equals its initial value (one rank's parameters: any rank
/// may initialize the server first) plus every δ pushed by every rank, within 1e-4 (the server
/// adds in f32, the reference sum is f64), every rank reads the same center, and the server's
/// version counts every push. A misuse (a pull of the wrong length) is an error on the caller
/// only and the server goes on.
fn check_parameter_server(world: &mut MpiComm) -> Result<()> {
    const STEPS: u64 = 25;
    let p = world.size();
    let init: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
    let (pushed, center) = easgd_worker(world, STEPS, &init)?;
    let mut all = vec![0.0f64; p * init.len()];
    world.all_gather_f64(&pushed, &mut all)?;
    let total: Vec<f64> = (0..init.len())
        .map(|i| (0..p).map(|r| all[r * init.len() + i]).sum())
        .collect();
    let fits = (0..p).any(|first| {
        (0..init.len()).all(|i| {
            let expected = init[i] as f64 + first as f64 + total[i];
            (center[i] as f64 - expected).abs() < 1e-4
        })
    });
    if !fits {
        return fail(format!(
            "center {center:?} is not the initial value plus every δ {total:?}"
        ));
    }
    let bits: Vec<f64> = center.iter().map(|v| v.to_bits() as f64).collect();
    let mut every = vec![0.0f64; p * bits.len()];
    world.all_gather_f64(&bits, &mut every)?;
    if every.chunks(bits.len()).any(|c| c != bits) {
        return fail("the ranks read different final centers".into());
    }
    let mut buf = vec![0.0f32; init.len()];
    let version = world.server_pull(&mut buf)?;
    if version != p as u64 * STEPS {
        return fail(format!(
            "the server's version is {version} after {} pushes",
            p as u64 * STEPS
        ));
    }
    let mut wrong = vec![0.0f32; init.len() + 1];
    match world.server_pull(&mut wrong) {
        Err(e) if e.to_string().contains("holds 37 values") => {}
        other => return fail(format!("a pull of the wrong length gave {other:?}")),
    }
    world.barrier()
}

/// Any-source polling sees a message from the right sender with its length, under a tag above
/// the standard's minimum MPI_TAG_UB (AD-PSGD's tags are).
fn check_polling(world: &mut MpiComm) -> Result<()> {
    const TAG: u32 = 0xAD_0009;
    let (r, p) = (world.rank(), world.size());
    let from = (r + p - 1) % p;
    world.send((r + 1) % p, TAG, &[r as f32; 5])?;
    let (src, len) = loop {
        if let Some(found) = world.probe_any(TAG)? {
            break found;
        }
        world.pause()?;
    };
    if (src, len) != (from, 5) {
        return fail(format!(
            "probe_any saw ({src}, {len}), expected ({from}, 5)"
        ));
    }
    let mut got = [0.0f32; 5];
    world.recv(src, TAG, &mut got)?;
    if got != [from as f32; 5] || world.probe_any(TAG)?.is_some() {
        return fail(format!(
            "received {got:?} from {src}, or a message too many"
        ));
    }
    world.barrier()
}

fn check_services(world: &mut MpiComm) -> Result<()> {
    match world.counter(0, CounterOp::Get) {
        Err(e) if e.to_string().contains("start_services") => {}
        other => return fail(format!("a counter without services gave {other:?}")),
    }
    world.start_services()?;
    check_counters(world)?;
    check_parameter_server(world)?;
    check_polling(world)?;
    world.stop_services()
}

/// The watchdog scenarios (see the crate documentation); returns the error that ends the job.
fn watchdog(rank: usize, world: &mut MpiComm, mode: &str) -> Error {
    world.set_watchdog(Some(Duration::from_secs(1)));
    let late = Duration::from_secs(30);
    let result = match mode {
        "watchdog-collective" => {
            // Everybody first meets once, so that the late arrival is the only delay.
            world.barrier().and_then(|()| {
                if rank == 2 {
                    std::thread::sleep(late);
                }
                world.all_reduce(&mut [1.0; 16], ReduceOp::Sum)
            })
        }
        "watchdog-receive" => world.barrier().and_then(|()| {
            if rank == 1 {
                world.recv(2, 5, &mut [0.0; 4])
            } else {
                // Nobody else waits for anything rank 1 could time out first.
                std::thread::sleep(late);
                Ok(())
            }
        }),
        "watchdog-services" => world.start_services().and_then(|()| {
            if rank == 2 {
                std::thread::sleep(late);
            }
            world.stop_services()?;
            if rank != 0 {
                // Only rank 0 waits (for every rank's end of the services).
                std::thread::sleep(late);
            }
            Ok(())
        }),
        other => Err(Error::Config(format!("unknown mode {other}"))),
    };
    match result {
        Err(e) => e,
        Ok(()) => Error::Transport("the watchdog did not fire".into()),
    }
}

fn main() {
    let mpi = match Mpi::init() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let rank = mpi.world_rank();
    let p = mpi.world_size();
    if let Some(mode) = std::env::args().nth(1) {
        let mut world = mpi.world();
        let e = watchdog(rank, &mut world, &mode);
        abort_job(rank, &e.to_string(), 1);
    }
    {
        let mut world = mpi.world();
        // Generous: the script must never wait this long, but splits inherit the limit and
        // every wait runs through the watchdog's loops.
        world.set_watchdog(Some(Duration::from_secs(120)));
        if let Err(e) = check(rank, p, &mut world).and_then(|()| check_services(&mut world)) {
            abort_job(rank, &e.to_string(), 1);
        }
    }
    println!("check ok: rank {rank} of {p}");
}
