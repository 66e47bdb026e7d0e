//! VGG-16 with BatchNorm for 32×32 inputs (configuration "D": 13 convolutions 3×3 with
//! padding 1, each followed by BatchNorm and ReLU, max pooling after blocks of 2, 2, 3, 3, 3),
//! then the CIFAR classifier: dropout, 512 → 512, ReLU, dropout, 512 → 512, ReLU, 512 → classes.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::{batch_norm, Pass};

/// Output channels of each convolution; 0 marks a max pool.
const CONFIG_D: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct Vgg {
    features: Vec<ConvBn>,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Vgg {
    pub fn new(channels: usize, classes: usize, device: &Device) -> Self {
        let mut input = channels;
        let features = CONFIG_D
            .iter()
            .filter(|&&c| c > 0)
            .map(|&out| {
                let layer = ConvBn {
                    conv: Conv2dConfig::new([input, out], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                    bn: BatchNormConfig::new(out).init(device),
                };
                input = out;
                layer
            })
            .collect();
        Self {
            features,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(512, 512).init(device),
            fc2: LinearConfig::new(512, 512).init(device),
            fc3: LinearConfig::new(512, classes).init(device),
        }
    }

    pub fn forward(&self, mut x: Tensor<4>, pass: &mut Pass<'_>) -> Tensor<2> {
        let mut layers = self.features.iter();
        for &c in &CONFIG_D {
            x = if c == 0 {
                self.pool.forward(x)
            } else {
                let l = layers.next().expect("one layer per convolution");
                relu(batch_norm(&l.bn, l.conv.forward(x), pass))
            };
        }
        let x = super::flatten(x);
        let x = relu(self.fc1.forward(super::dropout(x, 0.5, pass)));
        let x = relu(self.fc2.forward(super::dropout(x, 0.5, pass)));
        self.fc3.forward(x)
    }

    /// BatchNorm layers in forward order.
    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        self.features.iter().map(|l| &l.bn).collect()
    }
}
