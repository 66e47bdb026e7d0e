//! The model zoo and the flat-buffer bridge: parameter counts against the reference
//! architectures, exact round trips, and gradients that match a union batch.

use burn::prelude::*;
use peloton_burn::flat::FlatMap;
use peloton_burn::models::{ModelName, Net};
use peloton_burn::{BatchNormPolicy, ModelConfig, NetworkLearner, NetworkTask};
use peloton_core::learner::{Learner, LearnerContext};
use peloton_data::{Batch, DataConfig, SyntheticConfig};

fn count(name: ModelName, input: [usize; 3]) -> (usize, usize) {
    let device = Device::flex().autodiff();
    let net = Net::new(name, input, 10, &[256, 128], &device).unwrap();
    let map = FlatMap::discover(&net);
    (map.params.len(), map.buffers.len())
}

#[test]
fn parameter_counts_match_the_reference_architectures() {
    // ALGORITHMS.md "Model sizes": CNN7 351,946 and ResNet-20 269,722 on CIFAR-10.
    assert_eq!(count(ModelName::Cnn7, [3, 28, 28]).0, 351_946);
    // ResNet-20 = 269,722; running mean and variance of its 19 BatchNorms (16·7 + 32·6 +
    // 64·6 = 688 channels) are buffers, not parameters.
    assert_eq!(count(ModelName::Resnet20, [3, 32, 32]), (269_722, 2 * 688));
    // ResNet-32 and -56 of the same family: 464,154 and 853,018 (He et al.: 0.46M, 0.85M).
    assert_eq!(count(ModelName::Resnet32, [3, 32, 32]).0, 464_154);
    assert_eq!(count(ModelName::Resnet56, [3, 32, 32]).0, 853_018);
    // LeNet-5: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 on MNIST; 3 input channels add
    // 2·6·25 = 300 weights.
    assert_eq!(count(ModelName::Lenet, [1, 28, 28]).0, 61_706);
    assert_eq!(count(ModelName::Lenet, [3, 32, 32]).0, 62_006);
    // MLP 784-256-128-10: 200,960 + 32,896 + 1,290.
    assert_eq!(count(ModelName::Mlp, [1, 28, 28]).0, 235_146);
    // VGG-16-BN: convolutions 14,714,688 + BatchNorm 8,448 + classifier 530,442.
    assert_eq!(count(ModelName::Vgg16, [3, 32, 32]).0, 15_253_578);
}

#[test]
fn the_counts_from_layer_shapes_equal_the_built_models() {
    // The memory estimate counts parameters without building the model.
    let cases = [
        (ModelName::Mlp, [1, 28, 28]),
        (ModelName::Mlp, [3, 32, 32]),
        (ModelName::Lenet, [1, 28, 28]),
        (ModelName::Lenet, [3, 32, 32]),
        (ModelName::Cnn7, [3, 28, 28]),
        (ModelName::Resnet20, [3, 32, 32]),
        (ModelName::Resnet32, [1, 16, 16]),
        (ModelName::Resnet56, [3, 32, 32]),
        (ModelName::Vgg16, [3, 32, 32]),
    ];
    for (name, input) in cases {
        let built = count(name, input).0 as u64;
        assert_eq!(
            name.parameters(input, 10, &[256, 128]),
            built,
            "{name:?} {input:?}"
        );
    }
}

#[test]
fn models_reject_inputs_they_cannot_take() {
    let device = Device::flex().autodiff();
    let e = Net::new(ModelName::Cnn7, [3, 32, 32], 10, &[], &device).unwrap_err();
    assert!(e.to_string().contains("28×28"), "{e}");
    assert!(Net::new(ModelName::Vgg16, [1, 28, 28], 10, &[], &device).is_err());
}

#[test]
fn flat_round_trip_is_exact() {
    let device = Device::flex().autodiff();
    let net = Net::new(ModelName::Resnet20, [3, 8, 8], 10, &[], &device).unwrap();
    let map = FlatMap::discover(&net);
    let values: Vec<f32> = (0..map.params.len())
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let net = map.write(net, &values, false);
    let mut back = vec![0.0; values.len()];
    map.read(&net, &mut back, false);
    assert_eq!(back, values);
    let stats: Vec<f32> = (0..map.buffers.len()).map(|i| i as f32 + 0.25).collect();
    let net = map.write(net, &stats, true);
    let mut stats_back = vec![0.0; stats.len()];
    map.read(&net.valid(), &mut stats_back, true);
    assert_eq!(stats_back, stats);
    // Writing buffers left the parameters alone.
    map.read(&net, &mut back, false);
    assert_eq!(back, values);
}

