//! Ownership of device memory through the safe API: every allocation the backend makes is freed
//! exactly once, when its owner is dropped, whatever ops and streams used it; buffers of another
//! device and sizes that would overflow are refused before any address reaches a device. (That
//! safe code cannot forge an address, free one, launch a kernel or keep a kernel argument past
//! its buffer is shown by the `compile_fail` examples in src/backend/cuda/device.rs and mod.rs.)
#![cfg(feature = "emulator")]

use flexp::backend::cuda::emulator::Emulator;
use flexp::backend::cuda::{CudaBackend, DevPtr, Device, EventId, KArg, LaunchCfg, StreamId};
use flexp::backend::{AttnShape, Backend, LoraSeg, LoraShape, Span, WeightPrecision};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// An emulator that records which addresses are live and fails the test on any free of an
/// address that is not (a double free, or one it never handed out).
#[derive(Default)]
struct Ledger {
    inner: Emulator,
    live: Mutex<HashSet<u64>>,
    allocs: Mutex<usize>,
    bad_frees: Mutex<Vec<u64>>,
}

impl Ledger {
    fn strict() -> Self {
        Ledger {
            inner: Emulator::with_streams(),
            ..Default::default()
        }
    }
}

// SAFETY: every method forwards to the emulator, which upholds the trait's contract; the
// bookkeeping around the calls changes no address, size or stream.
unsafe impl Device for Ledger {
    fn describe(&self) -> String {
        format!("ledger over {}", self.inner.describe())
    }
    fn alloc(&self, bytes: usize, stream: StreamId) -> flexp::Result<DevPtr> {
        let p = self.inner.alloc(bytes, stream)?;
        *self.allocs.lock().unwrap() += 1;
        assert!(
            self.live.lock().unwrap().insert(p.addr()),
            "address reused while live"
        );
        Ok(p)
    }
    unsafe fn free(&self, ptr: DevPtr, stream: StreamId) -> flexp::Result<()> {
        if !self.live.lock().unwrap().remove(&ptr.addr()) {
            self.bad_frees.lock().unwrap().push(ptr.addr());
        }
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.free(ptr, stream) }
    }
    unsafe fn write(&self, dst: DevPtr, src: &[u8], stream: StreamId) -> flexp::Result<()> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.write(dst, src, stream) }
    }
    unsafe fn read(&self, dst: &mut [u8], src: DevPtr, stream: StreamId) -> flexp::Result<()> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.read(dst, src, stream) }
    }
    unsafe fn zero(&self, dst: DevPtr, bytes: usize, stream: StreamId) -> flexp::Result<()> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.zero(dst, bytes, stream) }
    }
    unsafe fn copy(
        &self,
        dst: DevPtr,
        src: DevPtr,
        bytes: usize,
        stream: StreamId,
    ) -> flexp::Result<()> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.copy(dst, src, bytes, stream) }
    }
    unsafe fn launch(
        &self,
        name: &str,
        cfg: LaunchCfg,
        args: &[KArg<'_>],
        stream: StreamId,
    ) -> flexp::Result<()> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.launch(name, cfg, args, stream) }
    }
    fn create_stream(&self) -> flexp::Result<StreamId> {
        self.inner.create_stream()
    }
    fn record(&self, stream: StreamId) -> flexp::Result<EventId> {
        self.inner.record(stream)
    }
    fn wait(&self, stream: StreamId, event: EventId) -> flexp::Result<()> {
        self.inner.wait(stream, event)
    }
    fn synchronize(&self, stream: StreamId) -> flexp::Result<()> {
        self.inner.synchronize(stream)
    }
}

fn vals(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| seed + (i % 7) as f32 * 0.125).collect()
}

