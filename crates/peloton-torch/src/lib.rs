//! # peloton-torch
//!
//! The model zoo (MLP, LeNet-5, CNN7, ResNet-20/32/56, VGG-16) on LibTorch — PyTorch's
//! kernels and autograd through the [`tch`](https://docs.rs/tch) crate — behind peloton's
//! `Learner` trait, on the CPU (`model.device = "torch"`) and on NVIDIA GPUs
//! (`"torch-cuda"`). Every algorithm trains it unchanged, on threads, MPI and the simulator.
//!
//! The networks share the burn learner's configuration, segment tables, initializations, data
//! pipeline, BatchNorm policies and checkpoint contents (`peloton-burn`), so a parameter
//! vector, a config and a checkpoint mean the same thing on both; see [`learner`] for what
//! differs (PyTorch's BatchNorm variance, kernel rounding).
//!
//! LibTorch comes with the cargo feature `torch`, built against PyTorch 2.9.0 from pip
//! (`scripts/install-torch.sh`). Without it this crate still builds: [`factory`] then says
//! how to get it, so a config asking for `torch` fails with one line, not a link error.

#[cfg(feature = "torch")]
pub mod bench;
#[cfg(feature = "torch")]
pub mod learner;
#[cfg(feature = "torch")]
mod net;

#[cfg(feature = "torch")]
pub use learner::{TorchLearner, TorchTask};

use peloton_burn::memory::MemoryEstimate;
use peloton_burn::{DeviceKind, ModelConfig, NetworkTask, Precision};
use peloton_core::learner::LearnerFactory;
use peloton_core::{Error, Result};

/// Whether this build has LibTorch (the `torch` feature).
pub const AVAILABLE: bool = cfg!(feature = "torch");

/// Checks that this build can run `device`: `flex` always, the LibTorch devices with the
/// `torch` feature.
pub fn check_device(device: DeviceKind) -> Result<()> {
    if device.is_torch() && !AVAILABLE {
        return Err(Error::Config(format!(
            "model.device = \"{}\" needs peloton built with the `torch` feature (LibTorch): run scripts/install-torch.sh; see README \"PyTorch kernels and GPUs\"",
            device.as_str()
        )));
    }
    Ok(())
}

/// Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), from the
/// kernel's CPU flags; `None` where they cannot be read. Without it oneDNN converts bf16
/// in software and a bf16 step is slower than an fp32 one.
pub fn cpu_has_bf16() -> Option<bool> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    Some(
        flags
            .split_whitespace()
            .any(|f| f == "avx512_bf16" || f == "amx_bf16"),
    )
}

/// What a run's header should say about `model`'s settings on this machine: bf16 on a CPU
/// without bf16 arithmetic.
pub fn run_notes(model: &ModelConfig) -> Vec<String> {
    notes_for(model, cpu_has_bf16())
}

fn notes_for(model: &ModelConfig, cpu_bf16: Option<bool>) -> Vec<String> {
    let mut notes = Vec::new();
    if model.device == DeviceKind::Torch
        && model.precision == Precision::Bf16
        && cpu_bf16 == Some(false)
    {
        notes.push(
            "model.precision = \"bf16\" on a CPU with neither AVX512-BF16 nor AMX-BF16: LibTorch converts in software, so a step is slower than in fp32 here".into(),
        );
    }
    notes
}

/// The learners' factory of a loaded network task on a LibTorch device, with its memory
/// estimate for `in_process` workers.
pub fn factory(
    task: NetworkTask,
    in_process: usize,
) -> Result<(Box<dyn LearnerFactory>, MemoryEstimate)> {
    check_device(task.model.device)?;
    #[cfg(feature = "torch")]
    {
        let task = TorchTask::new(task)?;
        let memory = task.memory_estimate(in_process)?;
        Ok((Box::new(task), memory))
    }
    #[cfg(not(feature = "torch"))]
    {
        // check_device refused the LibTorch devices: what is left is `flex`.
        let _ = in_process;
        Err(Error::Config(format!(
            "model.device = \"{}\" is not a LibTorch device",
            task.model.device.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_warns_of_bf16_on_a_cpu_without_bf16_arithmetic() {
        let mut model = ModelConfig::new(peloton_burn::ModelName::Resnet20);
        model.device = DeviceKind::Torch;
        assert!(
            notes_for(&model, Some(false)).is_empty(),
            "fp32: nothing to say"
        );
        model.precision = Precision::Bf16;
        let notes = notes_for(&model, Some(false));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("slower than in fp32"), "{notes:?}");
        // A CPU with it, or one that cannot tell, or a GPU: nothing.
        assert!(notes_for(&model, Some(true)).is_empty());
        assert!(notes_for(&model, None).is_empty());
        model.device = DeviceKind::TorchCuda;
        assert!(notes_for(&model, Some(false)).is_empty());
    }

    #[test]
    fn flex_is_always_available_and_torch_only_with_the_feature() {
        assert!(check_device(DeviceKind::Flex).is_ok());
        for device in [DeviceKind::Torch, DeviceKind::TorchCuda] {
            let result = check_device(device);
            assert_eq!(result.is_ok(), AVAILABLE, "{device:?}");
            if let Err(e) = result {
                let line = e.to_string();
                assert!(
                    line.contains("`torch` feature") && !line.contains('\n'),
                    "{line}"
                );
            }
        }
    }
}
