//! Measurements for `peloton bench --models`: a model's training step through peloton's
//! [`NetworkLearner`] against the same step done directly with burn in the same run, and the
//! cost of a communication round's local work (flatten, mix, write back) as a fraction of a
//! step. Medians of `repeats` timed runs after one warm-up.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use peloton_core::kernels;
use peloton_core::learner::{Learner, LearnerContext};
use peloton_core::Result;
use peloton_data::{Batch, DataConfig, SyntheticConfig};

use crate::flat::FlatMap;
use crate::learner::Kernels;
use crate::models::{ModelName, Net, Pass};
use crate::{DeviceKind, ModelConfig, NetworkLearner, NetworkTask};

/// One model's numbers, in milliseconds.
#[derive(Debug, Clone)]
pub struct ModelBench {
    pub model: ModelName,
    pub device: DeviceKind,
    pub params: usize,
    pub batch: usize,
    /// Forward + backward + gradients taken out of burn's `Gradients`, on burn alone.
    pub bare_ms: f64,
    /// The same through the learner: parameters written in from the flat buffer, forward,
    /// backward, gradients copied into the flat gradient buffer.
    pub learner_ms: f64,
    /// The flat-buffer SGD step (momentum 0.9) that follows.
    pub optimizer_ms: f64,
    /// A round's local work: read the parameters out of the model, mix with a peer's
    /// vector, write them back.
    pub round_ms: f64,
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds of `f`: the median of `repeats` timed calls after one untimed call.
pub fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// Benchmarks `model` on `device` with batches of `batch` synthetic images of its usual input
/// shape, using all cores.
/// The learner of a one-worker run of `config` on `data`, and its initial parameters.
fn single_worker(config: ModelConfig, data: &DataConfig) -> Result<(NetworkLearner, Vec<f32>)> {
    let task = NetworkTask::load(config, data, 1, 0)?;
    let ctx = LearnerContext {
        rank: 0,
        workers: 1,
        seed: 0,
    };
    let mut learner = NetworkLearner::new(&task, ctx)?;
    let mut params = vec![0.0; learner.layout().len()];
    learner.init_params(&mut params);
    Ok((learner, params))
}

/// Generated images of `model`'s usual input shape, two batches of `batch` to train on and
/// one to test: the data of a step measurement, on any backend.
pub fn step_data(model: ModelName, batch: usize) -> DataConfig {
    let [channels, size, _] = model.typical_input();
    DataConfig {
        batch_size: batch,
        synthetic: SyntheticConfig {
            channels,
            size,
            train: batch * 2,
            test: batch,
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn model_step(
    model: ModelName,
    device: DeviceKind,
    batch: usize,
    repeats: usize,
) -> Result<ModelBench> {
    let [channels, size, _] = model.typical_input();
    let data = step_data(model, batch);
    let cores = crate::config::machine_cores();
    let mut config = ModelConfig::new(model);
    config.device = device;
    config.threads = Some(cores);
    // The same kernels on both sides: the batch split is measured by `bench --training`.
    config.split_batch = false;
    let (mut learner, mut params) = single_worker(config, &data)?;
    let mut grad = vec![0.0; params.len()];
    let mut b = Batch::default();
    learner.next_batch(&mut b);

    // Bare burn: the same model and batch, no flat buffers.
    let kind = device;
    let device = kind.device()?.autodiff();
    let pool = Kernels::new(cores, 0)?;
    let net = Net::new(model, [channels, size, size], 10, &[256, 128], &device)?;
    let map = FlatMap::discover(&net);
    let net = map.write(net, &params, false);
    let [c, h, w] = b.shape;
    let bare = || {
        pool.install(|| {
            let x = Tensor::<4>::from_data(
                TensorData::new(b.images.clone(), [b.len(), c, h, w]),
                &device,
            );
            let y =
                Tensor::<1, Int>::from_data(TensorData::new(b.labels.clone(), [b.len()]), &device);
            let logits = net.forward(x, &mut Pass::eval());
            let loss = CrossEntropyLossConfig::new()
                .init(&device)
                .forward(logits, y);
            let _ = loss.clone().into_scalar::<f32>();
            let mut grads = loss.backward();
            // Take every gradient out of the graph, as an optimizer would.
            let mut sink = vec![0.0; map.params.len()];
            map.read_grads(&net, &mut grads, &mut sink);
        })
    };
    // Interleaved, so that drifts of the machine's speed hit both sides alike.
    let (mut bare_times, mut learner_times) = (Vec::new(), Vec::new());
    for i in 0..=repeats {
        let t = Instant::now();
        bare();
        let bare_t = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        learner.loss_and_grad_on(&params, &b, &mut grad)?;
        let learner_t = t.elapsed().as_secs_f64() * 1e3;
        if i > 0 {
            bare_times.push(bare_t);
            learner_times.push(learner_t);
        }
    }
    let (bare_ms, learner_ms) = (median(bare_times), median(learner_times));
    let opt = peloton_core::optim::OptimizerConfig {
        momentum: 0.9,
        ..Default::default()
    };
    let mut sgd = opt.init(learner.layout());
    let optimizer_ms = time(repeats, || {
        let mut g = grad.clone();
        sgd.step(&mut params, &mut g, 1e-6);
    });
    let peer = params.clone();
    let mut out = vec![0.0; params.len()];
    let mut model_net = Some(net);
    let round_ms = time(repeats, || {
        let net = model_net.take().expect("present");
        map.read(&net, &mut out, false);
        kernels::mix(&mut out, &peer, 0.1);
        model_net = Some(map.write(net, &out, false));
    });
    Ok(ModelBench {
        model,
        device: kind,
        params: params.len(),
        batch,
        bare_ms,
        learner_ms,
        optimizer_ms,
        round_ms,
    })
}

/// A table of [`ModelBench`] rows.
pub fn format_table(rows: &[ModelBench]) -> String {
    let mut s = format!(
        "{:<10} {:>8} {:>10} {:>6} {:>10} {:>12} {:>9} {:>10} {:>9} {:>11}\n",
        "model",
        "device",
        "params",
        "batch",
        "bare ms",
        "peloton ms",
        "overhead",
        "sgd ms",
        "round ms",
        "round/step"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:>8} {:>10} {:>6} {:>10.2} {:>12.2} {:>8.1}% {:>10.3} {:>9.3} {:>10.2}%\n",
            r.model.as_str(),
            r.device.as_str(),
            r.params,
            r.batch,
            r.bare_ms,
            r.learner_ms,
            100.0 * (r.learner_ms / r.bare_ms - 1.0),
            r.optimizer_ms,
            r.round_ms,
            100.0 * r.round_ms / (r.learner_ms + r.optimizer_ms),
        );
    }
    s
}

/// Seconds the default evaluation takes per 10,000 test images of `model`'s input shape
/// (timed on `images` generated images after one untimed evaluation, then scaled), with
/// the evaluation lanes a worker uses (every core on `flex`), and the lanes it used.
pub fn eval_seconds_per_10k(model: ModelName, images: usize) -> Result<(f64, usize)> {
    let [channels, size, _] = model.typical_input();
    let data = DataConfig {
        batch_size: 32,
        eval_batch_size: 500,
        synthetic: SyntheticConfig {
            channels,
            size,
            train: 64,
            test: images.max(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let (mut learner, params) = single_worker(ModelConfig::new(model), &data)?;
    learner.evaluate(&params)?;
    let t = Instant::now();
    learner.evaluate(&params)?;
    let seconds = t.elapsed().as_secs_f64();
    let cores = crate::config::machine_cores();
    Ok((seconds * 10_000.0 / images.max(1) as f64, cores))
}
