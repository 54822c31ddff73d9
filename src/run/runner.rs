//! One experiment from configuration to run folder: data, partition, plan, training rounds,
//! evaluation, accounting, checkpoints, report.

use super::checkpoint;
use super::config::{RawConfig, RunConfig, SplitSpec, Task};
use super::ledger::{ClientFacts, Eval, Ledger};
use crate::algorithms::{self, evaluate, Chain, ClientData, Example, Federation, Label};
use crate::backend::Backend;
use crate::data::{self, DataSpec, Dataset};
use crate::error::{Error, Result};
use crate::federated::{
    mixed_profiles, plan_auto, plan_manual, CostModel, Plan, ResourceProfile, TaskHead,
};
use crate::fsutil::{lock_dir, write_atomic};
use crate::model::chat::Message;
use crate::model::{
    is_gguf, load_model_and_tokenizer_with, LoraConfig, Model, ModelConfig, Pooling, Tokenizer,
};
use crate::rng::Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How the run reports progress.
pub trait Progress {
    /// A message line (setup steps, warnings, the plan table).
    fn message(&mut self, text: &str);
    /// A round finished.
    fn round(&mut self, round: usize, rounds: usize, loss: f64, eval: Option<&Value>);
    /// An observer called with the 1-based number of each local step as it starts (`steps` per
    /// round), for a step-level display; `None` for none.
    fn step_observer(&mut self, _steps: usize) -> Option<Box<dyn Fn(usize) + Send + Sync>> {
        None
    }
    /// Asked after each round: `Some(reason)` stops the run there (after its checkpoint, where
    /// the run keeps them) with [`Error::Interrupted`].
    fn stop_requested(&mut self) -> Option<String> {
        None
    }
}

/// Progress that prints plain log lines to stderr.
pub struct LogProgress;

impl Progress for LogProgress {
    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }
    fn round(&mut self, round: usize, rounds: usize, loss: f64, eval: Option<&Value>) {
        match eval {
            Some(m) => eprintln!(
                "round {round}/{rounds}: train loss {loss:.4}, personalized acc {:.4}, global model acc {}",
                m["personalized_acc_mean"].as_f64().unwrap_or(f64::NAN),
                m["global_model_acc"].as_f64().map_or("-".to_string(), |v| format!("{v:.4}"))
            ),
            None => eprintln!("round {round}/{rounds}: train loss {loss:.4}"),
        }
    }
}

/// What a finished run produced.
pub struct RunOutcome {
    /// The run folder.
    pub dir: PathBuf,
    /// The report.json contents.
    pub report: Value,
}

/// Prepared inputs of a run: data per client and the plan.
pub struct Prepared {
    /// Per-client data.
    pub clients: Vec<ClientData>,
    /// The union of the clients' test sets.
    pub global_test: Vec<Example>,
    /// Class names.
    pub classes: Vec<String>,
    /// Client profiles.
    pub profiles: Vec<ResourceProfile>,
    /// The split plan.
    pub plan: Plan,
    /// The cost model.
    pub cost: CostModel,
}

/// Resolves the client profiles of a configuration.
pub fn profiles(cfg: &RunConfig) -> Result<Vec<ResourceProfile>> {
    if cfg.profiles.len() == 1 && cfg.profiles[0] == "mixed" {
        return Ok(mixed_profiles(cfg.clients));
    }
    let parsed = cfg
        .profiles
        .iter()
        .map(|p| ResourceProfile::parse(p))
        .collect::<Result<Vec<_>>>()?;
    Ok((0..cfg.clients)
        .map(|k| parsed[k % parsed.len()].clone())
        .collect())
}

