//! The simulator transport end to end: determinism, equality with the threads transport,
//! virtual times against hand-computed values, contention, faults, deadlocks.

use peloton_core::algorithms::dpsgd::DpsgdConfig;
use peloton_core::algorithms::{
    AlgorithmConfig, AllReduceConfig, EasgdConfig, LocalSgdConfig, LsgdConfig, MatchaConfig,
    SgpConfig,
};
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{run_threads, Event, RunConfig};
use peloton_core::transport::{Communicator, ReduceOp};
use peloton_problems::{ProblemConfig, SoftmaxConfig};
use peloton_sim::{
    cost, run_sim, run_workers, ClusterConfig, ComputeModel, Fault, FaultKind, Link,
};

fn softmax() -> ProblemConfig {
    ProblemConfig::Softmax(SoftmaxConfig {
        classes: 4,
        features: 6,
        train_samples: 400,
        test_samples: 100,
        batch_size: 8,
        ..Default::default()
    })
}

fn run_config(workers: usize, steps: u64, algorithm: AlgorithmConfig) -> RunConfig {
    RunConfig {
        workers,
        seed: 5,
        steps: Some(steps),
        log_every: 10,
        optimizer: OptimizerConfig {
            lr: 0.2,
            ..Default::default()
        },
        algorithm,
        ..Default::default()
    }
}

