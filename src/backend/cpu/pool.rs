//! Recycled activation buffers of the CPU backend (see `Backend::scratch`).
//!
//! A training step allocates the same few sizes again and again (`rows x hidden`,
//! `rows x intermediate` per block), and a fresh `vec![0.0; len]` pays a zero fill, or on memory
//! new to the process a page fault per page: together about a tenth of a MiniLM round before
//! this pool. Buffers the executor is done with come back here and are handed out again, stale
//! contents and all, to ops that overwrite every element. Only exact lengths are matched (the
//! sizes repeat exactly), and the pool is bounded (see [`MAX_BYTES`]): it holds one step's
//! buffers for the next, not a growing amount of memory.

use std::sync::Mutex;

/// Buffers smaller than this are not worth pooling (allocating them is cheap).
const MIN_LEN: usize = 4096;
/// At most this many bytes wait in the pool: room for the tapes of a 16-client MiniLM step
/// (about 1.6 GB at 8 x 64 tokens a client: with 1 GiB, 84 of the round's 336 requests missed),
/// which the executor recycles whole after their backward. The allocator (mimalloc, purging
/// off) keeps freed memory mapped anyway, so holding it here does not raise the peak RSS
/// (2.11 GB against 2.16 GB before, for that benchmark); it saves zero-filling it again.
const MAX_BYTES: usize = 2 << 30;
/// At most this many buffers wait in the pool (bounds the linear search; a block's tape is
/// about 15 buffers).
const MAX_BUFS: usize = 512;

struct Pool {
    bufs: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    bufs: Vec::new(),
    bytes: 0,
});

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock cannot leave the pool inconsistent (every update is a
    // push or a swap_remove with its byte count), so a poisoned lock is still usable.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pooled buffer of exactly `len` elements, if one is waiting.
pub(super) fn take(len: usize) -> Option<Vec<f32>> {
    if len < MIN_LEN {
        return None;
    }
    let mut p = lock();
    let i = p.bufs.iter().position(|b| b.len() == len)?;
    let b = p.bufs.swap_remove(i);
    p.bytes -= b.capacity() * 4;
    Some(b)
}

/// Keeps `buf` for reuse, or frees it when it is small or the pool is full.
pub(super) fn put(buf: Vec<f32>) {
    let bytes = buf.capacity() * 4;
    if buf.len() < MIN_LEN {
        return;
    }
    let mut p = lock();
    if p.bufs.len() < MAX_BUFS && p.bytes + bytes <= MAX_BYTES {
        p.bytes += bytes;
        p.bufs.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is process-wide, so this test uses lengths no other test allocates.
    #[test]
    fn hands_back_exact_lengths_only_and_stays_bounded() {
        let len = MIN_LEN + 12_345;
        put(vec![7.0; len]);
        assert!(take(len + 1).is_none(), "a different length must not match");
        let b = take(len).expect("the buffer put back");
        assert_eq!(b.len(), len);
        assert!(take(len).is_none(), "taken twice");
        // Small buffers are not kept.
        put(vec![1.0; 10]);
        assert!(take(10).is_none());
        // A buffer larger than the byte bound is not kept.
        let huge = MAX_BYTES / 4 + 1;
        put(vec![0.0; huge]);
        assert!(take(huge).is_none());
    }
}
