//! The CUDA backend: hand-written kernels (kernels/*.cu) driven through a narrow [`Device`]
//! interface, so the same host code runs on a GPU (cudarc, [`driver`]) and on the SIMT emulator
//! ([`emulator`]), which is how it is tested on machines without a GPU.
//!
//! Buffers are device allocations of `f32`; small per-op metadata (token ids, spans, segment
//! tables) is uploaded next to the launch that reads it. Every op validates its shapes on the
//! host before launching, with the same messages as the CPU backend, so a bad shape is an error
//! and never an out-of-bounds access on the device.
//!
//! # Memory safety
//!
//! [`Device`] is the raw, `unsafe` layer (see its module docs). This module is the safe one:
//! - [`DeviceMem`] owns an allocation: its address is private, it is not `Clone`, and its drop
//!   frees it exactly once;
//! - buffers are checked to belong to the backend's device before any address of theirs reaches
//!   the device, and the byte ranges of copies, memsets and reads are checked against their
//!   allocations;
//! - a buffer used on a stream other than the one it was allocated on is ordered automatically:
//!   the first use on that stream waits for the allocation (and everything issued before it on
//!   its stream), and the free waits for every stream that used it, so dropping a buffer while
//!   a lane still works on it cannot free memory under a running kernel;
//! - launching a kernel by name ([`CudaBackend::launch`]) stays `unsafe`, since only the caller
//!   knows how far the kernel indexes; the ops in `ops/` make it safe by checking every buffer
//!   against the shapes they pass, each launch site saying which check covers it.

pub mod device;
pub mod driver;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod nvrtc;
mod ops;
pub mod sass;
pub mod sources;

pub use device::{DevPtr, Device, EventId, KArg, LaunchCfg, StreamId};

pub use ops::gemm::CudaWeight;

use super::{
    Activation, AdamW, AttnShape, Backend, LoraGradSeg, LoraSeg, LoraShape, Span, WeightPrecision,
};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// A device allocation, freed exactly once, on drop.
///
/// It is the only owner of its address: the address cannot be set from outside the backend,
/// the type is not `Clone`, and [`DeviceMem::ptr`] hands out a copy that only `unsafe` code
/// can use. Kernel arguments borrow it ([`DeviceMem::arg`]).
pub struct DeviceMem {
    ptr: DevPtr,
    bytes: usize,
    /// The stream it was allocated on, which also orders its release.
    stream: StreamId,
    dev: Arc<dyn Device>,
    /// Other streams that have had work using this allocation issued on them; the free waits
    /// for each (see `CudaBackend::claim`).
    used_on: Mutex<Vec<StreamId>>,
}

impl DeviceMem {
    /// The device address of byte 0. Copying the number out is harmless; only `unsafe` code can
    /// give it to the device ([`Device`], [`KArg::Ptr`]), and it is stale once `self` is dropped.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    /// Size in bytes (as requested; the allocation may be larger).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// A kernel pointer argument to byte 0, borrowing the allocation for as long as the
    /// argument exists.
    pub fn arg(&self) -> KArg<'_> {
        KArg::Buf(self)
    }
    fn on_device(&self, dev: &Arc<dyn Device>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.dev), Arc::as_ptr(dev))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded lists stay consistent whatever panicked while one was held.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        // Work on other streams may still use the allocation: make its stream wait for them.
        // If that cannot be arranged, leaking is the safe outcome.
        for &s in lock(&self.used_on).iter() {
            let Ok(ev) = self.dev.record(s) else { return };
            if self.dev.wait(self.stream, ev).is_err() {
                return;
            }
        }
        // SAFETY: `ptr` came from `dev.alloc` (CudaBackend::alloc_bytes) and this value is its
        // only owner (private field, no Clone), so this is the one free. Every use was issued
        // while `self` was borrowed, hence before now, on `stream` or on a stream in `used_on`,
        // each of which `stream` has just been made to wait for; nothing can use it afterwards.
        // A failed free leaks at worst; there is no caller to report it to from drop.
        let _ = unsafe { self.dev.free(self.ptr, self.stream) };
    }
}

