//! `flexp-run`: the command-line front end. Thin: parsing, progress display, exit codes.

use clap::{Parser, Subcommand, ValueEnum};
use flexp::backend::cuda::{select, BackendChoice, Selected};
use flexp::backend::Backend;
use flexp::embed::{embed_file, EmbedOptions, Embedder};
use flexp::model::tokenizer::LongText;
use flexp::run::{LogProgress, Progress, RawConfig};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// A training step allocates and frees the same large activation buffers every step; glibc's
// malloc returns blocks above its mmap threshold to the OS and takes them back page fault by page
// fault (about a quarter million faults per bench round). mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (position 15 of `mi_option_e` in mimalloc.h, v2 and v3; the sys
/// crate has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped: by default mimalloc still returns idle pages after 10 ms, and the
/// next step's buffers then fault them back in zeroed (44k faults and 5% of a 16-client bench
/// round in the kernel's page clearing; 2k faults with purging off).
fn keep_freed_memory() {
    // SAFETY: sets a process-wide allocator option; mimalloc reads it atomically on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "flexp-run",
    version,
    about = "Personalized split federated fine-tuning engine",
    long_about = "Personalized split federated fine-tuning engine.\n\nWith no command, runs the bundled \
                  example, `train --config examples/rotten_tomatoes.toml` (from the repository root): \
                  FlexP-SFL on all-MiniLM-L6-v2 with Rotten Tomatoes, 10 clients with mixed device \
                  profiles, dirichlet:0.5 (assets are fetched on first use)."
)]
struct Cli {
    /// Worker threads, at least 1 (default: all cores).
    #[arg(long, global = true, value_parser = at_least_one)]
    threads: Option<usize>,
    /// Plain log lines instead of progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    /// Compute backend: auto picks CUDA when a GPU, its driver and NVRTC are present.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    backend: BackendArg,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// CUDA when available, else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on GPU 0 (an error without one).
    Cuda,
    /// The CUDA kernels on the CPU's SIMT emulator (slow; for testing).
    Emulator,
}

