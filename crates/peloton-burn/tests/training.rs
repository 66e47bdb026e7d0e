//! Real models through the runner: they learn, all-reduce SGD with 2 workers equals one worker
//! on the doubled batch, and the same seed gives the same run bit for bit.

use peloton_burn::models::ModelName;
use peloton_burn::{ModelConfig, NetworkLearner, NetworkTask};
use peloton_core::algorithms::{lsgd::LsgdConfig, AlgorithmConfig};
use peloton_core::learner::{Learner, LearnerContext};
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{run_threads, RunConfig};
use peloton_data::{Batch, DataConfig, SyntheticConfig};

fn task(model: ModelName, workers: usize, batch: usize) -> NetworkTask {
    let data = DataConfig {
        batch_size: batch,
        synthetic: SyntheticConfig {
            train: 1024,
            test: 256,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut m = ModelConfig::new(model);
    m.hidden = vec![64];
    m.threads = Some(1);
    NetworkTask::load(m, &data, workers, 3).unwrap()
}

fn config(workers: usize, steps: u64, algorithm: AlgorithmConfig) -> RunConfig {
    RunConfig {
        workers,
        seed: 3,
        steps: Some(steps),
        log_every: 10,
        optimizer: OptimizerConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        },
        algorithm,
        ..Default::default()
    }
}

#[test]
fn lsgd_trains_an_mlp_and_repeats_bit_for_bit() {
    let t = task(ModelName::Mlp, 2, 32);
    let c = config(
        2,
        120,
        AlgorithmConfig::new(LsgdConfig {
            tau: 4,
            ..Default::default()
        }),
    );
    let mut events = Vec::new();
    let a = run_threads(&c, &t, &mut |e| events.push(format!("{e:?}"))).unwrap();
    let acc = a.final_evals[0].eval.accuracy.unwrap();
    // 10 classes: chance is 10%.
    assert!(acc > 0.6, "test accuracy {acc}");
    let mut again = Vec::new();
    let b = run_threads(&c, &t, &mut |e| again.push(format!("{e:?}"))).unwrap();
    for (x, y) in a.workers.iter().zip(&b.workers) {
        assert_eq!(x.params, y.params);
        assert_eq!(x.losses, y.losses);
    }
    let strip = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.split("seconds").next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(strip(&events), strip(&again));
}

#[test]
fn all_reduce_on_two_workers_equals_one_worker_on_the_doubled_batch() {
    let steps = 5;
    let t = task(ModelName::Lenet, 2, 8);
    let c = RunConfig {
        optimizer: OptimizerConfig {
            lr: 0.05,
            momentum: 0.0,
            ..Default::default()
        },
        consensus: false,
        ..config(
            2,
            steps,
            AlgorithmConfig::new(peloton_core::algorithms::AllReduceConfig {}),
        )
    };
    let report = run_threads(&c, &t, &mut |_| {}).unwrap();

    // The same steps by hand: one model, each step on the union of the two workers' batches.
    let ctx = |rank| LearnerContext {
        rank,
        workers: 2,
        seed: 3,
    };
    let mut w0 = NetworkLearner::new(&t, ctx(0)).unwrap();
    let mut w1 = NetworkLearner::new(&t, ctx(1)).unwrap();
    let mut params = vec![0.0; w0.layout().len()];
    w0.init_params(&mut params);
    let mut sgd = c.optimizer.init(w0.layout());
    let mut grad = vec![0.0; params.len()];
    let (mut b0, mut b1) = (Batch::default(), Batch::default());
    for _ in 0..steps {
        w0.next_batch(&mut b0);
        w1.next_batch(&mut b1);
        let union = b0.concat(&b1);
        w0.loss_and_grad_on(&params, &union, &mut grad).unwrap();
        sgd.step(&mut params, &mut grad, c.optimizer.lr);
    }
    let max_diff = report.workers[0]
        .params
        .iter()
        .zip(&params)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Only the f32 summation order differs (mean of two half-batch means vs one mean).
    assert!(max_diff < 1e-5, "max |Δ| = {max_diff}");
    assert_eq!(report.workers[0].params, report.workers[1].params);
}
