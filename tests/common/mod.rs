//! Helpers shared by the integration tests: reading reference fixtures and comparing tensors.
#![allow(dead_code)]

pub mod counting;
pub mod tiny;

use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// The repository root: `FLEXP_REPO_ROOT` when set (tools/gpu_check.sh runs test binaries
/// built here from another checkout), else the one the tests were built in.
pub fn root() -> PathBuf {
    std::env::var_os("FLEXP_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A fixture folder under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// A reference tensor file.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: &Path) -> Self {
        Reference {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid reference file")
    }

    pub fn has(&self, name: &str) -> bool {
        self.st().names().contains(&name)
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.st()
            .tensor(name)
            .unwrap_or_else(|_| panic!("no {name}"))
            .shape()
            .to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// max |a-b| / max |b|: the error relative to the reference's scale.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b
        .iter()
        .map(|x| x.abs() as f64)
        .fold(0.0, f64::max)
        .max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    diff / scale
}

/// Asserts `rel_err(a, b) <= tol`, naming the quantity.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f64) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// Writes `reviews.csv` into `dir`: 90 short reviews (`review`) of 3 sentiment classes (`label`)
/// with a natural `movie` key for column partitions.
pub fn write_reviews(dir: &Path) -> PathBuf {
    let words = [
        (
            "pos",
            ["great", "wonderful", "brilliant", "moving", "delightful"],
        ),
        ("neg", ["awful", "boring", "terrible", "dull", "painful"]),
        ("mid", ["average", "fine", "passable", "okay", "uneven"]),
    ];
    let mut s = String::from("review,label,movie\n");
    for i in 0..90 {
        let (label, w) = &words[i % 3];
        s.push_str(&format!(
            "\"a {} film, truly {}\",{label},m{}\n",
            w[i % 5],
            w[(i / 3) % 5],
            i % 9
        ));
    }
    let p = dir.join("reviews.csv");
    std::fs::write(&p, s).unwrap();
    p
}

/// The largest `|got - want|` and the largest `|want|` (the scale errors are judged against).
pub fn max_err_and_scale(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    (err, scale)
}
