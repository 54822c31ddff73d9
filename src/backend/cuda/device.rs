//! The narrow interface between the CUDA backend and a device: memory, copies, launches by
//! kernel name, streams and events. Two implementations: the real GPU through cudarc
//! ([`super::driver`]) and the SIMT emulator ([`super::emulator`]), which runs the same kernel
//! sources on the CPU so that the backend's host code is exercised in CI.

use crate::error::Result;

/// A device address (what a kernel receives as a pointer argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevPtr(pub u64);

/// A stream handle, an index into the device's streams; stream 0 always exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct StreamId(pub usize);

/// An event recorded on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventId(pub usize);

/// One kernel argument. The variant must match the kernel's parameter type exactly; the
/// emulator checks it, a GPU would silently misread it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    /// A device pointer (`gmem<T>` in the kernel source); `DevPtr(0)` is a null pointer.
    Ptr(DevPtr),
    /// `int`.
    I32(i32),
    /// `unsigned`.
    U32(u32),
    /// `float`.
    F32(f32),
    /// `unsigned long long`.
    U64(u64),
    /// `long long`.
    I64(i64),
}

impl KArg {
    /// The emulator's type tag of this argument (kernels/emu/simt.hpp, `ArgTag`).
    pub fn tag(&self) -> i32 {
        match self {
            KArg::Ptr(_) => 0,
            KArg::I32(_) => 1,
            KArg::U32(_) => 2,
            KArg::F32(_) => 3,
            KArg::U64(_) => 4,
            KArg::I64(_) => 5,
        }
    }

    /// The argument's bytes as the kernel reads them.
    pub fn bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        match *self {
            KArg::Ptr(p) => b.copy_from_slice(&p.0.to_ne_bytes()),
            KArg::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::U32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::U64(v) => b.copy_from_slice(&v.to_ne_bytes()),
            KArg::I64(v) => b.copy_from_slice(&v.to_ne_bytes()),
        }
        b
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Bytes of dynamic shared memory.
    pub shared_bytes: u32,
}

impl LaunchCfg {
    /// A 1-D launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchCfg {
            grid: (blocks.max(1), 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// Enough 1-D blocks of `threads` threads to cover `n` items.
    pub fn cover(n: usize, threads: u32) -> Self {
        Self::linear(n.div_ceil(threads as usize) as u32, threads)
    }
}

/// A device that runs kernels/*.cu kernels.
///
/// Operations are ordered per stream, as on a GPU: a launch or copy issued on a stream starts
/// after everything issued earlier on that stream, and after the events the stream was told to
/// wait for. Host copies ([`Device::read`]) synchronise their stream first.
pub trait Device: Send + Sync {
    /// What this device is, for logs ("NVIDIA H100 (sm_90)", "SIMT emulator").
    fn describe(&self) -> String;
    /// Allocates `bytes` bytes of device memory (contents undefined), ordered on `stream`: work
    /// on other streams may use it only after waiting for an event recorded after this call.
    fn alloc(&self, bytes: usize, stream: StreamId) -> Result<DevPtr>;
    /// Frees an allocation once the work issued on `stream` so far has finished (work on other
    /// streams that uses it must have been joined into `stream` before).
    fn free(&self, ptr: DevPtr, stream: StreamId) -> Result<()>;
    /// Copies host bytes to `dst` (ordered on `stream`; the host buffer may be reused on return).
    fn write(&self, dst: DevPtr, src: &[u8], stream: StreamId) -> Result<()>;
    /// Copies device bytes to the host after the work issued on `stream` has finished.
    fn read(&self, dst: &mut [u8], src: DevPtr, stream: StreamId) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to zero.
    fn zero(&self, dst: DevPtr, bytes: usize, stream: StreamId) -> Result<()>;
    /// Copies `bytes` bytes between device allocations.
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize, stream: StreamId) -> Result<()>;
    /// Launches kernel `name` (an `extern "C"` kernel of kernels/*.cu).
    fn launch(&self, name: &str, cfg: LaunchCfg, args: &[KArg], stream: StreamId) -> Result<()>;
    /// Creates a new stream.
    fn create_stream(&self) -> Result<StreamId>;
    /// Records an event at the current end of `stream`. An event is meant to be waited on soon
    /// after; implementations may forget events once thousands of newer ones exist.
    fn record(&self, stream: StreamId) -> Result<EventId>;
    /// Makes later work on `stream` wait for `event`.
    fn wait(&self, stream: StreamId, event: EventId) -> Result<()>;
    /// Blocks the host until all work on `stream` has finished.
    fn synchronize(&self, stream: StreamId) -> Result<()>;
}
