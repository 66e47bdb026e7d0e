//! [`DataConfig`]: which dataset, where, how it is sharded, augmented and batched — the
//! `[data]` table of an experiment file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use peloton_core::{ensure_config, Error, Result};
use serde::{Deserialize, Serialize};

use crate::dataset::{ImageDataset, Normalization};
use crate::loader::Augmentation;
use crate::partition::Partition;
use crate::synthetic::SyntheticConfig;
use crate::{cifar, mnist};

/// The datasets peloton reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Generated from the seed ([`SyntheticConfig`]); needs no files.
    #[default]
    Synthetic,
    /// MNIST IDX files in `dir`.
    Mnist,
    /// CIFAR-10 binary batches in `dir`.
    Cifar10,
}

impl DatasetKind {
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    pub fn catalog() -> &'static [(&'static str, &'static str)] {
        &[
            (
                "synthetic",
                "generated blob images (no files); shape and size in [data.synthetic]",
            ),
            (
                "mnist",
                "MNIST IDX files (raw or .gz) in data.dir; 1×28×28, 10 classes",
            ),
            (
                "cifar10",
                "CIFAR-10 binary batches (raw or .gz) in data.dir; 3×32×32, 10 classes",
            ),
        ]
    }
}

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// The folder of the dataset's files (mnist, cifar10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Samples per worker per step.
    pub batch_size: usize,
    pub partition: Partition,
    /// Training augmentation; by default pad-crop-flip for CIFAR-10 and none otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augmentation: Option<Augmentation>,
    /// Evaluate on the first this many test samples only (all when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_samples: Option<usize>,
    /// Samples per forward pass when evaluating.
    pub eval_batch_size: usize,
    /// The generator's parameters when `dataset = "synthetic"`.
    pub synthetic: SyntheticConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Synthetic,
            dir: None,
            batch_size: 64,
            partition: Partition::Iid,
            augmentation: None,
            test_samples: None,
            eval_batch_size: 500,
            synthetic: SyntheticConfig::default(),
        }
    }
}

/// A dataset in memory, sharded for a run.
#[derive(Debug, Clone)]
pub struct LoadedData {
    pub train: Arc<ImageDataset>,
    pub test: Arc<ImageDataset>,
    pub normalization: Normalization,
    pub augmentation: Augmentation,
    /// Sample indices of each worker's shard.
    pub shards: Vec<Vec<u32>>,
    pub batch_size: usize,
    pub eval_batch_size: usize,
}

impl LoadedData {
    /// `[C, H, W]` of the images a model sees (after augmentation's crop).
    pub fn input_shape(&self) -> [usize; 3] {
        self.augmentation
            .output_shape([self.train.channels, self.train.height, self.train.width])
    }

    pub fn classes(&self) -> usize {
        self.train.classes
    }

    /// Worker `rank`'s batches: its shard, in the order of the run seed's "batches" stream
    /// for that worker (every learner, on any backend, draws the same batches).
    pub fn shard_loader(&self, rank: usize, seed: u64) -> Result<crate::ShardLoader> {
        let shard = self
            .shards
            .get(rank)
            .cloned()
            .ok_or_else(|| Error::Config(format!("no data shard for worker {rank}")))?;
        crate::ShardLoader::new(
            Arc::clone(&self.train),
            shard,
            self.batch_size,
            self.augmentation,
            &self.normalization,
            peloton_core::seed::rng(seed, "batches", rank as u64),
        )
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        ensure_config!(self.batch_size >= 1, "data.batch_size must be at least 1");
        ensure_config!(
            self.eval_batch_size >= 1,
            "data.eval_batch_size must be at least 1"
        );
        if let Some(t) = self.test_samples {
            ensure_config!(t >= 1, "data.test_samples must be at least 1");
        }
        ensure_config!(
            self.dataset == DatasetKind::Synthetic || self.dir.is_some(),
            "data.dataset = \"{}\" needs data.dir (or --data-dir), the folder of its files",
            self.dataset.name()
        );
        self.partition.validate()?;
        if self.dataset == DatasetKind::Synthetic {
            self.synthetic.validate()?;
        }
        Ok(())
    }