/// A mix of ops, with their temporaries (metadata tables, scratch, bf16 copies), on lanes and
/// on the main stream, with buffers crossing streams and dropped before the join.
fn workload(be: &CudaBackend) {
    let (m, k, n) = (5, 6, 4);
    let a = be.upload(&vals(m * k, 0.5)).unwrap();
    let mut c = be.zeros(m * n).unwrap();
    let w = be
        .weight(&vals(n * k, -0.25), n, k, WeightPrecision::Bf16)
        .unwrap();
    let lanes = be.fork(2).unwrap();
    for (i, lane) in lanes.iter().enumerate() {
        let mut y = lane.zeros(m * n).unwrap();
        lane.linear(&mut y, &a, &w, m, false).unwrap();
        let ids: Vec<u32> = (0..m as u32).rev().collect();
        let mut g = lane.zeros(m * n).unwrap();
        lane.gather_rows(&mut g, &y, &ids, n).unwrap();
        if i == 0 {
            // Main's buffer written by a lane; the lane's `y` and `g` die here, unjoined.
            lane.add_assign(&mut c, &g, m * n).unwrap();
        }
    }
    be.join(&lanes).unwrap();
    let shape = LoraShape {
        d_in: k,
        d_out: n,
        rank: 2,
        scale: 0.5,
    };
    let (la, lb) = (
        be.upload(&vals(2 * k, 0.1)).unwrap(),
        be.upload(&vals(n * 2, 0.2)).unwrap(),
    );
    let mut u = be.zeros(m * 2).unwrap();
    let segs = [LoraSeg {
        rows: Span { start: 1, len: 3 },
        a: &la,
        b: &lb,
    }];
    be.lora_forward(&mut c, &a, &mut u, &segs, shape).unwrap();
    let (q, kv) = (
        be.upload(&vals(4 * 8, 0.3)).unwrap(),
        be.upload(&vals(4 * 8, 0.7)).unwrap(),
    );
    let (mut o, mut lse) = (be.zeros(4 * 8).unwrap(), be.zeros(4 * 2).unwrap());
    let attn = AttnShape {
        heads: 2,
        kv_heads: 2,
        head_dim: 4,
        causal: true,
        window: None,
        scale: 0.5,
        bf16: false,
    };
    let seqs = [Span { start: 0, len: 4 }];
    be.attention_forward(&mut o, &mut lse, &q, &kv, &kv, &seqs, attn)
        .unwrap();
    let mut dlogits = be.zeros(m * n).unwrap();
    be.cross_entropy(&mut dlogits, &c, &[0, 1, -1, 3, 2], &[1.0; 5], n)
        .unwrap();
    let h = be.cast_to_bf16(&c).unwrap();
    let back = be.cast_from_bf16(&h, m * n).unwrap();
    assert_eq!(be.download(&back).unwrap().len(), m * n);
}

#[test]
fn every_allocation_is_freed_exactly_once() {
    for ledger in [Ledger::default(), Ledger::strict()] {
        let dev = Arc::new(ledger);
        let be = CudaBackend::new(dev.clone());
        workload(&be);
        be.synchronize().unwrap();
        drop(be);
        assert!(*dev.allocs.lock().unwrap() > 20, "the workload allocates");
        assert_eq!(*dev.bad_frees.lock().unwrap(), Vec::<u64>::new());
        assert!(dev.live.lock().unwrap().is_empty(), "leaked allocations");
        // The emulator agrees: all of its frees were accepted.
        dev.inner.synchronize(StreamId(0)).unwrap();
        assert_eq!(dev.inner.live_allocations(), 0);
    }
}

#[test]
fn dropping_a_buffer_frees_it_once_and_at_once() {
    let dev = Arc::new(Emulator::new());
    let be = CudaBackend::new(dev.clone());
    let a = be.upload(&[1.0; 16]).unwrap();
    let b = be.zeros(3).unwrap();
    assert_eq!(dev.live_allocations(), 2);
    drop(a);
    assert_eq!(dev.live_allocations(), 1);
    drop(b);
    assert_eq!(dev.live_allocations(), 0);
}

#[test]
fn buffers_of_another_device_are_refused() {
    let (be, other) = (CudaBackend::emulated(), CudaBackend::emulated());
    let x = other.upload(&[1.0; 8]).unwrap();
    let mut y = be.zeros(8).unwrap();
    for err in [
        be.download(&x).unwrap_err(),
        be.copy(&mut y, &x, 8).unwrap_err(),
        be.add_assign(&mut y, &x, 8).unwrap_err(),
    ] {
        assert!(err.to_string().contains("another device"), "{err}");
    }
    // The same buffers with their own backend are fine.
    assert_eq!(other.download(&x).unwrap(), vec![1.0; 8]);
}

#[test]
fn sizes_that_overflow_are_refused_not_wrapped() {
    let be = CudaBackend::emulated();
    let err = be.zeros(usize::MAX / 2).unwrap_err().to_string();
    assert!(err.contains("overflow"), "{err}");
    let f = be.zeros(4).unwrap();
    let err = be.cast_from_bf16(f.mem(), usize::MAX / 2 + 1).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
}
