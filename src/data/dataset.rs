//! Loading a labelled text data set from CSV or JSON lines.
//!
//! The loader is strict: every problem a user's file can have (a missing column, a ragged row, an
//! empty text or label, a single class) is an [`Error::Input`] that names the file and the line,
//! because a silently dropped or misread row would skew every accuracy figure built on it.

use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What to load: the file and the names of its columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// A `.csv` file with a header row, or a `.jsonl` / `.json` file with one object per line.
    pub path: PathBuf,
    /// The column (CSV header name or JSON key) holding the text.
    pub text_column: String,
    /// The column holding the class label (strings; JSON numbers and booleans are accepted).
    /// Empty for a causal-LM data set without labels ([`DataSpec::response_column`] set).
    pub label_column: String,
    /// The column holding each example's response, for causal-LM fine-tuning on
    /// prompt/response pairs (the text column is then the prompt). A causal-LM data set's labels
    /// only serve partitions and filters: it may have one class, or none.
    pub response_column: Option<String>,
    /// An optional column with a natural grouping key (a domain, an item name) for the
    /// `column:NAME` partition.
    pub group_column: Option<String>,
}

/// A labelled text data set held in memory. Examples are addressed by their index (row order of
/// the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// The texts.
    pub texts: Vec<String>,
    /// Class ids, indexes into `label_names`.
    pub labels: Vec<usize>,
    /// The label string of each class id, in sorted order (see [`Dataset::load`]).
    pub label_names: Vec<String>,
    /// The grouping key of each example, when a group column was loaded.
    pub groups: Option<Vec<String>>,
    /// The response of each example, when a response column was loaded (causal LM).
    pub responses: Option<Vec<String>>,
}

/// One row as read from the file, before labels are mapped to ids.
struct RawRow {
    line: u64,
    text: String,
    label: String,
    group: Option<String>,
    response: Option<String>,
}

impl Dataset {
    /// Loads the data set described by `spec`; the format is chosen by the file extension.
    ///
    /// Label strings (trimmed) are mapped to class ids in sorted order, so the mapping depends
    /// only on the set of labels, never on row order: numerically when every label is an integer
    /// (`"2"` before `"10"`), else lexicographically. Errors ([`Error::Input`], naming the file and
    /// line): the file is missing or has an unsupported extension, a column is missing (the
    /// existing ones are listed), a row is malformed, a text or label is empty, the file has no
    /// rows, or fewer than two classes. A file with empty texts can be loaded with
    /// [`Dataset::load_skipping_empty`].
    pub fn load(spec: &DataSpec) -> Result<Dataset> {
        Self::load_impl(spec, false).map(|(ds, _)| ds)
    }

    /// Like [`Dataset::load`], but rows whose text is empty (or only white space) are left out
    /// instead of refused; returns the data set and the file line numbers of the skipped rows.
    ///
    /// The Rotten Tomatoes corpus needs this: 14 of its `plot` rows have no text.
    pub fn load_skipping_empty(spec: &DataSpec) -> Result<(Dataset, Vec<u64>)> {
        Self::load_impl(spec, true)
    }

