//! A memory estimate made before a run starts: what each worker holds (parameters, gradients,
//! optimizer and algorithm buffers, the model's own copy, a training batch's activations and
//! the evaluation's) and what the process holds once (the decoded dataset), so that a
//! configuration that cannot fit is refused with one line instead of being killed by the
//! kernel after minutes of training.
//!
//! Activations come from each model's layer shapes: the floats of every intermediate tensor of
//! one sample's forward pass. Training keeps them for the backward pass (burn's autodiff saves
//! the inputs of convolutions, BatchNorm and activations), and the backward adds gradients of
//! about the same size while it walks back; evaluation and BatchNorm recomputation hold a few
//! layers at a time. The factors below were fitted to peak RSS measured on this project's
//! runs (BENCHMARKS.md, "Memory estimate"); the estimate is meant to be within a factor of
//! about 1.5 of the truth, and errs high.

use std::fmt;

use crate::models::ModelName;

/// Bytes of one `f32`.
const F32: u64 = 4;
/// Training memory per float of one sample's activations: forward tensors kept for the
/// backward pass plus the gradients and workspaces of the backward pass.
const TRAIN_FACTOR: f64 = 1.0;
/// Inference holds the input and output of a layer and a workspace (im2col for
/// convolutions) of about the same size: three of the widest layer.
const INFERENCE_WIDEST: u64 = 3;
/// Copies of the parameter vector a worker holds: the flat parameters, the gradient, the
/// optimizer's momentum, up to two algorithm buffers (a leader's or a center's copy, a
/// received message), and the model's own tensors with their autodiff gradients.
const PARAM_COPIES: u64 = 7;
/// The process itself: code, the allocator's arenas, thread stacks.
const PROCESS_BASE: u64 = 64 << 20;

/// One sample's activations, in floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activations {
    /// Every intermediate tensor of the forward pass, summed.
    pub total: u64,
    /// The largest single tensor.
    pub widest: u64,
}

impl Activations {
    fn push(&mut self, floats: u64) {
        self.total += floats;
        self.widest = self.widest.max(floats);
    }

    /// `count` tensors of `c × h × w`.
    fn push_map(&mut self, count: u64, c: usize, h: usize, w: usize) {
        for _ in 0..count {
            self.push((c * h * w) as u64);
        }
    }
}

/// One sample's activations of `name` on `input` (`[C, H, W]`) images with `classes` classes.
pub fn activations(
    name: ModelName,
    input: [usize; 3],
    classes: usize,
    hidden: &[usize],
) -> Activations {
    let mut a = Activations::default();
    let [c, h, w] = input;
    a.push_map(1, c, h, w);
    match name {
        ModelName::Mlp => {
            for &width in hidden {
                a.push_map(2, width, 1, 1); // linear, ReLU
            }
        }
        ModelName::Lenet => {
            // Padded to 32×32 in the first convolution (see lenet.rs).
            a.push_map(2, 6, 28, 28); // conv, ReLU
            a.push_map(1, 6, 14, 14); // pool
            a.push_map(2, 16, 10, 10);
            a.push_map(1, 16, 5, 5);
            a.push_map(2, 120, 1, 1);
            a.push_map(2, 84, 1, 1);
        }
        ModelName::Cnn7 => {
            let (h1, w1) = (h.saturating_sub(4), w.saturating_sub(4));
            a.push_map(2, 64, h1, w1);
            let (h2, w2) = (h1 / 2, w1 / 2);
            a.push_map(1, 64, h2, w2);
            let (h3, w3) = (h2.saturating_sub(4), w2.saturating_sub(4));
            a.push_map(2, 128, h3, w3);
            let (h4, w4) = (h3 / 2, w3 / 2);
            a.push_map(1, 128, h4, w4);
            a.push_map(2, 64, h4.saturating_sub(2), w4.saturating_sub(2));
            a.push_map(3, 256, 1, 1); // linear, dropout output and mask
        }
        ModelName::Resnet20 | ModelName::Resnet32 | ModelName::Resnet56 => {
            let n = match name {
                ModelName::Resnet20 => 3,
                ModelName::Resnet32 => 5,
                _ => 9,
            };
            a.push_map(3, 16, h, w); // stem: conv, BatchNorm, ReLU
            let (mut h, mut w) = (h, w);
            for (stage, planes) in [16usize, 32, 64].into_iter().enumerate() {
                if stage > 0 {
                    (h, w) = (h.div_ceil(2), w.div_ceil(2));
                }
                // Per block: conv, BN, ReLU, conv, BN, the sum, ReLU; plus the shortcut's
                // subsampled and padded copy where the shape changes.
                a.push_map(7 * n, planes, h, w);
                if stage > 0 {
                    a.push_map(2, planes, h, w);
                }
            }
            a.push_map(1, 64, 1, 1);
        }
        ModelName::Vgg16 => {
            let (mut h, mut w, mut channels) = (h, w, c);
            for layer in [
                64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
            ] {
                if layer == 0 {
                    (h, w) = (h / 2, w / 2);
                    a.push_map(1, channels, h, w);
                } else {
                    channels = layer;
                    a.push_map(3, channels, h, w); // conv, BN, ReLU
                }
            }
            a.push_map(8, 512, 1, 1); // two dropouts (output, mask), two linears, two ReLUs
        }
    }
    a.push_map(1, classes, 1, 1);
    a
}

