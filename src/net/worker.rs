//! `flexp-run client`: one client of a deployment. It holds only its own rows (a `client-K.csv`
//! from `flexp-run partition`), its blocks 0..cut and its personal adapters; it connects to the
//! server over mutual TLS, takes the run's configuration from the server's Welcome, and for each
//! step the server asks for runs its forward to the cut, sends the activations up, and with the
//! gradients that come back runs its backward (with the alignment term) and updates its adapters.

use super::client::{connect, Session};
use super::exchange;
use super::proto::{
    client_message, server_message, ClientMessage, Hello, Protocol, ServerMessage, StepDone,
};
use super::tls::client_config;
use super::wire::{decode, Limits, WireDType};
use crate::algorithms::flexp_sfl::remote::{ClientHalf, Saved};
use crate::algorithms::{ClientData, Example, Federation};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::federated::TaskHead;
use crate::model::{is_gguf, load_model_and_tokenizer_with};
use crate::run::partition::SPLIT_COLUMN;
use crate::run::runner::{be_bytes_per_block, encode, lora_config, plan, pooling_of, Progress};
use crate::run::{RawConfig, RunConfig, Task};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a client runs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The server's `host:port`.
    pub connect: String,
    /// The name the server's certificate must be valid for.
    pub server_name: String,
    /// The certificate folder (client-K.pem, client-K.key, ca.pem).
    pub tls: PathBuf,
    /// This client's id K.
    pub id: u32,
    /// Its rows (`client-K.csv`).
    pub data: PathBuf,
    /// The global test set (`global_test.csv`), to evaluate the personalized model on it.
    pub global_test: Option<PathBuf>,
    /// The model, when it is not where the server's configuration says.
    pub model: Option<PathBuf>,
    /// Element type of the tensors it sends.
    pub wire: WireDType,
    /// How long to wait for the server (connecting, and between messages).
    pub timeout: Duration,
    /// What one message may carry.
    pub limits: Limits,
}

/// One row of the client's file.
pub(crate) struct Row {
    text: String,
    label: Option<String>,
    response: Option<String>,
    train: bool,
}

/// Reads the client's file: the text column and, as configured, the label and response
/// columns, with the split column saying train or test (a file without one, the global test
/// set, is all test rows when `split_optional`).
pub(crate) fn read_rows(
    path: &Path,
    cfg: Option<&RunConfig>,
    split_optional: bool,
) -> Result<Vec<Row>> {
    let bad = |why: String| Error::Input(format!("{}: {why}", path.display()));
    let mut r = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let header: Vec<String> = r
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| bad(format!("no column `{name}` (columns: {header:?})")))
    };
    let split = match col(SPLIT_COLUMN) {
        Ok(c) => Some(c),
        Err(_) if split_optional => None,
        Err(e) => return Err(e),
    };
    let text = cfg.map(|c| col(&c.text_column)).transpose()?;
    let label = match cfg {
        Some(c) if !c.label_column.is_empty() => Some(col(&c.label_column)?),
        _ => None,
    };
    let response = match cfg.map(|c| &c.task) {
        Some(Task::CausalLm {
            response_column, ..
        }) => Some(col(response_column)?),
        _ => None,
    };
    let mut rows = Vec::new();
    for (line, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let get = |i: usize| rec.get(i).unwrap_or("").to_string();
        let train = match split.map(|c| rec.get(c)) {
            None => false,
            Some(Some("train")) => true,
            Some(Some("test")) => false,
            Some(other) => {
                return Err(bad(format!(
                    "row {}: `{SPLIT_COLUMN}` is {other:?}, not train or test",
                    line + 2
                )))
            }
        };
        rows.push(Row {
            text: text.map(get).unwrap_or_default(),
            label: label.map(get),
            response: response.map(get),
            train,
        });
    }
    Ok(rows)
}

/// This client's examples, tokenised as the simulation tokenises them, with class ids from the
/// server's class list.
pub(crate) fn client_data(
    cfg: &RunConfig,
    rows: &[Row],
    classes: &[String],
    tok: &crate::model::Tokenizer,
    max_len: usize,
) -> Result<ClientData> {
    let labels = rows
        .iter()
        .map(|r| match &r.label {
            Some(l) => classes.iter().position(|c| c == l.trim()).ok_or_else(|| {
                Error::Input(format!(
                    "label {l:?} is not one of the run's classes {classes:?}"
                ))
            }),
            None => Ok(0),
        })
        .collect::<Result<Vec<usize>>>()?;
    let ds = Dataset {
        texts: rows.iter().map(|r| r.text.clone()).collect(),
        labels,
        label_names: if classes.is_empty() {
            vec![String::new()]
        } else {
            classes.to_vec()
        },
        groups: None,
        responses: rows
            .iter()
            .map(|r| r.response.clone())
            .collect::<Option<Vec<String>>>(),
    };
    let (examples, _) = encode(cfg, &ds, tok, max_len)?;
    let mut data = ClientData::default();
    for (e, r) in examples.into_iter().zip(rows) {
        if r.train {
            data.train.push(e);
        } else {
            data.test.push(e);
        }
    }
    Ok(data)
}

