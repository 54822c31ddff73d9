//! Tensors on the wire (src/net/wire.rs): f32 frames round-trip bit for bit and bf16 frames round
//! to nearest even (hand-computed cases), at every chunk size; and every malformed message a
//! peer could send is refused with an error that names the tensor and the problem, the size
//! limit before anything is buffered. Random corruption of valid frames never panics.

use flexp::net::proto::TensorFrame;
use flexp::net::wire::{decode, encode, Limits, WireDType, WireError};
use flexp::rng::Rng;

fn sample() -> Vec<(Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(3);
    vec![
        (vec![3, 5], rng.vec_range(15, -2.0, 2.0)),
        (vec![], vec![0.25]),
        (vec![0, 4], vec![]),
        (vec![2, 2, 7], rng.vec_range(28, -1e30, 1e30)),
        (vec![1], vec![-0.0]),
    ]
}

fn frames_of(
    t: &[(Vec<usize>, Vec<f32>)],
    dtype: WireDType,
    frame_bytes: usize,
) -> Vec<TensorFrame> {
    let refs: Vec<(&[usize], &[f32])> = t
        .iter()
        .map(|(s, d)| (s.as_slice(), d.as_slice()))
        .collect();
    encode(&refs, dtype, frame_bytes).unwrap()
}

#[test]
fn f32_frames_round_trip_bit_for_bit_at_every_chunk_size() {
    let t = sample();
    for frame_bytes in [1, 4, 12, 60, 1 << 20] {
        let frames = frames_of(&t, WireDType::F32, frame_bytes);
        if frame_bytes == 4 {
            // One value a frame, and one frame for the empty tensor.
            assert_eq!(frames.len(), 15 + 1 + 1 + 28 + 1);
        }
        let got = decode(&frames, &Limits::default()).unwrap();
        assert_eq!(got.len(), t.len());
        for (g, (shape, data)) in got.iter().zip(&t) {
            assert_eq!(&g.shape, shape);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g.data), bits(data));
        }
    }
}

#[test]
fn bf16_frames_round_to_nearest_even() {
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0);
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6;
    // 1 + 2^-8 + 2^-20 is above halfway: rounds up to 1 + 2^-7.
    let x = [
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1.0 + 2f32.powi(-8) + 2f32.powi(-20),
        -3.0,
    ];
    let want = [1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7), -3.0];
    let frames = encode(&[(&[4], &x)], WireDType::Bf16, 2).unwrap();
    assert_eq!(frames.len(), 4, "two bytes a value");
    let got = decode(&frames, &Limits::default()).unwrap();
    assert_eq!(got[0].data, want);
}

fn one(frames: &[TensorFrame]) -> WireError {
    decode(frames, &Limits::default()).unwrap_err()
}

fn malformed(e: WireError, tensor: u32, words: &str) {
    match &e {
        WireError::Malformed { tensor: t, reason } => {
            assert_eq!(*t, tensor, "{e}");
            assert!(reason.contains(words), "{e}");
        }
        _ => panic!("expected a malformed tensor {tensor} ({words}), got {e}"),
    }
}

#[test]
fn every_malformed_message_is_refused_by_name() {
    let t = sample();
    let good = frames_of(&t, WireDType::F32, 8);

    // A message over the limit is refused from its declared sizes.
    let limits = Limits {
        max_message_bytes: 100,
        ..Limits::default()
    };
    let e = decode(&good, &limits).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::TooLarge {
                tensor: 3,
                limit: 100,
                ..
            }
        ),
        "{e}"
    );
    // ...even when the frames that claim it carry almost nothing.
    let mut liar = good[..1].to_vec();
    liar[0].shape = vec![1 << 40];
    liar[0].total_bytes = 4 << 40;
    assert!(matches!(one(&liar), WireError::TooLarge { tensor: 0, .. }));

    let limits = Limits {
        max_tensors: 2,
        ..Limits::default()
    };
    assert_eq!(
        decode(&good, &limits).unwrap_err(),
        WireError::TooManyTensors(2)
    );

    let mut f = good.clone();
    f[0].dtype = 7;
    malformed(one(&f), 0, "unknown element type 7");

    let mut f = good.clone();
    f[0].shape = vec![u64::MAX, 3];
    malformed(one(&f), 0, "overflows");

    let mut f = good.clone();
    f[0].shape = vec![1, 1, 1, 1, 15];
    malformed(one(&f), 0, "5 dimensions");

    let mut f = good.clone();
    f[0].total_bytes = 64;
    malformed(one(&f), 0, "64 declared");

    let mut f = good.clone();
    f.swap(1, 2);
    malformed(one(&f), 0, "where byte 8 was expected");

    let mut f = good.clone();
    f[1].shape = vec![5, 3];
    malformed(one(&f), 0, "changed between chunks");

    let mut f = good.clone();
    f[1].data.extend_from_slice(&[0; 64]);
    f[1].crc32 = crc32fast::hash(&f[1].data);
    malformed(one(&f), 0, "passes the end");

    let mut f = good.clone();
    f[2].data[0] ^= 1;
    assert_eq!(
        one(&f),
        WireError::Checksum {
            tensor: 0,
            offset: 16
        }
    );

    // A tensor cut short by the end of the message, or by the next tensor starting.
    let n0 = good.iter().filter(|f| f.tensor == 0).count();
    assert!(matches!(
        one(&good[..n0 - 1]),
        WireError::Truncated {
            tensor: 0,
            got: 56,
            total: 60
        }
    ));
    let mut f = good.clone();
    f.remove(n0 - 1);
    assert!(matches!(one(&f), WireError::Truncated { tensor: 0, .. }));

    // Tensors numbered out of order.
    let f: Vec<TensorFrame> = good.iter().filter(|f| f.tensor != 1).cloned().collect();
    malformed(one(&f), 2, "expected tensor 1 next");

    // NaN and infinities are refused, wherever they sit.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut t2 = sample();
        t2[3].1[17] = bad;
        let f = frames_of(&t2, WireDType::F32, 16);
        match one(&f) {
            WireError::NonFinite {
                tensor: 3,
                index: 17,
                value,
            } => {
                assert_eq!(value.to_bits(), bad.to_bits())
            }
            e => panic!("{bad}: {e}"),
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let t = sample();
    let good = frames_of(&t, WireDType::Bf16, 6);
    let mut rng = Rng::new(9);
    let limits = Limits {
        max_message_bytes: 1 << 16,
        ..Limits::default()
    };
    let mut refused = 0;
    for _ in 0..5000 {
        let mut f = good.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(f.len());
            match rng.below(7) {
                0 => f[i].tensor = rng.below(8) as u32,
                1 => {
                    f[i].shape = (0..rng.below(6))
                        .map(|_| rng.below(1 << 20) as u64)
                        .collect()
                }
                2 => f[i].dtype = rng.below(4) as i32,
                3 => f[i].offset = rng.below(1 << 10) as u64,
                4 => f[i].total_bytes = rng.below(1 << 30) as u64,
                5 => {
                    let n = rng.below(16);
                    f[i].data = (0..n).map(|_| rng.below(256) as u8).collect();
                }
                _ => {
                    f.remove(i);
                    if f.is_empty() {
                        break;
                    }
                }
            }
        }
        if decode(&f, &limits).is_err() {
            refused += 1;
        }
    }
    assert!(
        refused > 4000,
        "corruption mostly refused ({refused} of 5000)"
    );
}
