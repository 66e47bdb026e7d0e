//! What the LibTorch learner's test files share.

use peloton_burn::{ModelConfig, NetworkTask};
use peloton_core::algorithms::{lsgd::LsgdConfig, AlgorithmConfig};
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{run_threads, RunConfig, RunReport};
use peloton_data::{DataConfig, SyntheticConfig};
use peloton_torch::TorchTask;

/// Generated images of `channels` × `size` × `size`, batches of `batch`: 64 training and 48
/// test images, shifted by one pixel (augmentation that still changes the batch).
pub fn data(channels: usize, size: usize, batch: usize) -> DataConfig {
    DataConfig {
        batch_size: batch,
        synthetic: SyntheticConfig {
            channels,
            size,
            shift: 1,
            train: 64,
            test: 48,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// 150 steps of LSGD (τ 4) on 2 thread workers training `model` on generated images (512
/// training, 128 test, batches of 16, lr 0.05, momentum 0.9, seed 3).
pub fn two_worker_lsgd(model: ModelConfig) -> RunReport {
    let d = DataConfig {
        batch_size: 16,
        synthetic: SyntheticConfig {
            train: 512,
            test: 128,
            ..Default::default()
        },
        ..Default::default()
    };
    let task = TorchTask::new(NetworkTask::load(model, &d, 2, 3).unwrap()).unwrap();
    let c = RunConfig {
        workers: 2,
        seed: 3,
        steps: Some(150),
        log_every: 50,
        optimizer: OptimizerConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        },
        algorithm: AlgorithmConfig::new(LsgdConfig {
            tau: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    run_threads(&c, &task, &mut |_| {}).unwrap()
}
