//! LeNet-5 (LeCun et al. 1998, with ReLU and max pooling as in modern re-implementations):
//! conv 5×5 → 6, pool 2, conv 5×5 → 16, pool 2, fully connected 400 → 120 → 84 → classes.
//! 28×28 inputs are padded by 2 in the first convolution so both MNIST and CIFAR reach the
//! 16×5×5 feature map.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

#[derive(Module, Debug)]
pub struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl LeNet {
    pub fn new([c, h, _]: [usize; 3], classes: usize, device: &Device) -> Self {
        let pad = (32 - h) / 2;
        Self {
            conv1: Conv2dConfig::new([c, 6], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .init(device),
            conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(16 * 5 * 5, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, classes).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x = relu(self.fc1.forward(super::flatten(x)));
        let x = relu(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}