/// The cost model and split plan of a configuration for a model.
///
/// `projection_bytes`: the bytes one block's projection weights take as stored, where that is
/// not 4 a weight (GGUF models; see [`CostModel::with_projection_bytes`]).
pub fn plan(
    cfg: &RunConfig,
    model: &ModelConfig,
    projection_bytes: Option<f64>,
    head: TaskHead,
) -> Result<(CostModel, Plan, Vec<ResourceProfile>)> {
    let lora = lora_config(cfg);
    let mut cost = CostModel::new(model, &lora, cfg.seq_len, cfg.hyper.batch_size)?
        .with_head(head)?
        .with_u_shaped_tail(cfg.hyper.u_tail)?;
    if let Some(b) = projection_bytes {
        cost = cost.with_projection_bytes(b)?;
    }
    let profiles = profiles(cfg)?;
    let plan = match &cfg.split {
        SplitSpec::Auto => plan_auto(&cost, &profiles, cfg.server_flops)?,
        SplitSpec::Manual(s) => {
            let s = if s.len() == 1 {
                vec![s[0]; cfg.clients]
            } else {
                s.clone()
            };
            plan_manual(&cost, &profiles, &s, cfg.server_flops)?
        }
    };
    Ok((cost, plan, profiles))
}

pub(crate) fn lora_config(cfg: &RunConfig) -> LoraConfig {
    LoraConfig {
        rank: cfg.lora_rank,
        alpha: cfg.lora_alpha,
        targets: cfg.lora_targets.clone(),
    }
}

/// Refuses a configuration without a data file, naming the key and the bundled example.
fn require_data_path(cfg: &RunConfig) -> Result<()> {
    if cfg.data_path.as_os_str().is_empty() {
        return Err(Error::Input(
            "`data.path` is not set: name your CSV or JSONL file (`--set data.path=FILE` with \
             `data.text_column` and `data.label_column`), or run the bundled example with \
             `--config examples/rotten_tomatoes.toml`"
                .into(),
        ));
    }
    Ok(())
}

fn data_spec(cfg: &RunConfig) -> DataSpec {
    DataSpec {
        path: cfg.data_path.clone(),
        text_column: cfg.text_column.clone(),
        label_column: cfg.label_column.clone(),
        group_column: cfg.partition.group_column().map(str::to_string),
        response_column: match &cfg.task {
            Task::Classify => None,
            Task::CausalLm {
                response_column, ..
            } => Some(response_column.clone()),
        },
    }
}

/// The head a run trains through: the model's LM head for a causal-LM task; else a
/// classification head over the listed `data.labels`, or every label in the data file when none
/// are listed (reads the file).
pub fn task_head(cfg: &RunConfig) -> Result<TaskHead> {
    if let Task::CausalLm { .. } = cfg.task {
        return Ok(TaskHead::LanguageModel);
    }
    if !cfg.labels.is_empty() {
        return Ok(TaskHead::Classes(cfg.labels.len()));
    }
    require_data_path(cfg)?;
    let (ds, _) = Dataset::load_skipping_empty(&data_spec(cfg))?;
    Ok(TaskHead::Classes(ds.num_classes()))
}

/// The data of a run as the simulation splits it: loaded, filtered to `data.labels`, capped at
/// `max_examples`, partitioned over the clients and split into train and test, all seeded by
/// the run's seed. `flexp-run partition` writes the same split as files.
pub fn split_data(
    cfg: &RunConfig,
    progress: &mut dyn Progress,
) -> Result<(Dataset, Vec<data::ClientSplit>)> {
    require_data_path(cfg)?;
    let (mut ds, skipped) = Dataset::load_skipping_empty(&data_spec(cfg))?;
    if !skipped.is_empty() {
        progress.message(&format!(
            "data: skipped {} rows with an empty text or label (file lines {:?}{})",
            skipped.len(),
            &skipped[..skipped.len().min(5)],
            if skipped.len() > 5 { ", ..." } else { "" }
        ));
    }
    if !cfg.labels.is_empty() {
        let keep: Vec<&str> = cfg.labels.iter().map(String::as_str).collect();
        ds = ds.filter_labels(&keep)?;
    }
    let mut rng = Rng::new(cfg.seed ^ 0xDA7A);
    let mut order: Vec<usize> = (0..ds.len()).collect();
    if cfg.max_examples > 0 && cfg.max_examples < ds.len() {
        data::shuffle(&mut order, &mut rng);
        order.truncate(cfg.max_examples);
        order.sort_unstable();
        ds = subset(&ds, &order);
    }
    if ds.len() < cfg.clients {
        return Err(Error::Input(format!(
            "{} examples cannot be split over {} clients",
            ds.len(),
            cfg.clients
        )));
    }
    let parts = data::partition(&ds, &cfg.partition, cfg.clients, &mut rng)?;
    let splits = data::split_clients(&ds, &parts, cfg.test_fraction, &mut rng);
    if let Some(k) = splits.iter().position(|c| c.train.is_empty()) {
        return Err(Error::Input(format!(
            "client {k} has no training examples; use fewer clients or more data"
        )));
    }
    // Personalized accuracy is each client's own test split: a client without one would turn the
    // headline mean and spread into NaN, so the split is refused before any training.
    if let Some(k) = splits.iter().position(|c| c.test.is_empty()) {
        return Err(Error::Input(format!(
            "client {k} has no test examples (it holds {} examples; test_fraction = {}): every \
             client needs at least one to report personalized accuracy; raise `test_fraction`, \
             use fewer clients or more data",
            splits[k].train.len(),
            cfg.test_fraction
        )));
    }
    Ok((ds, splits))
}

