//! flexp's errors as Python exceptions: the classes of `flexp/errors.py`, chosen by kind.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The `flexp.errors` class for an engine error.
fn class_of(e: &flexp::Error) -> &'static str {
    use flexp::Error as E;
    match e {
        E::Io { .. } => "FileError",
        E::Checkpoint { .. }
        | E::MissingTensor { .. }
        | E::BadTensor { .. }
        | E::Config { .. }
        | E::Gguf { .. }
        | E::Tokenizer { .. } => "ModelError",
        E::Input(_) => "InputError",
        E::Job(_) | E::Backend(_) => "BackendError",
        E::Net(_) => "NetworkError",
        E::Interrupted { .. } => "Interrupted",
    }
}

/// An instance of the `flexp.errors` class `name` with `message`; a `RuntimeError` if the
/// package's Python half is missing (the extension imported on its own).
pub fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    let made = py
        .import("flexp.errors")
        .and_then(|m| m.getattr(name))
        .and_then(|c| c.call1((message.clone(),)));
    match made {
        Ok(v) => PyErr::from_value(v),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// The Python exception for an engine error, with the engine's whole message.
pub fn to_py(e: flexp::Error) -> PyErr {
    Python::attach(|py| raise(py, class_of(&e), e.to_string()))
}

/// `?` for engine results in binding code.
pub trait OrRaise<T> {
    /// The value, or the error as its Python exception.
    fn or_raise(self) -> PyResult<T>;
}

impl<T> OrRaise<T> for flexp::Result<T> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
