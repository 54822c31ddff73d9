//! `flexp-run partition`: the simulation's split of a run's data written as files, one per client,
//! so that each client process of a deployment holds only its own examples.
//!
//! The split is [`split_data`]'s, the one `flexp-run train` uses for the same configuration and
//! seed. Each `client-K.csv` holds client K's rows with the configuration's own column names
//! (text, label, response and group columns as configured) plus a `flexp_split` column saying
//! `train` or `test`; `global_test.csv` holds the global test set (the union of the clients' test
//! rows). `partition.json` records the class names in class-id order (a client's file may lack
//! some classes, so its ids cannot be derived from its own labels), the seed, and each file's
//! row counts.

use super::config::{RunConfig, Task};
use super::runner::{split_data, Progress};
use crate::data::{global_test, Dataset};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde_json::{json, Value};
use std::path::Path;

/// The column of a client file that says whether a row is for training or evaluation.
pub const SPLIT_COLUMN: &str = "flexp_split";

/// Writes the split of `cfg`'s data into `out` (created if needed) and returns the manifest
/// written to `out/partition.json`.
pub fn write_partition(cfg: &RunConfig, out: &Path, progress: &mut dyn Progress) -> Result<Value> {
    let (ds, splits) = split_data(cfg, progress)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let columns = Columns::of(cfg);
    let mut files = Vec::new();
    for (k, s) in splits.iter().enumerate() {
        let rows = s
            .train
            .iter()
            .map(|&i| (i, "train"))
            .chain(s.test.iter().map(|&i| (i, "test")));
        let name = format!("client-{k}.csv");
        write_csv(&out.join(&name), &ds, &columns, rows, true)?;
        files
            .push(json!({"client": k, "file": name, "train": s.train.len(), "test": s.test.len()}));
    }
    let global = global_test(&splits);
    write_csv(
        &out.join("global_test.csv"),
        &ds,
        &columns,
        global.iter().map(|&i| (i, "test")),
        false,
    )?;
    let manifest = json!({
        "seed": cfg.seed,
        "clients": cfg.clients,
        "partition": cfg.partition.to_string(),
        "test_fraction": cfg.test_fraction,
        "classes": ds.label_names,
        "columns": {
            "text": columns.text,
            "label": columns.label,
            "response": columns.response,
            "group": columns.group,
            "split": SPLIT_COLUMN,
        },
        "files": files,
        "global_test": {"file": "global_test.csv", "rows": global.len()},
    });
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Input(format!("partition manifest: {e}")))?;
    write_atomic(&out.join("partition.json"), text.as_bytes())?;
    Ok(manifest)
}

/// The configuration's column names, each written only when the data has that column.
struct Columns {
    text: String,
    label: Option<String>,
    response: Option<String>,
    group: Option<String>,
}

impl Columns {
    fn of(cfg: &RunConfig) -> Self {
        Columns {
            text: cfg.text_column.clone(),
            label: (!cfg.label_column.is_empty()).then(|| cfg.label_column.clone()),
            response: match &cfg.task {
                Task::Classify => None,
                Task::CausalLm {
                    response_column, ..
                } => Some(response_column.clone()),
            },
            group: cfg.partition.group_column().map(str::to_string),
        }
    }
}

/// Writes the rows `(index, split)` of `ds` as CSV (atomically: a crash leaves the old file or
/// none), with the split column when `with_split`.
fn write_csv<'a>(
    path: &Path,
    ds: &Dataset,
    columns: &Columns,
    rows: impl Iterator<Item = (usize, &'a str)>,
    with_split: bool,
) -> Result<()> {
    // Writing into memory fails only on a record the CSV writer cannot encode.
    let csv_err = |e: csv::Error| Error::Input(format!("writing {}: {e}", path.display()));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![columns.text.as_str()];
    header.extend(columns.label.as_deref());
    header.extend(columns.response.as_deref());
    header.extend(columns.group.as_deref());
    if with_split {
        header.push(SPLIT_COLUMN);
    }
    w.write_record(&header).map_err(csv_err)?;
    for (i, split) in rows {
        let mut rec = vec![ds.texts[i].as_str()];
        if columns.label.is_some() {
            rec.push(ds.label_names[ds.labels[i]].as_str());
        }
        if let Some(r) = &ds.responses {
            rec.push(r[i].as_str());
        }
        if let Some(g) = &ds.groups {
            rec.push(g[i].as_str());
        }
        if with_split {
            rec.push(split);
        }
        w.write_record(&rec).map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Input(format!("writing {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}
