//! `flexp-run sweep`: a grid of runs (algorithms × partitions × seeds, or any keys) from one TOML
//! file, run one after another into one folder, resumable, and one comparison across them.
//!
//! The sweep file:
//!
//! ```toml
//! base = "rotten_tomatoes.toml"   # optional: a run configuration, relative to this file
//! out = "runs/sweep"               # the sweep's folder
//! compare = "algorithm"            # optional: the key whose values are compared (default)
//! reference = "flexp-sfl"          # optional: tested against the others (default: the first)
//!
//! [set]                            # keys fixed for every run, over `base`
//! rounds = 20
//!
//! [grid]                           # every combination of these lists; `seed` is required
//! algorithm = ["flexp-sfl", "fedbip", "local"]
//! partition = ["dirichlet:0.1", "dirichlet:0.5"]
//! seed = [0, 1, 2, 3, 4]
//! ```
//!
//! Each run goes to `out/<setting>/<compared value>-s<seed>`, where `<setting>` names the values
//! of the grid keys other than the compared key and `seed` (`runs` when there are none). Running
//! the sweep again skips finished runs, resumes killed ones from their checkpoint, and refuses a
//! run folder that was made with other settings. The comparison ([`crate::report::sweep`]) is
//! rebuilt from every finished run at the end, and by `--report-only`.

use super::config::{RawConfig, RunConfig};
use super::runner::{self, Progress};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::report::sweep::{write_sweep_report, SweepRun};
use std::path::{Path, PathBuf};
use toml::Value;

/// A parsed sweep file.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// The sweep file's own name (for the report's title).
    pub name: String,
    /// The configuration every run starts from: `base` with `[set]` over it.
    pub base: RawConfig,
    /// The sweep's folder.
    pub out: PathBuf,
    /// The grid: each key with its list of values, in key order.
    pub grid: Vec<(String, Vec<Value>)>,
    /// The key whose values are compared with each other (`None`: only cells, no tests).
    pub compare: Option<String>,
    /// The value of `compare` the others are tested against.
    pub reference: Option<String>,
}

/// One planned run of a sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// The run folder.
    pub dir: PathBuf,
    /// The grid's values of this run (every grid key, in grid order).
    pub values: Vec<(String, Value)>,
    /// The run's configuration (before `out` is known to the runner: `out` is `dir`).
    pub raw: RawConfig,
}

/// What happened to each run of a sweep.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Runs already finished before this invocation.
    pub skipped: usize,
    /// Runs finished now (fresh or resumed).
    pub finished: usize,
    /// Runs that failed, with their error.
    pub failed: Vec<(PathBuf, String)>,
    /// The report written (`out/sweep.md`).
    pub report: PathBuf,
}

fn input(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {msg}", path.display()))
}