fn task(model: ModelName, workers: usize, batch: usize, synthetic: SyntheticConfig) -> NetworkTask {
    let data = DataConfig {
        batch_size: batch,
        synthetic,
        ..Default::default()
    };
    let mut m = ModelConfig::new(model);
    m.threads = Some(1);
    NetworkTask::load(m, &data, workers, 7).unwrap()
}

/// Worker 0 of a one-worker run of `m` on `data` (seed 7).
fn one_worker(m: ModelConfig, data: &DataConfig) -> NetworkLearner {
    let t = NetworkTask::load(m, data, 1, 7).unwrap();
    let ctx = LearnerContext {
        rank: 0,
        workers: 1,
        seed: 7,
    };
    NetworkLearner::new(&t, ctx).unwrap()
}

fn small_images(channels: usize, size: usize) -> SyntheticConfig {
    SyntheticConfig {
        channels,
        size,
        shift: 1,
        train: 256,
        test: 64,
        ..Default::default()
    }
}

#[test]
fn the_gradient_of_two_half_batches_averages_to_the_union_batch() {
    // Mean cross-entropy over 16 samples = the average of the means over two halves of 8,
    // so all-reduce SGD with 2 workers × 8 equals 1 worker × 16 (no BatchNorm, no dropout).
    let t = task(ModelName::Lenet, 2, 8, small_images(1, 28));
    let ctx = |rank| LearnerContext {
        rank,
        workers: 2,
        seed: 7,
    };
    let mut a = NetworkLearner::new(&t, ctx(0)).unwrap();
    let mut b = NetworkLearner::new(&t, ctx(1)).unwrap();
    let mut params = vec![0.0; a.layout().len()];
    a.init_params(&mut params);
    let (mut ba, mut bb) = (Batch::default(), Batch::default());
    a.next_batch(&mut ba);
    b.next_batch(&mut bb);
    let union = ba.concat(&bb);
    let n = params.len();
    let (mut ga, mut gb, mut gu) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let la = a.loss_and_grad_on(&params, &ba, &mut ga).unwrap();
    let lb = b.loss_and_grad_on(&params, &bb, &mut gb).unwrap();
    let lu = a.loss_and_grad_on(&params, &union, &mut gu).unwrap();
    assert!((lu - (la + lb) / 2.0).abs() < 1e-5, "{lu} vs {la}, {lb}");
    let max_diff = ga
        .iter()
        .zip(&gb)
        .zip(&gu)
        .map(|((x, y), u)| ((x + y) / 2.0 - u).abs())
        .fold(0.0f32, f32::max);
    let scale = gu.iter().map(|g| g.abs()).fold(0.0f32, f32::max);
    // f32 summation order differs between the two computations: agreement to 1e-5 relative.
    assert!(
        max_diff <= 1e-5 * scale.max(1.0),
        "max |Δ| = {max_diff} (scale {scale})"
    );
    assert!(gu.iter().any(|&g| g != 0.0));
}