/// Loads, filters, caps, partitions, splits and tokenises the data.
pub fn prepare<B: Backend>(
    cfg: &RunConfig,
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    progress: &mut dyn Progress,
) -> Result<Prepared> {
    let (ds, splits) = split_data(cfg, progress)?;
    let max_len = cfg.seq_len.min(model.config.max_positions);
    let (examples, truncated) = encode(cfg, &ds, tok, max_len)?;
    if truncated > 0 {
        progress.message(&format!(
            "data: {truncated} examples truncated to {max_len} tokens"
        ));
    }
    let ex = |i: usize| examples[i].clone();
    let clients: Vec<ClientData> = splits
        .iter()
        .map(|s| ClientData {
            train: s.train.iter().map(|&i| ex(i)).collect(),
            test: s.test.iter().map(|&i| ex(i)).collect(),
        })
        .collect();
    let global_test = data::global_test(&splits).into_iter().map(ex).collect();
    let classes = ds.label_names.clone();
    let head = match cfg.task {
        Task::Classify => TaskHead::Classes(classes.len()),
        Task::CausalLm { .. } => TaskHead::LanguageModel,
    };
    // A GGUF model's blocks stay in the file's GGML types: the client holds those bytes.
    let projection_bytes = is_gguf(&cfg.model).then(|| be_bytes_per_block(be, model));
    let (cost, plan, profiles) = plan(cfg, &model.config, projection_bytes, head)?;
    Ok(Prepared {
        clients,
        global_test,
        classes,
        profiles,
        plan,
        cost,
    })
}

/// Every example of `ds` tokenised for the run's task, and how many were truncated.
pub(crate) fn encode(
    cfg: &RunConfig,
    ds: &Dataset,
    tok: &Tokenizer,
    max_len: usize,
) -> Result<(Vec<Example>, usize)> {
    match &cfg.task {
        Task::Classify => {
            let (ids, truncated) = data::encode_dataset(ds, tok, max_len)?;
            let examples = ids
                .into_iter()
                .zip(&ds.labels)
                .map(|(ids, &c)| Example::class(ids, c))
                .collect();
            Ok((examples, truncated))
        }
        Task::CausalLm { template, chat, .. } => {
            let responses = ds.responses.as_ref().ok_or_else(|| {
                Error::Input("a causal-LM task needs the data set's responses".into())
            })?;
            let chat = match (chat, tok.chat_template()) {
                (false, _) => None,
                (true, Some(t)) => Some(t),
                (true, None) => {
                    return Err(Error::Input(format!(
                        "`lm.chat_template = true`, but {} ships no chat template",
                        cfg.model.display()
                    )))
                }
            };
            let mut truncated = 0;
            let mut examples = Vec::with_capacity(ds.len());
            for (i, (text, response)) in ds.texts.iter().zip(responses).enumerate() {
                let (p, r) = template.apply(text, response)?;
                let encoded = match chat {
                    // The prompt is the user's turn; the response follows the assistant's cue.
                    Some(t) => t
                        .render(&[Message::new("user", &p)], true)
                        .and_then(|rendered| {
                            data::encode_lm_chat(tok, &rendered, &r, tok.eos(), max_len)
                        }),
                    None => data::encode_lm(tok, &p, &r, tok.eos(), max_len),
                };
                let (enc, cut) = encoded.map_err(|e| Error::Input(format!("example {i}: {e}")))?;
                truncated += usize::from(cut);
                examples.push(Example {
                    ids: enc.ids,
                    label: Label::Tokens(enc.targets),
                });
            }
            Ok((examples, truncated))
        }
    }
}

