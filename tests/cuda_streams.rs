//! Streams and events on the emulator's strict mode: work forked onto lanes and joined back gives
//! the right data; the emulator exposes the ordering mistakes that only cost correctness (a lane
//! reading data written after the fork, a missing join), while the ones that would touch memory
//! outside a live allocation cannot be made from safe code: a buffer's first use on another
//! stream waits for its allocation, and dropping a buffer waits for every stream that used it.
#![cfg(feature = "emulator")]

use flexp::backend::cuda::CudaBackend;
use flexp::backend::Backend;

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| seed + i as f32 * 0.25).collect()
}

#[test]
fn fork_and_join_order_work_across_lanes() {
    let be = CudaBackend::emulated_streams();
    let src = be.upload(&data(1000, 1.0)).unwrap();
    let lanes = be.fork(3).unwrap();
    let outs: Vec<_> = lanes
        .iter()
        .map(|l| {
            let mut o = l.zeros(1000).unwrap();
            l.copy(&mut o, &src, 1000).unwrap();
            o
        })
        .collect();
    be.join(&lanes).unwrap();
    // Work after the join on the main stream sees the lanes' results.
    let mut total = be.zeros(1000).unwrap();
    for o in &outs {
        be.copy(&mut total, o, 1000).unwrap();
    }
    assert_eq!(be.download(&total).unwrap(), data(1000, 1.0));
    for o in &outs {
        assert_eq!(be.download(o).unwrap(), data(1000, 1.0));
    }
    // Reusing the lane pool: a second fork gets the same streams and still orders correctly.
    let again = be.fork(2).unwrap();
    let mut o = again[1].zeros(10).unwrap();
    again[1].copy(&mut o, &src, 10).unwrap();
    be.join(&again).unwrap();
    assert_eq!(be.download(&o).unwrap(), data(10, 1.0));
}

#[test]
fn a_lane_is_ordered_after_the_allocation_of_a_buffer_it_first_uses() {
    let be = CudaBackend::emulated_streams();
    let lanes = be.fork(1).unwrap();
    // Allocated and written on the main stream after the fork: the lane's first use of the
    // buffer waits for its allocation and for what was issued before it.
    let src = be.upload(&data(64, 2.0)).unwrap();
    let mut out = lanes[0].zeros(64).unwrap();
    lanes[0].copy(&mut out, &src, 64).unwrap();
    be.join(&lanes).unwrap();
    assert_eq!(be.download(&out).unwrap(), data(64, 2.0));
}

#[test]
fn a_lane_that_does_not_wait_for_later_writes_reads_stale_data() {
    let be = CudaBackend::emulated_streams();
    let mut src = be.zeros(64).unwrap();
    let lanes = be.fork(1).unwrap();
    let mut out = lanes[0].zeros(64).unwrap();
    lanes[0].copy(&mut out, &src, 64).unwrap();
    lanes[0].synchronize().unwrap();
    // Written on the main stream after the fork into a buffer the lane already uses: nothing
    // orders the lane's next read after it.
    let fresh = be.upload(&data(64, 2.0)).unwrap();
    be.copy(&mut src, &fresh, 64).unwrap();
    lanes[0].copy(&mut out, &src, 64).unwrap();
    be.join(&lanes).unwrap();
    assert_eq!(
        be.download(&out).unwrap(),
        vec![0.0; 64],
        "the emulator should run the lane's copy first"
    );
}

#[test]
fn a_missing_join_is_exposed() {
    let be = CudaBackend::emulated_streams();
    let src = be.upload(&data(64, 3.0)).unwrap();
    let mut mid = be.zeros(64).unwrap();
    let lanes = be.fork(1).unwrap();
    lanes[0].copy(&mut mid, &src, 64).unwrap();
    // No be.join(&lanes): the main stream's copy may run before the lane's.
    let mut out = be.zeros(64).unwrap();
    be.copy(&mut out, &mid, 64).unwrap();
    assert_eq!(be.download(&out).unwrap(), vec![0.0; 64]);
    // With the join the same sequence is right.
    be.join(&lanes).unwrap();
    be.copy(&mut out, &mid, 64).unwrap();
    assert_eq!(be.download(&out).unwrap(), data(64, 3.0));
}

#[test]
fn dropping_a_buffer_a_lane_still_uses_waits_for_the_lane() {
    let be = CudaBackend::emulated_streams();
    let lanes = be.fork(1).unwrap();
    let mut out = lanes[0].zeros(64).unwrap();
    {
        let tmp = be.upload(&data(64, 4.0)).unwrap();
        be.join(&[]).unwrap();
        let lanes2 = be.fork(1).unwrap();
        lanes2[0].copy(&mut out, &tmp, 64).unwrap();
        // `tmp` is released on the main stream without joining the lane that reads it: the
        // release waits for the lane instead of freeing memory under its copy (which the
        // emulator would report as a use of freed memory).
    }
    assert_eq!(be.download(&out).unwrap(), data(64, 4.0));
}
