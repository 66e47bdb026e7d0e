//! `[model]`: which network, on which device, with which BatchNorm policy.

use burn::prelude::Device;
use peloton_core::{ensure_config, Result};
use serde::{Deserialize, Serialize};

use crate::models::ModelName;

/// Where the tensors live. `flex` (pure Rust, burn's CPU backend, this crate's learner) needs
/// nothing installed; `torch` and `torch-cuda` run the same models on LibTorch (PyTorch's
/// kernels and autograd, the `peloton-torch` crate and its `torch` cargo feature).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    #[default]
    Flex,
    Torch,
    TorchCuda,
}

impl DeviceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceKind::Flex => "flex",
            DeviceKind::Torch => "torch",
            DeviceKind::TorchCuda => "torch-cuda",
        }
    }

    /// Whether the device is LibTorch's (the `peloton-torch` learner).
    pub fn is_torch(&self) -> bool {
        matches!(self, DeviceKind::Torch | DeviceKind::TorchCuda)
    }

    /// The burn device (without autodiff) of this crate's learner, which runs on `flex`.
    pub fn device(&self) -> Result<Device> {
        match self {
            DeviceKind::Flex => Ok(Device::flex()),
            DeviceKind::Torch | DeviceKind::TorchCuda => Err(peloton_core::Error::Config(format!(
                "model.device = \"{}\" is LibTorch's: the burn learner runs on flex (peloton-torch builds the LibTorch learner)",
                self.as_str()
            ))),
        }
    }
}

/// The floating-point format of a LibTorch model's computation. Master weights, the flat
/// buffer the algorithms mix, gradients, optimizer state and BatchNorm statistics are fp32 in
/// every case: `bf16` and `fp16` only change what convolutions and linear layers compute in
/// (their inputs and weights are cast inside the autograd graph, so the gradient reaches the
/// fp32 weights), as PyTorch's autocast does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16: fp32's range with 8 bits of mantissa; no loss scaling needed. Fast on CPUs
    /// with AVX512-BF16 or AMX and on NVIDIA GPUs from Ampere on.
    Bf16,
    /// IEEE half precision, GPUs only, with dynamic loss scaling (as PyTorch's GradScaler).
    Fp16,
}

impl Precision {
    pub fn as_str(&self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

/// How a LibTorch model lays out its activations: `N×C×H×W` (PyTorch's default) or
/// channels-last (`N×H×W×C` strides), which oneDNN's and cuDNN's convolutions prefer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    #[default]
    Nchw,
    ChannelsLast,
}

impl MemoryFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            MemoryFormat::Nchw => "nchw",
            MemoryFormat::ChannelsLast => "channels-last",
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// What happens to BatchNorm running statistics (ALGORITHMS.md §9.2: make it a switch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchNormPolicy {
    /// Each worker keeps its own statistics and never communicates them (SGP, AL-DSGD and
    /// LSGD's current code).
    #[default]
    Local,
    /// Averaged over all workers before every evaluation.
    Average,
    /// Recomputed before every evaluation by running the evaluated parameters over the
    /// evaluating worker's training shard (cumulative average over the batches), as LSGD's
    /// evaluation of the averaged "center" does.
    Recompute,
}

/// The most threads (and so model replicas, with `split_batch`) one worker may be given.
pub const MAX_THREADS: usize = 256;

/// The `[model]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: ModelName,
    /// Hidden layer sizes of the MLP.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    #[serde(default)]
    pub device: DeviceKind,
    /// The GPU of every worker with `torch-cuda`; by default worker i takes GPU i mod the
    /// number of GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_index: Option<usize>,
    #[serde(default)]
    pub batch_norm: BatchNormPolicy,
    /// With `batch_norm = "recompute"`: at most this many training batches (all of the
    /// shard when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recompute_batches: Option<usize>,
    /// CPU threads per worker for the tensor kernels; by default the machine's cores split
    /// evenly over the in-process workers (at least 1), so workers never oversubscribe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// On `flex`, a worker with more than one thread splits each batch over them: one model
    /// replica per thread computes a contiguous part, and the parts' gradients are averaged
    /// by sample count (burn's own multi-threaded kernels gain almost nothing: BENCHMARKS.md,
    /// "Where the cores go"). BatchNorm then normalizes each part by its own statistics, as
    /// data-parallel replicas do; `false` keeps whole-batch statistics and burn's threads.
    #[serde(default = "yes")]
    pub split_batch: bool,
    /// What convolutions and linear layers compute in (LibTorch devices only).
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    /// The activations' memory layout (LibTorch devices only).
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory_format: MemoryFormat,
}

fn yes() -> bool {
    true
}

fn default_hidden() -> Vec<usize> {
    vec![256, 128]
}

impl ModelConfig {
    pub fn new(name: ModelName) -> Self {
        Self {
            name,
            hidden: default_hidden(),
            device: DeviceKind::Flex,
            cuda_index: None,
            batch_norm: BatchNormPolicy::Local,
            recompute_batches: None,
            threads: None,
            split_batch: true,
            precision: Precision::Fp32,
            memory_format: MemoryFormat::Nchw,
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure_config!(
            self.hidden.iter().all(|&h| h > 0),
            "model.hidden sizes must be positive"
        );
        // Each layer's weights, from the widest input (CIFAR-10's 3·32·32) through the hidden
        // sizes to 10 classes.
        let widths: Vec<usize> = std::iter::once(3 * 32 * 32)
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(10))
            .collect();
        for pair in widths.windows(2) {
            peloton_core::limits::ensure_values("a layer of model.hidden", pair)?;
        }
        if let Some(t) = self.threads {
            ensure_config!(
                (1..=MAX_THREADS).contains(&t),
                "model.threads must be between 1 and {MAX_THREADS}, got {t}"
            );
        }
        if let Some(b) = self.recompute_batches {
            ensure_config!(b >= 1, "model.recompute_batches must be at least 1");
        }
        ensure_config!(
            self.device.is_torch() || self.precision == Precision::Fp32,
            "model.precision = \"{}\" needs a LibTorch device (model.device = \"torch\" or \"torch-cuda\"); flex computes in fp32",
            self.precision.as_str()
        );
        ensure_config!(
            self.device.is_torch() || self.memory_format == MemoryFormat::Nchw,
            "model.memory_format = \"{}\" needs a LibTorch device (model.device = \"torch\" or \"torch-cuda\")",
            self.memory_format.as_str()
        );
        ensure_config!(
            !(self.precision == Precision::Fp16 && self.device == DeviceKind::Torch),
            "model.precision = \"fp16\" is for GPUs (model.device = \"torch-cuda\"); on a CPU use \"bf16\""
        );
        ensure_config!(
            self.cuda_index.is_none() || self.device == DeviceKind::TorchCuda,
            "model.cuda_index needs model.device = \"torch-cuda\", got \"{}\"",
            self.device.as_str()
        );
        Ok(())
    }

    /// Kernel threads for each of `workers` in-process workers.
    pub fn threads_per_worker(&self, workers: usize) -> usize {
        self.threads
            .unwrap_or_else(|| (machine_cores() / workers.max(1)).max(1))
    }
}

/// The cores this process may use (1 where the OS does not say).
pub fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}