/// The value as it reads in a folder name or a table: strings without quotes.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A folder-name-safe form: letters, digits, `.`, `_` and `-` kept, anything else becomes `-`.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl SweepSpec {
    /// Reads a sweep file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let here = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Self::from_toml(&text, here, name).map_err(|e| match e {
            Error::Input(m) => input(path, m),
            other => other,
        })
    }

    /// Parses a sweep file's text; `here` is the folder `base` is relative to.
    pub fn from_toml(text: &str, here: &Path, name: String) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Input(format!("invalid TOML: {e}")))?;
        for k in table.keys() {
            if !["base", "out", "compare", "reference", "set", "grid"].contains(&k.as_str()) {
                return Err(Error::Input(format!(
                    "unknown sweep key `{k}`; valid: base, out, compare, reference, [set], [grid]"
                )));
            }
        }
        let string = |k: &str| -> Result<Option<String>> {
            match table.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(Error::Input(format!("`{k}` must be a string, got {other}"))),
            }
        };
        let sub = |k: &str| -> Result<toml::Table> {
            match table.get(k) {
                None => Ok(toml::Table::new()),
                Some(Value::Table(t)) => Ok(t.clone()),
                Some(other) => Err(Error::Input(format!("`{k}` must be a table, got {other}"))),
            }
        };
        let mut base = match string("base")? {
            Some(b) => RawConfig::from_file(&here.join(b))?,
            None => RawConfig::default(),
        };
        let set = RawConfig::from_table(&sub("set")?);
        for (k, _) in set.entries() {
            if k == "out" || k == "seed" {
                return Err(Error::Input(format!(
                    "`[set] {k}` is chosen by the sweep (`out` per run, `seed` from [grid])"
                )));
            }
        }
        for (k, v) in set_values(&set) {
            base.insert(&k, v);
        }
        let out = string("out")?
            .map(PathBuf::from)
            .ok_or_else(|| Error::Input("`out` is required: the sweep's folder".into()))?;
        // Nested grid tables flatten to dotted keys like the run configuration's.
        let flat = RawConfig::from_table(&sub("grid")?);
        let mut grid = Vec::new();
        for (k, v) in set_values(&flat) {
            let values = match v {
                Value::Array(a) if !a.is_empty() => a,
                other => {
                    return Err(Error::Input(format!(
                        "`[grid] {k}` must be a non-empty list of values, got {other}"
                    )))
                }
            };
            if k == "out" {
                return Err(Error::Input("`out` cannot be a grid key".into()));
            }
            grid.push((k, values));
        }
        if !grid.iter().any(|(k, _)| k == "seed") {
            return Err(Error::Input(
                "`[grid] seed` is required: the seeds are the replicates the confidence \
                 intervals are taken over (e.g. seed = [0, 1, 2, 3, 4])"
                    .into(),
            ));
        }
        let compare = match string("compare")? {
            Some(c) if grid.iter().any(|(k, _)| *k == c) => Some(c),
            Some(c) => {
                return Err(Error::Input(format!(
                    "`compare = \"{c}\"` is not a key of [grid]"
                )))
            }
            None => grid
                .iter()
                .any(|(k, _)| k == "algorithm")
                .then(|| "algorithm".to_string()),
        };
        if compare.as_deref() == Some("seed") {
            return Err(Error::Input("`compare` cannot be `seed`".into()));
        }
        let reference = match (string("reference")?, &compare) {
            (Some(r), Some(c)) => {
                let values = &grid.iter().find(|(k, _)| k == c).map(|(_, v)| v);
                if !values.is_some_and(|vs| vs.iter().any(|v| value_text(v) == r)) {
                    return Err(Error::Input(format!(
                        "`reference = \"{r}\"` is not one of the values of `[grid] {c}`"
                    )));
                }
                Some(r)
            }
            (Some(_), None) => {
                return Err(Error::Input(
                    "`reference` needs a compared key (`compare`, or `algorithm` in [grid])".into(),
                ))
            }
            (None, Some(c)) => grid
                .iter()
                .find(|(k, _)| k == c)
                .and_then(|(_, v)| v.first())
                .map(value_text),
            (None, None) => None,
        };
        Ok(SweepSpec {
            name,
            base,
            out,
            grid,
            compare,
            reference,
        })
    }

    /// Every run of the grid, in a fixed order (the last grid key varies fastest, seeds last).
    pub fn runs(&self) -> Vec<PlannedRun> {
        // Seeds vary fastest so that a sweep stopped early has whole sets of replicates.
        let mut keys: Vec<&(String, Vec<Value>)> =
            self.grid.iter().filter(|(k, _)| k != "seed").collect();
        keys.extend(self.grid.iter().filter(|(k, _)| k == "seed"));
        let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (k, values) in keys {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((k.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        combos
            .into_iter()
            .map(|values| {
                let dir = self.run_dir(&values);
                let mut raw = self.base.clone();
                for (k, v) in &values {
                    raw.insert(k, v.clone());
                }
                raw.insert("out", Value::String(dir.display().to_string()));
                PlannedRun { dir, values, raw }
            })
            .collect()
    }

    /// A run's grid values split the way its folder and the report place it: the setting
    /// (every key but the compared one and the seed, as text), the compared value, the seed.
    fn place(&self, values: &[(String, Value)]) -> (Vec<(String, String)>, Option<String>, String) {
        let mut setting = Vec::new();
        let (mut compared, mut seed) = (None, String::new());
        for (k, v) in values {
            let text = value_text(v);
            if k == "seed" {
                seed = text;
            } else if Some(k) == self.compare.as_ref() {
                compared = Some(text);
            } else {
                setting.push((k.clone(), text));
            }
        }
        (setting, compared, seed)
    }

    fn run_dir(&self, values: &[(String, Value)]) -> PathBuf {
        let (setting, compared, seed) = self.place(values);
        let setting = if setting.is_empty() {
            "runs".to_string()
        } else {
            let parts: Vec<String> = setting
                .iter()
                .map(|(k, v)| format!("{}-{}", safe(k), safe(v)))
                .collect();
            parts.join("_")
        };
        let leaf = compared.map_or_else(|| "run".into(), |c| safe(&c));
        self.out
            .join(setting)
            .join(format!("{leaf}-s{}", safe(&seed)))
    }

    /// The planned runs as the report sees them.
    fn report_runs(&self, runs: &[PlannedRun]) -> Vec<SweepRun> {
        runs.iter()
            .map(|r| {
                let (setting, compared, seed) = self.place(&r.values);
                SweepRun {
                    dir: r.dir.clone(),
                    setting,
                    compared,
                    seed,
                }
            })
            .collect()
    }
}

/// The (key, value) pairs of a raw configuration.
fn set_values(raw: &RawConfig) -> Vec<(String, Value)> {
    raw.entries()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Where a run folder stands.
enum State {
    /// Nothing resumable: start (again) from the beginning.
    Fresh,
    /// A checkpoint of a run with the same settings: continue from it.
    Resume(String),
    /// `report.json` of a run with the same settings: nothing to do.
    Done,
}

/// The first line where two resolved configurations differ, for the error message.
fn first_difference(a: &str, b: &str) -> String {
    a.lines().zip(b.lines()).find(|(x, y)| x != y).map_or_else(
        || "the number of keys".to_string(),
        |(x, y)| format!("`{x}` there, `{y}` in the sweep"),
    )
}

fn state_of(run: &PlannedRun, cfg: &RunConfig, want: &str) -> Result<State> {
    let recorded_path = run.dir.join("config.toml");
    let done = run.dir.join(crate::report::REPORT_FILE).exists();
    let ckpt = run.dir.join("checkpoint");
    let resumable = ckpt.join("meta.json").exists();
    if !done && !resumable {
        if ckpt.exists() {
            // A checkpoint folder without its meta file was never completed: nothing in it
            // can be resumed, and the runner would refuse to start over it.
            std::fs::remove_dir_all(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
        }
        return Ok(State::Fresh);
    }
    let recorded =
        std::fs::read_to_string(&recorded_path).map_err(|e| Error::io(&recorded_path, e))?;
    let got = RawConfig::from_toml(&recorded)?.resolve()?;
    // A run that listed no labels records the classes it found; compare with those filled in.
    let want = if cfg.labels.is_empty() {
        runner::with_labels_used(want, cfg, &got.labels)?
    } else {
        want.to_string()
    };
    if recorded != want {
        return Err(Error::Input(format!(
            "{} holds a run made with other settings ({}); delete it or give the sweep \
             another `out`",
            run.dir.display(),
            first_difference(&recorded, &want)
        )));
    }
    Ok(if done {
        State::Done
    } else {
        State::Resume(recorded)
    })
}

/// Runs every run of the sweep that has not finished, then writes the comparison.
///
/// Every configuration is resolved, and every existing run folder checked against it, before
/// the first run starts, so a typo or a stale folder is reported at once. A run that fails is
/// reported and the others go on; the outcome lists the failures.
pub fn run_sweep<B: Backend + 'static>(
    be: &B,
    spec: &SweepSpec,
    progress: &mut dyn Progress,
) -> Result<SweepOutcome> {
    let runs = spec.runs();
    let mut plans = Vec::with_capacity(runs.len());
    for r in &runs {
        let cfg = r
            .raw
            .resolve()
            .map_err(|e| Error::Input(format!("run {}: {e}", r.dir.display())))?;
        let text = r.raw.resolved_toml();
        let state = state_of(r, &cfg, &text)?;
        plans.push((cfg, text, state));
    }
    let mut outcome = SweepOutcome::default();
    let total = runs.len();
    for (i, (r, (cfg, text, state))) in runs.iter().zip(plans).enumerate() {
        let what = r
            .values
            .iter()
            .map(|(k, v)| format!("{k}={}", value_text(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let (resume, text) = match state {
            State::Done => {
                outcome.skipped += 1;
                continue;
            }
            State::Resume(recorded) => (true, recorded),
            State::Fresh => (false, text),
        };
        progress.message(&format!(
            "sweep: run {}/{total} ({what}){} -> {}",
            i + 1,
            if resume { ", resuming" } else { "" },
            r.dir.display()
        ));
        match runner::run(be, &cfg, &text, resume, progress) {
            Ok(_) => outcome.finished += 1,
            Err(e) => {
                progress.message(&format!("sweep: run {} failed: {e}", r.dir.display()));
                outcome.failed.push((r.dir.clone(), e.to_string()));
            }
        }
    }
    outcome.report = report(spec)?;
    Ok(outcome)
}

/// Writes the sweep's comparison from the runs finished so far (`out/sweep.md`, `sweep.csv`,
/// and a `comparison.md` per setting); returns the path of `sweep.md`.
pub fn report(spec: &SweepSpec) -> Result<PathBuf> {
    let runs = spec.runs();
    write_sweep_report(
        &spec.out,
        &spec.name,
        &spec.report_runs(&runs),
        spec.compare.as_deref(),
        spec.reference.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SweepSpec> {
        SweepSpec::from_toml(text, Path::new("."), "t.toml".into())
    }

    #[test]
    fn grid_expands_with_seeds_fastest_and_names_folders() {
        let s = spec(
            r#"
            out = "sw"
            [set]
            rounds = 3
            [set.lora]
            rank = 4
            [grid]
            seed = [0, 1]
            algorithm = ["flexp-sfl", "local"]
            partition = ["dirichlet:0.1"]
            "#,
        )
        .unwrap();
        assert_eq!(s.compare.as_deref(), Some("algorithm"));
        assert_eq!(s.reference.as_deref(), Some("flexp-sfl"));
        let runs = s.runs();
        let dirs: Vec<String> = runs.iter().map(|r| r.dir.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "sw/partition-dirichlet-0.1/flexp-sfl-s0",
                "sw/partition-dirichlet-0.1/flexp-sfl-s1",
                "sw/partition-dirichlet-0.1/local-s0",
                "sw/partition-dirichlet-0.1/local-s1",
            ]
        );
        let cfg = runs[3].raw.resolve().unwrap();
        assert_eq!(cfg.rounds, 3);
        assert_eq!(cfg.lora_rank, 4);
        assert_eq!(cfg.seed, 1);
        assert_eq!(
            cfg.out,
            PathBuf::from("sw/partition-dirichlet-0.1/local-s1")
        );
    }

    #[test]
    fn bad_sweep_files_are_clear_errors() {
        let err = |t: &str| spec(t).unwrap_err().to_string();
        let e = err("out = \"x\"\n[grid]\nalgorithm = [\"local\"]");
        assert!(e.contains("`[grid] seed` is required"), "{e}");
        let e = err("[grid]\nseed = [0]");
        assert!(e.contains("`out` is required"), "{e}");
        let e = err("out = \"x\"\nrepeats = 3\n[grid]\nseed = [0]");
        assert!(e.contains("unknown sweep key `repeats`"), "{e}");
        let e = err("out = \"x\"\ncompare = \"lr\"\n[grid]\nseed = [0]");
        assert!(e.contains("not a key of [grid]"), "{e}");
        let e =
            err("out = \"x\"\nreference = \"fedavg\"\n[grid]\nseed = [0]\nalgorithm = [\"local\"]");
        assert!(e.contains("not one of the values"), "{e}");
        let e = err("out = \"x\"\n[grid]\nseed = 3");
        assert!(e.contains("non-empty list"), "{e}");
        let e = err("out = \"x\"\n[set]\nseed = 3\n[grid]\nseed = [0]");
        assert!(e.contains("chosen by the sweep"), "{e}");
    }
}
