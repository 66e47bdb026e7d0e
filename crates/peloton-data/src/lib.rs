//! # peloton-data
//!
//! Image-classification data for peloton's real models, without any tensor library:
//!
//! - readers for [`mnist`] (IDX) and [`cifar`] (CIFAR-10 binary batches), raw or gzip,
//!   validating magic numbers, sizes and labels: a truncated or corrupted file is an error
//!   naming the file and the byte offset;
//! - a [`synthetic`] generator for tests and the README's first command;
//! - [`partition`]: IID and Dirichlet(α) label-skew sharding, identical on every worker;
//! - [`fuzz_entry`]: the bodies of the readers' fuzz targets (`fuzz/` at the repository root);
//! - [`loader`]: augmentation (pad-crop-flip, crop-flip with center-crop evaluation),
//!   normalization, and a seeded, reshuffling batch iterator that reuses its buffer.
//!
//! [`DataConfig`] ties them together for a run.

pub mod cifar;
pub mod config;
pub mod dataset;
pub mod fuzz_entry;
pub mod io;
pub mod loader;
pub mod mnist;
pub mod partition;
pub mod synthetic;

pub use config::{DataConfig, DatasetKind, LoadedData};
pub use dataset::{ImageDataset, Normalization};
pub use loader::{Augmentation, Batch, ShardLoader};
pub use partition::Partition;
pub use synthetic::SyntheticConfig;
