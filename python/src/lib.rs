//! `flexp._flexp`: the Python bindings of the flexp engine (the `flexp` package wraps them).
//!
//! Every call that computes releases the GIL; a training run checks for Ctrl-C after each round
//! and stops there (with its checkpoint, so it can be resumed). Errors are raised as the
//! `flexp.errors` classes, each a subclass of `FlexpError` and of the Python exception a caller
//! would catch for that kind of problem (`ValueError`, `OSError`, `TypeError`, ...).

mod config;
mod errors;
mod model;
mod network;
mod training;

use pyo3::prelude::*;

/// The module's contents.
#[pymodule]
fn _flexp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_class::<network::Server>()?;
    m.add_class::<network::Client>()?;
    m.add_function(wrap_pyfunction!(training::train, m)?)?;
    m.add_function(wrap_pyfunction!(training::plan, m)?)?;
    m.add_function(wrap_pyfunction!(network::certs, m)?)?;
    m.add_function(wrap_pyfunction!(network::partition, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
