//! Embedding the simulator: one training config swept over **cluster shapes** — 1, 2 and 4
//! nodes of 4 workers, and 4 nodes of 1, on a slow 20 Mb/s network between nodes — for
//! all-reduce SGD and Leader SGD, printing test error against *simulated* wall-clock time.
//!
//! The simulator runs the real algorithm code on a virtual clock: compute takes the modelled
//! time per step (20 ms, log-normally jittered), every message and collective is charged on the
//! links it crosses, and the results are bit-for-bit reproducible. What changes between the
//! rows is only when things happen, so the rows show how each algorithm's communication
//! pattern pays for the cluster's shape.
//!
//! ```text
//! cargo run --release -p peloton-examples --bin simulator_sweep          # 300 steps
//! cargo run --release -p peloton-examples --bin simulator_sweep -- 1000  # longer runs
//! ```

use std::process::ExitCode;

use peloton_core::algorithms::{AlgorithmConfig, AllReduceConfig, LsgdConfig};
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{Event, RunConfig};
use peloton_problems::{ProblemConfig, SoftmaxConfig};
use peloton_sim::{run_sim, ClusterConfig, ComputeModel, Link};

fn main() -> ExitCode {
    let steps = match std::env::args().nth(1).map(|s| s.parse::<u64>()) {
        None => 300,
        Some(Ok(steps)) if steps >= 10 => steps,
        Some(_) => {
            eprintln!("error: the argument is the number of steps per worker, at least 10");
            return ExitCode::FAILURE;
        }
    };
    match sweep(steps) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sweep(steps: u64) -> peloton_core::Result<()> {
    // A 10-class softmax regression on 256 features: 2,570 parameters (10 KB per message).
    let problem = ProblemConfig::Softmax(SoftmaxConfig {
        classes: 10,
        features: 256,
        train_samples: 32_000,
        test_samples: 4_000,
        batch_size: 32,
        ..Default::default()
    });
    let algorithms = [
        ("all-reduce", AlgorithmConfig::new(AllReduceConfig {})),
        ("lsgd tau=4", AlgorithmConfig::new(LsgdConfig::default())),
    ];
    println!("shape   algorithm    simulated s   test error at 1/4, 1/2, 3/4, end of the run");
    for (nodes, per_node) in [(1, 4), (2, 4), (4, 4), (4, 1)] {
        let cluster = ClusterConfig {
            workers_per_node: per_node,
            nodes: Some(nodes),
            inter: Link {
                latency_us: 100.0,
                bandwidth_gbps: 0.02,
            },
            compute: ComputeModel {
                seconds: 0.02,
                sigma: 0.2,
                ..Default::default()
            },
            ..Default::default()
        };
        for (name, algorithm) in &algorithms {
            let config = RunConfig {
                workers: nodes * per_node,
                seed: 1,
                steps: Some(steps),
                log_every: steps,
                eval_every: steps / 4,
                consensus: false,
                optimizer: OptimizerConfig {
                    lr: 0.05,
                    ..Default::default()
                },
                algorithm: algorithm.clone(),
                ..Default::default()
            };
            // (simulated seconds, test error) at every evaluation of the workers' average.
            let mut curve = Vec::new();
            let (_, sim, _) = run_sim(&config, &cluster, &problem, &mut |event| {
                if let Event::Eval(e) = event {
                    curve.push((e.seconds, 1.0 - e.eval.accuracy.unwrap_or(f64::NAN)));
                }
            })?;
            let points: Vec<String> = curve
                .iter()
                .map(|(t, err)| format!("{:5.1}% @{t:6.2}s", 100.0 * err))
                .collect();
            println!(
                "{nodes} x {per_node}   {name:<12} {:>8.2}      {}",
                sim.simulated_seconds,
                points.join("  ")
            );
        }
    }
    Ok(())
}
