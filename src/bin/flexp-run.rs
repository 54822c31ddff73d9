//! `flexp-run`: the command-line front end.

use clap::{Parser, Subcommand, ValueEnum};
use flexp::backend::cpu::Cpu;
use flexp::embed::{embed_file, EmbedOptions, Embedder};
use flexp::model::tokenizer::LongText;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flexp-run",
    version,
    about = "Personalized split federated fine-tuning engine"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
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
        /// L2-normalise the embeddings.
        #[arg(long)]
        normalize: bool,
        /// Texts longer than the model's limit.
        #[arg(long, value_enum, default_value = "truncate")]
        long_text: LongTextArg,
    },
}

fn main() -> ExitCode {
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
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Command) -> flexp::Result<()> {
    match cmd {
        Command::Embed {
            model,
            input,
            output,
            normalize,
            long_text,
        } => {
            let t0 = std::time::Instant::now();
            let embedder = Embedder::load(Cpu, &model)?;
            let opts = EmbedOptions {
                normalize,
                long_text: match long_text {
                    LongTextArg::Truncate => LongText::Truncate,
                    LongTextArg::Error => LongText::Error,
                },
                ..EmbedOptions::default()
            };
            let emb = embed_file(&embedder, &input, &output, opts)?;
            for i in &emb.truncated {
                eprintln!(
                    "warning: text on line {} was longer than {} tokens and was truncated",
                    i + 1,
                    embedder.max_len
                );
            }
            eprintln!(
                "embedded {} texts in {:.2}s -> {}",
                emb.vectors.len(),
                t0.elapsed().as_secs_f64(),
                output.display()
            );
            Ok(())
        }
    }
}