impl std::fmt::Debug for DeviceMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceMem({:#x}, {} bytes)", self.ptr.addr(), self.bytes)
    }
}

/// A buffer of `f32` on the device.
#[derive(Debug)]
pub struct CudaBuf {
    mem: DeviceMem,
    len: usize,
}

impl CudaBuf {
    /// The device address of element 0 (see [`DeviceMem::ptr`]).
    pub fn ptr(&self) -> DevPtr {
        self.mem.ptr
    }
    /// A kernel pointer argument for this buffer, borrowing it.
    pub fn arg(&self) -> KArg<'_> {
        self.mem.arg()
    }
    /// The allocation behind the buffer.
    pub fn mem(&self) -> &DeviceMem {
        &self.mem
    }
}

/// Bytes of `len` elements of `size` bytes, refusing sizes that overflow (a wrapped size would
/// let a buffer claim more elements than its allocation holds).
pub(crate) fn bytes_of(what: &str, len: usize, size: usize) -> Result<usize> {
    len.checked_mul(size)
        .ok_or_else(|| Error::Backend(format!("{what}: {len} elements overflow the address space")))
}

/// The CUDA backend over any [`Device`].
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<dyn Device>,
    stream: StreamId,
    /// Streams created for [`Backend::fork`], reused across forks (shared by clones).
    lanes: Arc<std::sync::Mutex<Vec<StreamId>>>,
    /// Values of one decoded slab of a weight kept in GGML blocks (kernels/gguf.cu).
    decode_slab_values: usize,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaBackend({}, stream {})",
            self.dev.describe(),
            self.stream.0
        )
    }
}

impl CudaBackend {
    /// A backend issuing its work on stream 0 of `dev`.
    pub fn new(dev: Arc<dyn Device>) -> Self {
        CudaBackend {
            dev,
            stream: StreamId(0),
            lanes: Arc::default(),
            decode_slab_values: ops::gguf::DEFAULT_SLAB_VALUES,
        }
    }

    /// The same backend decoding weights kept in GGML blocks `values` values at a time (at
    /// least one row; 4 Mi values, 16 MiB of f32, by default). Smaller slabs use less device
    /// memory per product and launch more, smaller GEMMs.
    pub fn with_decode_slab_values(mut self, values: usize) -> Self {
        self.decode_slab_values = values.max(1);
        self
    }

    /// Values of one decoded slab of a weight kept in GGML blocks.
    pub fn decode_slab_values(&self) -> usize {
        self.decode_slab_values
    }

    /// The backend over the SIMT emulator (each operation runs when issued).
    #[cfg(feature = "emulator")]
    pub fn emulated() -> Self {
        Self::new(Arc::new(emulator::Emulator::new()))
    }

    /// The backend the CUDA tests run on: the SIMT emulator, or GPU 0 when the environment sets
    /// `FLEXP_CUDA_TESTS=gpu` (tools/gpu_check.sh runs the test binaries so on a GPU machine,
    /// where the same comparisons against the CPU backend then check the hardware).
    #[cfg(feature = "emulator")]
    pub fn for_tests() -> Result<Self> {
        match std::env::var("FLEXP_CUDA_TESTS").as_deref() {
            Ok("gpu") => match select(BackendChoice::Cuda)?.0 {
                Selected::Cuda(be) => Ok(be),
                Selected::Cpu(_) => Err(Error::Backend("FLEXP_CUDA_TESTS=gpu: no GPU".into())),
            },
            Ok("emulator") | Err(_) => Ok(Self::emulated()),
            Ok(other) => Err(Error::Input(format!(
                "FLEXP_CUDA_TESTS={other}: expected `gpu` or `emulator`"
            ))),
        }
    }

    /// The backend over the SIMT emulator with strict, adversarial stream ordering
    /// ([`emulator::Emulator::with_streams`]).
    #[cfg(feature = "emulator")]
    pub fn emulated_streams() -> Self {
        Self::new(Arc::new(emulator::Emulator::with_streams()))
    }

