//! Where the networks run: the CPU by default, a CUDA GPU with the `cuda` feature.

use candle_core::Device;

use crate::error::{Error, Result};

/// Which device a runtime asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal; an error if the build or the machine has none.
    Cuda(usize),
    /// CUDA GPU 0 when the build has CUDA support and a GPU answers, else the CPU.
    CudaIfAvailable,
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => cuda(ordinal),
            DeviceChoice::CudaIfAvailable => Ok(cuda(0).unwrap_or(Device::Cpu)),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| Error::Inference(format!("CUDA device {ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::Unsupported("CUDA"))
}
