//! Data pipeline: loading CSV / JSON lines (and refusing broken files with a clear message),
//! partitions over clients, stratified splits, the Gamma / Dirichlet samplers, tokenization, and
//! the real Rotten Tomatoes corpus (`bash tools/fetch_rotten_tomatoes.sh`).

use flexp::data::{
    encode_dataset, global_test, partition, sample_dirichlet, sample_gamma, split_clients,
    train_test_split, validate_test_fraction, DataSpec, Dataset, Partition,
};
use flexp::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec(file: &str, text: &str, label: &str, group: Option<&str>) -> DataSpec {
    DataSpec {
        path: root().join("tests/fixtures/data").join(file),
        text_column: text.into(),
        label_column: label.into(),
        group_column: group.map(str::to_owned),
        response_column: None,
    }
}

/// The error message of loading a fixture with columns `text` and `label`.
fn load_err(file: &str) -> String {
    Dataset::load(&spec(file, "text", "label", None))
        .err()
        .unwrap_or_else(|| panic!("{file} should be refused"))
        .to_string()
}

/// A synthetic data set with `sizes[c]` examples of class `c`, interleaved in the file order.
fn synthetic(sizes: &[usize]) -> Dataset {
    let mut labels = Vec::new();
    let max = sizes.iter().copied().max().unwrap_or(0);
    for i in 0..max {
        for (c, &n) in sizes.iter().enumerate() {
            if i < n {
                labels.push(c);
            }
        }
    }
    Dataset {
        texts: (0..labels.len()).map(|i| format!("text {i}")).collect(),
        labels,
        label_names: (0..sizes.len()).map(|c| format!("class{c}")).collect(),
        groups: None,
        responses: None,
    }
}

/// Asserts that `parts` uses every example of a data set of `n` exactly once.
fn assert_exact_cover(parts: &[Vec<usize>], n: usize) {
    let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "not an exact cover");
}

/// The mean over clients of the share of the client's most common class.
fn mean_max_share(ds: &Dataset, parts: &[Vec<usize>]) -> f64 {
    let shares: Vec<f64> = parts
        .iter()
        .map(|p| {
            let mut counts = vec![0usize; ds.num_classes()];
            for &i in p {
                counts[ds.labels[i]] += 1;
            }
            *counts.iter().max().unwrap() as f64 / p.len() as f64
        })
        .collect();
    shares.iter().sum::<f64>() / shares.len() as f64
}

fn classes_of(ds: &Dataset, part: &[usize]) -> BTreeSet<usize> {
    part.iter().map(|&i| ds.labels[i]).collect()
}

// ---------------------------------------------------------------------------------------------
// Loading

#[test]
fn csv_with_quoted_commas_and_newlines_loads() {
    let ds = Dataset::load(&spec("reviews.csv", "text", "label", Some("domain"))).unwrap();
    assert_eq!(ds.len(), 7);
    assert_eq!(ds.texts[0], "Great film, truly moving");
    assert_eq!(ds.texts[2], "A \"classic\" in the making");
    assert_eq!(
        ds.texts[3],
        "Line one of a review\nline two of the same review"
    );
    assert_eq!(ds.texts[4], "Plain text without quotes");
    // Sorted unique labels: neg < neu < pos.
    assert_eq!(ds.label_names, ["neg", "neu", "pos"]);
    assert_eq!(ds.labels, [2, 0, 2, 0, 2, 0, 1]);
    assert_eq!(ds.class_counts(), [3, 1, 3]);
    assert_eq!(
        ds.groups.as_deref().unwrap(),
        ["movies", "movies", "books", "books", "games", "games", "games"]
    );
    // Without a group column nothing is kept.
    let plain = Dataset::load(&spec("reviews.csv", "text", "label", None)).unwrap();
    assert!(plain.groups.is_none());
}

