//! Splitting a data set's examples over federated clients: IID, label-skewed (Dirichlet and
//! shards) and natural (by a grouping column) partitions, plus the Gamma / Dirichlet samplers
//! they need. All randomness comes from the caller's [`Rng`], so a seed fixes the result.

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;
use std::collections::BTreeMap;
use std::fmt;

/// How examples are distributed over clients.
#[derive(Clone, Debug, PartialEq)]
pub enum Partition {
    /// Uniformly at random; client sizes differ by at most one.
    Iid,
    /// Label skew: each class is split over the clients in proportions drawn from a symmetric
    /// Dirichlet(alpha). Small alpha (0.1) gives nearly single-class clients, large alpha (100)
    /// nearly IID ones.
    Dirichlet(f64),
    /// Label skew as in the FedAvg paper: examples sorted by label are cut into `clients * K`
    /// shards, and each client gets K random shards (so about K classes).
    Shards(usize),
    /// Natural partition: all examples sharing a value of this column go to the same client.
    Column(String),
}

const FORMS: &str = "iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1), column:NAME";

impl Partition {
    /// Parses `iid`, `dirichlet:ALPHA` (ALPHA > 0), `shards:K` (K >= 1) or `column:NAME`.
    pub fn parse(s: &str) -> Result<Partition> {
        let s = s.trim();
        let bad =
            |why: &str| Error::Input(format!("partition {s:?}: {why} (valid forms: {FORMS})"));
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (s, None),
        };
        match (kind, arg) {
            ("iid", None) => Ok(Partition::Iid),
            ("dirichlet", Some(a)) => match a.parse::<f64>() {
                Ok(alpha) if alpha > 0.0 && alpha.is_finite() => Ok(Partition::Dirichlet(alpha)),
                _ => Err(bad("ALPHA must be a positive number")),
            },
            ("shards", Some(k)) => match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Partition::Shards(k)),
                _ => Err(bad("K must be an integer >= 1")),
            },
            ("column", Some(name)) if !name.is_empty() => Ok(Partition::Column(name.to_owned())),
            ("column", _) => Err(bad("NAME must not be empty")),
            _ => Err(bad("unknown partition")),
        }
    }

    /// The grouping column a [`Partition::Column`] needs loaded (set it as
    /// [`DataSpec::group_column`](super::DataSpec::group_column)), `None` for the others.
    pub fn group_column(&self) -> Option<&str> {
        match self {
            Partition::Column(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Partition {
    /// The form [`Partition::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => write!(f, "iid"),
            Partition::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Partition::Shards(k) => write!(f, "shards:{k}"),
            Partition::Column(c) => write!(f, "column:{c}"),
        }
    }
}

/// Splits the examples of `ds` over `clients` clients; returns each client's example indices in
/// ascending order. Every example goes to exactly one client and every client gets at least one
/// example (two for `dirichlet` when there are at least `2 * clients` examples). The same `rng`
/// state gives the same result.
///
/// Errors: `clients == 0`; fewer examples than clients; `shards:K` with fewer than
/// `clients * K` examples; `column:NAME` on a data set loaded without a group column, or with
/// fewer distinct groups than clients. For `column:NAME` the caller must have loaded the column
/// `NAME` as the group column ([`Partition::group_column`]); the data set does not record its
/// name.
pub fn partition(
    ds: &Dataset,
    p: &Partition,
    clients: usize,
    rng: &mut Rng,
) -> Result<Vec<Vec<usize>>> {
    let n = ds.len();
    if clients == 0 {
        return Err(Error::Input(
            "the number of clients must be at least 1".into(),
        ));
    }
    if n < clients {
        return Err(Error::Input(format!(
            "{n} examples cannot be split over {clients} clients"
        )));
    }
    if matches!(p, Partition::Dirichlet(_) | Partition::Shards(_)) && ds.num_classes() < 2 {
        return Err(Error::Input(format!(
            "partition `{p}` skews the label distribution, and this data set has {}: name a \
             label column with at least 2 classes, or use `iid` or `column:NAME`",
            match ds.label_names.as_slice() {
                [only] if only.is_empty() => "no labels".to_string(),
                names => format!("the single class {names:?}"),
            }
        )));
    }
    let mut parts = match p {
        Partition::Iid => iid(n, clients, rng),
        Partition::Dirichlet(alpha) => dirichlet(ds, *alpha, clients, rng)?,
        Partition::Shards(k) => shards(ds, *k, clients, rng)?,
        Partition::Column(name) => by_column(ds, name, clients, rng)?,
    };
    for part in &mut parts {
        part.sort_unstable();
    }
    Ok(parts)
}

/// Shuffle, then deal round-robin.
fn iid(n: usize, clients: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, rng);
    let mut parts = vec![Vec::with_capacity(n / clients + 1); clients];
    for (pos, i) in order.into_iter().enumerate() {
        parts[pos % clients].push(i);
    }
    parts
}

