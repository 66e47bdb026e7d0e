//! A model of your own, written with burn, trained by Leader SGD on 4 worker threads.
//!
//! peloton's algorithms see a model only through the `Learner` trait: a flat parameter buffer
//! in, a mini-batch loss and a flat gradient out. So any burn `Module` trains under any
//! algorithm once a learner moves its tensors to and from that buffer — which
//! `peloton_burn::flat::FlatMap` does (it walks the module once and keeps every tensor's place).
//! Here the model is a two-layer MLP classifying three Gaussian blobs in the plane, each worker
//! on its own shard; LSGD pulls the workers toward the best one every 4 steps.
//!
//! ```text
//! cargo run --release -p peloton-examples --bin burn_model_lsgd
//! ```

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use peloton_burn::flat::FlatMap;
use peloton_core::algorithms::{AlgorithmConfig, LsgdConfig};
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext};
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{run_threads, Event, RunConfig};
use peloton_core::{seed, Result};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// The user's model: 2 inputs → 32 hidden units (ReLU) → 3 classes.
#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Mlp {
            hidden: LinearConfig::new(2, 32).init(device),
            out: LinearConfig::new(32, 3).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }
}

/// Three Gaussian blobs (σ = 1) around points 2 apart from the origin: `n` points and labels.
fn blobs(n: usize, rng: &mut impl Rng) -> (Vec<f32>, Vec<i64>) {
    let noise = Normal::new(0.0f32, 1.0).expect("σ > 0");
    let (mut xs, mut ys) = (Vec::with_capacity(2 * n), Vec::with_capacity(n));
    for _ in 0..n {
        let class = rng.random_range(0..3);
        let angle = class as f32 * std::f32::consts::TAU / 3.0;
        xs.push(2.0 * angle.cos() + noise.sample(rng));
        xs.push(2.0 * angle.sin() + noise.sample(rng));
        ys.push(class as i64);
    }
    (xs, ys)
}

/// One worker's learner: its model on burn's autodiff device, its shard and test set.
struct MlpLearner {
    device: Device,
    model: Option<Mlp>,
    flat: FlatMap,
    train: (Vec<f32>, Vec<i64>),
    test: (Vec<f32>, Vec<i64>),
    rng: seed::Rng,
    seed: u64,
}

impl MlpLearner {
    /// The learner factory: any `Fn(LearnerContext) -> Result<Box<dyn Learner>>` is one.
    fn build(ctx: LearnerContext) -> Result<Box<dyn Learner>> {
        let device = Device::flex().autodiff();
        let model = Mlp::new(&device);
        // The dataset is the same on every worker (drawn from the run seed); each worker keeps
        // every `workers`-th point of it, and samples its batches from a stream of its own.
        let mut data = seed::rng(ctx.seed, "blobs", 0);
        let (xs, ys) = blobs(4_000, &mut data);
        let shard = (ctx.rank..ys.len()).step_by(ctx.workers);
        let train = (
            shard
                .clone()
                .flat_map(|i| [xs[2 * i], xs[2 * i + 1]])
                .collect(),
            shard.map(|i| ys[i]).collect(),
        );
        Ok(Box::new(MlpLearner {
            flat: FlatMap::discover(&model),
            model: Some(model),
            device,
            train,
            test: blobs(1_000, &mut data),
            rng: seed::rng(ctx.seed, "batches", ctx.rank as u64),
            seed: ctx.seed,
        }))
    }

    /// Writes `params` into the model and returns its logits on `xs`.
    fn logits(&mut self, params: &[f32], xs: Vec<f32>) -> Tensor<2> {
        let model = self.model.take().expect("the model is always put back");
        let model = self.model.insert(self.flat.write(model, params, false));
        let n = xs.len() / 2;
        model.forward(Tensor::from_data(TensorData::new(xs, [n, 2]), &self.device))
    }
}

impl Learner for MlpLearner {
    fn layout(&self) -> &ParamLayout {
        &self.flat.params
    }

    fn init_params(&mut self, params: &mut [f32]) {
        // From the run seed, so that a seed fixes the whole run: weights (burn stores a
        // linear layer's as in × out) uniform in ±1/√fan_in as PyTorch's default, biases 0.
        let mut rng = seed::rng(self.seed, "init", 0);
        for segment in self.flat.params.segments() {
            let values = &mut params[segment.range()];
            match segment.shape[..] {
                [fan_in, _] => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    values.fill_with(|| rng.random_range(-bound..bound));
                }
                _ => values.fill(0.0),
            }
        }
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        const BATCH: usize = 32;
        let (mut xs, mut ys) = (Vec::with_capacity(2 * BATCH), Vec::with_capacity(BATCH));
        for _ in 0..BATCH {
            let i = self.rng.random_range(0..self.train.1.len());
            xs.extend_from_slice(&self.train.0[2 * i..2 * i + 2]);
            ys.push(self.train.1[i]);
        }
        let device = self.device.clone();
        let logits = self.logits(params, xs);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(ys, [BATCH]), &device);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets);
        let value = loss.clone().into_scalar::<f32>();
        let mut grads = loss.backward();
        let model = self.model.as_ref().expect("the model is always put back");
        self.flat.read_grads(model, &mut grads, grad);
        Ok(value as f64)
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let (xs, ys) = self.test.clone();
        let logits = self.logits(params, xs);
        let values: Vec<f32> = logits.into_data().try_to_vec().expect("f32 logits");
        let (loss_sum, correct) = peloton_burn::learner::score(&values, &ys);
        Ok(Evaluation {
            loss: loss_sum / ys.len() as f64,
            accuracy: Some(correct as f64 / ys.len() as f64),
            grad_norm: None,
        })
    }
}

fn main() -> std::process::ExitCode {
    let config = RunConfig {
        workers: 4,
        seed: 1,
        steps: Some(300),
        log_every: 100,
        eval_every: 100,
        optimizer: OptimizerConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        },
        algorithm: AlgorithmConfig::new(LsgdConfig::default()),
        ..Default::default()
    };
    let result = run_threads(&config, &MlpLearner::build, &mut |event| {
        if let Event::Eval(e) = event {
            println!(
                "step {:>4}  {} model: test loss {:.4}, accuracy {:.1}%",
                e.step,
                e.model,
                e.eval.loss,
                100.0 * e.eval.accuracy.unwrap_or(f64::NAN)
            );
        }
    });
    match result {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
