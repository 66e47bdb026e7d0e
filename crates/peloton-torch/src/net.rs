//! The model zoo on LibTorch, over peloton's flat buffers.
//!
//! Every network reads its tensors as views of two flat LibTorch tensors: the parameters (the
//! leaf that autograd differentiates, so the whole gradient arrives as one contiguous
//! buffer) and the buffers (BatchNorm running statistics, updated in place by LibTorch's
//! kernel). The segment tables are the burn learner's ([`peloton_burn::flat::FlatMap`]), so
//! a parameter vector means the same network on `flex` and on LibTorch: the same names,
//! shapes and order, Linear weights stored `[in, out]` as burn stores them. Each layer takes
//! its segments in the order burn's module visit gives them and checks their names and
//! shapes, so a layout that does not fit is an error, never a silent misreading.
//!
//! The architectures repeat `peloton_burn::models` layer for layer (see there for the papers
//! they follow); a test compares losses, gradients and evaluations with the burn learner.

use peloton_burn::ModelName;
use peloton_core::layout::{ParamLayout, Segment};
use peloton_core::seed::Rng;
use peloton_core::{Error, Result};
use rand::Rng as _;
use tch::{Kind, TchError, Tensor};

/// BatchNorm's constants, burn's and PyTorch's defaults alike.
const BN_MOMENTUM: f64 = 0.1;
const BN_EPSILON: f64 = 1e-5;

/// Where one tensor lies in a flat buffer: its segment's index in the layout, and offset.
#[derive(Debug, Clone)]
struct Slot {
    index: usize,
    offset: i64,
    numel: i64,
    shape: Vec<i64>,
}

/// The two flat tensors a network reads (parameters and running statistics, both fp32), and
/// the format its convolutions and linear layers compute in.
pub(crate) struct Store {
    pub params: Tensor,
    pub buffers: Tensor,
    /// `BFloat16` or `Half` for mixed precision, `None` for fp32.
    pub reduced: Option<Kind>,
    /// The parameter segments' sizes, in layout order (they tile the flat tensor).
    pub sizes: Vec<i64>,
    /// Channels-last activations, and convolution weights handed to the kernels in the
    /// same layout.
    pub channels_last: bool,
}

/// One forward pass's views of a [`Store`]: the parameter segments split off the flat leaf
/// in one operation, and, with mixed precision, split off one cast of the whole leaf.
///
/// One split (not a `narrow` per segment) matters for the backward pass: a `narrow`'s
/// gradient is a zero tensor of the whole leaf's size with the segment copied in, and
/// autograd sums those, one whole-size addition per segment (about 65 for ResNet-20);
/// a split's gradient is one concatenation. With bf16 that was 10–15% of a ResNet-20 step.
/// Casting the leaf once likewise gives one cast node instead of one per weight. The cast
/// is an autograd operation, so the gradient reaches the fp32 leaf, as under PyTorch's
/// autocast.
pub(crate) struct Views<'a> {
    store: &'a Store,
    params: Vec<Tensor>,
    reduced: Option<(Kind, Vec<Tensor>)>,
}

/// What LibTorch operations return: a C++ exception (CUDA out of memory, a shape LibTorch
/// refuses) comes back as an error, never as a panic.
pub(crate) type Torch<T = Tensor> = std::result::Result<T, TchError>;

impl Store {
    /// The views of one forward pass.
    pub fn views(&self) -> Torch<Views<'_>> {
        let reduced = match self.reduced {
            Some(kind) => Some((
                kind,
                self.params
                    .f_to_kind(kind)?
                    .f_split_with_sizes(self.sizes.as_slice(), 0)?,
            )),
            None => None,
        };
        Ok(Views {
            store: self,
            params: self.params.f_split_with_sizes(self.sizes.as_slice(), 0)?,
            reduced,
        })
    }
}

