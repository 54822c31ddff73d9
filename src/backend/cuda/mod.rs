//! The CUDA backend: hand-written kernels (kernels/*.cu) driven through a narrow [`Device`]
//! interface, so the same host code runs on a GPU (cudarc, [`driver`]) and on the SIMT emulator
//! ([`emulator`]), which is how it is tested on machines without a GPU.
//!
//! Buffers are device allocations of `f32`; small per-op metadata (token ids, spans, segment
//! tables) is uploaded next to the launch that reads it. Every op validates its shapes on the
//! host before launching, with the same messages as the CPU backend, so a bad shape is an error
//! and never an out-of-bounds access on the device.

pub mod device;
pub mod driver;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod nvrtc;
mod ops;
pub mod sources;

pub use device::{DevPtr, Device, EventId, KArg, LaunchCfg, StreamId};

pub use ops::gemm::CudaWeight;

use super::{
    Activation, AdamW, AttnShape, Backend, LoraGradSeg, LoraSeg, LoraShape, Span, WeightPrecision,
};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A device allocation, freed on drop.
pub struct DeviceMem {
    ptr: DevPtr,
    bytes: usize,
    /// The stream it was allocated on, which also orders its release.
    stream: StreamId,
    dev: Arc<dyn Device>,
}

impl DeviceMem {
    /// The device address.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        // A failed free leaks at worst; there is no caller to report it to from drop.
        let _ = self.dev.free(self.ptr, self.stream);
    }
}

impl std::fmt::Debug for DeviceMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceMem({:#x}, {} bytes)", self.ptr.0, self.bytes)
    }
}

/// A buffer of `f32` on the device.
#[derive(Debug)]
pub struct CudaBuf {
    mem: DeviceMem,
    len: usize,
}

impl CudaBuf {
    /// The device address of element 0.
    pub fn ptr(&self) -> DevPtr {
        self.mem.ptr
    }
    /// A kernel pointer argument for this buffer.
    pub fn arg(&self) -> KArg {
        KArg::Ptr(self.mem.ptr)
    }
}

/// The CUDA backend over any [`Device`].
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<dyn Device>,
    stream: StreamId,
    /// Streams created for [`Backend::fork`], reused across forks (shared by clones).
    lanes: Arc<std::sync::Mutex<Vec<StreamId>>>,
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
        }
    }

    /// The backend over the SIMT emulator (each operation runs when issued).
    #[cfg(feature = "emulator")]
    pub fn emulated() -> Self {
        Self::new(Arc::new(emulator::Emulator::new()))
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

    /// Allocates `bytes` bytes.
    pub fn alloc_bytes(&self, bytes: usize) -> Result<DeviceMem> {
        // Zero-byte allocations are legal in the API but not on every driver.
        let ptr = self.dev.alloc(bytes.max(4), self.stream)?;
        Ok(DeviceMem {
            ptr,
            bytes,
            stream: self.stream,
            dev: self.dev.clone(),
        })
    }

    /// Uploads plain-old-data metadata (ids, spans, tables) for one launch.
    pub fn upload_pod<T: bytemuck::Pod>(&self, data: &[T]) -> Result<DeviceMem> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mem = self.alloc_bytes(bytes.len())?;
        if !bytes.is_empty() {
            self.dev.write(mem.ptr, bytes, self.stream)?;
        }
        Ok(mem)
    }

    /// Launches a kernel on this backend's stream.
    pub fn launch(&self, name: &str, cfg: LaunchCfg, args: &[KArg]) -> Result<()> {
        self.dev.launch(name, cfg, args, self.stream)
    }

    pub(crate) fn stream(&self) -> StreamId {
        self.stream
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
    /// Buffers a lane allocates are released on the lane's stream; buffers that outlive the
    /// lane's work and are used elsewhere must be dropped only after [`Backend::join`].
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
        let mem = self.alloc_bytes(len * 4)?;
        self.dev.zero(mem.ptr, len * 4, self.stream)?;
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
        if buf.len > 0 {
            self.dev
                .read(bytemuck::cast_slice_mut(&mut out), buf.ptr(), self.stream)?;
        }
        Ok(out)
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }
    fn fill_zero(&self, buf: &mut CudaBuf) -> Result<()> {
        self.dev.zero(buf.ptr(), buf.len * 4, self.stream)
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
        if len == 0 {
            return Ok(());
        }
        self.dev.copy(y.ptr(), x.ptr(), len * 4, self.stream)
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
        nvrtc::ensure_nvrtc()?;
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
