//! The narrow interface between the CUDA backend and a device: memory, copies, launches by
//! kernel name, streams and events. Two implementations: the real GPU through cudarc
//! ([`super::driver`]) and the SIMT emulator ([`super::emulator`]), which runs the same kernel
//! sources on the CPU so that the backend's host code is exercised in CI.
//!
//! # Soundness
//!
//! This is the raw layer: a [`DevPtr`] is a bare device address, and nothing here can tell a
//! live allocation from a freed one or know how far a kernel will index. So every operation
//! that consumes an address ([`Device::free`], [`Device::write`], [`Device::read`],
//! [`Device::zero`], [`Device::copy`], [`Device::launch`]) is an `unsafe fn` whose `# Safety`
//! section states what the caller must guarantee; on a GPU a broken contract is a double free
//! or a write anywhere in device memory. Safe code cannot forge an address either: [`DevPtr`]
//! has no public constructor, so every address comes from a device's [`Device::alloc`] (or is
//! [`DevPtr::NULL`]).
//!
//! Safe code uses the owning layer of [`super::CudaBackend`] instead: a
//! [`super::DeviceMem`] / [`super::CudaBuf`] frees its allocation exactly once, when dropped,
//! and is not `Clone`; a kernel argument made from a buffer ([`KArg::Buf`]) borrows it, so it
//! cannot outlive the allocation. Safe code cannot construct an address:
//!
//! ```compile_fail,E0423
//! use flexp::backend::cuda::DevPtr;
//! let p = DevPtr(0x1000); // error: the field is private
//! ```
//!
//! nor call an operation that takes one outside `unsafe`:
//!
//! ```compile_fail,E0133
//! use flexp::backend::cuda::{emulator::Emulator, Device, StreamId};
//! let dev = Emulator::new();
//! let p = dev.alloc(16, StreamId(0)).unwrap();
//! dev.free(p, StreamId(0)).unwrap(); // error[E0133]: call to unsafe function
//! dev.free(p, StreamId(0)).unwrap();
//! ```

use super::DeviceMem;
use crate::error::Result;

/// A device address: what a kernel receives as a pointer argument.
///
/// A plain number that proves nothing about the memory behind it (it may have been freed), like
/// a raw pointer: reading it is safe ([`DevPtr::addr`]), using it is `unsafe`. There is no public
/// constructor; addresses come from [`Device::alloc`] or are [`DevPtr::NULL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevPtr(u64);

impl DevPtr {
    /// The null device address (kernels that take optional tables read it as "absent").
    pub const NULL: DevPtr = DevPtr(0);

    /// Wraps an address a device implementation got from its allocator. Crate-private so that
    /// safe code outside the backend cannot forge addresses.
    pub(crate) fn from_raw(addr: u64) -> Self {
        DevPtr(addr)
    }

    /// The numeric address, e.g. to store in a device-side pointer table (which is then read
    /// by a kernel, so building one is only useful in an `unsafe` launch).
    pub fn addr(self) -> u64 {
        self.0
    }

    /// Whether this is [`DevPtr::NULL`].
    pub fn is_null(self) -> bool {
        self.0 == 0
    }
}

/// A stream handle, an index into the device's streams; stream 0 always exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct StreamId(pub usize);

/// An event recorded on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventId(pub usize);