impl Views<'_> {
    /// A parameter in fp32 (BatchNorm's affine parameters).
    fn param(&self, s: &Slot) -> Torch {
        self.params[s.index].f_view(s.shape.as_slice())
    }

    /// A weight or bias of a convolution or linear layer, in the compute format; with
    /// channels-last, a convolution's weight in channels-last strides too, as PyTorch's
    /// `model.to(memory_format=torch.channels_last)` leaves it. LibTorch takes the
    /// channels-last kernels when the input or the weight is channels-last, and a
    /// one-channel input (MNIST) cannot say it: its two layouts have the same strides.
    fn weight(&self, s: &Slot) -> Torch {
        let w = match &self.reduced {
            Some((_, parts)) => parts[s.index].f_view(s.shape.as_slice())?,
            None => self.param(s)?,
        };
        if self.store.channels_last && s.shape.len() == 4 {
            channels_last(&w)
        } else {
            Ok(w)
        }
    }

    /// A running statistic: a view of the buffer tensor, which BatchNorm updates in place.
    fn buffer(&self, s: &Slot) -> Torch {
        self.store
            .buffers
            .f_narrow(0, s.offset, s.numel)?
            .f_view(s.shape.as_slice())
    }

    /// An activation in the compute format (not copied when it is in it already).
    fn compute(&self, t: &Tensor) -> Torch {
        match &self.reduced {
            Some((kind, _)) if t.kind() != *kind => t.f_to_kind(*kind),
            _ => Ok(t.shallow_clone()),
        }
    }
}

/// `t` (`N×C×H×W`) with channels-last strides: permuted to `N×H×W×C`, made contiguous,
/// permuted back. tch has no memory-format argument; LibTorch recognises these strides as
/// channels-last (`suggest_memory_format`).
pub(crate) fn channels_last(t: &Tensor) -> Torch {
    t.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])
}

/// The sizes of `layout`'s segments, which must tile its flat buffer in order (as every
/// layout of the zoo does): the views of a forward pass are one split by these sizes.
pub(crate) fn segment_sizes(layout: &ParamLayout) -> Result<Vec<i64>> {
    let mut end = 0;
    let mut sizes = Vec::with_capacity(layout.segments().len());
    for seg in layout.segments() {
        if seg.offset != end {
            return Err(Error::Config(format!(
                "the LibTorch model needs parameter segments that follow each other; `{}` starts at {}, not {end}",
                seg.name, seg.offset
            )));
        }
        end += seg.numel();
        sizes.push(seg.numel() as i64);
    }
    if end != layout.len() {
        return Err(Error::Config(format!(
            "the parameter segments cover {end} of the layout's {} values",
            layout.len()
        )));
    }
    Ok(sizes)
}

/// What a forward pass is for.
pub(crate) enum Mode<'a> {
    /// Training: BatchNorm normalizes by the batch's statistics and folds them into the
    /// running ones; dropout draws its masks from `rng` (as the burn learner does, element by
    /// element, so both draw the same masks).
    Train { rng: &'a mut Rng },
    /// Inference with the running statistics.
    Eval,
    /// Inference that normalizes every BatchNorm by its batch's own statistics and hands them
    /// out, in forward order (mean, unbiased variance as PyTorch keeps it): the recomputation
    /// of the running statistics.
    BatchStatistics(&'a mut Vec<(Tensor, Tensor)>),
}

/// Takes segments off a layout in order, checking each against what the layer expects.
struct Cursor<'a> {
    params: std::iter::Enumerate<std::slice::Iter<'a, Segment>>,
    buffers: std::iter::Enumerate<std::slice::Iter<'a, Segment>>,
}

impl Cursor<'_> {
    fn take(
        segments: &mut std::iter::Enumerate<std::slice::Iter<'_, Segment>>,
        what: &str,
        name: &str,
        shape: &[usize],
    ) -> Result<Slot> {
        let mismatch = |found: String| {
            Error::Config(format!(
                "the LibTorch model expects {what} `…{name}` of shape {shape:?}, the layout has {found}"
            ))
        };
        let (index, seg) = segments
            .next()
            .ok_or_else(|| mismatch("no more segments".into()))?;
        if !seg.name.ends_with(name) || seg.shape != shape {
            return Err(mismatch(format!("`{}` {:?}", seg.name, seg.shape)));
        }
        Ok(Slot {
            index,
            offset: seg.offset as i64,
            numel: seg.numel() as i64,
            shape: seg.shape.iter().map(|&d| d as i64).collect(),
        })
    }

    fn param(&mut self, name: &str, shape: &[usize]) -> Result<Slot> {
        Self::take(&mut self.params, "parameter", name, shape)
    }

    fn buffer(&mut self, name: &str, shape: &[usize]) -> Result<Slot> {
        Self::take(&mut self.buffers, "buffer", name, shape)
    }
}

