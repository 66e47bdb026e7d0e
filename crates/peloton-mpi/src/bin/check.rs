//! `mpirun -n P peloton-mpi-check`: runs one script of collectives, groups and messages on
//! this rank's MPI communicator and, in-process, on P threads of the threads transport with the
//! same inputs, and requires the same results bit for bit, and the same byte counts. Then
//! checks the errors every rank must see together. Prints `check ok: rank R of P` on success;
//! any failure aborts the job with a line naming the rank.

use peloton_core::transport::{threads, CommStats, Communicator, ReduceOp};
use peloton_core::{Error, Result};
use peloton_mpi::{abort_job, is_shared_error, Mpi};

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
    {
        let mut world = mpi.world();
        if let Err(e) = check(rank, p, &mut world) {
            abort_job(rank, &e.to_string(), 1);
        }
    }
    println!("check ok: rank {rank} of {p}");
}
