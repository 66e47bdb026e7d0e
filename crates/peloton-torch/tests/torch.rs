//! The LibTorch learner against the burn learner it must equal: the same layouts and parameter
//! counts, the same losses, gradients and evaluations at the same parameters and batch (to
//! float rounding: LibTorch sums in its own order), checkpoints that move between the two,
//! and real training through the runner that repeats bit for bit.
//!
//! Needs the `torch` feature: `eval "$(scripts/install-torch.sh)"` then
//! `cargo test -p peloton-torch --features torch`.
#![cfg(feature = "torch")]

mod common;

use common::{data, two_worker_lsgd};
use peloton_burn::models::{ModelName, ZooLayout};
use peloton_burn::{BatchNormPolicy, DeviceKind, ModelConfig, NetworkLearner, NetworkTask};
use peloton_core::checkpoint::StateDict;
use peloton_core::learner::{Learner, LearnerContext};
use peloton_data::{Batch, DataConfig};
use peloton_torch::{TorchLearner, TorchTask};

const CTX: LearnerContext = LearnerContext {
    rank: 0,
    workers: 1,
    seed: 7,
};

fn model(name: ModelName, device: DeviceKind, policy: BatchNormPolicy) -> ModelConfig {
    let mut m = ModelConfig::new(name);
    m.device = device;
    m.threads = Some(1);
    m.split_batch = false;
    m.batch_norm = policy;
    m
}

fn flex(name: ModelName, d: &DataConfig, policy: BatchNormPolicy) -> NetworkLearner {
    let task = NetworkTask::load(model(name, DeviceKind::Flex, policy), d, 1, 7).unwrap();
    NetworkLearner::new(&task, CTX).unwrap()
}

fn torch(name: ModelName, d: &DataConfig, policy: BatchNormPolicy) -> TorchLearner {
    let task = NetworkTask::load(model(name, DeviceKind::Torch, policy), d, 1, 7).unwrap();
    TorchLearner::new(&TorchTask::new(task).unwrap(), CTX).unwrap()
}

/// The learner's initial parameters.
fn initial_params(learner: &mut dyn Learner) -> Vec<f32> {
    let mut params = vec![0.0; learner.layout().len()];
    learner.init_params(&mut params);
    params
}

/// max |a − b| over max(|a|, 1): the largest difference relative to the vector's scale.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().map(|x| x.abs()).fold(1.0f32, f32::max);
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    diff / scale
}

#[test]
fn every_model_has_the_burn_layout_and_the_reference_parameter_count() {
    let cases = [
        (ModelName::Mlp, [1, 28, 28]),
        (ModelName::Lenet, [1, 28, 28]),
        (ModelName::Lenet, [3, 32, 32]),
        (ModelName::Cnn7, [3, 28, 28]),
        (ModelName::Resnet20, [3, 32, 32]),
        (ModelName::Resnet32, [3, 32, 32]),
        (ModelName::Resnet56, [3, 32, 32]),
        (ModelName::Vgg16, [3, 32, 32]),
    ];
    for (name, [c, h, _]) in cases {
        let d = data(c, h, 4);
        let learner = torch(name, &d, BatchNormPolicy::Local);
        let zoo = ZooLayout::of(name, [c, h, h], 10, &[256, 128]).unwrap();
        assert_eq!(learner.layout(), &zoo.params, "{name:?}");
        assert_eq!(
            learner.layout().len() as u64,
            name.parameters([c, h, h], 10, &[256, 128]),
            "{name:?}"
        );
        // ResNet-20 on CIFAR-10: 269,722 (ALGORITHMS.md "Model sizes").
        if name == ModelName::Resnet20 {
            assert_eq!(learner.layout().len(), 269_722);
            assert_eq!(learner.buffers().unwrap().len(), 2 * 688);
        }
    }
}

