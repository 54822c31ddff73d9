//! [`Device`] implementation over the SIMT emulator (kernels/emu), which runs the kernels of
//! kernels/*.cu compiled for the host. Work executes at issue time, so stream order and event
//! waits hold trivially; the emulator's value is that it checks what a GPU would not (see
//! kernels/emu/simt.hpp) and runs the backend's host code end to end without a GPU.

use super::device::{DevPtr, Device, EventId, KArg, LaunchCfg, StreamId};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

extern "C" {
    fn flexp_emu_last_error() -> *const c_char;
    fn flexp_emu_alloc(bytes: usize, out: *mut u64) -> c_int;
    fn flexp_emu_free(ptr: u64) -> c_int;
    fn flexp_emu_write(dst: u64, src: *const c_void, bytes: usize) -> c_int;
    fn flexp_emu_read(dst: *mut c_void, src: u64, bytes: usize) -> c_int;
    fn flexp_emu_copy(dst: u64, src: u64, bytes: usize) -> c_int;
    fn flexp_emu_memset(dst: u64, value: c_int, bytes: usize) -> c_int;
    fn flexp_emu_kernel_count() -> c_int;
    fn flexp_emu_kernel_name(i: c_int) -> *const c_char;
    fn flexp_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        args: *mut *mut c_void,
        tags: *const c_int,
        nargs: c_int,
    ) -> c_int;
}

/// The SIMT emulator as a device.
#[derive(Debug, Default)]
pub struct Emulator {
    streams: AtomicUsize,
    events: AtomicUsize,
}

impl Emulator {
    /// A new emulated device.
    pub fn new() -> Self {
        Emulator {
            streams: AtomicUsize::new(1),
            events: AtomicUsize::new(0),
        }
    }

    /// Names of every kernel compiled into the emulator.
    pub fn kernel_names() -> Vec<String> {
        // SAFETY: the registry is filled by static initialisers before main and never changes;
        // the returned strings live as long as the registry.
        unsafe {
            (0..flexp_emu_kernel_count())
                .filter_map(|i| {
                    let p = flexp_emu_kernel_name(i);
                    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
                })
                .collect()
        }
    }
}

fn check(rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the emulator returns a pointer to its thread-local message, valid until the next
    // failing call on this thread; it is copied out at once.
    let msg = unsafe { CStr::from_ptr(flexp_emu_last_error()) }
        .to_string_lossy()
        .into_owned();
    Err(Error::Backend(msg))
}

impl Device for Emulator {
    fn describe(&self) -> String {
        "SIMT emulator (kernels/emu, CPU)".into()
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let mut p = 0u64;
        // SAFETY: `p` is a valid out-pointer for the duration of the call.
        check(unsafe { flexp_emu_alloc(bytes, &mut p) })?;
        Ok(DevPtr(p))
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        // SAFETY: the emulator checks that `ptr` is a live allocation before freeing it.
        check(unsafe { flexp_emu_free(ptr.0) })
    }

    fn write(&self, dst: DevPtr, src: &[u8], _stream: StreamId) -> Result<()> {
        // SAFETY: `src` is valid for `src.len()` bytes; the emulator bounds-checks `dst`.
        check(unsafe { flexp_emu_write(dst.0, src.as_ptr().cast(), src.len()) })
    }

    fn read(&self, dst: &mut [u8], src: DevPtr, _stream: StreamId) -> Result<()> {
        // SAFETY: `dst` is valid for writes of `dst.len()` bytes; the emulator bounds-checks `src`.
        check(unsafe { flexp_emu_read(dst.as_mut_ptr().cast(), src.0, dst.len()) })
    }

    fn zero(&self, dst: DevPtr, bytes: usize, _stream: StreamId) -> Result<()> {
        // SAFETY: the emulator bounds-checks the range against the allocation.
        check(unsafe { flexp_emu_memset(dst.0, 0, bytes) })
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize, _stream: StreamId) -> Result<()> {
        // SAFETY: the emulator bounds-checks both ranges.
        check(unsafe { flexp_emu_copy(dst.0, src.0, bytes) })
    }

    fn launch(&self, name: &str, cfg: LaunchCfg, args: &[KArg], _stream: StreamId) -> Result<()> {
        let cname = CString::new(name)
            .map_err(|_| Error::Backend(format!("kernel name {name:?} contains a NUL byte")))?;
        let mut slots: Vec<[u8; 8]> = args.iter().map(KArg::bytes).collect();
        let mut ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
        let tags: Vec<c_int> = args.iter().map(KArg::tag).collect();
        let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
        let block = [cfg.block.0, cfg.block.1, cfg.block.2];
        // SAFETY: every pointer refers to a live local array of the stated length; `ptrs[i]`
        // points at 8 bytes holding argument i, which the emulator reads with the size its
        // parameter type has after checking the tag.
        check(unsafe {
            flexp_emu_launch(
                cname.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_bytes as usize,
                ptrs.as_mut_ptr(),
                tags.as_ptr(),
                args.len() as c_int,
            )
        })
    }

    fn create_stream(&self) -> Result<StreamId> {
        Ok(StreamId(self.streams.fetch_add(1, Ordering::Relaxed)))
    }

    fn record(&self, _stream: StreamId) -> Result<EventId> {
        Ok(EventId(self.events.fetch_add(1, Ordering::Relaxed)))
    }

    fn wait(&self, _stream: StreamId, _event: EventId) -> Result<()> {
        Ok(())
    }

    fn synchronize(&self, _stream: StreamId) -> Result<()> {
        Ok(())
    }
}
