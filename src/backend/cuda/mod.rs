//! The CUDA backend: hand-written kernels (kernels/*.cu) driven through a narrow [`Device`]
//! interface, so that the same host code runs on a GPU (cudarc) and on the SIMT emulator.

pub mod device;
#[cfg(feature = "emulator")]
pub mod emulator;

pub use device::{DevPtr, Device, EventId, KArg, LaunchCfg, StreamId};