/// One kernel argument. The variant must match the kernel's parameter type exactly; the
/// emulator checks it, a GPU would silently misread it.
///
/// The lifetime is that of the buffers borrowed by [`KArg::Buf`] arguments: an argument list
/// cannot outlive the allocations it names.
///
/// ```compile_fail,E0597
/// use flexp::backend::cuda::{CudaBackend, KArg};
/// use flexp::backend::Backend;
/// let be = CudaBackend::emulated();
/// let arg: KArg<'_> = {
///     let buf = be.zeros(4).unwrap();
///     buf.arg() // error[E0597]: `buf` does not live long enough
/// };
/// ```
#[derive(Clone, Copy, Debug)]
pub enum KArg<'a> {
    /// A pointer (`gmem<T>` in the kernel source) to the start of a buffer, borrowed for as long
    /// as the argument exists. Made by [`super::CudaBuf::arg`] or [`DeviceMem::arg`].
    Buf(&'a DeviceMem),
    /// A raw device pointer (`gmem<T>`); [`DevPtr::NULL`] is a null pointer. Nothing ties it to
    /// a live allocation: that is part of the launch's `# Safety` contract.
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

/// An argument reduced to what a kernel receives: the emulator's type tag and eight bytes. It
/// borrows nothing, so a deferred launch can keep it (the caller's `# Safety` contract keeps
/// the memory behind a pointer alive until the kernel has run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "emulator"), allow(dead_code))]
pub(crate) struct RawArg {
    pub(crate) tag: i32,
    pub(crate) bytes: [u8; 8],
}

impl KArg<'_> {
    /// The emulator's type tag of this argument (kernels/emu/simt.hpp, `ArgTag`).
    pub fn tag(&self) -> i32 {
        match self {
            KArg::Buf(_) | KArg::Ptr(_) => 0,
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
            KArg::Buf(m) => b.copy_from_slice(&m.ptr().0.to_ne_bytes()),
            KArg::Ptr(p) => b.copy_from_slice(&p.0.to_ne_bytes()),
            KArg::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::U32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            KArg::U64(v) => b.copy_from_slice(&v.to_ne_bytes()),
            KArg::I64(v) => b.copy_from_slice(&v.to_ne_bytes()),
        }
        b
    }

    #[cfg_attr(not(feature = "emulator"), allow(dead_code))]
    pub(crate) fn raw(&self) -> RawArg {
        RawArg {
            tag: self.tag(),
            bytes: self.bytes(),
        }
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
///
/// "A live allocation of this device" below means an address range inside an allocation that
/// this device's [`Device::alloc`] returned and that has not been passed to [`Device::free`].
/// An operation *uses* a range until it has finished on the device, which (streams being
/// asynchronous) may be long after the call returned: the range must stay allocated until then,
/// i.e. it may be freed only on the same stream, or on a stream that has waited for an event
/// recorded after the operation.
///
/// # Safety
///
/// Implementing this trait promises what [`super::CudaBackend`]'s safe API relies on to keep
/// every access inside live memory: [`Device::alloc`] of `bytes > 0` returns a non-null address
/// of a fresh allocation of at least the requested size that overlaps no other live allocation and stays
/// valid until freed; every operation touches only the memory it is given (a launch runs the
/// named kernel with exactly the given arguments and geometry); operations are ordered per
/// stream and by events as documented above; and a read has finished when it returns.
pub unsafe trait Device: Send + Sync {
    /// What this device is, for logs ("NVIDIA H100 (sm_90)", "SIMT emulator").
    fn describe(&self) -> String;

    /// Allocates `bytes` bytes of device memory (contents undefined), ordered on `stream`: work
    /// on other streams may use it only after waiting for an event recorded after this call.
    /// The caller owns the allocation; leaking it is safe, freeing it is [`Device::free`].
    fn alloc(&self, bytes: usize, stream: StreamId) -> Result<DevPtr>;

    /// Frees an allocation once the work issued on `stream` so far has finished.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by this device's [`Device::alloc`] and has not been freed since (no
    /// double free). No work that uses it may run after the free: everything issued on other
    /// streams that uses it has been joined into `stream` by an event wait, and nothing uses it
    /// afterwards.
    unsafe fn free(&self, ptr: DevPtr, stream: StreamId) -> Result<()>;

    /// Copies host bytes to `dst` (ordered on `stream`; the host buffer may be reused on
    /// return).
    ///
    /// # Safety
    ///
    /// `dst .. dst + src.len()` lies inside one live allocation of this device that stays
    /// allocated until the copy has run (see the trait's docs).
    unsafe fn write(&self, dst: DevPtr, src: &[u8], stream: StreamId) -> Result<()>;

    /// Copies device bytes to the host after the work issued on `stream` has finished.
    ///
    /// # Safety
    ///
    /// `src .. src + dst.len()` lies inside one live allocation of this device.
    unsafe fn read(&self, dst: &mut [u8], src: DevPtr, stream: StreamId) -> Result<()>;

    /// Sets `bytes` bytes at `dst` to zero.
    ///
    /// # Safety
    ///
    /// `dst .. dst + bytes` lies inside one live allocation of this device that stays allocated
    /// until the memset has run.
    unsafe fn zero(&self, dst: DevPtr, bytes: usize, stream: StreamId) -> Result<()>;

    /// Copies `bytes` bytes between device allocations.
    ///
    /// # Safety
    ///
    /// `dst .. dst + bytes` and `src .. src + bytes` each lie inside one live allocation of this
    /// device, and both stay allocated until the copy has run.
    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize, stream: StreamId) -> Result<()>;

    /// Launches kernel `name` (an `extern "C"` kernel of kernels/*.cu).
    ///
    /// # Safety
    ///
    /// A kernel dereferences what it is given without bounds checks, so the caller vouches for
    /// the whole launch:
    /// - `args` match the kernel's parameters in number and type;
    /// - every pointer argument ([`KArg::Buf`], or a non-null [`KArg::Ptr`]) points into a live
    ///   allocation of this device, and so does every address the kernel reads from device
    ///   memory (pointer tables); all of them stay allocated until the kernel has finished;
    /// - with these sizes, this grid and block shape and `cfg.shared_bytes` of dynamic shared
    ///   memory, the kernel accesses only memory inside those allocations (kernels/*.cu
    ///   document what each kernel reads and writes; the host code checks the buffers against
    ///   it).
    unsafe fn launch(
        &self,
        name: &str,
        cfg: LaunchCfg,
        args: &[KArg<'_>],
        stream: StreamId,
    ) -> Result<()>;

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
