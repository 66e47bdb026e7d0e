//! `peloton bench --models … --device torch`: a model's training step through
//! [`TorchLearner`] against the same forward and backward on bare LibTorch in the same run
//! (no flat buffers: the parameters already in the tensor, the gradient left in LibTorch),
//! with peloton's flat-buffer SGD step and a communication round's local work; then the
//! learner's step in every precision and memory format against bare LibTorch's default (fp32,
//! `N×C×H×W`), which is PyTorch's default step without Python. Medians of `repeats` timed
//! runs after one warm-up, the sides interleaved.

use std::time::Instant;

use peloton_burn::bench::{median, time, ModelBench};
use peloton_burn::{DeviceKind, MemoryFormat, ModelConfig, ModelName, NetworkTask, Precision};
use peloton_core::kernels;
use peloton_core::learner::{Learner, LearnerContext};
use peloton_core::Result;
use peloton_data::Batch;
use tch::{Device, Kind, Tensor};

use crate::learner::{TorchLearner, TorchTask};
use crate::net::Mode;

/// Times one training step of `model` at batch `batch` on `device` (`torch` or
/// `torch-cuda`), every core to the one worker.
pub fn model_step(
    model: ModelName,
    device: DeviceKind,
    batch: usize,
    repeats: usize,
) -> Result<ModelBench> {
    let mut learner = one_worker(model, device, Precision::Fp32, MemoryFormat::Nchw, batch)?;
    let mut params = vec![0.0; learner.layout().len()];
    learner.init_params(&mut params);
    let mut grad = vec![0.0; params.len()];
    let mut b = Batch::default();
    learner.next_batch(&mut b);
    learner.loss_and_grad_on(&params, &b, &mut grad)?;
    let (mut bare_times, mut learner_times) = (Vec::new(), Vec::new());
    for i in 0..=repeats {
        let t = Instant::now();
        learner.bare_step(&b)?;
        sync(learner.device());
        let bare = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        learner.loss_and_grad_on(&params, &b, &mut grad)?;
        let through = t.elapsed().as_secs_f64() * 1e3;
        if i > 0 {
            bare_times.push(bare);
            learner_times.push(through);
        }
    }
    let opt = peloton_core::optim::OptimizerConfig {
        momentum: 0.9,
        ..Default::default()
    };
    let mut sgd = opt.init(learner.layout());
    let optimizer_ms = time(repeats, || {
        let mut g = grad.clone();
        sgd.step(&mut params, &mut g, 1e-6);
    });
    // A round: the parameters out of the model, mixed with a peer's, written back.
    let peer = params.clone();
    let mut out = vec![0.0; params.len()];
    let mut round_error = None;
    let round_ms = time(repeats, || {
        if let Err(e) = learner.round_trip(&mut out, |p| kernels::mix(p, &peer, 0.1)) {
            round_error = Some(e);
        }
    });
    if let Some(e) = round_error {
        return Err(e);
    }
    Ok(ModelBench {
        model,
        device,
        params: params.len(),
        batch,
        bare_ms: median(bare_times),
        learner_ms: median(learner_times),
        optimizer_ms,
        round_ms,
    })
}

/// The one-worker learner of a step benchmark, every core to it.
fn one_worker(
    model: ModelName,
    device: DeviceKind,
    precision: Precision,
    memory_format: MemoryFormat,
    batch: usize,
) -> Result<TorchLearner> {
    let data = peloton_burn::bench::step_data(model, batch);
    let mut config = ModelConfig::new(model);
    config.device = device;
    config.threads = Some(peloton_burn::config::machine_cores());
    config.precision = precision;
    config.memory_format = memory_format;
    let task = TorchTask::new(NetworkTask::load(config, &data, 1, 0)?)?;
    let ctx = LearnerContext {
        rank: 0,
        workers: 1,
        seed: 0,
    };
    TorchLearner::new(&task, ctx)
}

