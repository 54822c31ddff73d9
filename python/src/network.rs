//! `flexp.Server` and `flexp.Client`: the two roles of a deployment (`flexp-run serve` and
//! `flexp-run client`) as objects, run in the calling thread (`run`) or in the background
//! (`start`, then `wait`).

use crate::config;
use crate::errors::{raise, OrRaise};
use crate::training::to_python;
use flexp::backend::cuda::{select, BackendChoice, Selected};
use flexp::net::serve::{RoundDriver, RoundGate, ServeOptions};
use flexp::net::wire::{Limits, WireDType};
use flexp::net::worker::ClientOptions;
use flexp::run::{LogProgress, Progress, RunConfig};
use pyo3::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

/// Progress that says nothing, or logs to stderr.
struct Quiet(bool);

impl Progress for Quiet {
    fn message(&mut self, text: &str) {
        if self.0 {
            LogProgress.message(text);
        }
    }
    fn round(&mut self, round: usize, rounds: usize, loss: f64, eval: Option<&Value>) {
        if self.0 {
            LogProgress.round(round, rounds, loss, eval);
        }
    }
}

fn seconds(py: Python<'_>, what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        raise(
            py,
            "InputError",
            format!("{what} = {s}: expected a number of seconds >= 0"),
        )
    })
}

fn wire(py: Python<'_>, w: &str) -> PyResult<WireDType> {
    WireDType::parse(w).map_err(|e| raise(py, "InputError", e.to_string()))
}

fn a_path(py: Python<'_>, what: &str, obj: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    config::path(obj).ok_or_else(|| {
        raise(
            py,
            "ConfigTypeError",
            format!("{what}: expected a path (str or os.PathLike)"),
        )
    })
}

/// A background run: its thread, until `wait` takes it.
type Job = Mutex<Option<JoinHandle<flexp::Result<Value>>>>;

fn start(
    job: &Job,
    py: Python<'_>,
    f: impl FnOnce() -> flexp::Result<Value> + Send + 'static,
) -> PyResult<()> {
    let mut slot = job.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_some() {
        return Err(raise(py, "InputError", "already started".into()));
    }
    *slot = Some(std::thread::spawn(f));
    Ok(())
}

fn wait(job: &Job, py: Python<'_>) -> PyResult<Py<PyAny>> {
    let handle = job
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| raise(py, "InputError", "not started (call start() first)".into()))?;
    // Poll so that Ctrl-C reaches Python while the run goes on in its thread.
    while !handle.is_finished() {
        py.detach(|| std::thread::sleep(Duration::from_millis(50)));
        py.check_signals()?;
    }
    match handle.join() {
        Ok(r) => to_python(py, &r.or_raise()?),
        Err(_) => Err(raise(
            py,
            "BackendError",
            "the run's thread panicked".into(),
        )),
    }
}

/// The FlexP-SFL server of a deployment (`flexp-run serve`).
#[pyclass(module = "flexp._flexp", frozen)]
pub struct Server {
    cfg: RunConfig,
    text: String,
    opts: ServeOptions,
    verbose: bool,
    gated: bool,
    driver: Mutex<Option<RoundDriver>>,
    job: Job,
}

impl Server {
    fn serve(
        cfg: &RunConfig,
        text: &str,
        opts: &ServeOptions,
        verbose: bool,
    ) -> flexp::Result<Value> {
        let (be, _) = select(BackendChoice::Auto)?;
        let mut p = Quiet(verbose);
        match be {
            Selected::Cpu(b) => flexp::net::serve::serve(&b, cfg, text, opts, &mut p),
            Selected::Cuda(b) => flexp::net::serve::serve(&b, cfg, text, opts, &mut p),
        }
    }
}