    fn load_impl(spec: &DataSpec, skip_empty: bool) -> Result<(Dataset, Vec<u64>)> {
        let path = &spec.path;
        if !path.is_file() {
            // An I/O error (Python: OSError), naming the file.
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the data file does not exist or is not a file",
                ),
            ));
        }
        let rows = match Format::of(path)? {
            Format::Csv => read_csv(spec)?,
            Format::JsonLines => read_jsonl(spec)?,
        };
        let mut skipped = Vec::new();
        let mut kept = Vec::with_capacity(rows.len());
        let labelled = !spec.label_column.is_empty();
        if !labelled && spec.response_column.is_none() {
            return Err(Error::Input(format!(
                "{}: no label column named: classification needs `label_column` (only a \
                 causal-LM data set with a response column may go without labels)",
                path.display()
            )));
        }
        for row in rows {
            if labelled && row.label.is_empty() {
                return Err(Error::Input(format!(
                    "{}: line {}: empty label in column `{}`",
                    path.display(),
                    row.line,
                    spec.label_column
                )));
            }
            if row.group.as_deref() == Some("") {
                return Err(Error::Input(format!(
                    "{}: line {}: empty group in column `{}`",
                    path.display(),
                    row.line,
                    spec.group_column.as_deref().unwrap_or_default()
                )));
            }
            if row.response.as_deref().is_some_and(|r| r.trim().is_empty()) {
                if skip_empty {
                    skipped.push(row.line);
                    continue;
                }
                return Err(Error::Input(format!(
                    "{}: line {}: empty response in column `{}`",
                    path.display(),
                    row.line,
                    spec.response_column.as_deref().unwrap_or_default()
                )));
            }
            if row.text.trim().is_empty() {
                if skip_empty {
                    skipped.push(row.line);
                    continue;
                }
                return Err(Error::Input(format!(
                    "{}: line {}: empty text in column `{}`",
                    path.display(),
                    row.line,
                    spec.text_column
                )));
            }
            kept.push(row);
        }
        if kept.is_empty() {
            return Err(Error::Input(format!(
                "{}: no data rows{}",
                path.display(),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({} rows with empty text skipped)", skipped.len())
                }
            )));
        }
        let label_names = sorted_labels(kept.iter().map(|r| r.label.as_str()));
        if label_names.len() < 2 && spec.response_column.is_none() {
            return Err(Error::Input(format!(
                "{}: column `{}` has the single class {:?}; classification needs at least 2 classes",
                path.display(),
                spec.label_column,
                label_names[0]
            )));
        }
        let mut ds = Dataset {
            texts: Vec::with_capacity(kept.len()),
            labels: Vec::with_capacity(kept.len()),
            label_names,
            groups: spec.group_column.as_ref().map(|_| Vec::new()),
            responses: spec.response_column.as_ref().map(|_| Vec::new()),
        };
        let ids: HashMap<&str, usize> = ds
            .label_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        for row in kept {
            ds.labels.push(ids[row.label.as_str()]);
            ds.texts.push(row.text);
            if let (Some(groups), Some(g)) = (ds.groups.as_mut(), row.group) {
                groups.push(g);
            }
            if let (Some(responses), Some(r)) = (ds.responses.as_mut(), row.response) {
                responses.push(r);
            }
        }
        Ok((ds, skipped))
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no examples (never true for a loaded data set).
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.label_names.len()
    }

    /// The class id of a label string.
    pub fn class_id(&self, name: &str) -> Option<usize> {
        self.label_names.iter().position(|n| n == name)
    }

    /// The number of examples of each class, indexed by class id.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    /// The examples whose label is one of `keep`, with class ids renumbered `0..keep.len()` in
    /// the data set's (sorted) label order. Errors when a name is not a label of the data set
    /// (the labels are listed), or when fewer than two classes would remain for classification
    /// (a causal-LM data set, with responses, may keep one).
    pub fn filter_labels(&self, keep: &[&str]) -> Result<Dataset> {
        let mut wanted = vec![false; self.num_classes()];
        for name in keep {
            match self.class_id(name) {
                Some(id) => wanted[id] = true,
                None => {
                    return Err(Error::Input(format!(
                        "label {name:?} is not in the data set (labels: {})",
                        self.label_names.join(", ")
                    )))
                }
            }
        }
        // Old id -> new id, keeping the sorted order so the mapping stays deterministic.
        let mut remap = vec![None; self.num_classes()];
        let mut label_names = Vec::new();
        for (old, name) in self.label_names.iter().enumerate() {
            if wanted[old] {
                remap[old] = Some(label_names.len());
                label_names.push(name.clone());
            }
        }
        if label_names.len() < 2 && self.responses.is_none() {
            return Err(Error::Input(format!(
                "keeping only {label_names:?} leaves fewer than 2 classes; classification needs at least 2"
            )));
        }
        let mut out = Dataset {
            texts: Vec::new(),
            labels: Vec::new(),
            label_names,
            groups: self.groups.as_ref().map(|_| Vec::new()),
            responses: self.responses.as_ref().map(|_| Vec::new()),
        };
        for (i, &l) in self.labels.iter().enumerate() {
            if let Some(new) = remap[l] {
                out.texts.push(self.texts[i].clone());
                out.labels.push(new);
                if let (Some(dst), Some(src)) = (out.groups.as_mut(), self.groups.as_ref()) {
                    dst.push(src[i].clone());
                }
                if let (Some(dst), Some(src)) = (out.responses.as_mut(), self.responses.as_ref()) {
                    dst.push(src[i].clone());
                }
            }
        }
        Ok(out)
    }
}

/// The sorted unique labels: numerically if all are integers, else as strings.
fn sorted_labels<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<String> {
    let unique: BTreeSet<&str> = labels.collect();
    let mut names: Vec<String> = unique.into_iter().map(str::to_owned).collect();
    let numeric: Option<Vec<i64>> = names.iter().map(|n| n.parse().ok()).collect();
    if let Some(values) = numeric {
        let mut pairs: Vec<(i64, String)> = values.into_iter().zip(names).collect();
        pairs.sort();
        names = pairs.into_iter().map(|(_, n)| n).collect();
    }
    names
}