#[test]
fn label_ids_do_not_depend_on_row_order() {
    let dir = std::env::temp_dir().join(format!("flexp-data-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.csv");
    let b = dir.join("b.csv");
    std::fs::write(&a, "text,label\nx,zeta\ny,alpha\nz,mid\n").unwrap();
    std::fs::write(&b, "text,label\nz,mid\nx,zeta\ny,alpha\n").unwrap();
    let load = |p: &PathBuf| {
        Dataset::load(&DataSpec {
            path: p.clone(),
            text_column: "text".into(),
            label_column: "label".into(),
            group_column: None,
            response_column: None,
        })
        .unwrap()
    };
    let (da, db) = (load(&a), load(&b));
    assert_eq!(da.label_names, ["alpha", "mid", "zeta"]);
    assert_eq!(da.label_names, db.label_names);
    assert_eq!(da.labels, [2, 0, 1]);
    assert_eq!(db.labels, [1, 2, 0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jsonl_loads_with_numeric_labels_sorted_numerically() {
    let ds = Dataset::load(&spec("reviews.jsonl", "text", "stars", Some("shop"))).unwrap();
    // The blank line is skipped.
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.texts[1], "ten stars, \"wow\"");
    // Integers sort numerically: 2 before 10.
    assert_eq!(ds.label_names, ["1", "2", "10"]);
    assert_eq!(ds.labels, [0, 2, 1, 2]);
    assert_eq!(ds.groups.as_deref().unwrap(), ["a", "b", "a", "c"]);
}

#[test]
fn missing_file_is_named() {
    let e = load_err("no_such_file.csv");
    assert!(
        e.contains("no_such_file.csv") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn unsupported_extension_lists_the_supported_ones() {
    let e = load_err("reviews.txt");
    assert!(e.contains("reviews.txt"), "{e}");
    assert!(
        e.contains(".csv") && e.contains(".jsonl") && e.contains(".json"),
        "{e}"
    );
}

#[test]
fn missing_column_lists_the_existing_ones() {
    let e = Dataset::load(&spec("reviews.csv", "text", "sentiment", None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reviews.csv") && e.contains("`sentiment`"),
        "{e}"
    );
    assert!(e.contains("id, text, label, domain"), "{e}");
    let e = Dataset::load(&spec("reviews.csv", "text", "label", Some("genre")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`genre`") && e.contains("domain"), "{e}");
    // JSON lines: the line and the keys it has.
    let e = load_err("missing_key.jsonl");
    assert!(
        e.contains("missing_key.jsonl") && e.contains("line 2") && e.contains("`label`"),
        "{e}"
    );
    assert!(e.contains("lbl, text"), "{e}");
}

#[test]
fn malformed_csv_row_names_its_line() {
    // Line 5: the quoted newline in the first record must not throw the count off.
    let e = load_err("ragged.csv");
    assert!(e.contains("ragged.csv") && e.contains("line 5"), "{e}");
    assert!(e.contains("3 fields") && e.contains("2"), "{e}");
}

#[test]
fn invalid_json_names_its_line() {
    let e = load_err("bad.jsonl");
    assert!(
        e.contains("bad.jsonl") && e.contains("line 3") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn empty_text_names_its_line() {
    let e = load_err("empty_text.csv");
    assert!(
        e.contains("empty_text.csv") && e.contains("line 3") && e.contains("empty text"),
        "{e}"
    );
    // The lenient loader leaves the row out and says which.
    let (ds, skipped) =
        Dataset::load_skipping_empty(&spec("empty_text.csv", "text", "label", None)).unwrap();
    assert_eq!(skipped, [3]);
    assert_eq!(ds.texts, ["good", "bad"]);
    assert_eq!(ds.label_names, ["neg", "pos"]);
}

#[test]
fn empty_label_names_its_line() {
    let e = load_err("empty_label.csv");
    assert!(
        e.contains("empty_label.csv") && e.contains("line 4") && e.contains("empty label"),
        "{e}"
    );
    // Skipping empty texts does not excuse empty labels.
    assert!(Dataset::load_skipping_empty(&spec("empty_label.csv", "text", "label", None)).is_err());
}

#[test]
fn a_single_class_is_refused() {
    let e = load_err("one_class.csv");
    assert!(
        e.contains("one_class.csv") && e.contains("needs at least 2 classes"),
        "{e}"
    );
}

#[test]
fn zero_rows_are_refused() {
    let e = load_err("header_only.csv");
    assert!(
        e.contains("header_only.csv") && e.contains("no data rows"),
        "{e}"
    );
}

#[test]
fn filter_labels_keeps_and_reindexes() {
    let ds = Dataset::load(&spec("reviews.csv", "text", "label", Some("domain"))).unwrap();
    let f = ds.filter_labels(&["pos", "neu"]).unwrap();
    assert_eq!(f.label_names, ["neu", "pos"]);
    assert_eq!(f.labels, [1, 1, 1, 0]);
    assert_eq!(
        f.texts,
        [
            "Great film, truly moving",
            "A \"classic\" in the making",
            "Plain text without quotes",
            "Fine but forgettable"
        ]
    );
    assert_eq!(
        f.groups.as_deref().unwrap(),
        ["movies", "books", "games", "games"]
    );
    let e = ds.filter_labels(&["pos", "great"]).unwrap_err().to_string();
    assert!(
        e.contains("\"great\"") && e.contains("neg, neu, pos"),
        "{e}"
    );
    let e = ds.filter_labels(&["pos"]).unwrap_err().to_string();
    assert!(e.contains("fewer than 2 classes"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Partitions

#[test]
fn partition_parse_accepts_the_documented_forms() {
    assert_eq!(Partition::parse("iid").unwrap(), Partition::Iid);
    assert_eq!(
        Partition::parse("dirichlet:0.5").unwrap(),
        Partition::Dirichlet(0.5)
    );
    assert_eq!(Partition::parse("shards:2").unwrap(), Partition::Shards(2));
    assert_eq!(
        Partition::parse("column:movie_name").unwrap(),
        Partition::Column("movie_name".into())
    );
    for p in ["iid", "dirichlet:0.1", "shards:3", "column:domain"] {
        assert_eq!(Partition::parse(p).unwrap().to_string(), p);
    }
    assert_eq!(
        Partition::parse("column:domain").unwrap().group_column(),
        Some("domain")
    );
    assert_eq!(Partition::Iid.group_column(), None);
    for bad in [
        "random",
        "dirichlet",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:x",
        "dirichlet:inf",
        "shards:0",
        "shards:1.5",
        "column:",
        "iid:3",
    ] {
        let e = Partition::parse(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"))
            .to_string();
        assert!(
            e.contains("dirichlet:ALPHA") && e.contains("shards:K") && e.contains("column:NAME"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn partition_refuses_impossible_requests() {
    let ds = synthetic(&[3, 3]);
    let mut rng = Rng::new(1);
    let e = partition(&ds, &Partition::Iid, 0, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
    for p in [
        Partition::Iid,
        Partition::Dirichlet(1.0),
        Partition::Shards(1),
    ] {
        let e = partition(&ds, &p, 7, &mut rng).unwrap_err().to_string();
        assert!(
            e.contains("6 examples cannot be split over 7 clients"),
            "{p}: {e}"
        );
    }
    let e = partition(&ds, &Partition::Shards(2), 4, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shards:2") && e.contains("4 * 2"), "{e}");
    let e = partition(&ds, &Partition::Column("domain".into()), 2, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("group column `domain`"), "{e}");
    let ds = Dataset::load(&spec("reviews.csv", "text", "label", Some("domain"))).unwrap();
    let e = partition(&ds, &Partition::Column("domain".into()), 4, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 distinct groups") && e.contains("4 clients"),
        "{e}"
    );
}

#[test]
fn iid_sizes_differ_by_at_most_one() {
    let ds = synthetic(&[40, 30, 33]);
    for clients in [1, 5, 7, 103] {
        let parts = partition(&ds, &Partition::Iid, clients, &mut Rng::new(3)).unwrap();
        assert_eq!(parts.len(), clients);
        assert_exact_cover(&parts, ds.len());
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 1, "{clients} clients: sizes {sizes:?}");
        assert!(parts.iter().all(|p| p.windows(2).all(|w| w[0] < w[1])));
    }
    // Shuffled, not dealt in file order: client 0 does not get 0, 5, 10, ...
    let parts = partition(&ds, &Partition::Iid, 5, &mut Rng::new(3)).unwrap();
    assert_ne!(parts[0], (0..ds.len()).step_by(5).collect::<Vec<_>>());
}

#[test]
fn dirichlet_alpha_controls_label_skew() {
    // 4 balanced classes over 20 clients: an IID client has a max-class share near 1/4 (a bit
    // more from sampling noise), a single-class client 1. Averaged over a few seeds.
    let ds = synthetic(&[300, 300, 300, 300]);
    let skew = |alpha: f64| {
        let mut total = 0.0;
        for seed in 0..5 {
            let parts =
                partition(&ds, &Partition::Dirichlet(alpha), 20, &mut Rng::new(seed)).unwrap();
            assert_exact_cover(&parts, ds.len());
            total += mean_max_share(&ds, &parts);
        }
        total / 5.0
    };
    let (small, one, large) = (skew(0.05), skew(1.0), skew(1000.0));
    assert!(small > 0.85, "alpha 0.05: mean max-class share {small}");
    assert!(large < 0.30, "alpha 1000: mean max-class share {large}");
    assert!(small > one && one > large, "{small} {one} {large}");
}

#[test]
fn dirichlet_gives_every_client_two_examples() {
    // Alpha 0.01 leaves most clients empty before the repair.
    let ds = synthetic(&[50, 50]);
    for seed in 0..10 {
        let parts = partition(&ds, &Partition::Dirichlet(0.01), 30, &mut Rng::new(seed)).unwrap();
        assert_exact_cover(&parts, ds.len());
        assert!(parts.iter().all(|p| p.len() >= 2), "seed {seed}: {parts:?}");
    }
    // With fewer than 2 examples per client, one each.
    let ds = synthetic(&[5, 4]);
    let parts = partition(&ds, &Partition::Dirichlet(0.01), 6, &mut Rng::new(1)).unwrap();
    assert_exact_cover(&parts, ds.len());
    assert!(parts.iter().all(|p| !p.is_empty()), "{parts:?}");
}

#[test]
fn shards_one_gives_single_class_clients() {
    // Class sizes are multiples of the shard size (60 / (12 * 1) = 5): no shard straddles.
    let ds = synthetic(&[20, 25, 15]);
    for seed in 0..5 {
        let parts = partition(&ds, &Partition::Shards(1), 12, &mut Rng::new(seed)).unwrap();
        assert_exact_cover(&parts, ds.len());
        for p in &parts {
            assert_eq!(p.len(), 5);
            assert_eq!(classes_of(&ds, p).len(), 1, "seed {seed}: {p:?}");
        }
    }
}

#[test]
fn shards_k_limit_the_classes_per_client() {
    // 10 classes of 50, 25 clients with 2 shards of 10: at most 2 classes each, and the shards
    // really are random (not every client gets two shards of the same class).
    let ds = synthetic(&[50; 10]);
    let parts = partition(&ds, &Partition::Shards(2), 25, &mut Rng::new(9)).unwrap();
    assert_exact_cover(&parts, ds.len());
    let counts: Vec<usize> = parts.iter().map(|p| classes_of(&ds, p).len()).collect();
    assert!(counts.iter().all(|&c| (1..=2).contains(&c)), "{counts:?}");
    assert!(
        counts.iter().filter(|&&c| c == 2).count() > 10,
        "{counts:?}"
    );
    // Uneven class sizes: a shard may straddle a boundary, still at most K + 1 per shard pair.
    let ds = synthetic(&[37, 23, 41, 19]);
    let parts = partition(&ds, &Partition::Shards(2), 10, &mut Rng::new(9)).unwrap();
    assert_exact_cover(&parts, ds.len());
    assert!(parts.iter().all(|p| classes_of(&ds, p).len() <= 4));
    let mean = parts
        .iter()
        .map(|p| classes_of(&ds, p).len())
        .sum::<usize>() as f64
        / 10.0;
    assert!(mean <= 3.0, "mean classes per client {mean}");
}

#[test]
fn column_partition_never_splits_a_group_and_balances() {
    // 60 groups of sizes 1..=12 (repeating): whole groups per client, sizes near balance.
    let mut ds = synthetic(&[200, 190]);
    let mut groups = Vec::new();
    let mut g = 0;
    while groups.len() < ds.len() {
        for _ in 0..(g % 12 + 1) {
            groups.push(format!("item{g}"));
        }
        g += 1;
    }
    groups.truncate(ds.len());
    ds.groups = Some(groups);
    let owner_of = |parts: &[Vec<usize>]| {
        let mut owner: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for (c, p) in parts.iter().enumerate() {
            for &i in p {
                owner
                    .entry(ds.groups.as_ref().unwrap()[i].as_str())
                    .or_default()
                    .insert(c);
            }
        }
        owner
    };
    for seed in 0..5 {
        let parts = partition(
            &ds,
            &Partition::Column("item".into()),
            8,
            &mut Rng::new(seed),
        )
        .unwrap();
        assert_exact_cover(&parts, ds.len());
        let owner = owner_of(&parts);
        assert!(owner.values().all(|c| c.len() == 1), "a group was split");
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        let (lo, hi) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
        // Greedy largest-first leaves a gap of at most the largest group (12).
        assert!(hi - lo <= 12, "seed {seed}: sizes {sizes:?}");
    }
}

#[test]
fn partitions_are_deterministic_per_seed() {
    let mut ds = synthetic(&[60, 45, 30]);
    ds.groups = Some((0..ds.len()).map(|i| format!("g{}", i % 23)).collect());
    for p in [
        Partition::Iid,
        Partition::Dirichlet(0.5),
        Partition::Shards(2),
        Partition::Column("g".into()),
    ] {
        let a = partition(&ds, &p, 6, &mut Rng::new(42)).unwrap();
        let b = partition(&ds, &p, 6, &mut Rng::new(42)).unwrap();
        let c = partition(&ds, &p, 6, &mut Rng::new(43)).unwrap();
        assert_eq!(a, b, "{p}: same seed, different result");
        assert_ne!(a, c, "{p}: different seeds, same result");
    }
}

// ---------------------------------------------------------------------------------------------
// Train/test splits

#[test]
fn splits_are_stratified_disjoint_and_cover_the_client() {
    let ds = synthetic(&[100, 50, 30, 1]);
    let parts = partition(&ds, &Partition::Iid, 3, &mut Rng::new(5)).unwrap();
    let splits = split_clients(&ds, &parts, 0.2, &mut Rng::new(6));
    assert_eq!(splits.len(), 3);
    for (part, s) in parts.iter().zip(&splits) {
        let mut both: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
        both.sort_unstable();
        assert_eq!(&both, part, "train + test must be the client's examples");
        assert!(s.train.iter().all(|i| !s.test.contains(i)), "overlap");
        assert!(s.train.windows(2).all(|w| w[0] < w[1]));
        assert!(s.test.windows(2).all(|w| w[0] < w[1]));
        // Per label: exactly round(0.2 * n) in test, single examples stay in train.
        for c in 0..ds.num_classes() {
            let n = part.iter().filter(|&&i| ds.labels[i] == c).count();
            let t = s.test.iter().filter(|&&i| ds.labels[i] == c).count();
            let want = if n <= 1 {
                0
            } else {
                (0.2 * n as f64).round() as usize
            };
            assert_eq!(t, want, "class {c}: {t} of {n} in test");
        }
    }
    let global = global_test(&splits);
    let mut union: Vec<usize> = splits.iter().flat_map(|s| s.test.clone()).collect();
    union.sort_unstable();
    assert_eq!(global, union);
    assert!(!global.is_empty());
}

#[test]
fn split_keeps_a_train_and_a_test_example() {
    let ds = synthetic(&[10, 10, 10]);
    // A label with one example goes to train, even at fraction 0.9.
    let (train, test) = train_test_split(&ds, &[0], 0.9, &mut Rng::new(1));
    assert_eq!((train, test), (vec![0], vec![]));
    // Fraction near 1: one example stays for training.
    let idx: Vec<usize> = (0..6).collect();
    let (train, test) = train_test_split(&ds, &idx, 0.99, &mut Rng::new(1));
    assert_eq!(train.len(), 1);
    assert_eq!(test.len(), 5);
    // Two examples of different classes: stratification alone would test none.
    let (train, test) = train_test_split(&ds, &[0, 1], 0.2, &mut Rng::new(1));
    assert_eq!((train.len(), test.len()), (1, 1));
    // Fraction 0: no test set at all.
    let (train, test) = train_test_split(&ds, &idx, 0.0, &mut Rng::new(1));
    assert_eq!((train, test), (idx.clone(), vec![]));
    // Deterministic per seed, random across seeds.
    let all: Vec<usize> = (0..30).collect();
    let a = train_test_split(&ds, &all, 0.3, &mut Rng::new(7));
    assert_eq!(a, train_test_split(&ds, &all, 0.3, &mut Rng::new(7)));
    assert_ne!(a, train_test_split(&ds, &all, 0.3, &mut Rng::new(8)));
    assert!(validate_test_fraction(0.2).is_ok());
    for bad in [-0.1, 1.0, f64::NAN] {
        assert!(validate_test_fraction(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Samplers

#[test]
fn gamma_sampler_has_the_right_mean_and_variance() {
    // Gamma(a, 1): mean a, variance a. With N samples the standard error of the mean is
    // sqrt(a / N) and that of the sample variance about a * sqrt((2 + 6 / a) / N); allow 5.
    let n = 200_000;
    let mut rng = Rng::new(2024);
    for alpha in [0.05, 0.3, 1.0, 2.5, 10.0] {
        let xs: Vec<f64> = (0..n).map(|_| sample_gamma(alpha, &mut rng)).collect();
        assert!(xs.iter().all(|&x| x >= 0.0 && x.is_finite()));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se_mean = (alpha / n as f64).sqrt();
        let se_var = alpha * ((2.0 + 6.0 / alpha) / n as f64).sqrt();
        assert!(
            (mean - alpha).abs() < 5.0 * se_mean,
            "alpha {alpha}: mean {mean}"
        );
        assert!(
            (var - alpha).abs() < 5.0 * se_var,
            "alpha {alpha}: variance {var}"
        );
    }
}

#[test]
fn dirichlet_sampler_is_a_distribution_with_the_right_mean() {
    let mut rng = Rng::new(11);
    for alpha in [0.001, 0.1, 1.0, 50.0] {
        let k = 5;
        let mut mean = vec![0.0; k];
        let draws = 20_000;
        for _ in 0..draws {
            let p = sample_dirichlet(alpha, k, &mut rng);
            assert!(p.iter().all(|&x| (0.0..=1.0).contains(&x)), "{p:?}");
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p:?}");
            for (m, x) in mean.iter_mut().zip(&p) {
                *m += x / draws as f64;
            }
        }
        // Each component has mean 1/k; its sd is at most about 0.4 for tiny alpha.
        for m in mean {
            assert!((m - 0.2).abs() < 0.02, "alpha {alpha}: component mean {m}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenization

#[test]
fn encode_dataset_truncates_and_counts() {
    let tok_path = root().join("models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(tok_path.exists(), "run `bash tools/fetch_minilm.sh` first");
    let tok = flexp::model::Tokenizer::from_file(&tok_path, 30522).unwrap();
    let mut ds = synthetic(&[1, 1, 1]);
    ds.texts = vec![
        "short".into(),
        "a somewhat longer sentence with quite a few words in it".into(),
        "two words".into(),
    ];
    let (ids, truncated) = encode_dataset(&ds, &tok, 6).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(truncated, 1);
    assert_eq!(ids[0].len(), 3, "[CLS] short [SEP]");
    assert_eq!(ids[1].len(), 6);
    // Special tokens survive truncation: [CLS] = 101, [SEP] = 102.
    assert_eq!((ids[1][0], ids[1][5]), (101, 102));
    let (full, none) = encode_dataset(&ds, &tok, 512).unwrap();
    assert_eq!(none, 0);
    assert_eq!(full[0], ids[0]);
    assert_eq!(&full[1][..5], &ids[1][..5]);
    assert!(encode_dataset(&ds, &tok, 0).is_err());
}

// ---------------------------------------------------------------------------------------------
// The real corpus

fn rotten_tomatoes(group: bool) -> DataSpec {
    let path = root().join("data/rotten_tomatoes.csv");
    assert!(
        path.exists(),
        "{} is missing: run `bash tools/fetch_rotten_tomatoes.sh` first",
        path.display()
    );
    DataSpec {
        path,
        text_column: "text".into(),
        label_column: "category".into(),
        group_column: group.then(|| "movie_name".into()),
        response_column: None,
    }
}

#[test]
fn rotten_tomatoes_has_the_documented_rows() {
    let spec = rotten_tomatoes(true);
    // The raw file, read independently of flexp: 13,905 rows as documented in assets.md.
    let mut raw: BTreeMap<String, usize> = BTreeMap::new();
    let mut movies = BTreeSet::new();
    let mut rows = 0;
    for r in csv::Reader::from_path(&spec.path).unwrap().records() {
        let r = r.unwrap();
        *raw.entry(r[0].to_owned()).or_default() += 1;
        movies.insert(r[2].to_owned());
        rows += 1;
    }
    assert_eq!(rows, 13_905);
    assert_eq!(movies.len(), 1_449);
    let want: BTreeMap<String, usize> = [("fresh", 7_403), ("plot", 1_097), ("rotten", 5_405)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(raw, want);

    // 14 `plot` rows have an empty text: the strict loader refuses the file (naming the first),
    // the lenient one leaves exactly those out.
    let e = Dataset::load(&spec).unwrap_err().to_string();
    assert!(e.contains("empty text") && e.contains("line "), "{e}");
    let (ds, skipped) = Dataset::load_skipping_empty(&spec).unwrap();
    assert_eq!(skipped.len(), 14);
    assert_eq!(ds.len() + skipped.len(), 13_905);
    assert_eq!(ds.label_names, ["fresh", "plot", "rotten"]);
    assert_eq!(ds.class_counts(), [7_403, 1_097 - 14, 5_405]);
    // Those 14 movies have nothing but the empty plot row.
    let groups = ds.groups.as_ref().unwrap();
    assert_eq!(groups.iter().collect::<BTreeSet<_>>().len(), 1_449 - 14);

    // The usual task: fresh vs rotten, no empty texts left to skip.
    let reviews = ds.filter_labels(&["fresh", "rotten"]).unwrap();
    assert_eq!(reviews.class_counts(), [7_403, 5_405]);
}

#[test]
fn rotten_tomatoes_by_movie_over_ten_clients() {
    let (ds, _) = Dataset::load_skipping_empty(&rotten_tomatoes(true)).unwrap();
    let ds = ds.filter_labels(&["fresh", "rotten"]).unwrap();
    let p = Partition::parse("column:movie_name").unwrap();
    let parts = partition(&ds, &p, 10, &mut Rng::new(0)).unwrap();
    assert_exact_cover(&parts, ds.len());
    let groups = ds.groups.as_ref().unwrap();
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, part) in parts.iter().enumerate() {
        for &i in part {
            assert_eq!(
                *owner.entry(groups[i].as_str()).or_insert(c),
                c,
                "movie split"
            );
        }
    }
    let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
    let (lo, hi) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
    assert!(hi - lo <= 40, "unbalanced: {sizes:?}");
    let splits = split_clients(&ds, &parts, 0.2, &mut Rng::new(1));
    assert!(splits
        .iter()
        .all(|s| !s.train.is_empty() && !s.test.is_empty()));
    let test = global_test(&splits);
    assert!((test.len() as f64 / ds.len() as f64 - 0.2).abs() < 0.01);
}

/// A causal-LM data set: a response column beside the text (CSV and JSON lines read alike), the
/// label column optional (then one unnamed class, which a label-skew partition refuses), and an
/// empty response refused by line or skipped like an empty text.
#[test]
fn response_column_loads_with_or_without_labels() {
    let dir = std::env::temp_dir().join(format!("flexp-data-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("qa.csv");
    std::fs::write(
        &csv,
        "question,answer,topic\n\"What is 2+2?\",\" four\",math\nCapital of France?,Paris,geo\n",
    )
    .unwrap();
    let jsonl = dir.join("qa.jsonl");
    std::fs::write(
        &jsonl,
        "{\"question\": \"What is 2+2?\", \"answer\": \" four\", \"topic\": \"math\"}\n\
         {\"question\": \"Capital of France?\", \"answer\": \"Paris\", \"topic\": \"geo\"}\n",
    )
    .unwrap();
    let spec = |path: &PathBuf, label: &str| DataSpec {
        path: path.clone(),
        text_column: "question".into(),
        label_column: label.into(),
        group_column: None,
        response_column: Some("answer".into()),
    };
    for path in [&csv, &jsonl] {
        let ds = Dataset::load(&spec(path, "topic")).unwrap();
        assert_eq!(ds.texts, ["What is 2+2?", "Capital of France?"]);
        // Responses keep their leading space: it is part of what the model learns to produce.
        assert_eq!(ds.responses.as_deref().unwrap(), [" four", "Paris"]);
        assert_eq!(ds.label_names, ["geo", "math"]);
        assert_eq!(ds.labels, [1, 0]);

        let unlabelled = Dataset::load(&spec(path, "")).unwrap();
        assert_eq!(unlabelled.num_classes(), 1);
        assert_eq!(unlabelled.responses, ds.responses);
        let e = partition(&unlabelled, &Partition::Dirichlet(0.5), 2, &mut Rng::new(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no labels") && e.contains("iid"), "{e}");
        let parts = partition(&unlabelled, &Partition::Iid, 2, &mut Rng::new(1)).unwrap();
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 2);
    }
    // Classification still needs its label column.
    let mut no_labels = spec(&csv, "");
    no_labels.response_column = None;
    let e = Dataset::load(&no_labels).unwrap_err().to_string();
    assert!(e.contains("label_column"), "{e}");

    std::fs::write(&csv, "question,answer\nWhat is 2+2?, \nCapital?,Paris\n").unwrap();
    let e = Dataset::load(&spec(&csv, "")).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("empty response"), "{e}");
    let (ds, skipped) = Dataset::load_skipping_empty(&spec(&csv, "")).unwrap();
    assert_eq!((ds.len(), skipped), (1, vec![2]));
    std::fs::remove_dir_all(&dir).unwrap();
}