#[pymethods]
impl Server {
    /// A server for `config` (a dict or a TOML path) listening on `listen` ("host:port"), with
    /// the certificates in `tls` (server.pem, server.key, ca.pem), writing its run folder to
    /// `out` (by default the configuration's `out`).
    #[new]
    #[pyo3(signature = (config, listen, tls, out=None, wire="f32", step_deadline=60.0, join_timeout=300.0, max_message_mb=256, resume=false, verbose=false, partition=None, gated=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        listen: &str,
        tls: &Bound<'_, PyAny>,
        out: Option<&Bound<'_, PyAny>>,
        wire: &str,
        step_deadline: f64,
        join_timeout: f64,
        max_message_mb: usize,
        resume: bool,
        verbose: bool,
        partition: Option<&Bound<'_, PyAny>>,
        gated: bool,
    ) -> PyResult<Server> {
        let (cfg, text) = config::resolve(config)?;
        let listen = listen.parse().map_err(|e| {
            raise(
                py,
                "InputError",
                format!("listen = {listen:?}: {e} (expected host:port)"),
            )
        })?;
        let opts = ServeOptions {
            listen,
            tls: a_path(py, "tls", tls)?,
            out: match out {
                Some(o) => a_path(py, "out", o)?,
                None => cfg.out.clone(),
            },
            wire: self::wire(py, wire)?,
            step_deadline: seconds(py, "step_deadline", step_deadline)?,
            join_timeout: seconds(py, "join_timeout", join_timeout)?,
            limits: limits(py, max_message_mb)?,
            resume,
            partition: partition.map(|p| a_path(py, "partition", p)).transpose()?,
            gate: None,
        };
        Ok(Server {
            cfg,
            text,
            opts,
            verbose,
            gated,
            driver: Mutex::new(None),
            job: Mutex::new(None),
        })
    }

    /// Serves the run to its end and returns the report (`start()` then `wait()`: Ctrl-C
    /// raises `KeyboardInterrupt` here while the server goes on in its thread).
    fn run(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.start(py)?;
        self.wait(py)
    }

    /// Starts serving in a background thread; `wait()` returns the report. A gated server
    /// (`gated=True`) runs each round only when `next_round()` asks for it.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let (cfg, text, mut opts, verbose) = (
            self.cfg.clone(),
            self.text.clone(),
            self.opts.clone(),
            self.verbose,
        );
        if self.gated {
            let (gate, driver) = RoundGate::new();
            opts.gate = Some(gate);
            *self.driver.lock().unwrap_or_else(|p| p.into_inner()) = Some(driver);
        }
        start(&self.job, py, move || {
            Self::serve(&cfg, &text, &opts, verbose)
        })
    }

    /// Runs the next round of a started gated server and returns what it did: `round`,
    /// `participants`, `completed` (the clients that finished it), `train_loss`, and `metrics`
    /// (the metrics.jsonl line, at evaluation rounds).
    fn next_round(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let guard = self.driver.lock().unwrap_or_else(|p| p.into_inner());
        let driver = guard.as_ref().ok_or_else(|| {
            raise(
                py,
                "InputError",
                "next_round() needs a started server made with gated=True".into(),
            )
        })?;
        // The server stopped: its error, or the end of the run.
        let gone = |py: Python<'_>| match wait(&self.job, py) {
            Err(e) => e,
            Ok(_) => raise(py, "InputError", "the run has no more rounds".into()),
        };
        if !driver.go() {
            return Err(gone(py));
        }
        loop {
            match py.detach(|| driver.finished(Duration::from_millis(50))) {
                Ok(Some(v)) => return to_python(py, &v),
                Ok(None) => py.check_signals()?,
                Err(_) => return Err(gone(py)),
            }
        }
    }

    /// The number of rounds of the run.
    #[getter]
    fn rounds(&self) -> usize {
        self.cfg.rounds
    }

    /// The number of clients of the run.
    #[getter]
    fn clients(&self) -> usize {
        self.cfg.clients
    }

    /// Waits for a started server to finish; its report.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        wait(&self.job, py)
    }
}