/// Loss, gradient and evaluation of `name` on both learners at the same parameters and
/// batch. Tolerances: f32 sums in a different order differ by a few ulps per term; over the
/// ≈ 10⁴ terms of a convolution's gradient that stays below 1e-4 of the gradient's scale.
fn assert_same_as_flex(name: ModelName, d: &DataConfig, policy: BatchNormPolicy) {
    let (mut f, mut t) = (flex(name, d, policy), torch(name, d, policy));
    let params = initial_params(&mut f);
    assert_eq!(
        params,
        initial_params(&mut t),
        "{name:?}: the same initialization"
    );
    let mut batch = Batch::default();
    f.next_batch(&mut batch);
    let mut other = Batch::default();
    t.next_batch(&mut other);
    assert_eq!(batch.images, other.images, "{name:?}: the same data stream");
    let n = params.len();
    let (mut gf, mut gt) = (vec![0.0; n], vec![0.0; n]);
    let lf = f.loss_and_grad_on(&params, &batch, &mut gf).unwrap();
    let lt = t.loss_and_grad_on(&params, &batch, &mut gt).unwrap();
    assert_eq!(tch::get_num_threads(), 1, "the worker's threads");
    assert!(
        (lf - lt).abs() < 1e-5 * lf.abs().max(1.0),
        "{name:?}: loss {lf} vs {lt}"
    );
    let d_grad = relative_difference(&gf, &gt);
    assert!(d_grad < 1e-4, "{name:?}: gradients differ by {d_grad}");
    // Evaluation at fresh statistics.
    let (mut f2, mut t2) = (flex(name, d, policy), torch(name, d, policy));
    let (ef, et) = (f2.evaluate(&params).unwrap(), t2.evaluate(&params).unwrap());
    if policy == BatchNormPolicy::Local {
        assert!(
            (ef.loss - et.loss).abs() < 1e-4 * ef.loss.max(1.0),
            "{name:?}: test loss {} vs {}",
            ef.loss,
            et.loss
        );
        assert_eq!(ef.accuracy, et.accuracy, "{name:?}");
    }
}

#[test]
fn resnet20_recomputes_the_statistics_as_flex_with_pytorchs_variance() {
    // Recomputed over the shard's batches, the means agree; each variance is PyTorch's
    // unbiased one, burn's biased one × n/(n − 1) with n = batch × height × width at that
    // layer: 8 × 8×8 = 512 in the first stage (the stem and 6 BatchNorms of 16 channels),
    // 8 × 4×4 = 128 in the second (6 of 32), 8 × 2×2 = 32 in the third (6 of 64).
    let d = data(3, 8, 8);
    let (mut f, mut t) = (
        flex(ModelName::Resnet20, &d, BatchNormPolicy::Recompute),
        torch(ModelName::Resnet20, &d, BatchNormPolicy::Recompute),
    );
    let params = initial_params(&mut f);
    f.evaluate(&params).unwrap();
    t.evaluate(&params).unwrap();
    let (bf, bt) = (f.buffers(), t.buffers().unwrap());
    let layers = [(16, 512.0f32, 7), (32, 128.0, 6), (64, 32.0, 6)];
    let mut at = 0;
    for (channels, n, count) in layers {
        for _ in 0..count {
            let (mean, var) = (at..at + channels, at + channels..at + 2 * channels);
            let d_mean = relative_difference(&bf[mean.clone()], &bt[mean]);
            assert!(d_mean < 1e-4, "means at {at}: {d_mean}");
            let scaled: Vec<f32> = bf[var.clone()].iter().map(|v| v * n / (n - 1.0)).collect();
            let d_var = relative_difference(&scaled, &bt[var]);
            assert!(d_var < 1e-4, "variances at {at} (n = {n}): {d_var}");
            at += 2 * channels;
        }
    }
    assert_eq!(at, bf.len());
}

#[test]
fn lenet_matches_flex() {
    assert_same_as_flex(ModelName::Lenet, &data(1, 28, 8), BatchNormPolicy::Local);
}

#[test]
fn resnet20_matches_flex() {
    let d = data(3, 8, 8);
    assert_same_as_flex(ModelName::Resnet20, &d, BatchNormPolicy::Local);
}

#[test]
fn cnn7_draws_the_same_dropout_masks_as_flex() {
    assert_same_as_flex(ModelName::Cnn7, &data(3, 28, 4), BatchNormPolicy::Local);
}

#[test]
fn batch_norm_statistics_move_as_pytorch_moves_them() {
    // One training step with momentum 0.1 from mean 0, variance 1: mean = 0.1 · batch mean,
    // var = 0.9 + 0.1 · unbiased batch variance. The first BatchNorm sees conv1's output.
    let d = data(3, 8, 8);
    let mut t = torch(ModelName::Resnet20, &d, BatchNormPolicy::Local);
    let params = initial_params(&mut t);
    let before = t.buffers().unwrap();
    let mut grad = vec![0.0; params.len()];
    t.loss_and_grad(&params, &mut grad).unwrap();
    let after = t.buffers().unwrap();
    assert!(after.iter().all(|v| v.is_finite()));
    assert_ne!(before, after);
    // Running variances stay positive.
    let first_var = &after[16..32];
    assert!(first_var.iter().all(|&v| v > 0.0), "{first_var:?}");
    // Against flex's step on the same batch (momentum 0.1 too): the first BatchNorm (8 × 8×8
    // = 512 values per channel) has the same running mean, and a running variance whose
    // moved part, var − 0.9, is burn's biased one × 512/511.
    let mut f = flex(ModelName::Resnet20, &d, BatchNormPolicy::Local);
    f.loss_and_grad(&params, &mut grad).unwrap();
    let flex_after = f.buffers();
    let d_mean = relative_difference(&flex_after[..16], &after[..16]);
    assert!(d_mean < 1e-4, "first running means differ by {d_mean}");
    let n = 512.0f32;
    let moved =
        |v: &[f32], scale: f32| -> Vec<f32> { v.iter().map(|x| (x - 0.9) * scale).collect() };
    // Elementwise, relative to each value: the factor 512/511 is 0.2%.
    let (expected, got) = (
        moved(&flex_after[16..32], n / (n - 1.0)),
        moved(first_var, 1.0),
    );
    for (c, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert!(
            (e - g).abs() <= 2e-4 * e.abs(),
            "channel {c}: running variance moved by {g}, expected {e}"
        );
    }
}

