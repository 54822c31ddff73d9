//! [`Device`] implementation over the SIMT emulator (kernels/emu), which runs the kernels of
//! kernels/*.cu compiled for the host. It checks what a GPU would not (see kernels/emu/simt.hpp)
//! and, in its strict-streams mode, the ordering of work across streams; it runs the backend's
//! host code end to end without a GPU.

use super::device::{DevPtr, Device, EventId, KArg, LaunchCfg, RawArg, StreamId};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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
    fn flexp_emu_smem_limit(arch: u32) -> usize;
    fn flexp_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        args: *mut *mut c_void,
        tags: *const c_int,
        nargs: c_int,
        seed: u64,
        arch: u32,
    ) -> c_int;
}

/// Environment variable read by [`Emulator::new`] and [`Emulator::with_streams`]: a `u64`
/// schedule seed for every emulator a test run creates (see [`Emulator::with_schedule_seed`]).
pub const SEED_ENV: &str = "FLEXP_EMU_SEED";

/// The architecture the emulator enforces limits for unless told otherwise: of the two the
/// kernels are built for (sm_80, sm_90; tests/cuda_compile.rs), sm_80 has the smaller dynamic
/// shared memory (163 KiB), so a launch that fits here fits both.
pub const DEFAULT_ARCH: u32 = 80;

/// The SIMT emulator as a device.
///
/// Two modes. [`Emulator::new`] runs every operation when it is issued, which is simplest for
/// testing one kernel: a launch returns the kernel's fault directly. [`Emulator::with_streams`]
/// models stream semantics strictly: operations are queued per stream and run only when the host
/// synchronises (a read, [`Device::synchronize`]), in the most adversarial order the CUDA rules
/// allow. Within a stream order is kept; across streams the operation issued last runs first
/// whenever it is not held back by an event wait. So a missing wait or a buffer freed while
/// another stream still uses it produces wrong results or a use-after-free fault here, where a
/// GPU would usually get lucky.
///
/// Every address is checked against the emulator's allocation table, so a broken
/// [`Device`] contract (a freed or forged pointer, an out-of-bounds kernel) is reported as an
/// error instead of corrupting memory; tests rely on that to exercise the raw API.
///
/// Every launch is checked for data races on shared and global memory (see kernels/emu/simt.hpp).
/// A schedule seed ([`Emulator::with_schedule_seed`], or the `FLEXP_EMU_SEED` environment
/// variable) shuffles block order and thread interleaving reproducibly; the target architecture
/// ([`Emulator::with_arch`], sm_80 by default) sets the shared-memory limit.
#[derive(Debug)]
pub struct Emulator {
    deferred: bool,
    state: Mutex<Queues>,
    /// 0: blocks and threads in index order; otherwise the seed of every launch's schedule.
    seed: u64,
    arch: u32,
    /// Launches so far, so that each launch of a seeded emulator gets its own schedule.
    launches: AtomicU64,
    /// Allocations made through this instance and not yet freed (the C++ allocation table is
    /// shared by every instance, so it cannot answer per device).
    live: AtomicUsize,
    /// Launches issued per kernel name (see [`Emulator::launch_counts`]).
    by_kernel: Mutex<BTreeMap<String, u64>>,
}

impl Default for Emulator {
    fn default() -> Self {
        Emulator {
            deferred: false,
            state: Mutex::default(),
            seed: seed_from_env(),
            arch: DEFAULT_ARCH,
            launches: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            by_kernel: Mutex::default(),
        }
    }
}

/// The seed `FLEXP_EMU_SEED` asks for; 0 (index order) when unset or not a number. A value that
/// is not a number is reported on stderr rather than silently running in index order.
fn seed_from_env() -> u64 {
    let Some(v) = std::env::var_os(SEED_ENV) else {
        return 0;
    };
    match v.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(seed) => seed,
        None => {
            eprintln!("flexp: ignoring {SEED_ENV}={v:?}: not a u64");
            0
        }
    }
}