/// The rows `idx` of `ds`, in that order.
pub(crate) fn subset(ds: &Dataset, idx: &[usize]) -> Dataset {
    Dataset {
        texts: idx.iter().map(|&i| ds.texts[i].clone()).collect(),
        labels: idx.iter().map(|&i| ds.labels[i]).collect(),
        label_names: ds.label_names.clone(),
        groups: ds
            .groups
            .as_ref()
            .map(|g| idx.iter().map(|&i| g[i].clone()).collect()),
        responses: ds
            .responses
            .as_ref()
            .map(|r| idx.iter().map(|&i| r[i].clone()).collect()),
    }
}

fn run_eval<B: Backend>(
    fed: &Federation<'_, B>,
    algo: &dyn algorithms::Algorithm<B>,
    global_test: &[Example],
) -> Result<Eval> {
    let n = fed.num_clients();
    let chains: Vec<Chain<'_, B>> = (0..n).map(|k| algo.personal(k)).collect();
    let own: Vec<&[Example]> = fed.clients.iter().map(|c| c.test.as_slice()).collect();
    let personal = evaluate(fed, &chains, &own)?
        .into_iter()
        .map(Some)
        .collect();
    let sets: Vec<&[Example]> = (0..n).map(|_| global_test).collect();
    let global_of_personal = evaluate(fed, &chains, &sets)?
        .into_iter()
        .map(Some)
        .collect();
    let global_model = match algo.global() {
        Some(g) => evaluate(fed, &[g], &[global_test])?.first().copied(),
        None => None,
    };
    let global_model_note = global_model.is_none().then(|| algo.no_global_model());
    Ok(Eval {
        personal,
        global_of_personal,
        global_model,
        global_model_note,
    })
}

/// The resolved configuration with `data.labels` naming the classes found when the user listed
/// none, so the run folder records what was trained on (and `--resume` reads the same classes).
pub(crate) fn with_labels_used(
    resolved_toml: &str,
    cfg: &RunConfig,
    classes: &[String],
) -> Result<String> {
    if !cfg.labels.is_empty() || cfg.label_column.is_empty() {
        return Ok(resolved_toml.to_string());
    }
    let mut raw = RawConfig::from_toml(resolved_toml)?;
    let list = toml::Value::Array(classes.iter().cloned().map(toml::Value::String).collect());
    raw.insert("data.labels", list);
    Ok(raw.resolved_toml())
}

/// The configuration of the run in folder `dir`, to resume it: the resolved settings it
/// recorded (`config.toml`) with `out` set to `dir`, and that text.
pub fn recorded_config(dir: &Path) -> Result<(RunConfig, String)> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut cfg = RawConfig::from_toml(&text)?.resolve()?;
    cfg.out = dir.to_path_buf();
    Ok((cfg, text))
}