/// What one run is expected to hold, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub workers: usize,
    /// Parameters, gradients, optimizer and algorithm buffers, the model's tensors: per worker.
    pub params: u64,
    /// A training step's activations at the batch size: per worker.
    pub activations: u64,
    /// Evaluation (or BatchNorm recomputation), at its batch size: per worker.
    pub evaluation: u64,
    /// The decoded dataset, held once for every in-process worker.
    pub data: u64,
    /// The process's own footprint.
    pub base: u64,
}

impl MemoryEstimate {
    /// What each worker holds at its peak (a worker trains or evaluates, not both at once).
    pub fn per_worker(&self) -> u64 {
        self.params
            .saturating_add(self.activations.max(self.evaluation))
    }

    /// The whole process with `workers` in-process workers.
    pub fn total(&self) -> u64 {
        self.per_worker()
            .saturating_mul(self.workers as u64)
            .saturating_add(self.data)
            .saturating_add(self.base)
    }
}

/// The inputs of an estimate.
#[derive(Debug, Clone, Copy)]
pub struct EstimateInput<'a> {
    pub model: ModelName,
    pub hidden: &'a [usize],
    pub input: [usize; 3],
    pub classes: usize,
    pub params: u64,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Bytes of the decoded dataset (pixels and labels, train and test).
    pub data_bytes: u64,
    /// Workers in this process.
    pub workers: usize,
}

/// The estimate for `input`.
pub fn estimate(input: &EstimateInput<'_>) -> MemoryEstimate {
    let a = activations(input.model, input.input, input.classes, input.hidden);
    let batch = input.batch_size as u64;
    // A training batch as f32 (and its copy into a tensor) besides the activations.
    // Saturating: a configuration too large to count is too large to run.
    let pixels = input.input.iter().map(|&d| d as u64).product::<u64>();
    let batch_input = (2 * F32).saturating_mul(batch).saturating_mul(pixels);
    let activations = ((a.total as f64 * TRAIN_FACTOR) as u64)
        .saturating_mul(batch)
        .saturating_mul(F32)
        .saturating_add(batch_input);
    let eval_batch = input.eval_batch_size.max(input.batch_size) as u64;
    let evaluation = (INFERENCE_WIDEST * F32)
        .saturating_mul(a.widest)
        .saturating_mul(eval_batch);
    MemoryEstimate {
        workers: input.workers,
        params: PARAM_COPIES
            .saturating_mul(input.params)
            .saturating_mul(F32),
        activations,
        evaluation,
        data: input.data_bytes,
        base: PROCESS_BASE,
    }
}

/// Bytes in binary units with one decimal: "1.3 GiB", "512.0 MiB".
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory estimate {} in total: {} per worker × {} (parameters and buffers {}, activations {}, evaluation {}), data {} shared",
            human(self.total()),
            human(self.per_worker()),
            self.workers,
            human(self.params),
            human(self.activations),
            human(self.evaluation),
            human(self.data),
        )
    }
}

/// The memory this process may still use, in bytes: the lower of the kernel's
/// `MemAvailable` and the cgroup's limit less its usage, where either is known (Linux);
/// `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = (|| {
        let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
        let max: u64 = max.trim().parse().ok()?; // "max" (no limit) does not parse
        let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(max.saturating_sub(current))
    })();
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// This process's peak resident set size so far (`VmHWM`, Linux); `None` elsewhere.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet20_activations_follow_its_stages() {
        // 32×32 input: the stem and stage 1 are 16×32×32 = 16,384 floats per tensor (3 + 21
        // tensors), stage 2 is 32×16×16 = 8,192 (21 + 2), stage 3 is 64×8×8 = 4,096 (21 + 2);
        // plus the input (3,072), the pooled vector (64) and the logits (10).
        let a = activations(ModelName::Resnet20, [3, 32, 32], 10, &[]);
        let expected = 3_072 + 24 * 16_384 + 23 * 8_192 + 23 * 4_096 + 64 + 10;
        assert_eq!(a.total, expected);
        assert_eq!(a.widest, 16_384);
    }

    #[test]
    fn lenet_on_mnist_is_padded_to_lenet_on_cifar_shapes() {
        let mnist = activations(ModelName::Lenet, [1, 28, 28], 10, &[]);
        let cifar = activations(ModelName::Lenet, [3, 32, 32], 10, &[]);
        // Only the input differs: 784 against 3,072 floats.
        assert_eq!(cifar.total - mnist.total, 3_072 - 784);
    }

    #[test]
    fn the_estimate_grows_with_workers_and_batch_but_shares_the_data() {
        let input = EstimateInput {
            model: ModelName::Resnet20,
            hidden: &[],
            input: [3, 32, 32],
            classes: 10,
            params: 269_722,
            batch_size: 128,
            eval_batch_size: 500,
            data_bytes: 184_380_000,
            workers: 4,
        };
        let four = estimate(&input);
        let eight = estimate(&EstimateInput {
            workers: 8,
            ..input
        });
        assert_eq!(eight.total() - four.total(), 4 * four.per_worker());
        assert_eq!(four.data, eight.data);
        let big_batch = estimate(&EstimateInput {
            batch_size: 1024,
            ..input
        });
        assert!(big_batch.activations > 7 * four.activations);
        // Four ResNet-20 workers at batch 128: measured 1.2–1.5 GB resident while training.
        let total = four.total() as f64 / 1e9;
        assert!((1.0..4.0).contains(&total), "{total} GB");
        assert!(four.to_string().starts_with("memory estimate "));
    }

    #[test]
    fn available_memory_and_peak_rss_are_positive_where_linux_reports_them() {
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(available_memory().unwrap() > 0);
            assert!(peak_rss().unwrap() > 0);
        }
    }
}
