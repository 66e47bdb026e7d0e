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
use peloton_burn::{DeviceKind, NetworkTask};
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