/// The examples of each class (by class id), in index order.
fn by_class(ds: &Dataset) -> Vec<Vec<usize>> {
    let mut classes = vec![Vec::new(); ds.num_classes()];
    for (i, &l) in ds.labels.iter().enumerate() {
        classes[l].push(i);
    }
    classes
}

/// Label skew by Dirichlet proportions per class (the scheme of Hsu et al. 2019 used by most
/// federated benchmarks), followed by a minimum-size repair.
fn dirichlet(ds: &Dataset, alpha: f64, clients: usize, rng: &mut Rng) -> Result<Vec<Vec<usize>>> {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(Error::Input(format!(
            "dirichlet alpha must be a positive number, got {alpha}"
        )));
    }
    let mut parts = vec![Vec::new(); clients];
    for mut members in by_class(ds) {
        shuffle(&mut members, rng);
        let props = sample_dirichlet(alpha, clients, rng);
        // Cut points at the rounded cumulative proportions: counts sum to the class size exactly.
        let m = members.len();
        let mut start = 0;
        let mut cum = 0.0;
        for (c, p) in props.iter().enumerate() {
            cum += p;
            let end = if c + 1 == clients {
                m
            } else {
                ((cum * m as f64).round() as usize).clamp(start, m)
            };
            parts[c].extend_from_slice(&members[start..end]);
            start = end;
        }
    }
    // Small alpha routinely leaves clients with no data at all, and a client needs one example
    // to train and one to test on. So every client is topped up to `min_size` (2, or 1 when
    // there are fewer than 2 examples per client) by moving examples, one at a time, from the
    // currently largest client. To keep the skew the repair moves examples of a single class:
    // the class the needy client already has, else the donor's most common class (a random
    // example of it). Few examples move: at most `min_size` per client.
    let min_size = (ds.len() / clients).min(2);
    while let Some(needy) = (0..clients).find(|&c| parts[c].len() < min_size) {
        let donor = (0..clients)
            .max_by_key(|&c| (parts[c].len(), std::cmp::Reverse(c)))
            .expect("clients >= 1");
        let of_class = |class: usize| -> Vec<usize> {
            (0..parts[donor].len())
                .filter(|&k| ds.labels[parts[donor][k]] == class)
                .collect()
        };
        let mut candidates = match parts[needy].first() {
            Some(&i) => of_class(ds.labels[i]),
            None => Vec::new(),
        };
        if candidates.is_empty() {
            candidates = of_class(majority_class(ds, &parts[donor]));
        }
        // The donor is the largest client and holds more than `min_size >= 1` examples (the
        // total suffices for all), so its majority class has at least one.
        let k = candidates[rng.below(candidates.len())];
        let moved = parts[donor].swap_remove(k);
        parts[needy].push(moved);
    }
    Ok(parts)
}

/// The most common class among `idx` (ties to the lowest class id).
fn majority_class(ds: &Dataset, idx: &[usize]) -> usize {
    let mut counts = vec![0usize; ds.num_classes()];
    for &i in idx {
        counts[ds.labels[i]] += 1;
    }
    (0..counts.len())
        .max_by_key(|&c| (counts[c], std::cmp::Reverse(c)))
        .unwrap_or(0)
}