/// The supported file formats.
enum Format {
    Csv,
    JsonLines,
}

impl Format {
    fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("jsonl") | Some("json") => Ok(Format::JsonLines),
            _ => Err(Error::Input(format!(
                "{}: unsupported data file extension (supported: .csv with a header row, \
                 .jsonl or .json with one JSON object per line)",
                path.display()
            ))),
        }
    }
}

/// Reads the text, label, group and response columns of a CSV file with a header row.
fn read_csv(spec: &DataSpec) -> Result<Vec<RawRow>> {
    let path = &spec.path;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        // A row with a different number of fields is an error, not silently padded.
        .flexible(false)
        .trim(csv::Trim::Headers)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| -> Result<usize> {
        let hits: Vec<usize> = (0..headers.len())
            .filter(|&i| &headers[i] == name)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err(Error::Input(format!(
                "{}: no column `{name}` (columns: {})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(", ")
            ))),
            _ => Err(Error::Input(format!(
                "{}: column `{name}` appears {} times in the header",
                path.display(),
                hits.len()
            ))),
        }
    };
    let text_col = column(&spec.text_column)?;
    let label_col = (!spec.label_column.is_empty())
        .then(|| column(&spec.label_column))
        .transpose()?;
    let group_col = spec.group_column.as_deref().map(column).transpose()?;
    let response_col = spec.response_column.as_deref().map(column).transpose()?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        // The line where the record starts (a quoted field may span several lines).
        let line = record.position().map_or(0, |p| p.line());
        rows.push(RawRow {
            line,
            text: record[text_col].to_owned(),
            label: label_col.map_or_else(String::new, |c| record[c].trim().to_owned()),
            group: group_col.map(|g| record[g].trim().to_owned()),
            response: response_col.map(|c| record[c].to_owned()),
        });
    }
    Ok(rows)
}

/// A CSV error with the file and line named.
fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e
        .position()
        .map(|p| format!("line {}: ", p.line()))
        .unwrap_or_default();
    match e.kind() {
        csv::ErrorKind::Io(io) => Error::io(path, std::io::Error::new(io.kind(), io.to_string())),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => Error::Input(format!(
            "{}: {line}malformed row: {len} fields where the header has {expected_len}",
            path.display()
        )),
        _ => Error::Input(format!("{}: {line}{e}", path.display())),
    }
}

/// Reads the text, label, group and response keys of a JSON lines file (blank lines are
/// ignored).
fn read_jsonl(spec: &DataSpec) -> Result<Vec<RawRow>> {
    let path = &spec.path;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let content = String::from_utf8(bytes)
        .map_err(|e| Error::Input(format!("{}: not valid UTF-8: {e}", path.display())))?;
    let mut rows = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let line = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let here = || format!("{}: line {line}", path.display());
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
            let hint = if line == 1 && raw.trim_start().starts_with('[') {
                " (expected one JSON object per line, not a JSON array)"
            } else {
                ""
            };
            Error::Input(format!("{}: invalid JSON: {e}{hint}", here()))
        })?;
        let serde_json::Value::Object(obj) = value else {
            return Err(Error::Input(format!(
                "{}: expected a JSON object, found {value}",
                here()
            )));
        };
        let field = |name: &str| -> Result<&serde_json::Value> {
            obj.get(name).ok_or_else(|| {
                Error::Input(format!(
                    "{}: no column `{name}` (keys on this line: {})",
                    here(),
                    obj.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        let string = |name: &str| -> Result<String> {
            match field(name)? {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Null => Ok(String::new()),
                other => Err(Error::Input(format!(
                    "{}: `{name}` must be a string, found {other}",
                    here()
                ))),
            }
        };
        let text = string(&spec.text_column)?;
        let response = spec.response_column.as_deref().map(string).transpose()?;
        let label = if spec.label_column.is_empty() {
            String::new()
        } else {
            scalar(field(&spec.label_column)?, &spec.label_column, &here)?
        };
        let group = match &spec.group_column {
            Some(g) => Some(scalar(field(g)?, g, &here)?),
            None => None,
        };
        rows.push(RawRow {
            line,
            text,
            label,
            group,
            response,
        });
    }
    Ok(rows)
}

/// A JSON label or group value as a trimmed string: strings as they are, numbers and booleans in
/// their JSON spelling, null as empty.
fn scalar(v: &serde_json::Value, name: &str, here: &dyn Fn() -> String) -> Result<String> {
    match v {
        serde_json::Value::String(s) => Ok(s.trim().to_owned()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        other => Err(Error::Input(format!(
            "{}: `{name}` must be a string or number, found {other}",
            here()
        ))),
    }
}