    /// The same device, issuing work on another stream. Work on different streams may overlap;
    /// order it with [`CudaBackend::record`] and [`CudaBackend::wait`].
    pub fn on_stream(&self, stream: StreamId) -> Self {
        CudaBackend {
            dev: self.dev.clone(),
            stream,
            lanes: self.lanes.clone(),
            decode_slab_values: self.decode_slab_values,
        }
    }

    /// A new stream on this device.
    pub fn create_stream(&self) -> Result<StreamId> {
        self.dev.create_stream()
    }

    /// Records an event at the current end of this backend's stream.
    pub fn record(&self) -> Result<EventId> {
        self.dev.record(self.stream)
    }

    /// Makes later work on this backend's stream wait for `event`.
    pub fn wait(&self, event: EventId) -> Result<()> {
        self.dev.wait(self.stream, event)
    }

    /// Blocks until this backend's stream is idle.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize(self.stream)
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// Allocates `bytes` bytes (contents undefined: the emulator fills them with NaN).
    pub fn alloc_bytes(&self, bytes: usize) -> Result<DeviceMem> {
        // Zero-byte allocations are legal in the API but not on every driver.
        let ptr = self.dev.alloc(bytes.max(4), self.stream)?;
        Ok(DeviceMem {
            ptr,
            bytes,
            stream: self.stream,
            dev: self.dev.clone(),
            used_on: Mutex::default(),
        })
    }

