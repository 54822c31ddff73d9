//! `flexp.train` and `flexp.plan`.

use crate::config;
use crate::errors::{to_py, OrRaise};
use flexp::backend::cuda::{select, BackendChoice, Selected};
use flexp::run::Progress;
use pyo3::prelude::*;
use serde_json::Value;

/// A JSON value as the Python object `json.loads` makes of it.
pub fn to_python(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (v.to_string(),))?
        .unbind())
}

/// Progress of a run seen from Python: each round goes to the callback; Ctrl-C (or an
/// exception in the callback) asks the run to stop after the round, and is raised once it has.
struct PyProgress {
    callback: Option<Py<PyAny>>,
    verbose: bool,
    /// Why the run should stop, once something asked.
    stop: Option<PyErr>,
}

impl Progress for PyProgress {
    fn message(&mut self, text: &str) {
        if self.verbose {
            eprintln!("{text}");
        }
    }

    fn round(&mut self, round: usize, rounds: usize, loss: f64, eval: Option<&Value>) {
        if self.verbose {
            eprintln!("round {round}/{rounds}: train loss {loss:.4}");
        }
        let Some(cb) = &self.callback else {
            return;
        };
        let event = serde_json::json!({
            "round": round,
            "rounds": rounds,
            "train_loss": if loss.is_finite() { Some(loss) } else { None },
            "metrics": eval,
        });
        let called = Python::attach(|py| -> PyResult<()> {
            cb.call1(py, (to_python(py, &event)?,))?;
            Ok(())
        });
        if let Err(e) = called {
            self.stop.get_or_insert(e);
        }
    }

    fn stop_requested(&mut self) -> Option<String> {
        if self.stop.is_none() {
            if let Err(e) = Python::attach(|py| py.check_signals()) {
                self.stop = Some(e);
            }
        }
        self.stop.as_ref().map(|e| {
            Python::attach(|py| {
                e.get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "an exception".into())
            })
        })
    }
}

/// Runs a training experiment and returns its report (the contents of the run folder's
/// `report.json`). See `flexp.train`.
#[pyfunction]
#[pyo3(signature = (config, progress=None, resume=false, verbose=false))]
pub fn train(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    progress: Option<Py<PyAny>>,
    resume: bool,
    verbose: bool,
) -> PyResult<Py<PyAny>> {
    let (cfg, text) = if resume {
        // Resuming takes the run folder's own settings; `config` names the folder.
        let dir = config::path(config).ok_or_else(|| {
            to_py(flexp::Error::Input(
                "train(resume=True) takes the run folder to resume".into(),
            ))
        })?;
        flexp::run::runner::recorded_config(&dir).or_raise()?
    } else {
        config::resolve(config)?
    };
    let mut prog = PyProgress {
        callback: progress,
        verbose,
        stop: None,
    };
    let outcome = py.detach(|| -> flexp::Result<flexp::run::RunOutcome> {
        let (be, _) = select(BackendChoice::Auto)?;
        match be {
            Selected::Cpu(b) => flexp::run::run(&b, &cfg, &text, resume, &mut prog),
            Selected::Cuda(b) => flexp::run::run(&b, &cfg, &text, resume, &mut prog),
        }
    });
    match (outcome, prog.stop.take()) {
        (Ok(o), _) => to_python(py, &o.report),
        // Raise what stopped the run (KeyboardInterrupt, the callback's exception), with the
        // engine's word on where it stopped as its cause.
        (Err(e @ flexp::Error::Interrupted { .. }), Some(why)) => {
            why.set_cause(py, Some(to_py(e)));
            Err(why)
        }
        (Err(e), _) => Err(to_py(e)),
    }
}

/// The split plan of a configuration: per client its profile, split point, predicted memory
/// and step latency. See `flexp.plan`.
#[pyfunction]
pub fn plan(py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let (cfg, _) = config::resolve(config)?;
    let json = py
        .detach(|| -> flexp::Result<Value> {
            let (mc, projection_bytes) = flexp::model::describe(&cfg.model)?;
            let head = flexp::run::runner::task_head(&cfg)?;
            let (_, plan, _) = flexp::run::runner::plan(&cfg, &mc, projection_bytes, head)?;
            Ok(plan.to_json())
        })
        .or_raise()?;
    to_python(py, &json)
}
