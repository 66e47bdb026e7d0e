//! # peloton-burn
//!
//! Real deep-learning models for peloton, on [burn](https://burn.dev) 0.22: the model zoo
//! ([`models`]: MLP, LeNet-5, CNN7, ResNet-20/32/56, VGG-16-BN), their standard
//! initializations ([`init`]), the flat-buffer bridge ([`flat`]), and [`NetworkLearner`],
//! which puts any of them behind peloton's `Learner` trait so every algorithm trains it
//! unchanged. burn types stay inside this crate.
//!
//! The learner here runs on burn's `flex` backend: pure Rust, nothing to install. The same
//! models on LibTorch (`model.device = "torch"` or `"torch-cuda"`) are the `peloton-torch`
//! crate's, which shares this crate's configuration, layouts and initializations.

pub mod bench;
pub mod config;
pub mod flat;
pub mod init;
pub mod learner;
pub mod memory;
pub mod models;

pub use config::{BatchNormPolicy, DeviceKind, MemoryFormat, ModelConfig, Precision};
pub use learner::{NetworkLearner, NetworkTask};
pub use models::ModelName;