#[test]
fn batch_norm_policies() {
    let mut t = task(ModelName::Resnet20, 2, 4, small_images(3, 8));
    let ctx = LearnerContext {
        rank: 0,
        workers: 2,
        seed: 7,
    };
    // Local: nothing is shared with the runner.
    let mut local = NetworkLearner::new(&t, ctx).unwrap();
    assert_eq!(local.shared_state_len(), 0);
    let mut params = vec![0.0; local.layout().len()];
    local.init_params(&mut params);
    let mut g = vec![0.0; params.len()];
    let before = local.buffers();
    local.loss_and_grad(&params, &mut g).unwrap();
    let after = local.buffers();
    assert_ne!(
        before, after,
        "a training step updates the running statistics"
    );
    // Average: the runner reads and writes exactly the buffers.
    t.model.batch_norm = BatchNormPolicy::Average;
    let mut avg = NetworkLearner::new(&t, ctx).unwrap();
    assert_eq!(avg.shared_state_len(), 2 * 688);
    avg.loss_and_grad(&params, &mut g).unwrap();
    let mut state = vec![0.0; avg.shared_state_len()];
    avg.read_shared_state(&mut state);
    assert_eq!(state, avg.buffers());
    let halved: Vec<f32> = state.iter().map(|v| v * 0.5).collect();
    avg.write_shared_state(&halved);
    avg.loss_and_grad(&params, &mut g).unwrap(); // a pending update must not undo the write
    let mut fresh = NetworkLearner::new(&t, ctx).unwrap();
    fresh.write_shared_state(&halved);
    assert_eq!(avg.buffers().len(), halved.len());
    // Recompute: evaluation with statistics of the shard gives a finite, different result.
    t.model.batch_norm = BatchNormPolicy::Recompute;
    let mut re = NetworkLearner::new(&t, ctx).unwrap();
    let e_local = local.evaluate(&params).unwrap();
    let e_re = re.evaluate(&params).unwrap();
    assert!(e_re.loss.is_finite() && e_local.loss.is_finite());
    assert_ne!(e_re.loss, e_local.loss);
    // The recomputed means are the means over the shard's batches: not the initial zeros.
    assert!(re.buffers().iter().take(16).any(|&m| m != 0.0));
}

#[test]
fn a_batch_split_over_lanes_gives_the_whole_batchs_gradient() {
    // LeNet has no BatchNorm and no dropout: the weighted average of the parts' mean-loss
    // gradients is the whole batch's, up to f32 rounding. Batch 17 over 2 lanes: 9 + 8.
    let data = small_images(1, 28);
    let build = |threads: usize| {
        let data = DataConfig {
            batch_size: 17,
            synthetic: data.clone(),
            ..Default::default()
        };
        let mut m = ModelConfig::new(ModelName::Lenet);
        m.threads = Some(threads);
        one_worker(m, &data)
    };
    let (mut whole, mut split) = (build(1), build(2));
    assert_eq!((whole.lanes(), split.lanes()), (1, 2));
    let mut params = vec![0.0; whole.layout().len()];
    whole.init_params(&mut params);
    let n = params.len();
    let (mut gw, mut gs) = (vec![0.0; n], vec![0.0; n]);
    let lw = whole.loss_and_grad(&params, &mut gw).unwrap();
    let ls = split.loss_and_grad(&params, &mut gs).unwrap();
    assert!((lw - ls).abs() < 1e-5, "{lw} vs {ls}");
    let scale = gw.iter().map(|g| g.abs()).fold(0.0f32, f32::max);
    let max_diff = gw
        .iter()
        .zip(&gs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5 * scale.max(1.0), "max |Δ| = {max_diff}");
    // Evaluation on the same parameters does not depend on the lanes at all.
    let (ew, es) = (
        whole.evaluate(&params).unwrap(),
        split.evaluate(&params).unwrap(),
    );
    assert_eq!(ew.loss.to_bits(), es.loss.to_bits());
    assert_eq!(ew.accuracy, es.accuracy);
}

#[test]
fn split_batches_with_batch_norm_are_reproducible_and_keep_one_set_of_statistics() {
    // ResNet-20 on 2 lanes: the same seed gives the same gradient and statistics bit for
    // bit; the statistics are the lanes' average, so the worker has one set.
    let run = || {
        let data = DataConfig {
            batch_size: 8,
            synthetic: small_images(3, 8),
            ..Default::default()
        };
        let mut m = ModelConfig::new(ModelName::Resnet20);
        m.threads = Some(2);
        let mut l = one_worker(m, &data);
        let mut params = vec![0.0; l.layout().len()];
        l.init_params(&mut params);
        let mut grad = vec![0.0; params.len()];
        for _ in 0..2 {
            l.loss_and_grad(&params, &mut grad).unwrap();
        }
        (grad, l.buffers())
    };
    let (g1, b1) = run();
    let (g2, b2) = run();
    assert_eq!(g1, g2);
    assert_eq!(b1, b2);
    // Running means moved away from their initial zeros.
    assert!(b1.iter().any(|&v| v != 0.0 && v != 1.0));
}