    /// The augmentation in force (the dataset's default when none is set).
    pub fn augmentation(&self) -> Augmentation {
        self.augmentation.unwrap_or(match self.dataset {
            DatasetKind::Cifar10 => Augmentation::PadCropFlip { pad: 4, flip: true },
            _ => Augmentation::None,
        })
    }

    /// Reads or generates the dataset and shards it over `workers`.
    pub fn load(&self, workers: usize, seed: u64) -> Result<LoadedData> {
        self.validate()?;
        let (train, mut test, normalization) = match self.dataset {
            DatasetKind::Synthetic => {
                let (train, test) = self.synthetic.generate(seed)?;
                let norm = train.channel_stats();
                (train, test, norm)
            }
            DatasetKind::Mnist => {
                let (train, test) = mnist::load(self.dir.as_deref().expect("validated"))?;
                (train, test, Normalization::mnist())
            }
            DatasetKind::Cifar10 => {
                let (train, test) = cifar::load(self.dir.as_deref().expect("validated"))?;
                (train, test, Normalization::cifar10())
            }
        };
        // An empty test set would "evaluate" to loss 0 and accuracy 0 without a word.
        for (set, d) in [("training", &train), ("test", &test)] {
            if d.is_empty() {
                return Err(Error::Data(format!(
                    "{}: the {} {set} set holds no images",
                    self.dir
                        .as_deref()
                        .unwrap_or(Path::new("synthetic"))
                        .display(),
                    self.dataset.name()
                )));
            }
        }
        if let Some(t) = self.test_samples {
            test = test.head(t);
        }
        let augmentation = self.augmentation();
        augmentation.validate([train.channels, train.height, train.width])?;
        if train.classes != test.classes
            || [train.channels, train.height, train.width]
                != [test.channels, test.height, test.width]
        {
            return Err(Error::Data(
                "the training and test sets differ in image shape or classes".into(),
            ));
        }
        let shards = self.partition.shards(
            train.labels(),
            train.classes,
            workers,
            self.batch_size,
            seed,
        )?;
        Ok(LoadedData {
            train: Arc::new(train),
            test: Arc::new(test),
            normalization,
            augmentation,
            shards,
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_loads_and_shards() {
        let c = DataConfig {
            synthetic: SyntheticConfig {
                train: 300,
                test: 50,
                ..Default::default()
            },
            batch_size: 16,
            test_samples: Some(20),
            ..Default::default()
        };
        let d = c.load(3, 9).unwrap();
        assert_eq!(d.shards.iter().map(Vec::len).sum::<usize>(), 300);
        assert_eq!(d.test.len(), 20);
        assert_eq!(d.input_shape(), [1, 28, 28]);
    }

    #[test]
    fn files_need_a_dir_and_cifar_defaults_to_pad_crop() {
        let c = DataConfig {
            dataset: DatasetKind::Mnist,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("data.dir"));
        let cifar = DataConfig {
            dataset: DatasetKind::Cifar10,
            ..Default::default()
        };
        assert_eq!(
            cifar.augmentation(),
            Augmentation::PadCropFlip { pad: 4, flip: true }
        );
    }

    #[test]
    fn an_empty_test_set_is_refused() {
        let dir = crate::io::tests::tempdir("empty-test-set");
        let (train, _) = SyntheticConfig {
            train: 40,
            test: 1,
            ..Default::default()
        }
        .generate(1)
        .unwrap();
        mnist::write_dir(&dir, &train, &train.head(0), false).unwrap();
        let c = DataConfig {
            dataset: DatasetKind::Mnist,
            dir: Some(dir),
            batch_size: 8,
            ..Default::default()
        };
        let e = c.load(2, 0).unwrap_err().to_string();
        assert!(e.contains("the mnist test set holds no images"), "{e}");
    }

    #[test]
    fn a_missing_folder_is_a_data_error() {
        let c = DataConfig {
            dataset: DatasetKind::Mnist,
            dir: Some("/nonexistent/peloton".into()),
            ..Default::default()
        };
        let e = c.load(1, 0).unwrap_err();
        assert!(matches!(e, Error::Data(_)) && e.to_string().contains("/nonexistent/peloton"));
    }
}