    /// Uploads plain-old-data metadata (ids, spans, tables) for one launch.
    pub fn upload_pod<T: bytemuck::Pod>(&self, data: &[T]) -> Result<DeviceMem> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mem = self.alloc_bytes(bytes.len())?;
        if !bytes.is_empty() {
            // SAFETY: `mem` was just allocated with `bytes.len()` bytes on this stream and is
            // owned here; its drop is stream-ordered after this write.
            unsafe { self.dev.write(mem.ptr, bytes, self.stream)? };
        }
        Ok(mem)
    }

    /// The contents of `mem` as `T`s (`mem.bytes() / size_of::<T>()` of them), after the work
    /// issued on this stream so far.
    pub fn download_pod<T: bytemuck::Pod>(&self, mem: &DeviceMem) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        if size == 0 {
            // Zero-sized values carry no bytes to read (and bytemuck refuses to cast them).
            return Ok(Vec::new());
        }
        let mut out = vec![T::zeroed(); mem.bytes / size];
        self.read_into(&mut out, mem)?;
        Ok(out)
    }

    /// Fills `out` from the start of `mem`, after the work issued on this stream so far.
    pub(crate) fn read_into<T: bytemuck::Pod>(&self, out: &mut [T], mem: &DeviceMem) -> Result<()> {
        let dst: &mut [u8] = bytemuck::cast_slice_mut(out);
        if dst.is_empty() {
            return Ok(());
        }
        let src = self.claim(mem, dst.len())?;
        // SAFETY: `claim` checked that `mem` is a live allocation of this device holding
        // `dst.len()` bytes and ordered it on this stream; `mem` is borrowed for the call, and
        // the read has finished when it returns.
        unsafe { self.dev.read(dst, src, self.stream) }
    }

    /// Zeroes the first `bytes` bytes of `mem`.
    pub(crate) fn zero_mem(&self, mem: &DeviceMem, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let dst = self.claim(mem, bytes)?;
        // SAFETY: `claim` checked the range and the device and ordered `mem` on this stream,
        // whose work its drop waits for.
        unsafe { self.dev.zero(dst, bytes, self.stream) }
    }

    /// Copies the first `bytes` bytes of `src` to the start of `dst`.
    pub(crate) fn copy_mem(&self, dst: &DeviceMem, src: &DeviceMem, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let (d, s) = (self.claim(dst, bytes)?, self.claim(src, bytes)?);
        // SAFETY: as in `zero_mem`, for both ranges.
        unsafe { self.dev.copy(d, s, bytes, self.stream) }
    }

    /// Checks that `mem` belongs to this backend's device and holds `bytes` bytes, orders it on
    /// this backend's stream, and returns its address for one operation issued there.
    ///
    /// Ordering: the first time work using `mem` is issued on a stream other than the one that
    /// allocated it, that stream waits for an event recorded on the allocating stream, so it
    /// cannot touch the memory before the allocation (and the writes issued before it) has
    /// happened; the stream is remembered, and [`DeviceMem`]'s drop makes the free wait for it.
    pub(crate) fn claim(&self, mem: &DeviceMem, bytes: usize) -> Result<DevPtr> {
        if !mem.on_device(&self.dev) {
            return Err(Error::Backend(format!(
                "{mem:?} belongs to another device than this backend's ({})",
                self.dev.describe()
            )));
        }
        if bytes > mem.bytes {
            return Err(Error::Backend(format!(
                "device access of {bytes} bytes to {mem:?}"
            )));
        }
        if self.stream != mem.stream {
            let mut used = lock(&mem.used_on);
            if !used.contains(&self.stream) {
                let ev = self.dev.record(mem.stream)?;
                self.dev.wait(self.stream, ev)?;
                used.push(self.stream);
            }
        }
        Ok(mem.ptr)
    }

    /// The address of `buf` for a device-side pointer table (the LoRA segment table), claimed
    /// for this stream as [`CudaBackend::claim`] does, since no [`KArg::Buf`] will name it.
    pub(crate) fn table_addr(&self, buf: &CudaBuf) -> Result<u64> {
        Ok(self.claim(&buf.mem, buf.mem.bytes)?.addr())
    }

    /// Launches kernel `name` of kernels/*.cu on this backend's stream. [`KArg::Buf`] arguments
    /// are checked to belong to this device and ordered on this stream ([`DeviceMem`]'s
    /// guarantees); everything else is the caller's to vouch for.
    ///
    /// # Safety
    ///
    /// As for [`Device::launch`], which this calls:
    /// - `args` match the kernel's parameters in number and type;
    /// - every raw address ([`KArg::Ptr`] other than null, or one the kernel reads from a
    ///   device table) lies in a [`DeviceMem`] of this backend's device that is not dropped
    ///   before this call returns, and that was allocated on this backend's stream or has been
    ///   claimed for it (a [`KArg::Buf`] of it, or the crate's table helper);
    /// - with the sizes passed and this geometry the kernel stays inside every allocation it is
    ///   given (kernels/*.cu document what each kernel reads and writes).
    ///
    /// ```
    /// use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};
    /// use flexp::backend::Backend;
    /// let be = CudaBackend::emulated();
    /// let y = be.upload(&[1.0; 4])?;
    /// let x = be.upload(&[2.0; 4])?;
    /// let args = [y.arg(), x.arg(), KArg::I32(4)];
    /// // SAFETY: ew_add_assign(y, x, n) touches y and x at [0, n), and both hold 4 floats.
    /// unsafe { be.launch("ew_add_assign", LaunchCfg::linear(1, 32), &args)? };
    /// assert_eq!(be.download(&y)?, vec![3.0; 4]);
    /// # Ok::<(), flexp::error::Error>(())
    /// ```
    ///
    /// Without `unsafe` it does not compile:
    ///
    /// ```compile_fail,E0133
    /// use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};
    /// use flexp::backend::Backend;
    /// let be = CudaBackend::emulated();
    /// let y = be.upload(&[1.0; 4]).unwrap();
    /// let x = be.upload(&[2.0; 4]).unwrap();
    /// let args = [y.arg(), x.arg(), KArg::I32(4)];
    /// be.launch("ew_add_assign", LaunchCfg::linear(1, 32), &args).unwrap();
    /// ```
    pub unsafe fn launch(&self, name: &str, cfg: LaunchCfg, args: &[KArg<'_>]) -> Result<()> {
        for a in args {
            if let KArg::Buf(mem) = a {
                self.claim(mem, 0)?;
            }
        }
        // SAFETY: buffer arguments are live (borrowed), of this device and ordered on this
        // stream (claimed above); the rest is this function's own contract.
        unsafe { self.dev.launch(name, cfg, args, self.stream) }
    }
}

