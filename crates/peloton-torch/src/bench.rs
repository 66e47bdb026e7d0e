//! `peloton bench --models … --device torch`: a model's training step through
//! [`TorchLearner`] against the same forward and backward on bare LibTorch in the same run
//! (no flat buffers: the parameters already in the tensor, the gradient left in LibTorch),
//! with peloton's flat-buffer SGD step and a communication round's local work. Medians of
//! `repeats` timed runs after one warm-up, the two sides interleaved.

use std::time::Instant;

use peloton_burn::bench::{median, time, ModelBench};
use peloton_burn::{DeviceKind, ModelConfig, ModelName, NetworkTask};
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
    let data = peloton_burn::bench::step_data(model, batch);
    let mut config = ModelConfig::new(model);
    config.device = device;
    config.threads = Some(peloton_burn::config::machine_cores());
    let task = TorchTask::new(NetworkTask::load(config, &data, 1, 0)?)?;
    let ctx = LearnerContext {
        rank: 0,
        workers: 1,
        seed: 0,
    };
    let mut learner = TorchLearner::new(&task, ctx)?;
    let mut params = vec![0.0; learner.layout().len()];
    learner.init_params(&mut params);
    let mut grad = vec![0.0; params.len()];
    let mut b = Batch::default();
    learner.next_batch(&mut b);
    learner.loss_and_grad_on(&params, &b, &mut grad)?;
    let sync = |d: Device| {
        if let Device::Cuda(i) = d {
            tch::Cuda::synchronize(i as i64);
        }
    };
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

impl TorchLearner {
    /// Forward and backward of `batch` on bare LibTorch: the parameters already in the
    /// tensor, the gradient left where autograd puts it.
    fn bare_step(&mut self, batch: &Batch) -> Result<()> {
        let x = self.images(batch)?;
        let targets = Tensor::from_slice(&batch.labels).to_device(self.device());
        let (net, store, rng) = self.parts();
        let logits = net.forward(store, &x, &mut Mode::Train { rng });
        let loss = logits.log_softmax(-1, Kind::Float).nll_loss(&targets);
        let _ = Tensor::run_backward(&[&loss], &[&store.params], false, false);
        let _ = loss.double_value(&[]);
        Ok(())
    }
}