/// Runs an experiment. With `resume`, continues from the run folder's last checkpoint.
pub fn run<B: Backend + 'static>(
    be: &B,
    cfg: &RunConfig,
    resolved_toml: &str,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<RunOutcome> {
    let dir = cfg.out.clone();
    let ckpt_dir = dir.join("checkpoint");
    // A folder that exists may be another process's run in progress: lock it before reading it.
    let mut lock = if dir.is_dir() {
        Some(lock_dir(&dir)?)
    } else {
        None
    };
    if resume {
        if !ckpt_dir.join("meta.json").exists() {
            return Err(Error::Input(format!(
                "{}: no checkpoint to resume from",
                dir.display()
            )));
        }
        let recorded = std::fs::read_to_string(dir.join("config.toml"))
            .map_err(|e| Error::io(dir.join("config.toml"), e))?;
        if recorded != resolved_toml {
            return Err(Error::Input(format!(
                "{}: the configuration differs from the one the run started with; resume with the same settings",
                dir.display()
            )));
        }
    } else if dir.join("report.json").exists() || ckpt_dir.exists() {
        return Err(Error::Input(format!(
            "{} already holds a run; choose another `out`, delete it, or pass --resume",
            dir.display()
        )));
    }
    let storage = if is_gguf(&cfg.model) {
        "kept in the file's GGML types".to_string()
    } else {
        format!("in {}", cfg.precision)
    };
    progress.message(&format!(
        "model: loading {} (block weights {storage})",
        cfg.model.display()
    ));
    require_data_path(cfg)?;
    // Model and tokenizer together: a GGUF file holds both and is read once.
    let (model, tok) = load_model_and_tokenizer_with(be, &cfg.model, cfg.precision)?;
    let prep = prepare(cfg, be, &model, &tok, progress)?;
    // The folder is made only once the model and data are known to be usable, so a refused run
    // leaves nothing behind.
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    if lock.is_none() {
        lock = Some(lock_dir(&dir)?);
    }
    let recorded = if resume {
        resolved_toml.to_string()
    } else {
        with_labels_used(resolved_toml, cfg, &prep.classes)?
    };
    write_atomic(&dir.join("config.toml"), recorded.as_bytes())?;
    let task = match (&cfg.task, cfg.label_column.is_empty()) {
        (Task::Classify, _) => format!("classes {:?}", prep.classes),
        (Task::CausalLm { .. }, true) => "causal LM".to_string(),
        (Task::CausalLm { .. }, false) => format!("causal LM, labels {:?}", prep.classes),
    };
    progress.message(&format!(
        "data: {} clients, {} train / {} test examples, {task}",
        cfg.clients,
        prep.clients.iter().map(|c| c.train.len()).sum::<usize>(),
        prep.global_test.len(),
    ));
    progress.message(&prep.plan.table());
    write_atomic(
        &dir.join("plan.json"),
        prep.plan.to_json().to_string().as_bytes(),
    )?;

    let observer = progress.step_observer(cfg.hyper.local_steps);
    let fed = Federation {
        backend: be,
        model: &model,
        lora: lora_config(cfg),
        head: prep.cost.head(),
        pooling: pooling_of(&model.config),
        clients: prep.clients.clone(),
        splits: prep.plan.splits.clone(),
        hyper: cfg.hyper.clone(),
        cost: prep.cost.clone(),
        on_step: observer.as_deref().map(|f| f as &(dyn Fn(usize) + Sync)),
    };
    let mut rng = Rng::new(cfg.seed);
    let mut algo = algorithms::build(cfg.algorithm, &fed, &mut rng)?;
    let global_eval: Vec<Example> = global_eval_rows(cfg, prep.global_test.len())
        .into_iter()
        .map(|i| prep.global_test[i].clone())
        .collect();

    let mut start_round = 0usize;
    let resumed = if resume {
        let meta = checkpoint::load(&ckpt_dir, be, algo.as_mut())?;
        rng = Rng::new(meta.rng_state);
        start_round = meta.round;
        progress.message(&format!("resuming after round {start_round}"));
        Some(meta)
    } else {
        None
    };
    let mut books = Ledger::open(&dir, cfg, resumed.as_ref())?;
    let mut last_eval: Option<Eval> = None;

    for round in start_round..cfg.rounds {
        let participants = sample_participants(cfg.clients, cfg.hyper.client_fraction, &mut rng);
        let log = algo.round(&fed, &participants, &mut rng)?;
        for (k, why) in &log.rejected {
            progress.message(&format!(
                "round {}: client {k} step rejected: {why}",
                round + 1
            ));
        }
        books.charge(&log, &prep.profiles, cfg.server_flops);
        let r = round + 1;
        let mut line = None;
        if r % cfg.eval_every == 0 || r == cfg.rounds {
            let ev = run_eval(&fed, algo.as_ref(), &global_eval)?;
            line = Some(books.evaluated(r, log.mean_loss(), &ev, Default::default())?);
            last_eval = Some(ev);
        }
        progress.round(r, cfg.rounds, log.mean_loss(), line.as_ref());
        let stop = progress.stop_requested();
        let due = r % cfg.checkpoint_every.max(1) == 0 || r == cfg.rounds || stop.is_some();
        if cfg.checkpoint_every > 0 && due {
            let meta = books.meta(r, rng.state(), checkpoint::counters(algo.as_mut()));
            checkpoint::save(&ckpt_dir, be, algo.as_mut(), &meta)?;
            abort_if_asked(r);
        }
        if let Some(reason) = stop {
            return Err(Error::Interrupted { round: r, reason });
        }
    }

    let ev = match last_eval {
        Some(e) => e,
        None => run_eval(&fed, algo.as_ref(), &global_eval)?,
    };
    let report = books.report(cfg, &client_facts(cfg, &prep), &ev);
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Backend(e.to_string()))?
            .as_bytes(),
    )?;
    // Every client's personalized adapters (and the global ones) in PEFT's format, for use
    // outside flexp; they are also in the checkpoint. The report renders from the JSON files.
    if let Some(why) = super::export::export_adapters(
        &dir,
        be,
        algo.as_ref(),
        &fed,
        &cfg.model.display().to_string(),
    )? {
        progress.message(&format!("adapters: not exported in PEFT's format: {why}"));
    }
    crate::report::write_run_report(&dir)?;
    // Held until the report is written: the report is part of the run.
    drop(lock);
    Ok(RunOutcome { dir, report })
}

