//! CIFAR ResNets (He et al. 2016, §4.2): a 3×3 convolution to 16 channels, three stages of n
//! basic blocks with 16, 32 and 64 channels (stride 2 at the start of stages 2 and 3), global
//! average pooling and a linear classifier; depth 6n + 2 (n = 3, 5, 9 → ResNet-20/32/56).
//! Option-A shortcuts: where the shape changes, the identity is subsampled by 2 and padded
//! with zero channels, so shortcuts add no parameters. Convolutions have no bias (BatchNorm
//! follows each one).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::{batch_norm, Pass};

fn conv3x3(input: usize, output: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    /// Present when the block changes shape: a 1×1 stride-2 "pool" that subsamples.
    subsample: Option<MaxPool2d>,
    pad_channels: usize,
}

impl BasicBlock {
    fn new(input: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let reshapes = stride != 1 || input != planes;
        Self {
            conv1: conv3x3(input, planes, stride, device),
            bn1: BatchNormConfig::new(planes).init(device),
            conv2: conv3x3(planes, planes, 1, device),
            bn2: BatchNormConfig::new(planes).init(device),
            subsample: reshapes.then(|| {
                MaxPool2dConfig::new([1, 1])
                    .with_strides([stride, stride])
                    .init()
            }),
            pad_channels: if reshapes { (planes - input) / 2 } else { 0 },
        }
    }

    fn forward(&self, x: Tensor<4>, pass: &mut Pass<'_>) -> Tensor<4> {
        let out = relu(batch_norm(&self.bn1, self.conv1.forward(x.clone()), pass));
        let out = batch_norm(&self.bn2, self.conv2.forward(out), pass);
        let shortcut = match &self.subsample {
            None => x,
            Some(pool) => {
                let x = pool.forward(x);
                let [n, _, h, w] = x.dims();
                let zeros = Tensor::<4>::zeros([n, self.pad_channels, h, w], &x.device());
                Tensor::cat(vec![zeros.clone(), x, zeros], 1)
            }
        };
        relu(out + shortcut)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<BasicBlock>,
    linear: Linear,
}

impl ResNet {
    /// `n` blocks per stage (depth 6n + 2).
    pub fn new(n: usize, channels: usize, classes: usize, device: &Device) -> Self {
        let mut blocks = Vec::with_capacity(3 * n);
        let mut input = 16;
        for (stage, planes) in [16, 32, 64].into_iter().enumerate() {
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(input, planes, stride, device));
                input = planes;
            }
        }
        Self {
            conv1: conv3x3(channels, 16, 1, device),
            bn1: BatchNormConfig::new(16).init(device),
            blocks,
            linear: LinearConfig::new(64, classes).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, pass: &mut Pass<'_>) -> Tensor<2> {
        let mut x = relu(batch_norm(&self.bn1, self.conv1.forward(x), pass));
        for block in &self.blocks {
            x = block.forward(x, pass);
        }
        // Global average pooling.
        let [n, c, h, w] = x.dims();
        let pooled = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        self.linear.forward(pooled)
    }

    /// BatchNorm layers in forward order.
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        let mut out = vec![&self.bn1];
        for b in &self.blocks {
            out.push(&b.bn1);
            out.push(&b.bn2);
        }
        out
    }
}