/// The schedule seed of launch number `n` of an emulator seeded with `seed` (splitmix64 of
/// both, never 0 so that a seeded emulator never falls back to index order).
fn launch_seed(seed: u64, n: u64) -> u64 {
    if seed == 0 {
        return 0;
    }
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

#[derive(Debug, Default)]
struct Queues {
    /// Per stream: pending operations with their issue number.
    pending: Vec<VecDeque<(u64, Op)>>,
    /// Per stream: operations executed so far.
    done: Vec<u64>,
    /// Per stream: operations issued so far.
    issued: Vec<u64>,
    /// Per event: (stream, position it waits for).
    events: Vec<(usize, u64)>,
    next_issue: u64,
}

#[derive(Debug)]
enum Op {
    Launch {
        name: String,
        cfg: LaunchCfg,
        args: Vec<RawArg>,
    },
    Write {
        dst: DevPtr,
        data: Vec<u8>,
    },
    Zero {
        dst: DevPtr,
        bytes: usize,
    },
    Copy {
        dst: DevPtr,
        src: DevPtr,
        bytes: usize,
    },
    Free {
        ptr: DevPtr,
    },
    Wait {
        event: usize,
    },
}

impl Emulator {
    /// An emulated device that runs each operation when it is issued.
    pub fn new() -> Self {
        Self::default()
    }

    /// An emulated device with strict, adversarial stream semantics (see the type's docs).
    pub fn with_streams() -> Self {
        Emulator {
            deferred: true,
            state: Mutex::new(Queues {
                pending: vec![VecDeque::new()],
                done: vec![0],
                issued: vec![0],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// How many allocations made through this device are live: allocated and not yet freed (a
    /// free counts once it has run, which in the strict-streams mode is at the next
    /// synchronisation). Lets tests check that owned buffers release their memory exactly once.
    pub fn live_allocations(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// How many launches of each kernel were issued to this device: lets tests check which
    /// kernel a backend operation chose (e.g. the tensor-core GEMM where the shapes allow it).
    pub fn launch_counts(&self) -> BTreeMap<String, u64> {
        self.by_kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The same emulator with a schedule seed: 0 runs blocks and threads in index order; any
    /// other value shuffles the order blocks run in and threads resume in, and makes threads
    /// yield at memory accesses, differently for every launch but reproducibly for the seed.
    /// Race detection does not depend on the order (a race is reported under every seed); the
    /// seed exposes kernels whose results do.
    pub fn with_schedule_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The schedule seed in use (0: index order).
    pub fn schedule_seed(&self) -> u64 {
        self.seed
    }

    /// The same emulator enforcing the limits of `sm` (80 for sm_80; 86, 87, 89, 90): dynamic
    /// shared memory per block is 163 KiB on sm_80/sm_87, 99 KiB on sm_86/sm_89 and 227 KiB on
    /// sm_90. Any other value is an error.
    pub fn with_arch(mut self, sm: u32) -> Result<Self> {
        // SAFETY: a pure function of its argument.
        if unsafe { flexp_emu_smem_limit(sm) } == 0 {
            return Err(Error::Backend(format!(
                "emulator: unknown target architecture sm_{sm}"
            )));
        }
        self.arch = sm;
        Ok(self)
    }

    /// Dynamic shared memory one block may use on this emulator's architecture, in bytes.
    pub fn shared_memory_limit(&self) -> usize {
        // SAFETY: a pure function of its argument.
        unsafe { flexp_emu_smem_limit(self.arch) }
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

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` now, or queues it on `stream`.
    fn issue(&self, stream: StreamId, op: Op) -> Result<()> {
        if !self.deferred {
            return self.execute(&op);
        }
        let mut q = self.queues();
        if stream.0 >= q.pending.len() {
            return Err(Error::Backend(format!("no emulated stream {}", stream.0)));
        }
        let n = q.next_issue;
        q.next_issue += 1;
        q.issued[stream.0] += 1;
        q.pending[stream.0].push_back((n, op));
        Ok(())
    }

    /// Runs every queued operation, latest-issued runnable head first. Stops at the first
    /// failure, which is returned (the remaining queue is dropped, as a faulted CUDA context
    /// would be unusable).
    fn drain(&self) -> Result<()> {
        if !self.deferred {
            return Ok(());
        }
        let mut q = self.queues();
        loop {
            // Satisfied waits are no-ops: consume them first, so that what competes across
            // streams is real work.
            let mut consumed = true;
            while consumed {
                consumed = false;
                for s in 0..q.pending.len() {
                    while let Some((_, Op::Wait { event })) = q.pending[s].front() {
                        let (es, pos) = q.events[*event];
                        if q.done[es] < pos {
                            break;
                        }
                        q.pending[s].pop_front();
                        q.done[s] += 1;
                        consumed = true;
                    }
                }
            }
            let mut pick: Option<usize> = None;
            let mut blocked = false;
            for s in 0..q.pending.len() {
                let Some((n, op)) = q.pending[s].front() else {
                    continue;
                };
                if matches!(op, Op::Wait { .. }) {
                    blocked = true;
                    continue;
                }
                if pick.is_none_or(|p| q.pending[p].front().map(|x| x.0) < Some(*n)) {
                    pick = Some(s);
                }
            }
            let Some(s) = pick else {
                if blocked {
                    q.pending.iter_mut().for_each(VecDeque::clear);
                    return Err(Error::Backend(
                        "emulator: streams wait on each other's events in a cycle (deadlock)"
                            .into(),
                    ));
                }
                return Ok(());
            };
            let (_, op) = q.pending[s].pop_front().expect("picked a non-empty queue");
            q.done[s] += 1;
            if let Err(e) = self.execute(&op) {
                q.pending.iter_mut().for_each(VecDeque::clear);
                let done = q.done.clone();
                q.issued = done;
                return Err(e);
            }
        }
    }

    fn execute(&self, op: &Op) -> Result<()> {
        match op {
            // SAFETY (all arms): host pointers refer to live locals of the stated lengths; the
            // emulator bounds-checks every device address against its allocation table.
            Op::Write { dst, data } => {
                check(unsafe { flexp_emu_write(dst.addr(), data.as_ptr().cast(), data.len()) })
            }
            Op::Zero { dst, bytes } => check(unsafe { flexp_emu_memset(dst.addr(), 0, *bytes) }),
            Op::Copy { dst, src, bytes } => {
                check(unsafe { flexp_emu_copy(dst.addr(), src.addr(), *bytes) })
            }
            Op::Free { ptr } => {
                check(unsafe { flexp_emu_free(ptr.addr()) })?;
                // Only a free the table accepted counts: a double free fails above.
                self.live.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
            Op::Wait { .. } => Ok(()),
            Op::Launch { name, cfg, args } => {
                let n = self.launches.fetch_add(1, Ordering::Relaxed);
                launch_now(name, *cfg, args, launch_seed(self.seed, n), self.arch)
            }
        }
    }
}

fn launch_now(name: &str, cfg: LaunchCfg, args: &[RawArg], seed: u64, arch: u32) -> Result<()> {
    let cname = CString::new(name)
        .map_err(|_| Error::Backend(format!("kernel name {name:?} contains a NUL byte")))?;
    let mut slots: Vec<[u8; 8]> = args.iter().map(|a| a.bytes).collect();
    let mut ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
    let tags: Vec<c_int> = args.iter().map(|a| a.tag).collect();
    let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
    let block = [cfg.block.0, cfg.block.1, cfg.block.2];
    // SAFETY: every pointer refers to a live local array of the stated length; `ptrs[i]` points
    // at 8 bytes holding argument i, which the emulator reads with the size its parameter type
    // has after checking the tag.
    check(unsafe {
        flexp_emu_launch(
            cname.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            cfg.shared_bytes as usize,
            ptrs.as_mut_ptr(),
            tags.as_ptr(),
            args.len() as c_int,
            seed,
            arch,
        )
    })
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

// SAFETY: allocations come from the C++ runtime's allocator (fresh, disjoint, recorded in its
// table until freed); each operation runs, now or in stream order, exactly what it names, and
// every device address it touches is checked against the table; `read` drains the queues
// before copying.
unsafe impl Device for Emulator {
    fn describe(&self) -> String {
        if self.deferred {
            "SIMT emulator with strict stream ordering (kernels/emu, CPU)".into()
        } else {
            "SIMT emulator (kernels/emu, CPU)".into()
        }
    }

    fn alloc(&self, bytes: usize, _stream: StreamId) -> Result<DevPtr> {
        let mut p = 0u64;
        // SAFETY: `p` is a valid out-pointer for the duration of the call.
        check(unsafe { flexp_emu_alloc(bytes, &mut p) })?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(DevPtr::from_raw(p))
    }

    // The emulator checks every address itself, so these are memory-safe whatever the caller
    // passes; they are `unsafe` because the trait's contract is shared with the GPU driver.
    unsafe fn free(&self, ptr: DevPtr, stream: StreamId) -> Result<()> {
        // Stream-ordered, like cuMemFreeAsync in the driver implementation.
        self.issue(stream, Op::Free { ptr })
    }

    unsafe fn write(&self, dst: DevPtr, src: &[u8], stream: StreamId) -> Result<()> {
        self.issue(
            stream,
            Op::Write {
                dst,
                data: src.to_vec(),
            },
        )
    }

    unsafe fn read(&self, dst: &mut [u8], src: DevPtr, _stream: StreamId) -> Result<()> {
        self.drain()?;
        // SAFETY: `dst` is valid for writes of `dst.len()` bytes; the emulator bounds-checks `src`.
        check(unsafe { flexp_emu_read(dst.as_mut_ptr().cast(), src.addr(), dst.len()) })
    }

    unsafe fn zero(&self, dst: DevPtr, bytes: usize, stream: StreamId) -> Result<()> {
        self.issue(stream, Op::Zero { dst, bytes })
    }

    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize, stream: StreamId) -> Result<()> {
        self.issue(stream, Op::Copy { dst, src, bytes })
    }

    unsafe fn launch(
        &self,
        name: &str,
        cfg: LaunchCfg,
        args: &[KArg<'_>],
        stream: StreamId,
    ) -> Result<()> {
        *self
            .by_kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
        self.issue(
            stream,
            Op::Launch {
                name: name.to_string(),
                cfg,
                args: args.iter().map(KArg::raw).collect(),
            },
        )
    }

    fn create_stream(&self) -> Result<StreamId> {
        let mut q = self.queues();
        q.pending.push(VecDeque::new());
        q.done.push(0);
        q.issued.push(0);
        Ok(StreamId(q.pending.len() - 1))
    }

    fn record(&self, stream: StreamId) -> Result<EventId> {
        let mut q = self.queues();
        if self.deferred && stream.0 >= q.issued.len() {
            return Err(Error::Backend(format!("no emulated stream {}", stream.0)));
        }
        let pos = q.issued.get(stream.0).copied().unwrap_or(0);
        q.events.push((stream.0, pos));
        Ok(EventId(q.events.len() - 1))
    }

    fn wait(&self, stream: StreamId, event: EventId) -> Result<()> {
        if event.0 >= self.queues().events.len() {
            return Err(Error::Backend(format!("no emulated event {}", event.0)));
        }
        self.issue(stream, Op::Wait { event: event.0 })
    }

    fn synchronize(&self, _stream: StreamId) -> Result<()> {
        self.drain()
    }
}