/// Checks that a buffer holds at least `need` elements (the CPU backend's message).
pub(crate) fn check_len(what: &str, buf: &CudaBuf, need: usize) -> Result<()> {
    super::checks::buf_len(what, buf.len, need)
}

/// Converts a size to the `int` the kernels take, refusing sizes a kernel cannot index.
pub(crate) fn i32_of(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Backend(format!("{what} = {v} exceeds the kernels' i32 range")))
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;

    fn name(&self) -> &'static str {
        "cuda"
    }
    /// Buffers a lane allocates are released on the lane's stream. Memory safety does not
    /// depend on the join: a buffer's first use on another stream waits for its allocation, and
    /// its release waits for every stream that used it (see the module docs); the join is
    /// what orders the *data* (a lane's writes before the work that reads them).
    fn fork(&self, n: usize) -> Result<Vec<CudaBackend>> {
        let streams = {
            let mut pool = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            while pool.len() < n {
                pool.push(self.dev.create_stream()?);
            }
            pool[..n].to_vec()
        };
        let start = self.record()?;
        streams
            .into_iter()
            .map(|s| {
                let lane = self.on_stream(s);
                lane.wait(start)?;
                Ok(lane)
            })
            .collect()
    }
    fn join(&self, lanes: &[CudaBackend]) -> Result<()> {
        for lane in lanes {
            let done = lane.record()?;
            self.wait(done)?;
        }
        Ok(())
    }
    fn concurrent_lanes(&self) -> bool {
        true
    }
    fn zeros(&self, len: usize) -> Result<CudaBuf> {
        let bytes = bytes_of("zeros", len, 4)?;
        let mem = self.alloc_bytes(bytes)?;
        self.zero_mem(&mem, bytes)?;
        Ok(CudaBuf { mem, len })
    }
    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        let mem = self.upload_pod(data)?;
        Ok(CudaBuf {
            mem,
            len: data.len(),
        })
    }
    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let mut out = vec![0f32; buf.len];
        self.read_into(&mut out, &buf.mem)?;
        Ok(out)
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }
    fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        self.zero_mem(&buf.mem, buf.len * 4)
    }

    fn matmul(
        &self,
        c: &mut CudaBuf,
        a: &CudaBuf,
        b: &CudaBuf,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        ops::gemm::matmul(self, c, a, b, m, n, k, trans_a, trans_b, accumulate)
    }
    fn weight(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        precision: WeightPrecision,
    ) -> Result<CudaWeight> {
        ops::gemm::weight(self, data, rows, cols, precision)
    }
    fn weight_quantized(
        &self,
        ty: crate::backend::quant::GgmlType,
        blocks: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<CudaWeight> {
        ops::gguf::weight(self, ty, blocks, rows, cols)
    }
    fn weight_ggml_type(&self, w: &CudaWeight) -> Option<crate::backend::quant::GgmlType> {
        w.ggml_type()
    }
    fn weight_shape(&self, w: &CudaWeight) -> (usize, usize) {
        w.shape()
    }
    fn weight_precision(&self, w: &CudaWeight) -> WeightPrecision {
        w.precision()
    }
    fn weight_bytes(&self, w: &CudaWeight) -> usize {
        w.bytes()
    }
    fn weight_to_host(&self, w: &CudaWeight) -> Result<Vec<f32>> {
        ops::gemm::weight_to_host(self, w)
    }
    fn linear(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaWeight,
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        ops::gemm::linear(self, y, x, w, m, accumulate)
    }
    fn linear_backward_input(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        w: &CudaWeight,
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        ops::gemm::linear_backward_input(self, dx, dy, w, m, accumulate)
    }
    fn add_bias(&self, y: &mut CudaBuf, bias: &CudaBuf, rows: usize, dim: usize) -> Result<()> {
        ops::elementwise::add_bias(self, y, bias, rows, dim)
    }
    fn add_assign(&self, y: &mut CudaBuf, x: &CudaBuf, len: usize) -> Result<()> {
        ops::elementwise::add_assign(self, y, x, len)
    }
    fn copy(&self, y: &mut CudaBuf, x: &CudaBuf, len: usize) -> Result<()> {
        check_len("copy y", y, len)?;
        check_len("copy x", x, len)?;
        self.copy_mem(&y.mem, &x.mem, len * 4)
    }
    fn gather_rows(
        &self,
        dst: &mut CudaBuf,
        src: &CudaBuf,
        rows: &[u32],
        dim: usize,
    ) -> Result<()> {
        ops::elementwise::gather_rows(self, dst, src, rows, dim)
    }
    fn scatter_rows(
        &self,
        dst: &mut CudaBuf,
        src: &CudaBuf,
        rows: &[u32],
        dim: usize,
    ) -> Result<()> {
        ops::elementwise::scatter_rows(self, dst, src, rows, dim)
    }
    fn embedding(
        &self,
        out: &mut CudaBuf,
        table: &CudaBuf,
        ids: &[u32],
        dim: usize,
        accumulate: bool,
    ) -> Result<()> {
        ops::elementwise::embedding(self, out, table, ids, dim, accumulate)
    }
    fn lora_forward(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        u: &mut CudaBuf,
        segs: &[LoraSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()> {
        ops::lora::forward(self, y, x, u, segs, shape)
    }
    fn lora_backward(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        u: &CudaBuf,
        segs: &mut [LoraGradSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()> {
        ops::lora::backward(self, dx, dy, x, u, segs, shape)
    }
    fn attention_forward(
        &self,
        o: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        seqs: &[Span],
        shape: AttnShape,
    ) -> Result<()> {
        no_window(shape)?;
        ops::attention::forward(self, o, lse, q, k, v, seqs, shape)
    }
    fn attention_backward(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        do_: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        o: &CudaBuf,
        lse: &CudaBuf,
        seqs: &[Span],
        shape: AttnShape,
    ) -> Result<()> {
        no_window(shape)?;
        ops::attention::backward(self, dq, dk, dv, do_, q, k, v, o, lse, seqs, shape)
    }
    fn layer_norm_forward(
        &self,
        y: &mut CudaBuf,
        mean: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        ops::norm::layer_norm_forward(self, y, mean, rstd, x, gamma, beta, rows, dim, eps)
    }
    fn layer_norm_backward(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        gamma: &CudaBuf,
        mean: &CudaBuf,
        rstd: &CudaBuf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        ops::norm::layer_norm_backward(self, dx, dy, x, gamma, mean, rstd, rows, dim)
    }
    fn rms_norm_forward(
        &self,
        y: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        gamma: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        ops::norm::rms_norm_forward(self, y, rstd, x, gamma, rows, dim, eps)
    }
    fn rms_norm_backward(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        gamma: &CudaBuf,
        rstd: &CudaBuf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        ops::norm::rms_norm_backward(self, dx, dy, x, gamma, rstd, rows, dim)
    }
    fn activation_forward(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        ops::elementwise::activation_forward(self, y, x, act, len)
    }
    fn activation_backward(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        ops::elementwise::activation_backward(self, dx, dy, x, act, len)
    }
    fn swiglu_forward(
        &self,
        y: &mut CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        len: usize,
    ) -> Result<()> {
        ops::elementwise::swiglu_forward(self, y, gate, up, len)
    }
    fn gated_forward(
        &self,
        y: &mut CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        ops::elementwise::gated_forward(self, y, gate, up, act, len)
    }
    fn gated_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dy: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        ops::elementwise::gated_backward(self, dgate, dup, dy, gate, up, act, len)
    }
    fn scale(&self, x: &mut CudaBuf, alpha: f32, len: usize) -> Result<()> {
        ops::elementwise::scale(self, x, alpha, len)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dy: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
        len: usize,
    ) -> Result<()> {
        ops::elementwise::swiglu_backward(self, dgate, dup, dy, gate, up, len)
    }
    fn rope(
        &self,
        x: &mut CudaBuf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) -> Result<()> {
        ops::elementwise::rope(self, x, positions, heads, head_dim, theta, inverse)
    }
    fn segment_mean(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        spans: &[Span],
        dim: usize,
    ) -> Result<()> {
        ops::elementwise::segment_mean(self, out, x, spans, dim)
    }
    fn segment_mean_backward(
        &self,
        dx: &mut CudaBuf,
        dout: &CudaBuf,
        spans: &[Span],
        dim: usize,
    ) -> Result<()> {
        ops::elementwise::segment_mean_backward(self, dx, dout, spans, dim)
    }
    fn cross_entropy(
        &self,
        dlogits: &mut CudaBuf,
        logits: &CudaBuf,
        labels: &[i64],
        weights: &[f32],
        classes: usize,
    ) -> Result<Vec<f32>> {
        ops::loss::cross_entropy(self, dlogits, logits, labels, weights, classes)
    }
    fn adamw_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        hp: AdamW,
        step: u64,
    ) -> Result<()> {
        ops::optim::adamw_step(self, param, grad, m, v, hp, step)
    }
}

/// Which compute backend to run on (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a driver and a device are present (and NVRTC can be loaded), else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on GPU 0; an error when there is none.
    Cuda,
    /// The CUDA backend on the SIMT emulator (slow; for testing kernels and host code).
    Emulator,
}

/// The backend [`select`] chose.
pub enum Selected {
    /// The CPU backend.
    Cpu(super::cpu::Cpu),
    /// The CUDA backend (on a GPU or on the emulator).
    Cuda(CudaBackend),
}

/// Opens the backend `choice` names. Returns it with a line saying what was chosen and why.
/// Never panics on a machine without CUDA.
pub fn select(choice: BackendChoice) -> Result<(Selected, String)> {
    let gpu = || -> Result<CudaBackend> {
        // The driver first: on a machine with no GPU, "no driver" is the reason to report, not
        // a missing compiler the user would then install for nothing.
        driver::CudaDriver::probe()?;
        // Kernels precompiled to PTX (`flexp-run ptx`) need no NVRTC on this machine.
        if nvrtc::ptx_dir().is_none() {
            nvrtc::ensure_nvrtc()?;
        }
        Ok(CudaBackend::new(Arc::new(driver::CudaDriver::new(0)?)))
    };
    match choice {
        BackendChoice::Cpu => Ok((Selected::Cpu(super::cpu::Cpu), "backend: cpu".into())),
        BackendChoice::Cuda => {
            let be = gpu()?;
            let line = format!("backend: cuda on {}", be.dev.describe());
            Ok((Selected::Cuda(be), line))
        }
        BackendChoice::Emulator => {
            #[cfg(feature = "emulator")]
            {
                Ok((
                    Selected::Cuda(CudaBackend::emulated()),
                    "backend: cuda on the SIMT emulator (CPU; slow, for testing)".into(),
                ))
            }
            #[cfg(not(feature = "emulator"))]
            {
                Err(Error::Input(
                    "this build has no SIMT emulator (cargo feature `emulator`)".into(),
                ))
            }
        }
        BackendChoice::Auto => match gpu() {
            Ok(be) => {
                let line = format!("backend: cuda on {} (auto)", be.dev.describe());
                Ok((Selected::Cuda(be), line))
            }
            Err(e) => Ok((
                Selected::Cpu(super::cpu::Cpu),
                format!("backend: cpu (auto; no usable GPU: {e})"),
            )),
        },
    }
}

/// The f32 attention kernels mask keys before a sliding window; the bf16 tensor-core kernels have
/// no window yet: a model with local layers (Gemma 3) in bf16 says so instead of attending to
/// keys it should not see.
fn no_window(shape: AttnShape) -> Result<()> {
    match (shape.window, shape.bf16) {
        (Some(w), true) => Err(Error::Backend(format!(
            "sliding-window attention (window {w}, Gemma 3's local layers) is not implemented in \
             the bf16 tensor-core kernels yet: use precision = \"f32\" or --backend cpu"
        ))),
        _ => Ok(()),
    }
}
