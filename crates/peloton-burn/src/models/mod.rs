//! The model zoo. Every model maps `N×C×H×W` images to `N×classes` logits, and knows how to
//! initialize its own parameters in the flat buffer (see [`crate::init`]), so initialization
//! comes from peloton's seeded streams rather than from the backend's global generator.

pub mod cnn7;
pub mod lenet;
pub mod mlp;
pub mod resnet;
pub mod vgg;

use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::TensorData;
use peloton_core::seed::Rng;
use peloton_core::{ensure_config, Result};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

pub use cnn7::Cnn7;
pub use lenet::LeNet;
pub use mlp::Mlp;
pub use resnet::ResNet;
pub use vgg::Vgg;

/// What a forward pass needs besides the input: whether it trains (dropout on), the
/// worker's own dropout stream (so that dropout masks are reproducible from the run seed),
/// and whether BatchNorm reports its batch statistics.
pub struct Pass<'a> {
    pub train: bool,
    pub rng: Option<&'a mut Rng>,
    /// `Some`: every BatchNorm layer normalizes with the batch's own statistics and pushes
    /// them here, in forward order, on whatever device the pass runs. This is how running
    /// statistics are recomputed on the inference device: burn's BatchNorm takes its
    /// training path only on an autodiff device, where a forward pass without a backward
    /// leaves its whole tape (every saved activation) in the graph until the next backward —
    /// the 97 ResNet-20 batches of a CIFAR-10 shard held 24 GB that way.
    pub batch_stats: Option<Vec<BatchStats>>,
}

/// One BatchNorm layer's statistics over one batch: the per-channel mean and variance as
/// burn's training path computes them.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

impl Pass<'_> {
    pub fn eval() -> Pass<'static> {
        Pass {
            train: false,
            rng: None,
            batch_stats: None,
        }
    }

    /// A pass that normalizes with, and collects, each BatchNorm layer's batch statistics.
    pub fn batch_statistics() -> Pass<'static> {
        Pass {
            batch_stats: Some(Vec::new()),
            ..Pass::eval()
        }
    }
}

/// `bn` applied to `x` as `pass` asks: burn's own forward (batch statistics on the autodiff
/// device in training, running statistics otherwise), or, when the pass collects batch
/// statistics, normalization by the batch's statistics on any device, without touching the
/// running statistics (the caller folds the collected ones in).
pub fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>, pass: &mut Pass<'_>) -> Tensor<D> {
    let Some(stats) = pass.batch_stats.as_mut() else {
        return bn.forward(x);
    };
    let out = burn::tensor::module::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    let host = |t: Tensor<1>| {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default()
    };
    stats.push(BatchStats {
        mean: host(out.mean),
        var: host(out.variance),
    });
    out.output
}

/// Inverted dropout with a mask drawn from the worker's seeded stream.
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64, pass: &mut Pass<'_>) -> Tensor<D> {
    let Some(rng) = pass.rng.as_deref_mut() else {
        return x;
    };
    if !pass.train || p <= 0.0 {
        return x;
    }
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.random_bool(p) { 0.0 } else { keep })
        .collect();
    let mask = Tensor::<D>::from_data(TensorData::new(mask, dims), &x.device());
    x * mask
}

/// The models, selected by `model.name` in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    Mlp,
    Lenet,
    Cnn7,
    Resnet20,
    Resnet32,
    Resnet56,
    Vgg16,
}