/// One client of a deployment (`flexp-run client`).
#[pyclass(module = "flexp._flexp", frozen)]
pub struct Client {
    opts: ClientOptions,
    verbose: bool,
    job: Job,
}

impl Client {
    fn work(opts: &ClientOptions, verbose: bool) -> flexp::Result<Value> {
        let (be, _) = select(BackendChoice::Auto)?;
        let mut p = Quiet(verbose);
        match be {
            Selected::Cpu(b) => flexp::net::worker::run_client(&b, opts, &mut p)?,
            Selected::Cuda(b) => flexp::net::worker::run_client(&b, opts, &mut p)?,
        }
        Ok(serde_json::json!({ "client": opts.id, "finished": true }))
    }
}

#[pymethods]
impl Client {
    /// Client `id` of the server at `connect` ("host:port"), with its certificate in `tls`
    /// (client-K.pem, client-K.key, ca.pem) and its rows in `data` (client-K.csv from
    /// `flexp-run partition`).
    #[new]
    #[pyo3(signature = (connect, tls, id, data, global_test=None, model=None, server_name="localhost".to_string(), wire="f32", timeout=600.0, max_message_mb=256, verbose=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        connect: String,
        tls: &Bound<'_, PyAny>,
        id: u32,
        data: &Bound<'_, PyAny>,
        global_test: Option<&Bound<'_, PyAny>>,
        model: Option<&Bound<'_, PyAny>>,
        server_name: String,
        wire: &str,
        timeout: f64,
        max_message_mb: usize,
        verbose: bool,
    ) -> PyResult<Client> {
        let opts = ClientOptions {
            connect,
            server_name,
            tls: a_path(py, "tls", tls)?,
            id,
            data: a_path(py, "data", data)?,
            global_test: global_test
                .map(|g| a_path(py, "global_test", g))
                .transpose()?,
            model: model.map(|m| a_path(py, "model", m)).transpose()?,
            wire: self::wire(py, wire)?,
            timeout: seconds(py, "timeout", timeout)?,
            limits: limits(py, max_message_mb)?,
        };
        Ok(Client {
            opts,
            verbose,
            job: Mutex::new(None),
        })
    }

    /// Takes part in the run until the server finishes it (`start()` then `wait()`: Ctrl-C
    /// raises `KeyboardInterrupt` here while the client goes on in its thread).
    fn run(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.start(py)?;
        self.wait(py)
    }

    /// Starts the client in a background thread; `wait()` returns when the run is finished.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let (opts, verbose) = (self.opts.clone(), self.verbose);
        start(&self.job, py, move || Self::work(&opts, verbose))
    }

    /// Waits for a started client to finish.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        wait(&self.job, py)
    }
}

fn limits(py: Python<'_>, mb: usize) -> PyResult<Limits> {
    Limits::with_message_mb(mb).map_err(|e| raise(py, "InputError", format!("max_message_mb: {e}")))
}

/// Writes trial certificates for a deployment of `clients` clients into `out` (see
/// `flexp-run certs`): ca.pem, server.pem/.key, client-K.pem/.key.
#[pyfunction]
pub fn certs(py: Python<'_>, out: &Bound<'_, PyAny>, clients: u32) -> PyResult<()> {
    let out = a_path(py, "out", out)?;
    py.detach(|| flexp::net::certs::write_trial_certs(&out, clients))
        .or_raise()
}

/// Writes each client's rows (client-K.csv) and the global test set (global_test.csv) into
/// `out`, exactly as the simulation splits the configuration's data (see `flexp-run
/// partition`); returns the manifest.
#[pyfunction]
pub fn partition(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let (cfg, _) = config::resolve(config)?;
    let out = a_path(py, "out", out)?;
    let manifest = py
        .detach(|| flexp::run::partition::write_partition(&cfg, &out, &mut Quiet(false)))
        .or_raise()?;
    to_python(py, &manifest)
}
