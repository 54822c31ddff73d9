//! Experiment configuration: a TOML file plus `--set key=value` overrides, resolved into a
//! [`RunConfig`] with every default filled in. The key names are a stable interface.

use crate::algorithms::{
    parse_choice, AlgorithmKind, Align, Granularity, Hyper, Negative, ServerAgg, ServerUpdate,
};
use crate::backend::WeightPrecision;
use crate::data::{LmTemplate, Partition};
use crate::error::{Error, Result};
use crate::model::Target;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Value;

/// How client cut layers are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum SplitSpec {
    /// The resource-aware planner.
    Auto,
    /// One cut per client (a single value applies to every client).
    Manual(Vec<usize>),
}

/// What the clients fine-tune the model for (`task`).
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Text classification through a trainable head (`classify`).
    Classify,
    /// Causal-LM fine-tuning (`causal_lm`): the model learns to produce each example's
    /// response after its prompt, through its own frozen LM head.
    CausalLm {
        /// The data column holding the responses (`data.response_column`).
        response_column: String,
        /// How prompt and response are laid out (`lm.prompt`, `lm.response`).
        template: LmTemplate,
        /// Whether the prompt is the user's turn of the model's chat template
        /// (`lm.chat_template`).
        chat: bool,
    },
}

/// A fully resolved experiment configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Checkpoint folder.
    pub model: PathBuf,
    /// Storage precision of the frozen block weights (`precision`: `f32` or `bf16`).
    pub precision: WeightPrecision,
    /// Data file (CSV or JSONL).
    pub data_path: PathBuf,
    /// Text column.
    pub text_column: String,
    /// Label column (empty: none, for a causal-LM task).
    pub label_column: String,
    /// The task.
    pub task: Task,
    /// Labels kept (empty: all).
    pub labels: Vec<String>,
    /// Cap on the number of examples used (0: all), drawn at random with the seed.
    pub max_examples: usize,
    /// Client partition.
    pub partition: Partition,
    /// Number of clients.
    pub clients: usize,
    /// Communication rounds.
    pub rounds: usize,
    /// Longest tokenised sequence.
    pub seq_len: usize,
    /// LoRA rank.
    pub lora_rank: usize,
    /// LoRA alpha.
    pub lora_alpha: f32,
    /// LoRA targets.
    pub lora_targets: Vec<Target>,
    /// Algorithm.
    pub algorithm: AlgorithmKind,
    /// Cut layers.
    pub split: SplitSpec,
    /// Seed of every random choice.
    pub seed: u64,
    /// Run folder.
    pub out: PathBuf,
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// Per-client test fraction.
    pub test_fraction: f64,
    /// Evaluate every this many rounds (and after the last).
    pub eval_every: usize,
    /// Cap on global-test examples used for `global_acc_mean` (0: all).
    pub global_eval_max: usize,
    /// Client resource profiles: `mixed` or a list of preset names / custom specs.
    pub profiles: Vec<String>,
    /// Server throughput for latency predictions (FLOP/s).
    pub server_flops: f64,
    /// Save a checkpoint every this many rounds (0: never).
    pub checkpoint_every: usize,
    /// Accuracy whose first simulated-time crossing is reported.
    pub target_acc: f64,
}

