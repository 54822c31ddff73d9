//! [`Device`] implementation on a real NVIDIA GPU through cudarc's driver API.
//!
//! The CUDA driver library is loaded at run time (cudarc `dynamic-loading`): a machine without a
//! GPU or driver gets an error from [`CudaDriver::probe`] / [`CudaDriver::new`], never a panic.
//! Kernels are compiled per file by NVRTC at first use for the device's architecture (cached on
//! disk, see [`super::nvrtc`]). Memory uses the stream-ordered allocator (cuMemAllocAsync /
//! cuMemFreeAsync) on the stream the owning backend issues its work on.

use super::device::{DevPtr, Device, EventId, KArg, LaunchCfg, StreamId};
use super::{nvrtc, sources};
use crate::error::{Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// How many recorded events stay valid: a wait names an event recorded moments before, and a
/// long run records a few per step, so older ones are released.
const EVENT_WINDOW: usize = 4096;

fn drv(what: &str, e: result::DriverError) -> Error {
    Error::Backend(format!("CUDA {what}: {e:?}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps behind; keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A GPU driven through the CUDA driver API.
pub struct CudaDriver {
    ctx: Arc<CudaContext>,
    name: String,
    arch: &'static str,
    streams: Mutex<Vec<Arc<CudaStream>>>,
    /// Recorded events by id; only the newest [`EVENT_WINDOW`] are kept.
    events: Mutex<(usize, HashMap<usize, CudaEvent>)>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    kernel_file: HashMap<String, (&'static str, &'static str)>,
}

impl CudaDriver {
    /// Whether the driver library loads and reports at least one device. Never panics.
    pub fn probe() -> Result<usize> {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Backend(
                "no CUDA driver library (libcuda.so) on this machine".into(),
            ));
        }
        result::init().map_err(|e| drv("init", e))?;
        let n = CudaContext::device_count().map_err(|e| drv("device count", e))?;
        if n <= 0 {
            return Err(Error::Backend("the CUDA driver reports no device".into()));
        }
        Ok(n as usize)
    }

    /// Opens device `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = Self::probe()?;
        if ordinal >= count {
            return Err(Error::Backend(format!(
                "CUDA device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("context", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| drv("compute capability", e))?;
        let arch = match (major, minor) {
            (8, 0) => "compute_80",
            (8, 6) => "compute_86",
            (8, 7) => "compute_87",
            (8, 9) => "compute_89",
            (9, _) => "compute_90",
            (m, _) if m >= 10 => "compute_90",
            _ => {
                return Err(Error::Backend(format!(
                "CUDA device has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            )))
            }
        };
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let mut kernel_file = HashMap::new();
        for (file, text) in sources::KERNEL_FILES {
            for k in sources::kernel_names(text) {
                kernel_file.insert(k, (*file, *text));
            }
        }
        let stream0 = ctx.new_stream().map_err(|e| drv("stream", e))?;
        Ok(CudaDriver {
            name: format!("{name} (sm_{major}{minor})"),
            ctx,
            arch,
            streams: Mutex::new(vec![stream0]),
            events: Mutex::new((0, HashMap::new())),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            kernel_file,
        })
    }

    fn stream(&self, s: StreamId) -> Result<Arc<CudaStream>> {
        lock(&self.streams)
            .get(s.0)
            .cloned()
            .ok_or_else(|| Error::Backend(format!("no CUDA stream {}", s.0)))
    }

    fn function(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        let (file, text) = *self
            .kernel_file
            .get(name)
            .ok_or_else(|| Error::Backend(format!("no kernel named `{name}` in kernels/")))?;
        let module = {
            let mut mods = lock(&self.modules);
            match mods.get(file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = nvrtc::kernel_ptx(file, text, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .map_err(|e| drv(&format!("loading kernels/{file}"), e))?;
                    mods.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| drv(&format!("kernel {name}"), e))?;
        lock(&self.functions).insert(name.to_string(), f.clone());
        Ok(f)
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| drv("bind context", e))
    }
}

// SAFETY: addresses come from the stream-ordered allocator of this context (fresh, disjoint,
// valid until freed); each method issues exactly the one driver call it names on the stream it
// is given, so the driver's stream and event semantics are the trait's; `read` synchronises
// its stream before returning.
unsafe impl Device for CudaDriver {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize, stream: StreamId) -> Result<DevPtr> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: the stream belongs to this context, which is bound to the calling thread.
        let p = unsafe { result::malloc_async(s.cu_stream(), bytes) }
            .map_err(|e| drv(&format!("allocating {bytes} bytes"), e))?;
        Ok(DevPtr::from_raw(p))
    }

    unsafe fn free(&self, ptr: DevPtr, stream: StreamId) -> Result<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: the caller's contract (Device::free): `ptr` came from `alloc` on this context,
        // is freed once, and work on other streams that uses it has been joined into `stream`.
        unsafe { result::free_async(ptr.addr(), s.cu_stream()) }.map_err(|e| drv("free", e))
    }

    unsafe fn write(&self, dst: DevPtr, src: &[u8], stream: StreamId) -> Result<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: pageable host memory: the driver stages the bytes before returning, so `src`
        // may be reused at once; the destination range is live (the caller's contract).
        unsafe { result::memcpy_htod_async(dst.addr(), src, s.cu_stream()) }
            .map_err(|e| drv("host-to-device copy", e))
    }

    unsafe fn read(&self, dst: &mut [u8], src: DevPtr, stream: StreamId) -> Result<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: the source range is live (the caller's contract); the copy completes before
        // synchronize returns, while `dst` is still borrowed.
        unsafe { result::memcpy_dtoh_async(dst, src.addr(), s.cu_stream()) }
            .map_err(|e| drv("device-to-host copy", e))?;
        s.synchronize().map_err(|e| drv("synchronize", e))
    }

    unsafe fn zero(&self, dst: DevPtr, bytes: usize, stream: StreamId) -> Result<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: the range lies within a live allocation (the caller's contract).
        unsafe { result::memset_d8_async(dst.addr(), 0, bytes, s.cu_stream()) }
            .map_err(|e| drv("memset", e))
    }

    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize, stream: StreamId) -> Result<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        // SAFETY: both ranges lie within live allocations (the caller's contract).
        unsafe { result::memcpy_dtod_async(dst.addr(), src.addr(), bytes, s.cu_stream()) }
            .map_err(|e| drv("device-to-device copy", e))
    }

    unsafe fn launch(
        &self,
        name: &str,
        cfg: LaunchCfg,
        args: &[KArg<'_>],
        stream: StreamId,
    ) -> Result<()> {
        self.bind()?;
        let f = self.function(name)?;
        let s = self.stream(stream)?;
        if cfg.shared_bytes > 48 * 1024 {
            // Above 48 KiB of dynamic shared memory a kernel must opt in (sm_80: up to 163 KiB,
            // sm_90: up to 227 KiB); the driver refuses the launch otherwise.
            // SAFETY: `f` is a live function of this context, bound to the calling thread.
            unsafe {
                result::function::set_function_attribute(
                    f.cu_function(),
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.shared_bytes as i32,
                )
            }
            .map_err(|e| {
                drv(
                    &format!(
                        "{name}: {} bytes of dynamic shared memory",
                        cfg.shared_bytes
                    ),
                    e,
                )
            })?;
        }
        let mut slots: Vec<[u8; 8]> = args.iter().map(KArg::bytes).collect();
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        // SAFETY: each params[i] points at 8 bytes holding argument i in the layout of the
        // kernel's parameter, and what the kernel then accesses is inside live allocations:
        // both are the caller's contract (Device::launch; the emulator tests check the same
        // calls against the same signatures). The driver copies the arguments at launch.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                s.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| drv(&format!("launching {name}"), e))
    }

    fn create_stream(&self) -> Result<StreamId> {
        let s = self.ctx.new_stream().map_err(|e| drv("stream", e))?;
        let mut streams = lock(&self.streams);
        streams.push(s);
        Ok(StreamId(streams.len() - 1))
    }

    fn record(&self, stream: StreamId) -> Result<EventId> {
        let s = self.stream(stream)?;
        let ev = self.ctx.new_event(None).map_err(|e| drv("event", e))?;
        // SAFETY: both handles belong to this context.
        unsafe { result::event::record(ev.cu_event(), s.cu_stream()) }
            .map_err(|e| drv("event record", e))?;
        let mut events = lock(&self.events);
        let id = events.0;
        events.0 += 1;
        events.1.insert(id, ev);
        if id >= EVENT_WINDOW {
            events.1.remove(&(id - EVENT_WINDOW));
        }
        Ok(EventId(id))
    }

    fn wait(&self, stream: StreamId, event: EventId) -> Result<()> {
        let s = self.stream(stream)?;
        let events = lock(&self.events);
        let ev = events.1.get(&event.0).ok_or_else(|| {
            Error::Backend(format!(
                "CUDA event {} is unknown or older than the newest {EVENT_WINDOW}",
                event.0
            ))
        })?;
        // SAFETY: both handles belong to this context and outlive the call.
        unsafe {
            result::stream::wait_event(
                s.cu_stream(),
                ev.cu_event(),
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| drv("stream wait", e))
    }

    fn synchronize(&self, stream: StreamId) -> Result<()> {
        self.stream(stream)?
            .synchronize()
            .map_err(|e| drv("synchronize", e))
    }
}