pub(crate) struct Conv {
    weight: Slot,
    bias: Option<Slot>,
    stride: i64,
    padding: i64,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        c: &mut Cursor,
        input: usize,
        output: usize,
        kernel: usize,
        stride: i64,
        padding: i64,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: c.param("weight", &[output, input, kernel, kernel])?,
            bias: if bias {
                Some(c.param("bias", &[output])?)
            } else {
                None
            },
            stride,
            padding,
        })
    }

    fn forward(&self, s: &Views, x: &Tensor) -> Torch {
        let bias = self.bias.as_ref().map(|b| s.weight(b)).transpose()?;
        s.compute(x)?.f_conv2d(
            &s.weight(&self.weight)?,
            bias,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

pub(crate) struct Linear {
    /// `[in, out]`, as burn stores it.
    weight: Slot,
    bias: Slot,
}

impl Linear {
    fn new(c: &mut Cursor, input: usize, output: usize) -> Result<Self> {
        Ok(Self {
            weight: c.param("weight", &[input, output])?,
            bias: c.param("bias", &[output])?,
        })
    }

    /// `bias + x · weight` in one fused call.
    fn forward(&self, s: &Views, x: &Tensor) -> Torch {
        s.weight(&self.bias)?
            .f_addmm(&s.compute(x)?, &s.weight(&self.weight)?)
    }
}

pub(crate) struct BatchNorm {
    gamma: Slot,
    beta: Slot,
    mean: Slot,
    var: Slot,
}

impl BatchNorm {
    fn new(c: &mut Cursor, channels: usize) -> Result<Self> {
        Ok(Self {
            gamma: c.param("gamma", &[channels])?,
            beta: c.param("beta", &[channels])?,
            mean: c.buffer("running_mean", &[channels])?,
            var: c.buffer("running_var", &[channels])?,
        })
    }

    /// With mixed precision `x` comes in the reduced format and BatchNorm runs mixed, as
    /// under autocast: the kernel reads and writes the activations in that format, and its
    /// statistics, affine parameters and running statistics are fp32.
    fn forward(&self, s: &Views, x: &Tensor, mode: &mut Mode) -> Torch {
        let (gamma, beta) = (s.param(&self.gamma)?, s.param(&self.beta)?);
        let norm = |mean: &Tensor, var: &Tensor, training: bool, momentum: f64| {
            x.f_batch_norm(
                Some(&gamma),
                Some(&beta),
                Some(mean),
                Some(var),
                training,
                momentum,
                BN_EPSILON,
                true,
            )
        };
        match mode {
            // The running statistics are views of the buffer tensor: LibTorch's kernel
            // updates them in place, so the flat buffer holds them afterwards.
            Mode::Train { .. } => norm(
                &s.buffer(&self.mean)?,
                &s.buffer(&self.var)?,
                true,
                BN_MOMENTUM,
            ),
            Mode::Eval => norm(&s.buffer(&self.mean)?, &s.buffer(&self.var)?, false, 0.0),
            Mode::BatchStatistics(stats) => {
                // Momentum 1 leaves exactly the batch's statistics in fresh tensors.
                let channels = self.mean.numel;
                let options = (Kind::Float, x.device());
                let (mean, var) = (
                    Tensor::f_zeros([channels], options)?,
                    Tensor::f_ones([channels], options)?,
                );
                let out = norm(&mean, &var, true, 1.0)?;
                stats.push((mean, var));
                Ok(out)
            }
        }
    }
}

/// Inverted dropout with peloton's random stream: element by element in row-major order,
/// zero with probability `p`, else scaled by 1/(1 − p) — the burn learner's masks.
fn dropout(x: Tensor, p: f64, mode: &mut Mode) -> Torch {
    let Mode::Train { rng } = mode else {
        return Ok(x);
    };
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.numel())
        .map(|_| if rng.random_bool(p) { 0.0 } else { keep })
        .collect();
    let mask = Tensor::f_from_slice(&mask)?
        .f_view(x.size().as_slice())?
        .f_to_device(x.device())?
        .f_to_kind(x.kind())?;
    x.f_mul(&mask)
}

fn max_pool(x: &Tensor) -> Torch {
    x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

fn flatten(x: &Tensor) -> Torch {
    x.f_flatten(1, -1)
}

/// A CIFAR ResNet basic block (option-A shortcut: subsampled identity padded with zero
/// channels where the shape changes).
pub(crate) struct Block {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    stride: i64,
    pad_channels: i64,
}

impl Block {
    fn forward(&self, s: &Views, x: &Tensor, mode: &mut Mode) -> Torch {
        let out = self
            .bn1
            .forward(s, &self.conv1.forward(s, x)?, mode)?
            .f_relu()?;
        let out = self.bn2.forward(s, &self.conv2.forward(s, &out)?, mode)?;
        let shortcut = if self.stride == 1 && self.pad_channels == 0 {
            x.shallow_clone()
        } else {
            let sub = x
                .f_slice(2, 0, None, self.stride)?
                .f_slice(3, 0, None, self.stride)?;
            let p = self.pad_channels;
            sub.f_constant_pad_nd([0, 0, 0, 0, p, p])?
        };
        out.f_add(&shortcut)?.f_relu()
    }
}

/// One network of the zoo.
pub(crate) enum Model {
    Mlp(Vec<Linear>),
    LeNet {
        conv1: Conv,
        conv2: Conv,
        fc: [Linear; 3],
    },
    Cnn7 {
        conv: [Conv; 3],
        fc1: Linear,
        fc2: Linear,
    },
    ResNet {
        conv1: Conv,
        bn1: BatchNorm,
        blocks: Vec<Block>,
        linear: Linear,
    },
    Vgg {
        features: Vec<(Conv, BatchNorm)>,
        fc: [Linear; 3],
    },
}

/// VGG-16's configuration "D": output channels, 0 = 2×2 max pooling.
const VGG_D: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

impl Model {
    /// `name` over the segment tables `params` and `buffers` (the burn learner's).
    pub fn new(
        name: ModelName,
        [channels, height, width]: [usize; 3],
        classes: usize,
        hidden: &[usize],
        params: &ParamLayout,
        buffers: &ParamLayout,
    ) -> Result<Self> {
        let c = &mut Cursor {
            params: params.segments().iter().enumerate(),
            buffers: buffers.segments().iter().enumerate(),
        };
        let net = match name {
            ModelName::Mlp => {
                let mut sizes = vec![channels * height * width];
                sizes.extend_from_slice(hidden);
                sizes.push(classes);
                Model::Mlp(
                    sizes
                        .windows(2)
                        .map(|w| Linear::new(c, w[0], w[1]))
                        .collect::<Result<_>>()?,
                )
            }
            ModelName::Lenet => Model::LeNet {
                conv1: Conv::new(
                    c,
                    channels,
                    6,
                    5,
                    1,
                    ((32 - height.min(32)) / 2) as i64,
                    true,
                )?,
                conv2: Conv::new(c, 6, 16, 5, 1, 0, true)?,
                fc: [
                    Linear::new(c, 400, 120)?,
                    Linear::new(c, 120, 84)?,
                    Linear::new(c, 84, classes)?,
                ],
            },
            ModelName::Cnn7 => Model::Cnn7 {
                conv: [
                    Conv::new(c, channels, 64, 5, 1, 0, true)?,
                    Conv::new(c, 64, 128, 5, 1, 0, true)?,
                    Conv::new(c, 128, 64, 3, 1, 0, true)?,
                ],
                fc1: Linear::new(c, 256, 256)?,
                fc2: Linear::new(c, 256, classes)?,
            },
            ModelName::Resnet20 | ModelName::Resnet32 | ModelName::Resnet56 => {
                let n = match name {
                    ModelName::Resnet20 => 3,
                    ModelName::Resnet32 => 5,
                    _ => 9,
                };
                let conv1 = Conv::new(c, channels, 16, 3, 1, 1, false)?;
                let bn1 = BatchNorm::new(c, 16)?;
                let mut blocks = Vec::with_capacity(3 * n);
                let mut input = 16;
                for (stage, planes) in [16, 32, 64].into_iter().enumerate() {
                    for b in 0..n {
                        let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                        let reshapes = stride != 1 || input != planes;
                        blocks.push(Block {
                            conv1: Conv::new(c, input, planes, 3, stride, 1, false)?,
                            bn1: BatchNorm::new(c, planes)?,
                            conv2: Conv::new(c, planes, planes, 3, 1, 1, false)?,
                            bn2: BatchNorm::new(c, planes)?,
                            stride: if reshapes { stride } else { 1 },
                            pad_channels: if reshapes {
                                ((planes - input) / 2) as i64
                            } else {
                                0
                            },
                        });
                        input = planes;
                    }
                }
                Model::ResNet {
                    conv1,
                    bn1,
                    blocks,
                    linear: Linear::new(c, 64, classes)?,
                }
            }
            ModelName::Vgg16 => {
                let mut input = channels;
                let mut features = Vec::new();
                for &out in VGG_D.iter().filter(|&&o| o > 0) {
                    // burn visits each layer's convolution, then its BatchNorm.
                    let conv = Conv::new(c, input, out, 3, 1, 1, true)?;
                    features.push((conv, BatchNorm::new(c, out)?));
                    input = out;
                }
                Model::Vgg {
                    features,
                    fc: [
                        Linear::new(c, 512, 512)?,
                        Linear::new(c, 512, 512)?,
                        Linear::new(c, 512, classes)?,
                    ],
                }
            }
        };
        let (extra_params, extra_buffers) = (c.params.len(), c.buffers.len());
        if extra_params + extra_buffers > 0 {
            return Err(Error::Config(format!(
                "the LibTorch {} leaves {extra_params} parameter and {extra_buffers} buffer segments of the layout unused",
                name.as_str()
            )));
        }
        Ok(net)
    }

    /// The logits of `x` (`N×C×H×W`), in the compute format (fp32 or the reduced one).
    pub fn forward(&self, store: &Store, x: &Tensor, mode: &mut Mode) -> Torch {
        let s = &store.views()?;
        match self {
            Model::Mlp(layers) => {
                let mut h = flatten(x)?;
                for (i, layer) in layers.iter().enumerate() {
                    h = layer.forward(s, &h)?;
                    if i + 1 < layers.len() {
                        h = h.f_relu()?;
                    }
                }
                Ok(h)
            }
            Model::LeNet { conv1, conv2, fc } => {
                let x = max_pool(&conv1.forward(s, x)?.f_relu()?)?;
                let x = max_pool(&conv2.forward(s, &x)?.f_relu()?)?;
                let x = fc[0].forward(s, &flatten(&x)?)?.f_relu()?;
                let x = fc[1].forward(s, &x)?.f_relu()?;
                fc[2].forward(s, &x)
            }
            Model::Cnn7 { conv, fc1, fc2 } => {
                let x = max_pool(&conv[0].forward(s, x)?.f_relu()?)?;
                let x = max_pool(&conv[1].forward(s, &x)?.f_relu()?)?;
                let x = conv[2].forward(s, &x)?.f_relu()?;
                // As the reference and the burn model: no activation after fc1.
                let x = fc1.forward(s, &flatten(&x)?)?;
                fc2.forward(s, &dropout(x, 0.5, mode)?)
            }
            Model::ResNet {
                conv1,
                bn1,
                blocks,
                linear,
            } => {
                let mut x = bn1.forward(s, &conv1.forward(s, x)?, mode)?.f_relu()?;
                for block in blocks {
                    x = block.forward(s, &x, mode)?;
                }
                let pooled = x.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?;
                linear.forward(s, &pooled)
            }
            Model::Vgg { features, fc } => {
                let mut layers = features.iter();
                let mut x = x.shallow_clone();
                for &out in &VGG_D {
                    x = if out == 0 {
                        max_pool(&x)?
                    } else {
                        let (conv, bn) = layers.next().expect("one layer per convolution");
                        bn.forward(s, &conv.forward(s, &x)?, mode)?.f_relu()?
                    };
                }
                let x = flatten(&x)?;
                let x = fc[0].forward(s, &dropout(x, 0.5, mode)?)?.f_relu()?;
                let x = fc[1].forward(s, &dropout(x, 0.5, mode)?)?.f_relu()?;
                fc[2].forward(s, &x)
            }
        }
    }
}