/// Every key with its default, in the order the resolved file lists them.
const KEYS: &[(&str, &str)] = &[
    ("model", "\"models/all-MiniLM-L6-v2\""),
    ("precision", "\"f32\""),
    ("data.path", "\"\""),
    ("data.text_column", "\"text\""),
    ("data.label_column", "\"label\""),
    ("data.response_column", "\"\""),
    ("task", "\"classify\""),
    ("lm.prompt", "\"{text}\""),
    ("lm.response", "\"{response}\""),
    ("lm.chat_template", "false"),
    ("data.labels", "[]"),
    ("data.max_examples", "0"),
    ("partition", "\"dirichlet:0.5\""),
    ("clients", "10"),
    ("rounds", "10"),
    ("local_steps", "4"),
    ("batch_size", "8"),
    ("seq_len", "64"),
    ("lora.rank", "8"),
    ("lora.alpha", "16.0"),
    (
        "lora.targets",
        "[\"q\", \"k\", \"v\", \"o\", \"up\", \"down\"]",
    ),
    ("algorithm", "\"flexp-sfl\""),
    ("split", "\"auto\""),
    ("seed", "0"),
    ("out", "\"\""),
    ("lr", "0.002"),
    ("weight_decay", "0.0"),
    ("client_fraction", "1.0"),
    ("align", "\"proj\""),
    ("align_lambda", "0.25"),
    ("proj_granularity", "\"block\""),
    ("server_update", "\"sync\""),
    ("server_agg", "\"mean\""),
    ("u_tail", "0"),
    ("fedbip.negative", "\"clip\""),
    ("pfedme.lambda", "0.05"),
    ("pfedme.inner_steps", "3"),
    ("pfedme.eta", "10.0"),
    ("pfedme.beta", "1.0"),
    ("ditto.lambda", "0.1"),
    ("test_fraction", "0.2"),
    ("eval_every", "5"),
    ("eval.global_max", "0"),
    ("profiles", "\"mixed\""),
    ("server_flops", "1e13"),
    ("checkpoint_every", "1"),
    ("target_acc", "0.75"),
];