#[derive(Clone, Copy, ValueEnum)]
enum LongTextArg {
    /// Cut texts to the model's limit and report which were cut.
    Truncate,
    /// Refuse texts over the limit.
    Error,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune with a federated / split algorithm and write a run folder.
    Train {
        /// Experiment configuration (TOML); a key it does not set takes its default, and
        /// `data.path` has none (examples/rotten_tomatoes.toml is the bundled example).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a configuration key (repeatable), e.g. --set rounds=20 --set algorithm=fedavg.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue a killed run from its last checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
    },
    /// Print the split plan (client, profile, cut, memory, predicted latency).
    Plan {
        /// Experiment configuration (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a configuration key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Run the FlexP-SFL server of a deployment: clients connect over mutual TLS (`client`),
    /// the server draws the rounds, packs the clients' activations into one sweep, and writes
    /// metrics.jsonl and report.json into the run folder.
    Serve {
        /// Experiment configuration (TOML); the clients take it from the server.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a configuration key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Address to listen on, e.g. 0.0.0.0:7443.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Certificate folder: server.pem, server.key and the clients' CA as ca.pem.
        #[arg(long)]
        tls: PathBuf,
        /// The run folder.
        #[arg(long)]
        out: PathBuf,
        /// Element type of tensors on the wire: f32 (exact) or bf16 (half the bytes).
        #[arg(long, default_value = "f32")]
        wire: String,
        /// Seconds to wait for a client's answer in a step before going on without it.
        #[arg(long, default_value_t = 60.0)]
        step_deadline: f64,
        /// Seconds to wait for every client to connect before the first round.
        #[arg(long, default_value_t = 300.0)]
        join_timeout: f64,
        /// The most tensor payload one client message may carry, in MiB; a larger message ends
        /// that client's session (it reconnects), a frame declaring more is refused unread.
        #[arg(long, default_value_t = 256)]
        max_message_mb: usize,
        /// The folder `flexp-run partition` wrote: the server then reads only its manifest and
        /// global_test.csv, never the clients' rows (data.path need not exist on this machine).
        #[arg(long)]
        partition: Option<PathBuf>,
        /// Continue the run in --out from its last checkpoint (with its own config.toml unless
        /// --config is given, which must then resolve to the same settings); clients reconnect
        /// by themselves.
        #[arg(long)]
        resume: bool,
    },
    /// Run one client of a deployment: it holds only its rows (client-K.csv from `partition`),
    /// its client-side blocks and personal adapters, and trains with the server over mutual TLS.
    Client {
        /// The server's host:port.
        #[arg(long)]
        connect: String,
        /// Certificate folder: client-K.pem, client-K.key and the server's CA as ca.pem.
        #[arg(long)]
        tls: PathBuf,
        /// This client's id K (its certificate must name client-K).
        #[arg(long)]
        id: u32,
        /// Its rows (client-K.csv).
        #[arg(long)]
        data: PathBuf,
        /// The global test set (global_test.csv from `partition`): the personalized model is
        /// evaluated on it too (global_acc_mean).
        #[arg(long)]
        global_test: Option<PathBuf>,
        /// The model, when it is not at the path the server's configuration names.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The name the server's certificate must be valid for.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Element type of tensors on the wire: f32 or bf16.
        #[arg(long, default_value = "f32")]
        wire: String,
        /// Seconds to wait for the server (connecting, and between messages).
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        /// The most tensor payload one server message may carry, in MiB.
        #[arg(long, default_value_t = 256)]
        max_message_mb: usize,
    },
    /// Write trial certificates for a deployment: a CA (ca.pem), the server's (server.pem,
    /// server.key; valid for localhost, 127.0.0.1 and flexp-server) and one per client
    /// (client-K.pem, client-K.key; valid for the name client-K). Real deployments bring their own
    /// PKI with the same names.
    Certs {
        /// The folder to write them into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// How many client certificates (client-0 .. client-N-1).
        #[arg(long)]
        clients: u32,
    },
    /// Write the data split of a configuration as files, one per client (client-K.csv, with a
    /// `flexp_split` column of train/test), the global test set (global_test.csv) and
    /// partition.json (class names, row counts): exactly the split `train` uses for that
    /// configuration and seed, for deployments where each client holds only its own data.
    Partition {
        /// Experiment configuration (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a configuration key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The folder to write the files into (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a grid of runs (e.g. algorithms x partitions x seeds) from one sweep file, one after
    /// another, resumable (run it again to finish), then compare them: the mean over seeds with
    /// 95% confidence intervals and paired t-tests against a reference (out/sweep.md).
    Sweep {
        /// The sweep file (TOML: `base`, `out`, `[set]`, `[grid]`; see
        /// examples/sweep_paper.toml).
        file: PathBuf,
        /// Only rebuild sweep.md and sweep.csv from the runs finished so far.
        #[arg(long)]
        report_only: bool,
    },
    /// Compile the CUDA kernels to PTX for one GPU architecture, for GPU machines without NVRTC:
    /// there, FLEXP_PTX_DIR=<folder> makes the CUDA backend load them instead of compiling.
    Ptx {
        /// Virtual architecture: compute_80 (A100), compute_86, compute_87, compute_89 or
        /// compute_90 (H100, H200; also newer GPUs).
        #[arg(long, default_value = "compute_90")]
        arch: String,
        /// Folder to write one .ptx per kernel file into.
        #[arg(long)]
        out: PathBuf,
    },
    /// One table and one plot across run folders.
    Compare {
        /// Run folders.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Markdown file to write (an .svg and a .csv are written beside it).
        #[arg(long, default_value = "comparison.md")]
        output: PathBuf,
    },
    /// Time one FlexP-SFL training round (random tokens and labels) and print one JSON line;
    /// tools/torch_reference/flexp_round.py is the PyTorch counterpart.
    ///
    /// Keys: the sizes (`clients`, `batch`, `seq`, `steps`), `tokens`, `seconds`, `tokens_per_s`,
    /// `loss`, `backend`, `precision`, `threads`, the machine (`cpu`, the CPU's model name, and
    /// `isa`, the instruction sets detected) and, on the CPU, `kernel` (the product kernel used).
    Bench {
        /// Checkpoint folder.
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model: PathBuf,
        /// Clients (all participate).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Sequences per client per local step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 64)]
        seq: usize,
        /// Local steps in the timed round.
        #[arg(long, default_value_t = 2)]
        steps: usize,
        /// LoRA rank (on the query and value projections, alpha = 2·rank).
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Cut layers, comma-separated, cycled over the clients.
        #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
        split: Vec<usize>,
        /// Seed of the random data and adapters.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Storage of the frozen base weights: f32, or bf16 (products on AMX tiles or the
        /// AVX512-BF16 kernel where the CPU has them; the JSON line says which in `kernel`).
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// Sentence embeddings: one text per input line, JSON lines out.
    Embed {
        /// Checkpoint folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Text file, one text per line.
        #[arg(long)]
        input: PathBuf,
        /// Output file of JSON lines {"text": ..., "embedding": [...]}.
        #[arg(long)]
        output: PathBuf,
        /// L2-normalise the embeddings (the default where the checkpoint's modules.json ends in
        /// Normalize, as sentence-transformers does).
        #[arg(long, conflicts_with = "no_normalize")]
        normalize: bool,
        /// Write the pooled embeddings without L2 normalisation, whatever modules.json says.
        #[arg(long)]
        no_normalize: bool,
        /// Texts longer than the model's limit.
        #[arg(long, value_enum, default_value = "truncate")]
        long_text: LongTextArg,
    },
    /// Generate a continuation of a prompt with a Llama-family decoder (KV cache; greedy unless
    /// --temperature is above 0). Prints one JSON line {"prompt_tokens": [...], "tokens": [...],
    /// "text": ...}.
    Generate {
        /// A .gguf file, or a checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// A run folder whose PEFT adapters to apply (with --client).
        #[arg(long, requires = "client")]
        adapters: Option<PathBuf>,
        /// Which client's personalized adapters (the run's adapters/client-K).
        #[arg(long, requires = "adapters")]
        client: Option<usize>,
        /// The prompt text (special tokens written out are recognised).
        #[arg(long)]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// 0: greedy; above 0: sample from softmax(logits / T).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The prompt is a user's message: render it with the model's chat template and
        /// continue as the assistant.
        #[arg(long)]
        chat: bool,
    },
    /// Score texts with a causal language model: for each input line {"text": ...}, one JSON
    /// line {"tokens": [...], "mean_log_likelihood": ..., "top_k": [[id, logit], ...]} on
    /// stdout. The mean is over tokens 1..n-1 of the natural-log softmax of the previous
    /// position's logits (null for a one-token text); top_k is at the last position.
    Score {
        /// A .gguf file (weights kept quantized), or a checkpoint folder (config.json,
        /// *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// JSON lines, each an object with a string `text`.
        #[arg(long)]
        input: PathBuf,
        /// How many of the largest last-position logits to print.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Texts longer than the model's limit.
        #[arg(long, value_enum, default_value = "error")]
        long_text: LongTextArg,
    },
}

/// `--threads`: a positive count (rayon would read 0 as "all cores", which is not what was asked).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (omit --threads to use every core)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a thread count: {e}")),
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot set {n} threads: {e}");
            return ExitCode::from(2);
        }
    }
    let command = cli.command.unwrap_or(Command::Train {
        config: Some(PathBuf::from(EXAMPLE_CONFIG)),
        set: Vec::new(),
        resume: None,
    });
    let choice = match cli.backend {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Cpu => BackendChoice::Cpu,
        BackendArg::Cuda => BackendChoice::Cuda,
        BackendArg::Emulator => BackendChoice::Emulator,
    };
    match run(command, cli.quiet, choice) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let top = e.to_string();
            eprintln!("error: {top}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                // Io errors already end with their cause; saying it twice reads as two failures.
                let cause = s.to_string();
                if !top.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
                src = s.source();
            }
            ExitCode::from(2)
        }
    }
}