fn cluster(workers_per_node: usize, seconds: f64) -> ClusterConfig {
    ClusterConfig {
        workers_per_node,
        compute: ComputeModel {
            seconds,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn lines(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| format!("{e:?}")).collect()
}

/// Synchronous algorithms end with exactly the parameters of the threads transport: the
/// simulator reduces in rank order, like the threads transport, and time does not change
/// what is computed.
#[test]
fn synchronous_algorithms_match_the_threads_transport_bit_for_bit() {
    let problem = softmax();
    for algorithm in [
        AlgorithmConfig::new(AllReduceConfig {}),
        AlgorithmConfig::new(LsgdConfig::default()),
        AlgorithmConfig::new(LsgdConfig {
            group_size: Some(2),
            tau_global: Some(8),
            ..Default::default()
        }),
        AlgorithmConfig::new(EasgdConfig::default()),
        AlgorithmConfig::new(LocalSgdConfig::default()),
        AlgorithmConfig::new(DpsgdConfig::default()),
        AlgorithmConfig::new(SgpConfig::default()),
        AlgorithmConfig::new(MatchaConfig::default()),
    ] {
        let config = run_config(4, 40, algorithm);
        let threads = run_threads(&config, &problem, &mut |_| {}).unwrap();
        let (sim, report, _) = run_sim(&config, &cluster(2, 0.01), &problem, &mut |_| {}).unwrap();
        for (a, b) in threads.workers.iter().zip(&sim.workers) {
            assert_eq!(
                a.params, b.params,
                "{:?}: worker {}",
                config.algorithm, a.rank
            );
            assert_eq!(a.losses, b.losses);
            assert_eq!(a.stats, b.stats, "byte counts agree");
        }
        assert!(report.simulated_seconds > 40.0 * 0.01);
    }
}

/// Same config and seed: identical metrics (virtual times included) and trace, twice.
#[test]
fn same_seed_same_metrics_and_trace() {
    let problem = softmax();
    let mut c = cluster(2, 0.02);
    c.compute.sigma = 0.3;
    c.compute.straggler_probability = 0.1;
    let config = run_config(
        6,
        30,
        AlgorithmConfig::new(SgpConfig {
            overlap: true,
            staleness: 2,
            eager: true,
            ..Default::default()
        }),
    );
    let mut first = Vec::new();
    let (_, a, trace_a) = run_sim(&config, &c, &problem, &mut |e| first.push(e.clone())).unwrap();
    let mut second = Vec::new();
    let (_, b, trace_b) = run_sim(&config, &c, &problem, &mut |e| second.push(e.clone())).unwrap();
    assert_eq!(lines(&first), lines(&second));
    assert_eq!(trace_a, trace_b);
    assert_eq!(a.simulated_seconds, b.simulated_seconds);
    let trace: serde_json::Value = serde_json::from_str(&trace_a.unwrap()).unwrap();
    assert!(trace["traceEvents"].as_array().unwrap().len() > 100);
}

/// All-reduce SGD on one node: every step is one compute (0.1 s) and one ring (or tree)
/// all-reduce of the gradient, so the clock ends at the initial broadcast plus
/// steps · (0.1 + all-reduce cost), exactly.
#[test]
fn virtual_time_of_all_reduce_sgd_is_the_hand_computed_sum() {
    let problem = softmax();
    let c = cluster(4, 0.1);
    let config = RunConfig {
        consensus: false,
        ..run_config(4, 20, AlgorithmConfig::new(AllReduceConfig {}))
    };
    let (run, report, _) = run_sim(&config, &c, &problem, &mut |_| {}).unwrap();
    // Softmax with 6 features and 4 classes: 6·4 + 4 = 28 parameters, 112 bytes.
    let bytes = 4 * 28;
    let per_step = 0.1 + cost::all_reduce(c.collectives, 4, bytes, c.intra);
    let expected = cost::tree(4, bytes, c.intra) + 20.0 * per_step;
    assert!(
        (report.simulated_seconds - expected).abs() < 1e-9,
        "{} vs {expected}",
        report.simulated_seconds
    );
    assert!((run.seconds - expected).abs() < 1e-9);
    for w in &report.workers {
        assert!((w.compute_seconds - 2.0).abs() < 1e-9);
        assert!(
            w.blocked_seconds.abs() < 1e-12,
            "identical workers never wait"
        );
    }
}

/// A 5× slower worker makes every synchronous step wait for it.
#[test]
fn a_slow_worker_slows_synchronous_training() {
    let problem = softmax();
    let mut c = cluster(4, 0.1);
    c.compute.speeds = vec![1.0, 5.0, 1.0, 1.0];
    let config = RunConfig {
        consensus: false,
        ..run_config(4, 10, AlgorithmConfig::new(AllReduceConfig {}))
    };
    let (_, report, _) = run_sim(&config, &c, &problem, &mut |_| {}).unwrap();
    assert!(report.simulated_seconds > 10.0 * 0.5);
    // The others wait 0.4 s per step for worker 1.
    assert!(
        (report.workers[0].blocked_seconds - 4.0).abs() < 1e-6,
        "{:?}",
        report.workers[0]
    );
    assert!(report.workers[1].blocked_seconds < 1e-9);
}

/// Point-to-point on the transport: arrival = send time + α + nβ, and two messages leaving
/// one node for another queue on the NICs.
/// Two nodes of two workers, no compute time, 10 µs and 1 ns/B between the nodes.
fn two_nodes_of_two() -> ClusterConfig {
    ClusterConfig {
        workers_per_node: 2,
        inter: Link {
            latency_us: 10.0,
            bandwidth_gbps: 8.0,
        }, // β = 1 ns/B
        compute: ComputeModel {
            seconds: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn messages_arrive_at_the_hand_computed_times() {
    let c = two_nodes_of_two();
    // Workers 0 and 1 (node 0) each send 250 floats (1000 B) to worker 2 (node 1) at t = 0.
    let (results, _) = run_workers(4, &c, 0, |comm| {
        let data = vec![1.0f32; 250];
        let mut buf = vec![0.0f32; 250];
        match comm.rank() {
            0 | 1 => comm.send(2, 7, &data)?,
            2 => {
                comm.recv(0, 7, &mut buf)?;
                let first = comm.now().unwrap();
                comm.recv(1, 7, &mut buf)?;
                return Ok(vec![first, comm.now().unwrap()]);
            }
            _ => {}
        }
        Ok(vec![comm.now().unwrap()])
    })
    .unwrap();
    let times: Vec<Vec<f64>> = results.into_iter().map(|r| r.unwrap()).collect();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    // Worker 0 (its turn first) injects 0..1 µs, worker 1 waits for the NIC: 1..2 µs.
    close(times[0][0], 1e-6);
    close(times[1][0], 2e-6);
    // Arrivals: 11 µs, then 12 µs (inbound NIC busy until 11 µs).
    close(times[2][0], 11e-6);
    close(times[2][1], 12e-6);
}

#[test]
fn a_deadlock_is_an_error_naming_the_waits() {
    let c = cluster(2, 0.0);
    let (results, _) = run_workers(2, &c, 0, |comm| {
        let mut buf = [0.0f32; 1];
        let peer = 1 - comm.rank();
        comm.recv(peer, 3, &mut buf)
    })
    .unwrap();
    let err = results
        .into_iter()
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
    assert!(
        err.contains("deadlock") && err.contains("worker 0 waits for a message from worker 1"),
        "{err}"
    );
}

#[test]
fn an_injected_stop_ends_a_synchronous_run_naming_the_worker() {
    let mut c = cluster(2, 0.1);
    c.faults = vec![Fault {
        worker: 2,
        at: 0.45,
        kind: FaultKind::Stop,
        factor: 1.0,
    }];
    let config = run_config(4, 20, AlgorithmConfig::new(AllReduceConfig {}));
    let err = run_sim(&config, &c, &softmax(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("worker 2 stopped at 0.5"), "{err}");
}

/// A collective whose members disagree on the length fails on every member instead of hanging.
#[test]
fn mismatched_collectives_fail_cleanly() {
    let (results, _) = run_workers(3, &cluster(3, 0.0), 0, |comm| {
        let mut buf = vec![1.0f32; 2 + comm.rank() / 2];
        comm.all_reduce(&mut buf, ReduceOp::Sum)
    })
    .unwrap();
    assert!(results.iter().all(|r| r.is_err()));
}

/// Sixty-four workers of softmax regression with SGP: the simulation runs and reports a rate.
#[test]
fn sixty_four_workers_simulate() {
    let config = run_config(64, 30, AlgorithmConfig::new(SgpConfig::default()));
    let (run, report, _) = run_sim(
        &config,
        &ClusterConfig::preset("ethernet-10g").unwrap(),
        &softmax(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(run.workers.len(), 64);
    assert!(report.messages >= 64 * 30);
    assert!(report.events_per_second > 0.0);
    assert!(!report.links.is_empty());
}

/// A checkpoint cut takes everything the rest of the run depends on — messages in flight, the
/// NIC queues, clocks, counters — and a fresh world restored from it goes on exactly like the
/// original one (the timings of `messages_arrive_at_the_hand_computed_times`).
#[test]
fn a_checkpoint_cut_carries_messages_in_flight_into_a_resumed_world() {
    use peloton_core::checkpoint::StateDict;
    use peloton_core::transport::CounterOp;
    let c = two_nodes_of_two();
    // After the cut (or the restore), worker 2 receives what 0 and 1 sent before it; worker 3
    // adds to a counter on either side of the cut.
    let after = |comm: &mut peloton_sim::SimComm| -> peloton_core::Result<Vec<f64>> {
        let mut buf = vec![0.0f32; 250];
        match comm.rank() {
            2 => {
                comm.recv(0, 7, &mut buf)?;
                let first = comm.now().unwrap();
                comm.recv(1, 7, &mut buf)?;
                Ok(vec![first, comm.now().unwrap(), f64::from(buf[0])])
            }
            3 => Ok(vec![comm.counter(4, CounterOp::Add(1))? as f64]),
            _ => Ok(vec![comm.now().unwrap()]),
        }
    };
    let (results, _) = run_workers(4, &c, 0, |comm| {
        match comm.rank() {
            0 | 1 => comm.send(2, 7, &vec![comm.rank() as f32 + 1.0; 250])?,
            3 => {
                comm.counter(4, CounterOp::Add(5))?;
            }
            _ => {}
        }
        let state = comm.checkpoint_cut(None)?;
        assert_eq!(
            state.is_some(),
            comm.rank() == 0,
            "only world rank 0 gets the state"
        );
        Ok((state, after(comm)?))
    })
    .unwrap();
    let results: Vec<(Option<StateDict>, Vec<f64>)> =
        results.into_iter().map(|r| r.unwrap()).collect();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    // No time passed at the cut: the arrivals are the hand-computed 11 µs and 12 µs.
    close(results[2].1[0], 11e-6);
    close(results[2].1[1], 12e-6);
    assert_eq!(results[3].1, vec![5.0]);
    let state = results[0].0.clone().unwrap();

    let (resumed, _) = run_workers(4, &c, 0, |comm| {
        let mine = if comm.rank() == 0 {
            state.clone()
        } else {
            StateDict::new()
        };
        comm.restore_cut(&mine)?;
        after(comm)
    })
    .unwrap();
    let resumed: Vec<Vec<f64>> = resumed.into_iter().map(|r| r.unwrap()).collect();
    for (w, (original, again)) in results.iter().zip(&resumed).enumerate() {
        assert_eq!(&original.1, again, "worker {w} went on differently");
    }
    // The senders' clocks came back too (1 µs and 2 µs: they queued on one NIC).
    close(resumed[0][0], 1e-6);
    close(resumed[1][0], 2e-6);
}

/// A simulator state that does not fit the world (another worker count, a damaged entry) is
/// refused with an error naming what is wrong, on every worker, not a panic or a hang.
#[test]
fn a_simulator_state_of_another_world_is_refused() {
    use peloton_core::checkpoint::StateDict;
    let c = two_nodes_of_two();
    let (results, _) = run_workers(4, &c, 0, |comm| {
        let state = comm.checkpoint_cut(None)?;
        Ok(state)
    })
    .unwrap();
    let state = results.into_iter().next().unwrap().unwrap().unwrap();
    let mut wrong = state.clone();
    wrong.put_f64s("clock", &[0.0; 3]);
    let mut damaged = state.clone();
    damaged.put_u64s("counters", &[1, 2]);
    let mut cases = vec![
        (
            wrong,
            "clock: 3 worker clocks, this run has 4 workers".to_string(),
        ),
        (
            damaged,
            "counters: wrong number of shared counters".to_string(),
        ),
    ];
    // Every entry is needed: without it, or with a value of another kind, the error names it.
    for key in state.keys() {
        let mut without = StateDict::new();
        let mut retyped = StateDict::new();
        for k in state.keys().filter(|&k| k != key) {
            without.put(k, state.get(k).unwrap().clone());
            retyped.put(k, state.get(k).unwrap().clone());
        }
        retyped.put_bool(key, true);
        cases.push((without, key.to_string()));
        cases.push((retyped, key.to_string()));
    }
    for (bad, expected) in cases {
        let (results, _) = run_workers(4, &c, 0, |comm| {
            let mine = if comm.rank() == 0 {
                bad.clone()
            } else {
                StateDict::new()
            };
            comm.restore_cut(&mine)
        })
        .unwrap();
        for r in results {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(&expected), "{expected}: {e}");
        }
    }
}