/// The raw key/value map of a configuration (TOML tables flattened to dotted keys).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawConfig {
    values: BTreeMap<String, Value>,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Input(m) => Error::Input(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Input(format!("invalid TOML: {e}")))?;
        let mut raw = RawConfig::default();
        flatten("", &table, &mut raw.values);
        Ok(raw)
    }

    /// A configuration from a TOML table (nested tables become dotted keys).
    pub fn from_table(table: &toml::Table) -> Self {
        let mut raw = RawConfig::default();
        flatten("", table, &mut raw.values);
        raw
    }

    /// Sets one key (dotted) to a value, replacing what was there.
    pub fn insert(&mut self, key: &str, value: Value) {
        self.values.insert(key.to_string(), value);
    }

    /// The keys set in this configuration and their values, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Applies `key=value` (value parsed as TOML, else taken as a string).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (k, v) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Input(format!("`--set {assignment}`: expected key=value")))?;
        let (k, v) = (k.trim(), v.trim());
        let value = format!("x = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("x"))
            .unwrap_or_else(|| Value::String(v.to_string()));
        self.values.insert(k.to_string(), value);
        Ok(())
    }

    /// Resolves against the defaults, refusing unknown keys and invalid values.
    pub fn resolve(&self) -> Result<RunConfig> {
        for k in self.values.keys() {
            if !KEYS.iter().any(|(n, _)| n == k) {
                let names: Vec<&str> = KEYS.iter().map(|(n, _)| *n).collect();
                let hint = closest(k, &names)
                    .map_or_else(String::new, |n| format!(" (did you mean `{n}`?)"));
                return Err(Error::Input(format!(
                    "unknown configuration key `{k}`{hint}; valid keys: {}",
                    names.join(", ")
                )));
            }
        }
        let v = |k: &str| -> Value {
            self.values.get(k).cloned().unwrap_or_else(|| {
                let d = KEYS
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, d)| *d)
                    .unwrap_or("\"\"");
                format!("x = {d}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("x"))
                    .unwrap_or(Value::String(String::new()))
            })
        };
        let bad = |k: &str, want: &str, got: &Value| {
            Error::Input(format!("`{k}` must be {want}, got {got}"))
        };
        let s = |k: &str| -> Result<String> {
            let x = v(k);
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(k, "a string", &x))
        };
        let u = |k: &str| -> Result<usize> {
            let x = v(k);
            x.as_integer()
                .filter(|i| *i >= 0)
                .map(|i| i as usize)
                .ok_or_else(|| bad(k, "a non-negative integer", &x))
        };
        let f = |k: &str| -> Result<f64> {
            let x = v(k);
            x.as_float()
                .or_else(|| x.as_integer().map(|i| i as f64))
                .filter(|f| f.is_finite())
                .ok_or_else(|| bad(k, "a number", &x))
        };
        let list = |k: &str| -> Result<Vec<String>> {
            let x = v(k);
            match &x {
                Value::Array(a) => a
                    .iter()
                    .map(|e| {
                        e.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad(k, "a list of strings", &x))
                    })
                    .collect(),
                Value::String(one) => Ok(vec![one.clone()]),
                _ => Err(bad(k, "a list of strings", &x)),
            }
        };
        let positive = |k: &str, n: usize| -> Result<usize> {
            if n == 0 {
                Err(Error::Input(format!("`{k}` must be at least 1")))
            } else {
                Ok(n)
            }
        };

        let algorithm = AlgorithmKind::parse(&s("algorithm")?)?;
        let split = match v("split") {
            Value::String(x) if x == "auto" => SplitSpec::Auto,
            Value::Integer(i) if i > 0 => SplitSpec::Manual(vec![i as usize]),
            Value::Array(a) => SplitSpec::Manual(
                a.iter()
                    .map(|e| e.as_integer().filter(|i| *i > 0).map(|i| i as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        Error::Input(
                            "`split` must be \"auto\" or a list of positive integers".into(),
                        )
                    })?,
            ),
            other => {
                return Err(bad(
                    "split",
                    "\"auto\", a positive integer or a list of them",
                    &other,
                ))
            }
        };
        let targets = list("lora.targets")?
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<Vec<_>>>()?;
        if targets.is_empty() {
            return Err(Error::Input(
                "`lora.targets` is empty: LoRA needs at least one projection to adapt (e.g. [\"q\", \"v\"])"
                    .into(),
            ));
        }
        let lora_alpha = f("lora.alpha")?;
        if lora_alpha <= 0.0 {
            return Err(Error::Input(format!(
                "`lora.alpha` must be positive (the adapters' scale is alpha / rank), got {lora_alpha}"
            )));
        }
        let hyper = Hyper {
            lr: f("lr")? as f32,
            weight_decay: f("weight_decay")? as f32,
            local_steps: positive("local_steps", u("local_steps")?)?,
            batch_size: positive("batch_size", u("batch_size")?)?,
            client_fraction: f("client_fraction")?,
            align: parse_choice(
                "align",
                &s("align")?,
                &[
                    ("none", Align::None),
                    ("kl", Align::Kl),
                    ("proj", Align::Proj),
                ],
            )?,
            align_lambda: f("align_lambda")? as f32,
            proj_granularity: parse_choice(
                "proj_granularity",
                &s("proj_granularity")?,
                &[
                    ("tensor", Granularity::Tensor),
                    ("block", Granularity::Block),
                    ("all", Granularity::All),
                ],
            )?,
            server_update: parse_choice(
                "server_update",
                &s("server_update")?,
                &[
                    ("sync", ServerUpdate::Sync),
                    ("sequential", ServerUpdate::Sequential),
                ],
            )?,
            server_agg: parse_choice(
                "server_agg",
                &s("server_agg")?,
                &[("mean", ServerAgg::Mean), ("proj", ServerAgg::Proj)],
            )?,
            u_tail: u("u_tail")?,
            negative: parse_choice(
                "fedbip.negative",
                &s("fedbip.negative")?,
                &[("clip", Negative::Clip), ("keep", Negative::Keep)],
            )?,
            pfedme_lambda: f("pfedme.lambda")? as f32,
            pfedme_inner_steps: positive("pfedme.inner_steps", u("pfedme.inner_steps")?)?,
            pfedme_eta: f("pfedme.eta")? as f32,
            pfedme_beta: f("pfedme.beta")? as f32,
            ditto_lambda: f("ditto.lambda")? as f32,
        };
        if !(hyper.client_fraction > 0.0 && hyper.client_fraction <= 1.0) {
            return Err(Error::Input(format!(
                "`client_fraction` must be in (0, 1], got {}",
                hyper.client_fraction
            )));
        }
        if hyper.lr <= 0.0 {
            return Err(Error::Input("`lr` must be positive".into()));
        }
        // Only FlexP-SFL keeps a U-shaped tail on the client; elsewhere the key would change the
        // cost accounting of a model that is not split that way.
        if hyper.u_tail > 0 && algorithm != AlgorithmKind::FlexpSfl {
            return Err(Error::Input(format!(
                "`u_tail` = {} applies only to algorithm = \"flexp-sfl\" (the U-shaped split); `{}` \
                 has no client-side tail: remove the key or set it to 0",
                hyper.u_tail,
                algorithm.name()
            )));
        }
        let response_column = s("data.response_column")?;
        let task = match s("task")?.as_str() {
            "classify" => {
                if !response_column.is_empty() {
                    return Err(Error::Input(format!(
                        "`data.response_column` = {response_column:?} applies to task = \
                         \"causal_lm\"; a classification task reads `data.label_column`"
                    )));
                }
                Task::Classify
            }
            "causal_lm" => {
                if response_column.is_empty() {
                    return Err(Error::Input(
                        "task = \"causal_lm\" needs `data.response_column`: the column the model \
                         learns to produce (to model whole texts, name the text column and set \
                         `lm.prompt = \"\"`)"
                            .into(),
                    ));
                }
                let template = LmTemplate {
                    prompt: s("lm.prompt")?,
                    response: s("lm.response")?,
                };
                template.validate()?;
                let chat = v("lm.chat_template");
                let chat = chat
                    .as_bool()
                    .ok_or_else(|| bad("lm.chat_template", "true or false", &chat))?;
                Task::CausalLm {
                    response_column,
                    template,
                    chat,
                }
            }
            other => {
                return Err(Error::Input(format!(
                    "`task` must be \"classify\" or \"causal_lm\", got {other:?}"
                )))
            }
        };
        let label_column = s("data.label_column")?;
        if label_column.is_empty() && task == Task::Classify {
            return Err(Error::Input(
                "`data.label_column` is empty: a classification task needs its labels".into(),
            ));
        }
        let seed = u("seed")? as u64;
        let out = match s("out")? {
            o if o.is_empty() => PathBuf::from(format!("runs/{}-seed{seed}", algorithm.name())),
            o => PathBuf::from(o),
        };
        let profiles = list("profiles")?;
        let test_fraction = f("test_fraction")?;
        crate::data::validate_test_fraction(test_fraction)?;
        Ok(RunConfig {
            model: PathBuf::from(s("model")?),
            precision: s("precision")?.parse()?,
            data_path: PathBuf::from(s("data.path")?),
            text_column: s("data.text_column")?,
            label_column,
            task,
            labels: list("data.labels")?,
            max_examples: u("data.max_examples")?,
            partition: Partition::parse(&s("partition")?)?,
            clients: positive("clients", u("clients")?)?,
            rounds: positive("rounds", u("rounds")?)?,
            seq_len: positive("seq_len", u("seq_len")?)?,
            lora_rank: positive("lora.rank", u("lora.rank")?)?,
            lora_alpha: lora_alpha as f32,
            lora_targets: targets,
            algorithm,
            split,
            seed,
            out,
            hyper,
            test_fraction,
            eval_every: positive("eval_every", u("eval_every")?)?,
            global_eval_max: u("eval.global_max")?,
            profiles,
            server_flops: f("server_flops")?,
            checkpoint_every: u("checkpoint_every")?,
            target_acc: f("target_acc")?,
        })
    }

    /// The configuration with every default filled in, as TOML (what the run folder records).
    pub fn resolved_toml(&self) -> String {
        let mut out =
            String::from("# Resolved flexp-run configuration (every key, defaults included)\n");
        for (k, d) in KEYS {
            let val = self
                .values
                .get(*k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| d.to_string());
            out.push_str(&format!("{} = {val}\n", quote_key(k)));
        }
        out
    }
}

/// The known key nearest to a misspelt one (at most two edits away, or the one it abbreviates).
fn closest<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (edit_distance(key, n), *n))
        .filter(|(d, n)| *d <= 2 || (key.len() >= 3 && n.starts_with(key)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn quote_key(k: &str) -> String {
    // Dotted keys are written quoted so the file reads back into the same flat map.
    if k.contains('.') {
        format!("\"{k}\"")
    } else {
        k.to_string()
    }
}

fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(inner) => flatten(&key, inner, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}