#[test]
fn a_checkpoint_of_either_learner_resumes_on_the_other() {
    let d = data(3, 8, 8);
    let mut t = torch(ModelName::Resnet20, &d, BatchNormPolicy::Local);
    let params = initial_params(&mut t);
    let mut grad = vec![0.0; params.len()];
    for _ in 0..3 {
        t.loss_and_grad(&params, &mut grad).unwrap();
    }
    let mut state = StateDict::default();
    t.save_state(&mut state).unwrap();
    let mut f = flex(ModelName::Resnet20, &d, BatchNormPolicy::Local);
    f.load_state(&state).unwrap();
    assert_eq!(f.buffers(), t.buffers().unwrap());
    // Both continue with the same next batch.
    let (mut bf, mut bt) = (Batch::default(), Batch::default());
    f.next_batch(&mut bf);
    t.next_batch(&mut bt);
    assert_eq!(bf.images, bt.images);
    let mut back = StateDict::default();
    f.save_state(&mut back).unwrap();
    let mut t2 = torch(ModelName::Resnet20, &d, BatchNormPolicy::Local);
    t2.load_state(&back).unwrap();
    assert_eq!(t2.buffers().unwrap(), f.buffers());
}

#[test]
fn two_workers_train_with_lsgd_and_repeat_bit_for_bit() {
    let lenet = || model(ModelName::Lenet, DeviceKind::Torch, BatchNormPolicy::Local);
    let a = two_worker_lsgd(lenet());
    let accuracy = a.final_evals[0].eval.accuracy.unwrap();
    // 10 classes: chance is 10%.
    assert!(accuracy > 0.5, "test accuracy {accuracy}");
    let b = two_worker_lsgd(lenet());
    for (x, y) in a.workers.iter().zip(&b.workers) {
        assert_eq!(x.params, y.params);
        assert_eq!(x.losses, y.losses);
    }
}

#[test]
fn torch_cuda_without_a_gpu_is_one_clear_error() {
    if tch::Cuda::is_available() {
        return;
    }
    let task = NetworkTask::load(
        model(
            ModelName::Lenet,
            DeviceKind::TorchCuda,
            BatchNormPolicy::Local,
        ),
        &data(1, 28, 4),
        1,
        0,
    )
    .unwrap();
    let e = TorchTask::new(task).err().expect("no GPU here").to_string();
    assert!(e.contains("sees no CUDA GPU") && !e.contains('\n'), "{e}");
}

/// A LibTorch exception in the forward pass (here a batch whose images do not fit the model:
/// LeNet's first linear layer gets the wrong width; on a GPU, CUDA out of memory) is the
/// worker's one-line error naming the pass, not a panic with a C++ backtrace.
#[test]
fn a_libtorch_exception_is_a_one_line_error() {
    let d = data(1, 28, 4);
    let mut l = torch(ModelName::Lenet, &d, BatchNormPolicy::Local);
    let params = initial_params(&mut l);
    let mut grad = vec![0.0; params.len()];
    // 40 × 40 images: the convolutions accept them, the first linear layer does not.
    let batch = Batch {
        images: vec![0.5; 4 * 40 * 40],
        labels: vec![0, 1, 2, 3],
        shape: [1, 40, 40],
    };
    let e = l
        .loss_and_grad_on(&params, &batch, &mut grad)
        .expect_err("a batch of the wrong size")
        .to_string();
    assert!(e.contains("LibTorch, the forward pass:"), "{e}");
    assert!(!e.contains('\n') && !e.contains("frame #"), "{e}");
    // The learner goes on: a batch of the right size works afterwards.
    let mut batch = Batch::default();
    l.next_batch(&mut batch);
    let loss = l.loss_and_grad_on(&params, &batch, &mut grad).unwrap();
    assert!(loss.is_finite());
}
