//! Runs `peloton-mpi-check` (every collective, group and message against the threads
//! transport, bit for bit; then the asynchronous services: linearizable counters, no lost
//! parameter-server update, any-source polling) under `mpirun` with 1 to 4 ranks. Skipped, with
//! a note, when `mpirun` is not installed.
#![cfg(feature = "mpi")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn have_mpirun() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: mpirun not found: skipping (apt-get install openmpi-bin libopenmpi-dev)");
    }
    found
}

#[test]
fn the_mpi_transport_matches_the_threads_transport() {
    if !have_mpirun() {
        return;
    }
    for n in [1usize, 2, 3, 4] {
        let mut cmd = Command::new("timeout");
        cmd.args(["120", "mpirun", "-n", &n.to_string()]);
        // Open MPI refuses more ranks than cores unless told to oversubscribe.
        if n > std::thread::available_parallelism().map_or(1, |c| c.get()) {
            cmd.arg("--oversubscribe");
        }
        let out = cmd
            .arg(env!("CARGO_BIN_EXE_peloton-mpi-check"))
            .envs([
                ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
                ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                ("OMPI_MCA_mpi_yield_when_idle", "1"),
                ("OMPI_MCA_btl", "self,vader"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{n} ranks: {text}");
        for rank in 0..n {
            assert!(
                text.contains(&format!("check ok: rank {rank} of {n}")),
                "{n} ranks: {text}"
            );
        }
    }
}

/// With a 1-s watchdog, a rank 30 s late at a collective or at the end of the services, or a
/// message never sent, ends the job within seconds, with the watchdog's line naming the rank that did not arrive.
#[test]
fn the_watchdog_names_the_missing_rank_and_ends_the_job() {
    if !have_mpirun() {
        return;
    }
    for (mode, expected) in [
        (
            "watchdog-collective",
            "waited 1 s in all-reduce for worker(s) 2 that did not arrive",
        ),
        (
            "watchdog-receive",
            "worker 1 waited 1 s in a receive (tag 5) for worker(s) 2 that did not arrive",
        ),
        (
            "watchdog-services",
            "worker 0 waited 1 s in the end of the asynchronous services for worker(s) 2 that did not arrive",
        ),
    ] {
        let start = Instant::now();
        let mut cmd = Command::new("timeout");
        cmd.args(["120", "mpirun", "-n", "3"]);
        if 3 > std::thread::available_parallelism().map_or(1, |c| c.get()) {
            cmd.arg("--oversubscribe");
        }
        let out = cmd
            .arg(env!("CARGO_BIN_EXE_peloton-mpi-check"))
            .arg(mode)
            .envs([
                ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
                ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                ("OMPI_MCA_mpi_yield_when_idle", "1"),
                ("OMPI_MCA_btl", "self,vader"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = start.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{mode}: {text}");
        assert!(
            text.lines()
                .any(|l| l.contains("aborts the MPI job: watchdog:") && l.contains(expected)),
            "{mode}: {text}"
        );
        // The late rank sleeps 30 s: ending well before proves nobody waited for it.
        assert!(
            took < Duration::from_secs(20),
            "{mode}: took {took:?}: {text}"
        );
    }
}
