//! Where a `flex` training step's time goes, and what each way of using the cores gives.
//!
//! ```sh
//! cargo run --release -p peloton-burn --example step_profile -- resnet20   # or cnn7, lenet
//! ```
//!
//! Prints, for batch 128 on generated images of the model's shape (medians of 5 after one
//! warm-up):
//! - the parts of a step: drawing the batch (augmentation included), forward only, forward +
//!   backward, the flat SGD step;
//! - the model's dominant layers alone (a 3×3 convolution and a BatchNorm at the largest
//!   feature map), forward and backward;
//! - the core splits: one worker's step with burn's kernels on 1 thread and on every core,
//!   the batch split over one lane per core, and one independent step per core at once;
//! - evaluation of 1,000 images on every core's lane.
//!
//! BENCHMARKS.md, "Where the cores go", has this machine's numbers.

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use peloton_burn::models::ModelName;
use peloton_burn::{ModelConfig, NetworkLearner, NetworkTask};
use peloton_core::learner::{Learner, LearnerContext};
use peloton_data::{Batch, DataConfig, SyntheticConfig};

const BATCH: usize = 128;
const REPEATS: usize = 5;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPEATS / 2]
}

fn learner(model: ModelName, batch: usize, threads: usize, split: bool) -> NetworkLearner {
    let [channels, size, _] = model.typical_input();
    let data = DataConfig {
        batch_size: batch,
        eval_batch_size: 500,
        synthetic: SyntheticConfig {
            channels,
            size,
            train: batch * 4,
            test: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut config = ModelConfig::new(model);
    config.threads = Some(threads);
    config.split_batch = split;
    let task = NetworkTask::load(config, &data, 1, 0).expect("task");
    let ctx = LearnerContext {
        rank: 0,
        workers: 1,
        seed: 0,
    };
    NetworkLearner::new(&task, ctx).expect("learner")
}

/// Median milliseconds of one training step (forward + backward) of `l` on one batch.
fn step_ms(l: &mut NetworkLearner) -> f64 {
    let mut params = vec![0.0; l.layout().len()];
    l.init_params(&mut params);
    let mut grad = vec![0.0; params.len()];
    let mut batch = Batch::default();
    l.next_batch(&mut batch);
    median_ms(|| {
        l.loss_and_grad_on(&params, &batch, &mut grad)
            .expect("step");
    })
}

/// Runs `f` inside a rayon pool of `threads` threads (burn's `flex` kernels use the pool
/// of the calling thread).
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
        .install(f)
}

fn layers(model: ModelName, threads: usize) {
    let device = Device::flex().autodiff();
    let (c, hw) = match model {
        ModelName::Cnn7 => (64, 24),
        ModelName::Lenet | ModelName::Mlp => (6, 28),
        _ => (16, 32),
    };
    let conv = Conv2dConfig::new([c, c], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let bn = BatchNormConfig::new(c).init(&device);
    let x = || {
        Tensor::<4>::random(
            [BATCH, c, hw, hw],
            burn::tensor::Distribution::Default,
            &device,
        )
        .require_grad()
    };
    let conv_fwd = median_ms(|| {
        let _ = conv.forward(x()).into_data();
    });
    let conv_both = median_ms(|| {
        let y = conv.forward(x()).sum();
        let _ = y.backward();
    });
    let bn_fwd = median_ms(|| {
        let _ = bn.forward(x()).into_data();
    });
    let bn_both = median_ms(|| {
        let y = bn.forward(x()).sum();
        let _ = y.backward();
    });
    println!(
        "  {threads} thread(s): conv3×3 {c}→{c} at {hw}×{hw}: forward {conv_fwd:.1} ms, forward+backward {conv_both:.1} ms; BatchNorm({c}): forward {bn_fwd:.1} ms, forward+backward {bn_both:.1} ms"
    );
    let _ = bn.valid();
}

fn main() {
    let model = match std::env::args().nth(1).as_deref() {
        Some("cnn7") => ModelName::Cnn7,
        Some("lenet") => ModelName::Lenet,
        Some("resnet20") | None => ModelName::Resnet20,
        Some(other) => {
            eprintln!("error: unknown model '{other}' (lenet, cnn7, resnet20)");
            std::process::exit(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "{} at batch {BATCH} on flex, {cores} cores:",
        model.as_str()
    );

    // Parts of one step, one thread.
    let mut one = learner(model, BATCH, 1, false);
    let mut batch = Batch::default();
    let draw = median_ms(|| one.next_batch(&mut batch));
    let step = step_ms(&mut one);
    let mut params = vec![0.0; one.layout().len()];
    one.init_params(&mut params);
    let mut sgd = peloton_core::optim::OptimizerConfig {
        momentum: 0.9,
        ..Default::default()
    }
    .init(one.layout());
    let grad = vec![1e-3; params.len()];
    let optimizer = median_ms(|| {
        let mut g = grad.clone();
        sgd.step(&mut params, &mut g, 1e-3);
    });
    println!(
        "  parts (1 thread): draw a batch {draw:.1} ms, forward+backward {step:.1} ms, SGD step {optimizer:.2} ms"
    );
    on_threads(1, || layers(model, 1));
    on_threads(cores, || layers(model, cores));

    // Core splits for one worker.
    let burn_all = step_ms(&mut learner(model, BATCH, cores, false));
    let split = step_ms(&mut learner(model, BATCH, cores, true));
    let parallel: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|_| s.spawn(|| step_ms(&mut learner(model, BATCH, 1, false))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("step"))
            .collect()
    });
    let parallel = parallel.iter().copied().fold(0.0, f64::max);
    let rate = |ms: f64, batches: usize| (batches * BATCH) as f64 / ms * 1e3;
    println!(
        "  one worker, burn on 1 thread: {step:.0} ms/step ({:.0} samples/s)",
        rate(step, 1)
    );
    println!(
        "  one worker, burn on {cores} threads: {burn_all:.0} ms/step ({:.0} samples/s, ×{:.2})",
        rate(burn_all, 1),
        step / burn_all
    );
    println!(
        "  one worker, batch split over {cores} lanes: {split:.0} ms/step ({:.0} samples/s, ×{:.2})",
        rate(split, 1),
        step / split
    );
    println!(
        "  {cores} workers at once, 1 thread each: {parallel:.0} ms/step ({:.0} samples/s, ×{:.2})",
        rate(parallel, cores),
        rate(parallel, cores) / rate(step, 1)
    );

    // Evaluation: 1,000 images, one lane per core.
    let mut eval = learner(model, BATCH, 1, false);
    let mut p = vec![0.0; eval.layout().len()];
    eval.init_params(&mut p);
    let all = median_ms(|| {
        eval.evaluate(&p).expect("eval");
    });
    println!("  evaluation of 1,000 images on {cores} lanes: {all:.0} ms");
}