/// Runs client `opts.id` until the server says the run is finished.
pub fn run_client<B: Backend>(
    be: &B,
    opts: &ClientOptions,
    progress: &mut dyn Progress,
) -> Result<()> {
    let counts = read_rows(&opts.data, None, false)?;
    let train_n = counts.iter().filter(|r| r.train).count();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Net(format!("starting the runtime: {e}")))?;
    let tls = client_config(&opts.tls, opts.id, &opts.server_name)?;
    let hello = Hello {
        // `FLEXP_FAULT_PROTOCOL=N` (tests): claim another protocol version.
        protocol: std::env::var("FLEXP_FAULT_PROTOCOL")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(Protocol::V1 as i32),
        client: opts.id,
        train_examples: train_n as u64,
        test_examples: (counts.len() - train_n) as u64,
    };
    let max = opts.limits.max_message_bytes + (1 << 20);
    let mut session = rt.block_on(connect(&opts.connect, tls, hello, opts.timeout, max))?;
    let welcome = session.welcome.clone();
    let mut cfg = RawConfig::from_toml(&welcome.config_toml)?.resolve()?;
    if let Some(m) = &opts.model {
        cfg.model = m.clone();
    }
    progress.message(&format!(
        "client {}: connected to {}, cut {}, loading {}",
        opts.id,
        opts.connect,
        welcome.cut,
        cfg.model.display()
    ));
    let (model, tok) = load_model_and_tokenizer_with(be, &cfg.model, cfg.precision)?;
    let rows = read_rows(&opts.data, Some(&cfg), false)?;
    let max_len = cfg.seq_len.min(model.config.max_positions);
    let mine = client_data(&cfg, &rows, &welcome.classes, &tok, max_len)?;
    let global = match &opts.global_test {
        Some(p) => {
            let rows = read_rows(p, Some(&cfg), true)?;
            client_data(&cfg, &rows, &welcome.classes, &tok, max_len)?.test
        }
        None => Vec::new(),
    };
    let head = if matches!(cfg.task, Task::CausalLm { .. }) {
        TaskHead::LanguageModel
    } else {
        TaskHead::Classes(welcome.classes.len())
    };
    let projection_bytes = is_gguf(&cfg.model).then(|| be_bytes_per_block(be, &model));
    let (cost, _, _) = plan(&cfg, &model.config, projection_bytes, head)?;
    let k = opts.id as usize;
    let mut clients = vec![ClientData::default(); cfg.clients];
    if k >= clients.len() {
        return Err(Error::Input(format!(
            "client id {k} is not in a run of {} clients",
            cfg.clients
        )));
    }
    clients[k] = mine;
    let fed = Federation {
        backend: be,
        model: &model,
        lora: lora_config(&cfg),
        head: cost.head(),
        pooling: pooling_of(&model.config),
        clients,
        splits: vec![welcome.cut as usize; cfg.clients],
        hyper: cfg.hyper.clone(),
        cost,
        on_step: None,
    };
    let initial = decode(&welcome.personal, &opts.limits)?;
    let initial = initial
        .first()
        .ok_or_else(|| Error::Input("the Welcome carried no personal adapters".into()))?;
    let mut half = ClientHalf::new(&fed, welcome.cut as usize, &initial.data)?;
    send(&rt, &session, ready(opts.id))?;
    let mut cx = Cx {
        rt: &rt,
        opts,
        fed: &fed,
        global: &global,
        hidden: model.config.hidden,
        k,
    };
    // P_k and its optimizer as each round started, so that a server resumed from its
    // checkpoint at that round replays it from the same state.
    let mut saved: Option<(u64, Saved<B>)> = None;
    loop {
        let outcome = next(&rt, &mut session, opts.timeout)
            .and_then(|msg| cx.handle(msg, &mut session, &mut half, &mut saved, progress));
        match outcome {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(Error::Net(m)) if m.starts_with(CLOSED) => {
                progress.message(&format!("client {k}: {m}; reconnecting"));
                let tls = client_config(&opts.tls, opts.id, &opts.server_name)?;
                session = rt.block_on(connect(&opts.connect, tls, hello, opts.timeout, max))?;
                let round = session.welcome.round;
                if let Some((r, state)) = &saved {
                    if *r == round {
                        half.restore(&fed, state)?;
                    }
                }
                send(&rt, &session, ready(opts.id))?;
                progress.message(&format!(
                    "client {k}: reconnected; the server resumes at round {}",
                    round + 1
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a client's message handling reads.
struct Cx<'a, B: Backend> {
    rt: &'a tokio::runtime::Runtime,
    opts: &'a ClientOptions,
    fed: &'a Federation<'a, B>,
    global: &'a [Example],
    hidden: usize,
    k: usize,
}

impl<B: Backend> Cx<'_, B> {
    /// Handles one message from the server; true when the run is finished.
    fn handle(
        &mut self,
        msg: server_message::Body,
        session: &mut Session,
        half: &mut ClientHalf<B>,
        saved: &mut Option<(u64, Saved<B>)>,
        progress: &mut dyn Progress,
    ) -> Result<bool> {
        let (rt, opts, fed, global, hidden, k) = (
            self.rt,
            self.opts,
            self.fed,
            self.global,
            self.hidden,
            self.k,
        );
        match msg {
            server_message::Body::Round(r) => {
                let round = r.header.map_or(0, |h| h.round);
                *saved = Some((round, half.save(fed)?));
                let snap = decode(&r.snapshot, &opts.limits)?;
                half.set_snapshot(fed, snap.first().map(|t| t.data.as_slice()))?;
            }
            server_message::Body::Step(req) => {
                let header = req.header.unwrap_or_default();
                let train = &fed.clients[k].train;
                let batch: Vec<&Example> = req
                    .batch
                    .iter()
                    .map(|&i| {
                        train.get(i as usize).ok_or_else(|| {
                            Error::Input(format!(
                                "the server asked for training row {i} of {}",
                                train.len()
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                let mut server_rejected = false;
                let fault = Fault::at(header.round, header.step);
                let outcome = half.step(fed, &batch, |up| {
                    let mut smashed = std::borrow::Cow::Borrowed(&up.smashed);
                    if fault == Some(Fault::Nan) {
                        smashed.to_mut()[0][0] = f32::NAN;
                    }
                    let mut a =
                        exchange::activations(header, &smashed, &up.outputs, hidden, opts.wire)?;
                    if let Some(f) = fault {
                        f.spoil(&mut a);
                    }
                    if fault == Some(Fault::Replay) {
                        send(rt, session, client_message::Body::Activations(a.clone()))?;
                    }
                    send(rt, session, client_message::Body::Activations(a))?;
                    if fault == Some(Fault::Truncate) {
                        // The connection dies after the cut message left, as a crash would.
                        std::thread::sleep(Duration::from_millis(300));
                        std::process::abort();
                    }
                    match next(rt, session, opts.timeout)? {
                        server_message::Body::Gradients(g) => Ok(Some(
                            exchange::read_gradients(&g, &opts.limits, &up.smashed)?
                                .into_iter()
                                .map(Some)
                                .collect(),
                        )),
                        server_message::Body::Rejected(r) => {
                            progress.message(&format!("client {k}: step rejected: {}", r.reason));
                            server_rejected = true;
                            Ok(None)
                        }
                        other => Err(Error::Net(format!(
                            "expected gradients from the server, got {other:?}"
                        ))),
                    }
                })?;
                // The server already knows about a step it rejected.
                if !server_rejected {
                    let done = StepDone {
                        header: Some(header),
                        applied: outcome.is_none(),
                        reason: outcome.unwrap_or_default(),
                    };
                    if fault == Some(Fault::Replay) {
                        send(rt, session, client_message::Body::Done(done.clone()))?;
                    }
                    send(rt, session, client_message::Body::Done(done))?;
                }
            }
            server_message::Body::Eval(req) => {
                let header = req.header.unwrap_or_default();
                let picked: Vec<Example> = if global.is_empty() {
                    Vec::new()
                } else {
                    req.global_rows
                        .iter()
                        .map(|&i| {
                            global.get(i as usize).cloned().ok_or_else(|| {
                                Error::Input(format!(
                                    "the server asked for global test row {i} of {}",
                                    global.len()
                                ))
                            })
                        })
                        .collect::<Result<_>>()?
                };
                let part = |examples: &[Example]| -> Result<Option<super::proto::Activations>> {
                    if examples.is_empty() {
                        return Ok(None);
                    }
                    let (h, o) = half.forward_to_cut(fed, examples)?;
                    exchange::activations(header, &h, &o, hidden, opts.wire).map(Some)
                };
                let own = part(&fed.clients[k].test)?;
                let global_part = part(&picked)?;
                let e = super::proto::EvalActivations {
                    header: Some(header),
                    own,
                    global: global_part,
                };
                send(rt, session, client_message::Body::Eval(e))?;
            }
            server_message::Body::Finished(f) => {
                progress.message(&format!(
                    "client {k}: the run finished after {} rounds",
                    f.rounds
                ));
                return Ok(true);
            }
            server_message::Body::Rejected(r) => {
                progress.message(&format!("client {k}: rejected: {}", r.reason));
            }
            other => {
                return Err(Error::Net(format!(
                    "unexpected message from the server: {other:?}"
                )));
            }
        }
        Ok(false)
    }
}

/// The message saying the client can take steps.
fn ready(id: u32) -> client_message::Body {
    client_message::Body::Ready(super::proto::Ready { client: id })
}

/// How an error about a closed session starts (the client then reconnects).
const CLOSED: &str = "the session to the server closed";

fn closed() -> Error {
    Error::Net(CLOSED.into())
}

fn send(rt: &tokio::runtime::Runtime, s: &Session, body: client_message::Body) -> Result<()> {
    rt.block_on(s.outbound.send(ClientMessage { body: Some(body) }))
        .map_err(|_| closed())
}

/// The server's next message; the [`CLOSED`] error (the client reconnects) when the server
/// ended or broke the stream (it refused a message, or stopped).
fn next(
    rt: &tokio::runtime::Runtime,
    s: &mut Session,
    timeout: Duration,
) -> Result<server_message::Body> {
    match rt.block_on(async { tokio::time::timeout(timeout, s.inbound.message()).await }) {
        Err(_) => Err(Error::Net(format!(
            "no message from the server within {timeout:?}"
        ))),
        Ok(Err(st)) => Err(Error::Net(format!("{CLOSED}: {}", st.message()))),
        Ok(Ok(None)) => Err(closed()),
        Ok(Ok(Some(ServerMessage { body: Some(b) }))) => Ok(b),
        Ok(Ok(Some(ServerMessage { body: None }))) => {
            Err(Error::Net("the server sent an empty message".into()))
        }
    }
}

/// Fault injection for the deployment tests (docs/testing.md): with `FLEXP_FAULT=KIND:R` a
/// client misbehaves in the first step of round R (0-based), as a broken or malicious client
/// would, so the tests can show what the server does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `nan`: a NaN among its activations.
    Nan,
    /// `replay`: its activations and its step verdict sent twice.
    Replay,
    /// `bogus-size`: a frame declaring a 1 GiB tensor (with a few bytes of data).
    BogusSize,
    /// `oversize`: an extra 8 MiB frame, past a server started with a smaller
    /// `--max-message-mb`.
    Oversize,
    /// `truncate`: the last tensor cut in half (its checksum made to match), then the process
    /// dies.
    Truncate,
}

impl Fault {
    /// The fault asked for at (round, step), if any.
    fn at(round: u64, step: u64) -> Option<Fault> {
        let v = std::env::var("FLEXP_FAULT").ok()?;
        let (kind, r) = v.trim().split_once(':')?;
        if r.parse::<u64>().ok()? != round || step != 0 {
            return None;
        }
        Some(match kind {
            "nan" => Fault::Nan,
            "replay" => Fault::Replay,
            "bogus-size" => Fault::BogusSize,
            "oversize" => Fault::Oversize,
            "truncate" => Fault::Truncate,
            _ => return None,
        })
    }

    /// Spoils an activations message as the fault asks.
    fn spoil(self, a: &mut super::proto::Activations) {
        match self {
            Fault::BogusSize => {
                if let Some(f) = a.frames.first_mut() {
                    let (rows, cols) = (1u64 << 18, 1u64 << 10);
                    f.shape = vec![rows, cols];
                    f.total_bytes = rows * cols * 4;
                }
            }
            Fault::Oversize => {
                let mut extra = a.frames.last().cloned().unwrap_or_default();
                extra.data = vec![0; 8 << 20];
                a.frames.push(extra);
            }
            Fault::Truncate => {
                if let Some(f) = a.frames.last_mut() {
                    let half = f.data.len() / 2;
                    f.data.truncate(half);
                    f.crc32 = crc32fast::hash(&f.data);
                }
            }
            Fault::Nan | Fault::Replay => {}
        }
    }
}
