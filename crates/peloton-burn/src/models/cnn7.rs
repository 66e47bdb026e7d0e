//! The 7-layer convnet of EASGD §5.1, as used by LSGD on 28×28 CIFAR-10 crops:
//! conv 5×5 → 64, ReLU, pool 2; conv 5×5 → 128, ReLU, pool 2; conv 3×3 → 64, ReLU;
//! flatten (64×2×2 = 256); linear 256 → 256; dropout ½; linear 256 → classes.
//! As in the reference definition there is no nonlinearity between the two linear layers.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::Pass;

#[derive(Module, Debug)]
pub struct Cnn7 {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn7 {
    pub fn new(channels: usize, classes: usize, device: &Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([channels, 64], [5, 5]).init(device),
            conv2: Conv2dConfig::new([64, 128], [5, 5]).init(device),
            conv3: Conv2dConfig::new([128, 64], [3, 3]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(256, 256).init(device),
            fc2: LinearConfig::new(256, classes).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, pass: &mut Pass<'_>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x = relu(self.conv3.forward(x));
        let x = self.fc1.forward(super::flatten(x));
        self.fc2.forward(super::dropout(x, 0.5, pass))
    }
}