/// The FedAvg paper's pathological non-IID split: sort by label, cut into `clients * k` shards
/// of (nearly) equal size, give each client `k` random shards. A shard can straddle the boundary
/// between two classes, so a client can see more than `k` classes when class sizes are not
/// multiples of the shard size.
fn shards(ds: &Dataset, k: usize, clients: usize, rng: &mut Rng) -> Result<Vec<Vec<usize>>> {
    let n = ds.len();
    let count = clients.checked_mul(k).filter(|&s| s <= n).ok_or_else(|| {
        Error::Input(format!(
            "shards:{k} over {clients} clients needs at least {clients} * {k} examples, the data set has {n}"
        ))
    })?;
    // Shuffle first so that a shard is a random sample of its class, not a run of the file's
    // order (files are often sorted by source or item); the stable sort then groups by label.
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, rng);
    order.sort_by_key(|&i| ds.labels[i]);
    let mut shard_ids: Vec<usize> = (0..count).collect();
    shuffle(&mut shard_ids, rng);
    let mut parts = vec![Vec::new(); clients];
    for (pos, s) in shard_ids.into_iter().enumerate() {
        // Shard s covers [s*n/count, (s+1)*n/count): sizes differ by at most one.
        let (lo, hi) = (s * n / count, (s + 1) * n / count);
        parts[pos / k].extend_from_slice(&order[lo..hi]);
    }
    Ok(parts)
}

/// Whole groups to clients: groups in random order, largest first, each to the client with the
/// fewest examples so far (ties to the lowest client index).
fn by_column(ds: &Dataset, name: &str, clients: usize, rng: &mut Rng) -> Result<Vec<Vec<usize>>> {
    let groups = ds.groups.as_ref().ok_or_else(|| {
        Error::Input(format!(
            "partition column:{name} needs the data set loaded with group column `{name}`"
        ))
    })?;
    // BTreeMap: groups in sorted order, so the result depends on the seed only.
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
    }
    if members.len() < clients {
        return Err(Error::Input(format!(
            "partition column:{name}: {} distinct groups cannot be split over {clients} clients",
            members.len()
        )));
    }
    let mut order: Vec<Vec<usize>> = members.into_values().collect();
    shuffle(&mut order, rng);
    // Largest groups first (stable, so equal sizes keep their random order): greedy
    // least-loaded assignment then balances far better than in pure random order.
    order.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
    for group in order {
        let target = (0..clients)
            .min_by_key(|&c| parts[c].len())
            .expect("clients >= 1");
        parts[target].extend(group);
    }
    Ok(parts)
}

/// Shuffles `v` in place (Fisher–Yates).
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// A sample of Gamma(`alpha`, 1) (mean and variance `alpha`), `alpha > 0`.
///
/// Marsaglia & Tsang (2000) for `alpha >= 1`; for `alpha < 1` the boost
/// `Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha)`.
pub fn sample_gamma(alpha: f64, rng: &mut Rng) -> f64 {
    ln_gamma_sample(alpha, rng).exp()
}

/// The logarithm of a Gamma(`alpha`, 1) sample. Working in logs matters for small alpha: with
/// alpha = 0.01, `U^(1/alpha)` underflows to 0 for most U, and a Dirichlet draw made of zeros
/// cannot be normalised.
fn ln_gamma_sample(alpha: f64, rng: &mut Rng) -> f64 {
    if alpha < 1.0 {
        // 1 - U lies in (0, 1], so its log is finite.
        let u = 1.0 - rng.uniform();
        return ln_gamma_sample(alpha + 1.0, rng) + u.ln() / alpha;
    }
    let d = alpha - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = f64::from(rng.normal());
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - rng.uniform();
        // Cheap squeeze first, then the exact acceptance test.
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d.ln() + v.ln();
        }
    }
}

/// A sample of the symmetric Dirichlet(`alpha`) distribution over `k` categories: `k`
/// non-negative proportions that sum to 1.
pub fn sample_dirichlet(alpha: f64, k: usize, rng: &mut Rng) -> Vec<f64> {
    let logs: Vec<f64> = (0..k).map(|_| ln_gamma_sample(alpha, rng)).collect();
    // Normalise relative to the largest: exp never overflows and the largest term is 1.
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|x| x / sum).collect()
}