impl ModelName {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelName::Mlp => "mlp",
            ModelName::Lenet => "lenet",
            ModelName::Cnn7 => "cnn7",
            ModelName::Resnet20 => "resnet20",
            ModelName::Resnet32 => "resnet32",
            ModelName::Resnet56 => "resnet56",
            ModelName::Vgg16 => "vgg16",
        }
    }

    pub fn catalog() -> &'static [(&'static str, &'static str)] {
        &[
            (
                "mlp",
                "fully connected, ReLU; hidden sizes in model.hidden (default 256, 128)",
            ),
            (
                "lenet",
                "LeNet-5: conv 6 → pool → conv 16 → pool → 120 → 84 → classes",
            ),
            (
                "cnn7",
                "EASGD/LSGD 7-layer convnet for 28×28 inputs (351,946 parameters on CIFAR-10)",
            ),
            (
                "resnet20",
                "CIFAR ResNet-20, option-A shortcuts, BatchNorm (269,722 parameters)",
            ),
            ("resnet32", "CIFAR ResNet-32, option-A shortcuts, BatchNorm"),
            ("resnet56", "CIFAR ResNet-56, option-A shortcuts, BatchNorm"),
            (
                "vgg16",
                "VGG-16 with BatchNorm for 32×32 inputs, 512-512-classes classifier, dropout",
            ),
        ]
    }

    /// Checks that the model accepts `[C, H, W]` inputs.
    /// The images this model is usually trained on, `[C, H, W]`: MNIST's 1×28×28 for the MLP
    /// and LeNet-5, CIFAR-10's 28×28 crops for CNN7, whole CIFAR-10 images otherwise (what
    /// the benchmarks generate).
    pub fn typical_input(&self) -> [usize; 3] {
        match self {
            ModelName::Mlp | ModelName::Lenet => [1, 28, 28],
            ModelName::Cnn7 => [3, 28, 28],
            _ => [3, 32, 32],
        }
    }

    /// The number of trainable parameters of this model on `input` (`[C, H, W]`) images
    /// with `classes` classes, from its layer shapes (without building it: a memory
    /// estimate must not allocate what it is about to refuse).
    pub fn parameters(&self, input: [usize; 3], classes: usize, hidden: &[usize]) -> u64 {
        let [c, classes] = [input[0] as u64, classes as u64];
        let linear = |i: u64, o: u64| i * o + o;
        let conv = |i: u64, o: u64, k: u64, bias: bool| i * o * k * k + if bias { o } else { 0 };
        match self {
            ModelName::Mlp => {
                let widths: Vec<u64> = std::iter::once(input.iter().map(|&d| d as u64).product())
                    .chain(hidden.iter().map(|&h| h as u64))
                    .chain(std::iter::once(classes))
                    .collect();
                widths.windows(2).map(|w| linear(w[0], w[1])).sum()
            }
            ModelName::Lenet => {
                conv(c, 6, 5, true)
                    + conv(6, 16, 5, true)
                    + linear(400, 120)
                    + linear(120, 84)
                    + linear(84, classes)
            }
            ModelName::Cnn7 => {
                conv(c, 64, 5, true)
                    + conv(64, 128, 5, true)
                    + conv(128, 64, 3, true)
                    + linear(256, 256)
                    + linear(256, classes)
            }
            ModelName::Resnet20 | ModelName::Resnet32 | ModelName::Resnet56 => {
                let n = match self {
                    ModelName::Resnet20 => 3,
                    ModelName::Resnet32 => 5,
                    _ => 9,
                };
                let mut total = conv(c, 16, 3, false) + 2 * 16;
                let mut input = 16u64;
                for planes in [16u64, 32, 64] {
                    for _ in 0..n {
                        total += conv(input, planes, 3, false) + conv(planes, planes, 3, false);
                        total += 4 * planes; // two BatchNorms' γ and β
                        input = planes;
                    }
                }
                total + linear(64, classes)
            }
            ModelName::Vgg16 => {
                let mut total = 0;
                let mut input = c;
                for out in [
                    64u64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512,
                ] {
                    total += conv(input, out, 3, true) + 2 * out;
                    input = out;
                }
                total + linear(512, 512) + linear(512, 512) + linear(512, classes)
            }
        }
    }

    pub fn check_input(&self, [c, h, w]: [usize; 3]) -> Result<()> {
        match self {
            ModelName::Mlp => {}
            ModelName::Lenet => {
                ensure_config!(
                    h == w && (h == 28 || h == 32),
                    "lenet takes 28×28 or 32×32 images, got {c}×{h}×{w}"
                );
            }
            ModelName::Cnn7 => {
                ensure_config!(
                    h == 28 && w == 28,
                    "cnn7 takes 28×28 images (use data.augmentation = {{ kind = \"crop-flip\", size = 28 }} on CIFAR-10), got {c}×{h}×{w}"
                );
            }
            ModelName::Resnet20 | ModelName::Resnet32 | ModelName::Resnet56 => {
                ensure_config!(
                    h >= 8 && w >= 8,
                    "{} needs images of at least 8×8, got {c}×{h}×{w}",
                    self.as_str()
                );
            }
            ModelName::Vgg16 => {
                ensure_config!(
                    h == 32 && w == 32,
                    "vgg16 takes 32×32 images, got {c}×{h}×{w}"
                );
            }
        }
        Ok(())
    }
}

/// One model of the zoo.
#[derive(Module, Debug)]
pub enum Net {
    Mlp(Mlp),
    LeNet(LeNet),
    Cnn7(Cnn7),
    ResNet(ResNet),
    Vgg(Vgg),
}