/// Waits for the GPU's queued work, so that a time covers it.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One model's training step in one precision and memory format.
#[derive(Debug, Clone)]
pub struct FormatBench {
    pub model: ModelName,
    pub precision: Precision,
    pub memory_format: MemoryFormat,
    /// The learner's step (parameters in, forward, backward, gradient out).
    pub learner_ms: f64,
    /// Bare LibTorch's fp32 `N×C×H×W` forward and backward in the same run.
    pub baseline_ms: f64,
}

/// The precisions a device offers: fp32 and bf16 everywhere, fp16 on GPUs.
pub fn precisions(device: DeviceKind) -> Vec<Precision> {
    let mut out = vec![Precision::Fp32, Precision::Bf16];
    if device == DeviceKind::TorchCuda {
        out.push(Precision::Fp16);
    }
    out
}

/// Times `model`'s learner step in every precision and memory format of `device`, each
/// against bare LibTorch's fp32 `N×C×H×W` step (PyTorch's default) in the same run: for each
/// timed repetition, the baseline and then every combination, so that a machine's drift
/// reaches all of them alike.
pub fn formats(
    model: ModelName,
    device: DeviceKind,
    batch: usize,
    repeats: usize,
) -> Result<Vec<FormatBench>> {
    let mut baseline = one_worker(model, device, Precision::Fp32, MemoryFormat::Nchw, batch)?;
    let mut params = vec![0.0; baseline.layout().len()];
    baseline.init_params(&mut params);
    let mut grad = vec![0.0; params.len()];
    let mut b = Batch::default();
    baseline.next_batch(&mut b);
    baseline.loss_and_grad_on(&params, &b, &mut grad)?;
    let mut combos = Vec::new();
    for precision in precisions(device) {
        for memory_format in [MemoryFormat::Nchw, MemoryFormat::ChannelsLast] {
            let learner = one_worker(model, device, precision, memory_format, batch)?;
            combos.push((precision, memory_format, learner, Vec::new()));
        }
    }
    let mut baseline_times = Vec::new();
    for i in 0..=repeats {
        let t = Instant::now();
        baseline.bare_step(&b)?;
        sync(baseline.device());
        if i > 0 {
            baseline_times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        for (_, _, learner, times) in &mut combos {
            let t = Instant::now();
            learner.loss_and_grad_on(&params, &b, &mut grad)?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let baseline_ms = median(baseline_times);
    Ok(combos
        .into_iter()
        .map(|(precision, memory_format, _, times)| FormatBench {
            model,
            precision,
            memory_format,
            learner_ms: median(times),
            baseline_ms,
        })
        .collect())
}

/// The table `peloton bench` prints for [`formats`].
pub fn format_formats(rows: &[FormatBench]) -> String {
    let mut s = format!(
        "{:<10} {:>9} {:>14} {:>12} {:>13} {:>16}\n",
        "model", "precision", "memory format", "peloton ms", "default ms", "ratio to default"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:>9} {:>14} {:>12.2} {:>13.2} {:>15.2}×\n",
            r.model.as_str(),
            r.precision.as_str(),
            r.memory_format.as_str(),
            r.learner_ms,
            r.baseline_ms,
            r.learner_ms / r.baseline_ms
        );
    }
    s
}

impl TorchLearner {
    /// Forward and backward of `batch` on bare LibTorch: the parameters already in the
    /// tensor, the gradient left where autograd puts it.
    fn bare_step(&mut self, batch: &Batch) -> Result<()> {
        let x = self.images(batch)?;
        let device = self.device();
        let (net, store, rng) = self.parts();
        let mut step = || -> crate::net::Torch<()> {
            let targets = Tensor::f_from_slice(&batch.labels)?.f_to_device(device)?;
            let logits = net.forward(store, &x, &mut Mode::Train { rng })?;
            let loss = logits
                .f_log_softmax(-1, Kind::Float)?
                .f_nll_loss::<Tensor>(&targets, None, tch::Reduction::Mean, -100)?;
            Tensor::f_run_backward(&[&loss], &[&store.params], false, false)?;
            loss.f_double_value(&[])?;
            Ok(())
        };
        step().map_err(|e| crate::learner::torch_error(0, "a bare LibTorch step", e))
    }
}
