//! The library's error type. Every failure a user can cause (bad files, bad shapes, bad options)
//! comes back as an [`Error`] that names the problem; nothing on a user-controlled path panics.

use std::path::PathBuf;

/// Errors of the flexp library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is malformed (truncated, corrupt header, bad JSON).
    #[error("{path}: corrupt or unreadable checkpoint: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the model configuration needs is absent from the checkpoint.
    #[error("missing tensor `{name}` in {path} (tried names: {tried})")]
    MissingTensor {
        /// The canonical tensor name.
        name: String,
        /// The checkpoint folder or file.
        path: PathBuf,
        /// The concrete names that were looked up.
        tried: String,
    },
    /// A tensor has the wrong shape or dtype for the configuration.
    #[error("tensor `{name}`: {reason}")]
    BadTensor {
        /// The tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `config.json` is invalid or describes an unsupported model.
    #[error("model config {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A GGUF file is malformed or holds something this runtime cannot use.
    #[error("GGUF file {path}: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset where it was found.
        reason: String,
    },
    /// The tokenizer cannot be used with this model.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Invalid input data (empty file, too-long text, ...).
    #[error("input: {0}")]
    Input(String),
    /// An invalid request to the executor (block range, adapter id, shapes).
    #[error("invalid job: {0}")]
    Job(String),
    /// A backend failure (device errors; shape violations detected by a backend).
    #[error("backend: {0}")]
    Backend(String),
    /// A deployment's network failed or a peer refused (connection, TLS, protocol).
    #[error("network: {0}")]
    Net(String),
    /// The run was asked to stop (Ctrl-C in Python, a progress callback); it stopped after a
    /// whole round, with a checkpoint where the run keeps them, so `--resume` continues it.
    #[error("interrupted after round {round}: {reason}")]
    Interrupted {
        /// The last round completed.
        round: usize,
        /// Who asked.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
