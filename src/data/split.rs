//! Per-client stratified train/test splits and the global test set.

use super::dataset::Dataset;
use super::partition::shuffle;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// One client's examples, split for training and evaluation (indices into the data set, in
/// ascending order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSplit {
    /// Examples the client trains on.
    pub train: Vec<usize>,
    /// Examples of the client's personalized evaluation.
    pub test: Vec<usize>,
}

/// Checks a test fraction from user configuration: a number in `[0, 1)`.
pub fn validate_test_fraction(test_fraction: f64) -> Result<()> {
    if (0.0..1.0).contains(&test_fraction) {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "test fraction must be in [0, 1), got {test_fraction}"
        )))
    }
}

/// Splits the examples `idx` (one client's) into train and test, stratified by label: each
/// label's examples are shuffled and `round(test_fraction * count)` of them go to test, except
/// that a label with a single example stays in train. Two adjustments keep the split usable:
/// at least one example stays in train, and when `test_fraction > 0` and there are at least two
/// examples, at least one goes to test (taken from the label with the most training examples),
/// so every client can be evaluated. Both lists are sorted ascending.
///
/// `test_fraction` is clamped to `[0, 1]` (NaN counts as 0); check user input with
/// [`validate_test_fraction`].
pub fn train_test_split(
    ds: &Dataset,
    idx: &[usize],
    test_fraction: f64,
    rng: &mut Rng,
) -> (Vec<usize>, Vec<usize>) {
    let f = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0)
    };
    let mut per_label: Vec<Vec<usize>> = vec![Vec::new(); ds.num_classes()];
    for &i in idx {
        per_label[ds.labels[i]].push(i);
    }
    let mut train: Vec<Vec<usize>> = Vec::with_capacity(per_label.len());
    let mut test = Vec::new();
    for mut members in per_label {
        shuffle(&mut members, rng);
        let n = members.len();
        let n_test = if n <= 1 {
            0
        } else {
            ((f * n as f64).round() as usize).min(n)
        };
        test.extend(members.drain(..n_test));
        train.push(members);
    }
    let n_train: usize = train.iter().map(Vec::len).sum();
    if n_train == 0 && !test.is_empty() {
        // Only possible with a fraction near 1: give one example back to training.
        let k = rng.below(test.len());
        let back = test.swap_remove(k);
        train[ds.labels[back]].push(back);
    } else if test.is_empty() && f > 0.0 && n_train >= 2 {
        let richest = (0..train.len())
            .max_by_key(|&l| (train[l].len(), std::cmp::Reverse(l)))
            .expect("n_train >= 2 implies a label");
        // The label's list is shuffled, so its last element is a random one of it.
        test.push(train[richest].pop().expect("richest label is non-empty"));
    }
    let mut train: Vec<usize> = train.into_iter().flatten().collect();
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Splits every client's examples with [`train_test_split`], in client order.
pub fn split_clients(
    ds: &Dataset,
    parts: &[Vec<usize>],
    test_fraction: f64,
    rng: &mut Rng,
) -> Vec<ClientSplit> {
    parts
        .iter()
        .map(|idx| {
            let (train, test) = train_test_split(ds, idx, test_fraction, rng);
            ClientSplit { train, test }
        })
        .collect()
}

/// The global test set: the union of the clients' test sets, sorted, without duplicates.
pub fn global_test(splits: &[ClientSplit]) -> Vec<usize> {
    let mut all: Vec<usize> = splits.iter().flat_map(|s| s.test.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}