/// The positions in the global test set of the rows evaluated each round: all of them, or
/// `eval.global_max` drawn with the run's seed (ascending). The deployment picks the same.
pub(crate) fn global_eval_rows(cfg: &RunConfig, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if cfg.global_eval_max > 0 && n > cfg.global_eval_max {
        let mut r = Rng::new(cfg.seed ^ 0xE7A1);
        data::shuffle(&mut idx, &mut r);
        idx.truncate(cfg.global_eval_max);
        idx.sort_unstable();
    }
    idx
}

/// Fault injection for the resume tests (docs/testing.md): with `FLEXP_ABORT_AFTER_CHECKPOINT=N`
/// the process dies right after round N's checkpoint, as a kill would (no unwinding, nothing
/// flushed or cleaned up), at a point a test can name instead of racing a timer.
pub(crate) fn abort_if_asked(round: usize) {
    let asked = std::env::var("FLEXP_ABORT_AFTER_CHECKPOINT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    if asked == Some(round) {
        std::process::abort();
    }
}

/// Clients of one round: each joins with probability q, at least one (deterministic per seed).
pub fn sample_participants(n: usize, q: f64, rng: &mut Rng) -> Vec<usize> {
    if q >= 1.0 {
        return (0..n).collect();
    }
    let m = ((q * n as f64).round() as usize).clamp(1, n);
    let mut idx: Vec<usize> = (0..n).collect();
    data::shuffle(&mut idx, rng);
    idx.truncate(m);
    idx.sort_unstable();
    idx
}

/// The per-client facts of the report: profile, split, data sizes, predicted memory.
fn client_facts(cfg: &RunConfig, prep: &Prepared) -> Vec<ClientFacts> {
    let split_algo = cfg.algorithm.is_split();
    (0..cfg.clients)
        .map(|k| ClientFacts {
            profile: prep.profiles[k].name.clone(),
            split: split_algo.then(|| prep.plan.splits[k]),
            train_examples: prep.clients[k].train.len(),
            test_examples: prep.clients[k].test.len(),
            memory_bytes: if split_algo {
                prep.plan.rows[k].memory_bytes
            } else {
                prep.cost.client_memory(prep.cost.max_split())
            },
        })
        .collect()
}

/// Bytes one block's projection weights hold on the backend (the mean over blocks).
pub(crate) fn be_bytes_per_block<B: Backend>(be: &B, model: &Model<B>) -> f64 {
    model.block_weight_bytes(be) as f64 / model.layers().max(1) as f64
}

/// How sequences are pooled for classification: a decoder's last token has seen the whole text
/// (its earlier tokens have not), so decoders classify from it; encoders mean-pool.
pub fn pooling_of(c: &ModelConfig) -> Pooling {
    if c.causal {
        Pooling::Last
    } else {
        Pooling::Mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_pool_the_last_token_and_encoders_the_mean() {
        let llama = ModelConfig::from_json(&serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 8
        }))
        .unwrap();
        assert_eq!(pooling_of(&llama), Pooling::Last);
        let bert = ModelConfig::from_json(&serde_json::json!({
            "model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 8
        }))
        .unwrap();
        assert_eq!(pooling_of(&bert), Pooling::Mean);
    }
}