/// Progress bars: rounds (loss, accuracy, ETA) and the local steps of the current round.
struct BarProgress {
    multi: MultiProgress,
    rounds: Option<ProgressBar>,
    steps: Option<ProgressBar>,
}

impl BarProgress {
    fn new() -> Self {
        BarProgress {
            multi: MultiProgress::new(),
            rounds: None,
            steps: None,
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress for BarProgress {
    fn message(&mut self, text: &str) {
        match &self.rounds {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }
    fn round(&mut self, round: usize, rounds: usize, loss: f64, eval: Option<&serde_json::Value>) {
        let multi = &self.multi;
        let bar = self.rounds.get_or_insert_with(|| {
            let b = multi.insert(0, ProgressBar::new(rounds as u64));
            b.set_style(style(
                "rounds {bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
            ));
            b
        });
        bar.set_position(round as u64);
        let acc = eval
            .and_then(|m| m["personalized_acc_mean"].as_f64())
            .map_or(String::new(), |a| {
                format!(", personalized acc {:.1}%", 100.0 * a)
            });
        bar.set_message(format!("loss {loss:.4}{acc}"));
        if round == rounds {
            bar.finish();
            // A sweep runs several trainings through one display: the next starts new bars.
            self.rounds = None;
            if let Some(s) = self.steps.take() {
                s.finish_and_clear();
            }
        }
    }
    fn step_observer(&mut self, steps: usize) -> Option<Box<dyn Fn(usize) + Send + Sync>> {
        let bar = self.multi.add(ProgressBar::new(steps as u64));
        bar.set_style(style("  steps {bar:30} {pos}/{len} of this round"));
        self.steps = Some(bar.clone());
        Some(Box::new(move |step| bar.set_position(step as u64)))
    }
}

/// The bundled example's configuration, which `flexp-run` with no command runs.
const EXAMPLE_CONFIG: &str = "examples/rotten_tomatoes.toml";

/// A duration from a positive, finite number of seconds given on the command line.
/// The message limits of `--max-message-mb`.
fn message_limits(mb: usize) -> flexp::Result<flexp::net::wire::Limits> {
    flexp::net::wire::Limits::with_message_mb(mb)
        .map_err(|e| flexp::Error::Input(format!("--max-message-mb: {e}")))
}

fn seconds(flag: &str, s: f64) -> flexp::Result<std::time::Duration> {
    if s.is_finite() && s > 0.0 && s < 1e9 {
        Ok(std::time::Duration::from_secs_f64(s))
    } else {
        Err(flexp::Error::Input(format!(
            "{flag} {s}: expected a positive number of seconds"
        )))
    }
}

fn load_raw(config: Option<&Path>, set: &[String]) -> flexp::Result<RawConfig> {
    let mut raw = match config {
        Some(p) if p == Path::new(EXAMPLE_CONFIG) && !p.exists() => {
            return Err(flexp::Error::Input(format!(
                "{EXAMPLE_CONFIG} not found: `flexp-run` with no command runs the bundled example \
                 from the repository root; elsewhere use `flexp-run train --config FILE.toml` or \
                 `--set data.path=FILE`"
            )))
        }
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    for s in set {
        raw.set(s)?;
    }
    Ok(raw)
}

/// Fetches a default asset through its tools/ script when it is missing.
fn ensure_asset(path: &Path, default: &str, script: &str) -> flexp::Result<()> {
    if path.exists() || path != Path::new(default) {
        return Ok(());
    }
    eprintln!(
        "{} is missing: fetching it with {script} (first use only)",
        path.display()
    );
    let status = std::process::Command::new("bash")
        .arg(script)
        .status()
        .map_err(|e| flexp::Error::io(script, e))?;
    if !status.success() {
        return Err(flexp::Error::Input(format!(
            "{script} failed; run it by hand to see why"
        )));
    }
    Ok(())
}

/// Fetches the bundled example's checkpoint and data when a run uses them and they are missing.
fn ensure_example_assets(cfg: &flexp::run::RunConfig) -> flexp::Result<()> {
    ensure_asset(
        &cfg.model,
        "models/all-MiniLM-L6-v2",
        "tools/fetch_minilm.sh",
    )?;
    ensure_asset(
        &cfg.data_path,
        "data/rotten_tomatoes.csv",
        "tools/fetch_rotten_tomatoes.sh",
    )
}

fn run(cmd: Command, quiet: bool, backend: BackendChoice) -> flexp::Result<()> {
    match cmd {
        Command::Train {
            config,
            set,
            resume,
        } => {
            let (cfg, text, resuming) = match resume {
                Some(dir) => {
                    let (cfg, text) = flexp::run::runner::recorded_config(&dir)?;
                    (cfg, text, true)
                }
                None => {
                    let mut raw = load_raw(config.as_deref(), &set)?;
                    let cfg = raw.resolve()?;
                    // Record the run folder actually used, so that --resume finds the same text.
                    raw.set(&format!(
                        "out={}",
                        toml_string(&cfg.out.display().to_string())
                    ))?;
                    (cfg, raw.resolved_toml(), false)
                }
            };
            ensure_example_assets(&cfg)?;
            eprintln!(
                "flexp-run train: {} on {} ({} clients, {} rounds) -> {}",
                cfg.algorithm.name(),
                cfg.model.display(),
                cfg.clients,
                cfg.rounds,
                cfg.out.display()
            );
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            let out = match be {
                Selected::Cpu(b) => train(&b, &cfg, &text, resuming, quiet)?,
                Selected::Cuda(b) => train(&b, &cfg, &text, resuming, quiet)?,
            };
            let s = &out.report["summary"];
            let pct = |v: &serde_json::Value| {
                v.as_f64()
                    .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
            };
            println!(
                "personalized acc {} ± {} (min {}), global acc {}, global model acc {}; report: {}",
                pct(&s["personalized_acc_mean"]),
                pct(&s["personalized_acc_std"]),
                pct(&s["personalized_acc_min"]),
                pct(&s["global_acc_mean"]),
                pct(&s["global_model_acc"]),
                out.dir.join("report.md").display()
            );
            Ok(())
        }
        Command::Serve {
            config,
            set,
            listen,
            tls,
            out,
            wire,
            step_deadline,
            join_timeout,
            max_message_mb,
            partition,
            resume,
        } => {
            // Resuming with the run folder's own settings, its recorded text is the config.
            let recorded = (resume && config.is_none() && set.is_empty())
                .then(|| {
                    let p = out.join("config.toml");
                    std::fs::read_to_string(&p).map_err(|e| flexp::Error::io(&p, e))
                })
                .transpose()?;
            let raw = match &recorded {
                Some(text) => RawConfig::from_toml(text)?,
                None => load_raw(config.as_deref(), &set)?,
            };
            let cfg = raw.resolve()?;
            let opts = flexp::net::serve::ServeOptions {
                listen,
                tls,
                out,
                wire: flexp::net::wire::WireDType::parse(&wire)?,
                step_deadline: seconds("--step-deadline", step_deadline)?,
                join_timeout: seconds("--join-timeout", join_timeout)?,
                limits: message_limits(max_message_mb)?,
                resume,
                partition,
                gate: None,
            };
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            let text = recorded.unwrap_or_else(|| raw.resolved_toml());
            let report = match be {
                Selected::Cpu(b) => {
                    flexp::net::serve::serve(&b, &cfg, &text, &opts, &mut LogProgress)?
                }
                Selected::Cuda(b) => {
                    flexp::net::serve::serve(&b, &cfg, &text, &opts, &mut LogProgress)?
                }
            };
            println!(
                "{} rounds, personalized accuracy {}; report: {}",
                report["rounds"],
                report["summary"]["personalized_acc_mean"],
                opts.out.join("report.json").display()
            );
            Ok(())
        }
        Command::Client {
            connect,
            tls,
            id,
            data,
            global_test,
            model,
            server_name,
            wire,
            timeout,
            max_message_mb,
        } => {
            let opts = flexp::net::worker::ClientOptions {
                connect,
                server_name,
                tls,
                id,
                data,
                global_test,
                model,
                wire: flexp::net::wire::WireDType::parse(&wire)?,
                timeout: seconds("--timeout", timeout)?,
                limits: message_limits(max_message_mb)?,
            };
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            match be {
                Selected::Cpu(b) => flexp::net::worker::run_client(&b, &opts, &mut LogProgress)?,
                Selected::Cuda(b) => flexp::net::worker::run_client(&b, &opts, &mut LogProgress)?,
            }
            Ok(())
        }
        Command::Certs { out, clients } => {
            flexp::net::certs::write_trial_certs(&out, clients)?;
            eprintln!(
                "wrote ca.pem, server.pem/.key and client-0..{} .pem/.key to {}",
                clients.saturating_sub(1),
                out.display()
            );
            Ok(())
        }
        Command::Partition { config, set, out } => {
            let cfg = load_raw(config.as_deref(), &set)?.resolve()?;
            let manifest = flexp::run::partition::write_partition(&cfg, &out, &mut LogProgress)?;
            let counts: Vec<String> = manifest["files"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .map(|c| format!("{}+{}", c["train"], c["test"]))
                        .collect()
                })
                .unwrap_or_default();
            eprintln!(
                "wrote {} client files (train+test rows: {}) and global_test.csv ({} rows) to {}",
                counts.len(),
                counts.join(", "),
                manifest["global_test"]["rows"],
                out.display()
            );
            Ok(())
        }
        Command::Plan { config, set } => {
            let cfg = load_raw(config.as_deref(), &set)?.resolve()?;
            let (mc, projection_bytes) = flexp::model::describe(&cfg.model)?;
            let head = flexp::run::runner::task_head(&cfg)?;
            let (_, plan, _) = flexp::run::runner::plan(&cfg, &mc, projection_bytes, head)?;
            println!("{}", plan.table());
            Ok(())
        }
        Command::Bench {
            model,
            clients,
            batch,
            seq,
            steps,
            rank,
            split,
            seed,
            precision,
        } => {
            let precision: flexp::backend::WeightPrecision = precision.parse()?;
            let spec = flexp::run::bench::BenchSpec {
                clients,
                batch,
                seq,
                steps,
                rank,
                split,
                seed,
            };
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            let threads = rayon::current_num_threads();
            let json = match be {
                Selected::Cpu(b) => bench(&b, &model, &spec, threads, precision)?,
                Selected::Cuda(b) => bench(&b, &model, &spec, threads, precision)?,
            };
            println!("{json}");
            Ok(())
        }
        Command::Ptx { arch, out } => {
            use flexp::backend::cuda::nvrtc;
            let Some(arch) = nvrtc::ARCHES.iter().copied().find(|a| *a == arch) else {
                return Err(flexp::Error::Input(format!(
                    "--arch {arch}: expected one of {}",
                    nvrtc::ARCHES.join(", ")
                )));
            };
            for p in nvrtc::write_ptx(&out, arch)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Sweep { file, report_only } => {
            let spec = flexp::run::sweep::SweepSpec::from_file(&file)?;
            if report_only {
                let md = flexp::run::sweep::report(&spec)?;
                println!("{}", md.display());
                return Ok(());
            }
            if let Some(first) = spec.runs().first() {
                ensure_example_assets(&first.raw.resolve()?)?;
            }
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            let out = match be {
                Selected::Cpu(b) => sweep(&b, &spec, quiet)?,
                Selected::Cuda(b) => sweep(&b, &spec, quiet)?,
            };
            eprintln!(
                "sweep: {} runs finished now, {} were already done, {} failed",
                out.finished,
                out.skipped,
                out.failed.len()
            );
            println!("{}", out.report.display());
            if !out.failed.is_empty() {
                let list: Vec<String> = out
                    .failed
                    .iter()
                    .map(|(d, e)| format!("{}: {e}", d.display()))
                    .collect();
                return Err(flexp::Error::Input(format!(
                    "{} runs of the sweep failed (the others are in the report):\n  {}",
                    out.failed.len(),
                    list.join("\n  ")
                )));
            }
            Ok(())
        }
        Command::Compare { runs, output } => {
            let c = flexp::report::compare(&runs)?;
            flexp::report::write_comparison(&c, &output)?;
            println!("{}", c.markdown);
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Generate {
            model,
            adapters,
            client,
            prompt,
            max_new_tokens,
            temperature,
            seed,
            chat,
        } => {
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(flexp::Error::Input(format!(
                    "--temperature must be 0 or more, got {temperature}"
                )));
            }
            let opts = flexp::generate::GenerateOptions {
                max_new_tokens,
                temperature,
                seed,
            };
            let adapters = adapters
                .zip(client)
                .map(|(run, k)| run.join("adapters").join(format!("client-{k}")));
            let out = match be {
                Selected::Cpu(b) => generate(b, &model, adapters.as_deref(), &prompt, chat, opts)?,
                Selected::Cuda(b) => generate(b, &model, adapters.as_deref(), &prompt, chat, opts)?,
            };
            println!("{out}");
            Ok(())
        }
        Command::Score {
            model,
            input,
            top_k,
            long_text,
        } => {
            let t0 = std::time::Instant::now();
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            let long_text = match long_text {
                LongTextArg::Truncate => LongText::Truncate,
                LongTextArg::Error => LongText::Error,
            };
            let n = match be {
                Selected::Cpu(b) => score(b, &model, &input, top_k, long_text)?,
                Selected::Cuda(b) => score(b, &model, &input, top_k, long_text)?,
            };
            eprintln!("scored {n} texts in {:.2}s", t0.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Embed {
            model,
            input,
            output,
            normalize,
            no_normalize,
            long_text,
        } => {
            let t0 = std::time::Instant::now();
            let (be, line) = select(backend)?;
            eprintln!("{line}");
            let opts = EmbedOptions {
                normalize: match (normalize, no_normalize) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                long_text: match long_text {
                    LongTextArg::Truncate => LongText::Truncate,
                    LongTextArg::Error => LongText::Error,
                },
                ..EmbedOptions::default()
            };
            match be {
                Selected::Cpu(b) => embed(b, &model, &input, &output, opts)?,
                Selected::Cuda(b) => embed(b, &model, &input, &output, opts)?,
            }
            eprintln!(
                "embedded in {:.2}s -> {}",
                t0.elapsed().as_secs_f64(),
                output.display()
            );
            Ok(())
        }
    }
}

fn train<B: Backend + 'static>(
    be: &B,
    cfg: &flexp::run::RunConfig,
    text: &str,
    resuming: bool,
    quiet: bool,
) -> flexp::Result<flexp::run::RunOutcome> {
    if quiet {
        flexp::run::run(be, cfg, text, resuming, &mut LogProgress)
    } else {
        flexp::run::run(be, cfg, text, resuming, &mut BarProgress::new())
    }
}

fn sweep<B: Backend + 'static>(
    be: &B,
    spec: &flexp::run::sweep::SweepSpec,
    quiet: bool,
) -> flexp::Result<flexp::run::sweep::SweepOutcome> {
    if quiet {
        flexp::run::sweep::run_sweep(be, spec, &mut LogProgress)
    } else {
        flexp::run::sweep::run_sweep(be, spec, &mut BarProgress::new())
    }
}

fn bench<B: Backend + 'static>(
    be: &B,
    model: &Path,
    spec: &flexp::run::bench::BenchSpec,
    threads: usize,
    precision: flexp::backend::WeightPrecision,
) -> flexp::Result<serde_json::Value> {
    let model = flexp::model::load_model_with(be, model, precision)?;
    let r = flexp::run::bench::bench_round(be, &model, spec)?;
    let mut line = r.to_json(be.name(), &precision.to_string(), threads);
    // Which kernel ran matters to anyone comparing numbers across machines.
    if be.name() == "cpu" {
        line["kernel"] = match precision {
            flexp::backend::WeightPrecision::Bf16 => flexp::backend::cpu::bf16_kernel(),
            flexp::backend::WeightPrecision::F32 => flexp::backend::cpu::f32_kernel(),
        }
        .into();
    }
    Ok(line)
}

fn embed<B: Backend>(
    be: B,
    model: &Path,
    input: &Path,
    output: &Path,
    opts: EmbedOptions,
) -> flexp::Result<()> {
    let embedder = Embedder::load(be, model)?;
    let emb = embed_file(&embedder, input, output, opts)?;
    for i in &emb.truncated {
        eprintln!(
            "warning: text on line {} was longer than {} tokens and was truncated",
            i + 1,
            embedder.max_len
        );
    }
    eprintln!("embedded {} texts", emb.vectors.len());
    Ok(())
}

fn generate<B: Backend>(
    be: B,
    model: &Path,
    adapters: Option<&Path>,
    prompt: &str,
    chat: bool,
    opts: flexp::generate::GenerateOptions,
) -> flexp::Result<serde_json::Value> {
    let mut g = flexp::generate::Generator::load(be, model)?;
    if let Some(dir) = adapters {
        g = g.with_peft_adapters(dir)?;
    }
    let t0 = std::time::Instant::now();
    let out = if chat {
        g.generate_chat(&[flexp::model::chat::Message::new("user", prompt)], opts)?
    } else {
        g.generate(prompt, opts)?
    };
    eprintln!(
        "generated {} tokens in {:.2}s",
        out.tokens.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(serde_json::json!({
        "prompt_tokens": out.prompt_tokens,
        "tokens": out.tokens,
        "text": out.text,
    }))
}

fn score<B: Backend>(
    be: B,
    model: &Path,
    input: &Path,
    top_k: usize,
    long_text: LongText,
) -> flexp::Result<usize> {
    let scorer = flexp::score::Scorer::load(be, model)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let n = flexp::score::score_file(&scorer, input, &mut out, top_k, long_text)?;
    std::io::Write::flush(&mut out).map_err(|e| flexp::Error::io("<stdout>", e))?;
    Ok(n)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