impl Net {
    /// Builds `name` for `[C, H, W]` inputs and `classes` outputs.
    pub fn new(
        name: ModelName,
        input: [usize; 3],
        classes: usize,
        hidden: &[usize],
        device: &Device,
    ) -> Result<Self> {
        name.check_input(input)?;
        Ok(match name {
            ModelName::Mlp => Net::Mlp(Mlp::new(input.iter().product(), hidden, classes, device)),
            ModelName::Lenet => Net::LeNet(LeNet::new(input, classes, device)),
            ModelName::Cnn7 => Net::Cnn7(Cnn7::new(input[0], classes, device)),
            ModelName::Resnet20 => Net::ResNet(ResNet::new(3, input[0], classes, device)),
            ModelName::Resnet32 => Net::ResNet(ResNet::new(5, input[0], classes, device)),
            ModelName::Resnet56 => Net::ResNet(ResNet::new(9, input[0], classes, device)),
            ModelName::Vgg16 => Net::Vgg(Vgg::new(input[0], classes, device)),
        })
    }

    pub fn forward(&self, x: Tensor<4>, pass: &mut Pass<'_>) -> Tensor<2> {
        match self {
            Net::Mlp(m) => m.forward(x),
            Net::LeNet(m) => m.forward(x),
            Net::Cnn7(m) => m.forward(x, pass),
            Net::ResNet(m) => m.forward(x, pass),
            Net::Vgg(m) => m.forward(x, pass),
        }
    }

    /// Every BatchNorm layer, in forward order (the order of [`Pass::batch_stats`]).
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        match self {
            Net::ResNet(m) => m.batch_norms(),
            Net::Vgg(m) => m.batch_norms(),
            _ => Vec::new(),
        }
    }

    /// The initialization scheme of this model's weights.
    pub fn init_scheme(&self) -> crate::init::Scheme {
        match self {
            Net::ResNet(_) => crate::init::Scheme::KaimingNormalFanIn,
            Net::Vgg(_) => crate::init::Scheme::VggConvFanOut,
            _ => crate::init::Scheme::PytorchDefault,
        }
    }
}

/// `x` flattened to `[N, rest]`.
/// The running statistics of a recomputation: each batch's per-layer statistics folded in
/// batch order with momentum 1/(k+1) at batch k — the cumulative average, as a training-mode
/// pass with that momentum leaves it. Empty when there are no batches.
pub fn fold_batch_statistics(
    per_batch: impl IntoIterator<Item = Vec<BatchStats>>,
) -> Vec<BatchStats> {
    let mut running: Vec<BatchStats> = Vec::new();
    for (k, stats) in per_batch.into_iter().enumerate() {
        if k == 0 {
            running = stats;
            continue;
        }
        let m = (1.0 / (k as f64 + 1.0)) as f32;
        for (r, s) in running.iter_mut().zip(&stats) {
            let means = r.mean.iter_mut().zip(&s.mean);
            for (r, s) in means.chain(r.var.iter_mut().zip(&s.var)) {
                *r = *r * (1.0 - m) + *s * m;
            }
        }
    }
    running
}

/// The segment tables of a model of the zoo as every learner lays it out, its initial
/// buffers and its initialization scheme: what another backend's learner (LibTorch's, in
/// `peloton-torch`) needs to mean the same network by the same parameter vector.
#[derive(Debug, Clone)]
pub struct ZooLayout {
    /// Trainable parameters, in burn's visit order (Linear weights `[in, out]`).
    pub params: peloton_core::layout::ParamLayout,
    /// BatchNorm running means and variances, in the same order.
    pub buffers: peloton_core::layout::ParamLayout,
    /// The buffers' initial values (means 0, variances 1).
    pub initial_buffers: Vec<f32>,
    pub scheme: crate::init::Scheme,
}

impl ZooLayout {
    /// Builds `name` once on `flex` (allocating its parameters) and reads its tables.
    pub fn of(
        name: ModelName,
        input: [usize; 3],
        classes: usize,
        hidden: &[usize],
    ) -> Result<Self> {
        let device = Device::flex().autodiff();
        let net = Net::new(name, input, classes, hidden, &device)?;
        let flat = crate::flat::FlatMap::discover(&net);
        let mut initial_buffers = vec![0.0; flat.buffers.len()];
        flat.read(&net, &mut initial_buffers, true);
        Ok(Self {
            scheme: net.init_scheme(),
            params: flat.params,
            buffers: flat.buffers,
            initial_buffers,
        })
    }
}

pub(crate) fn flatten(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c * h * w])
}
