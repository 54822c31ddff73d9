//! `flexp-run serve`: the FlexP-SFL server of a deployment. It holds the global adapters G and
//! their optimizer, draws each round's participants and each client's batch indices with the
//! run's seeded generator (so the deployment draws what the simulation draws), packs the
//! activations of every client that answered into one server sweep, and sends each its
//! gradients. Clients hold their data and personal adapters; the server never sees either.
//!
//! A client that does not answer a step within `step_deadline` is dropped from the rest of the
//! round (the others go on); it takes part again when a later round samples it and it is
//! connected. A client whose message is malformed (bad frames, NaN/Inf values, wrong shapes) is
//! rejected for the step with the reason in the log, and no other client's state is touched.

use super::exchange::{self, FRAME_BYTES};
use super::proto::split_training_server::SplitTrainingServer;
use super::proto::{
    client_message, server_message, EvalRequest, Finished, Header, Protocol, Rejected, RoundStart,
    ServerMessage, StepRequest, Welcome,
};
use super::session::{Event, Hub, Service};
use super::tls::server_config;
use super::wire::{encode, Limits, WireDType};
use crate::algorithms::flexp_sfl::remote::UploadParts;
use crate::algorithms::flexp_sfl::FlexpSfl;
use crate::algorithms::Algorithm;
use crate::algorithms::{
    evaluate, sample_batch_indices, AlgorithmKind, ClientData, EvalStats, Example, Federation,
    RoundLog,
};
use crate::backend::Backend;
use crate::data::global_test;
use crate::error::{Error, Result};
use crate::federated::TaskHead;
use crate::fsutil::{lock_dir, write_atomic};
use crate::model::{is_gguf, load_model_and_tokenizer_with};
use crate::rng::Rng;
use crate::run::checkpoint::{self, Meta};
use crate::run::ledger::{finite_or_null, ClientFacts, Eval, Ledger};
use crate::run::runner::{
    abort_if_asked, be_bytes_per_block, encode as encode_examples, global_eval_rows, lora_config,
    plan, pooling_of, sample_participants, split_data, subset, task_head, Progress,
};
use crate::run::RunConfig;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The certificate folder (server.pem, server.key, ca.pem).
    pub tls: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    /// Element type of tensors on the wire.
    pub wire: WireDType,
    /// How long to wait for a client's answer in a step.
    pub step_deadline: Duration,
    /// How long to wait for every client to connect before the first round.
    pub join_timeout: Duration,
    /// What one message may carry.
    pub limits: Limits,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// A `flexp-run partition` folder: the server then reads only its manifest and
    /// `global_test.csv`, never the clients' rows (`data.path` need not exist here).
    pub partition: Option<PathBuf>,
    /// When set, a caller drives the rounds (see [`RoundGate`]).
    pub gate: Option<Arc<RoundGate>>,
}

/// Lets a caller drive a deployment round by round (the Flower app's ServerApp does): the
/// server waits for a go before each round and reports each round once it is done. Made with
/// [`RoundGate::new`], whose [`RoundDriver`] the caller keeps.
#[derive(Debug)]
pub struct RoundGate {
    go: Mutex<std_mpsc::Receiver<()>>,
    done: std_mpsc::Sender<Value>,
}

/// The caller's end of a [`RoundGate`].
#[derive(Debug)]
pub struct RoundDriver {
    go: std_mpsc::Sender<()>,
    done: Mutex<std_mpsc::Receiver<Value>>,
}

impl RoundGate {
    /// A gate for the server and the driver for the caller.
    pub fn new() -> (Arc<RoundGate>, RoundDriver) {
        let (go_tx, go_rx) = std_mpsc::channel();
        let (done_tx, done_rx) = std_mpsc::channel();
        (
            Arc::new(RoundGate {
                go: Mutex::new(go_rx),
                done: done_tx,
            }),
            RoundDriver {
                go: go_tx,
                done: Mutex::new(done_rx),
            },
        )
    }

    /// Waits for the go of the next round; an error when the driver is gone.
    fn wait(&self, round: usize) -> Result<()> {
        let go = self.go.lock().unwrap_or_else(|p| p.into_inner());
        go.recv().map_err(|_| Error::Interrupted {
            round,
            reason: "the caller driving the rounds stopped".into(),
        })
    }
}

impl RoundDriver {
    /// Lets the server run its next round; false when the server is gone.
    pub fn go(&self) -> bool {
        self.go.send(()).is_ok()
    }

    /// The report of the round the server finished, if one comes within `wait`; an error when
    /// the server is gone.
    pub fn finished(&self, wait: Duration) -> Result<Option<Value>> {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        match done.recv_timeout(wait) {
            Ok(v) => Ok(Some(v)),
            Err(std_mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Net("the server stopped".into()))
            }
        }
    }
}

/// Per-client measurements of the deployment: what crossed the wire (encoded message sizes),
/// and the time from sending a step's batch to receiving its activations.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct ClientStats {
    rounds_completed: usize,
    bytes_sent: u64,
    bytes_received: u64,
    step_latency: Vec<f64>,
    /// Answers the server had already taken, sent again (and ignored).
    #[serde(default)]
    replays_ignored: u64,
}

impl ClientStats {
    /// The report's per-client fields of the deployment.
    fn fields(&self) -> serde_json::Map<String, Value> {
        let mut lat = self.step_latency.clone();
        lat.sort_by(f64::total_cmp);
        let mean = (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64);
        // Nearest rank.
        let p95 = (!lat.is_empty()).then(|| lat[((lat.len() * 95).div_ceil(100)).max(1) - 1]);
        let mut m = serde_json::Map::new();
        m.insert("rounds_completed".into(), json!(self.rounds_completed));
        m.insert("wire_bytes_up".into(), json!(self.bytes_received));
        m.insert("wire_bytes_down".into(), json!(self.bytes_sent));
        m.insert("step_latency_s_mean".into(), json!(mean));
        m.insert("step_latency_s_p95".into(), json!(p95));
        m.insert("replays_ignored".into(), json!(self.replays_ignored));
        m
    }
}

/// Runs the server until `cfg.rounds` rounds are done and writes the run folder a simulation
/// writes (`config.toml`, `plan.json`, `metrics.jsonl`, `report.json`, `report.md`, plots),
/// from the same books: the cost and evaluation figures equal the simulation's for the same
/// configuration when every client takes part. `report.json` adds a `deployment` object and, per
/// client, the rounds it completed, the bytes that crossed the wire and the measured latency of
/// its steps.
pub fn serve<B: Backend + 'static>(
    be: &B,
    cfg: &RunConfig,
    config_toml: &str,
    opts: &ServeOptions,
    progress: &mut dyn Progress,
) -> Result<Value> {
    if cfg.algorithm != AlgorithmKind::FlexpSfl {
        return Err(Error::Input(format!(
            "a deployment runs flexp-sfl; `algorithm = \"{}\"` runs in the simulation only",
            cfg.algorithm.name()
        )));
    }
    let (model, tok) = load_model_and_tokenizer_with(be, &cfg.model, cfg.precision)?;
    // Per client (training rows, test rows), the class names, and the global test set in
    // global_test.csv's order: from the data file as the simulation splits it, or from a
    // partition folder.
    let max_len = cfg.seq_len.min(model.config.max_positions);
    let split = match &opts.partition {
        Some(dir) => from_partition(cfg, dir, &tok, max_len)?,
        None => from_data(cfg, &tok, max_len, progress)?,
    };
    let Split {
        classes,
        counts,
        global_test: global_examples,
    } = split;
    let train_counts: Vec<usize> = counts.iter().map(|c| c.0).collect();
    // The global evaluation set as the simulation picks it: its rows' positions in
    // global_test.csv (which the clients hold), and its examples for the global model.
    let global_rows = global_eval_rows(cfg, global_examples.len());
    let global_eval: Vec<Example> = global_rows
        .iter()
        .map(|&p| global_examples[p].clone())
        .collect();
    // The classes known from the split (a partition folder's manifest), not from the data file.
    let head = match cfg.task {
        crate::run::Task::Classify => TaskHead::Classes(classes.len()),
        _ => task_head(cfg)?,
    };
    let projection_bytes = is_gguf(&cfg.model).then(|| be_bytes_per_block(be, &model));
    let (cost, split_plan, profiles) = plan(cfg, &model.config, projection_bytes, head)?;
    let facts: Vec<ClientFacts> = (0..cfg.clients)
        .map(|k| ClientFacts {
            profile: profiles[k].name.clone(),
            split: Some(split_plan.splits[k]),
            train_examples: train_counts[k],
            test_examples: counts[k].1,
            memory_bytes: split_plan.rows[k].memory_bytes,
        })
        .collect();
    let fed = Federation {
        backend: be,
        model: &model,
        lora: lora_config(cfg),
        head: cost.head(),
        pooling: pooling_of(&model.config),
        clients: vec![ClientData::default(); cfg.clients],
        splits: split_plan.splits.clone(),
        hyper: cfg.hyper.clone(),
        cost: cost.clone(),
        on_step: None,
    };
    // The generator and the initial adapters exactly as the simulation draws them.
    let mut rng = Rng::new(cfg.seed);
    let mut algo = FlexpSfl::new(&fed, &mut rng)?;
    algo.check_deployable()?;
    let n_classes = match head {
        TaskHead::Classes(c) => c,
        TaskHead::LanguageModel => 0,
    };

    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let _lock = lock_dir(&opts.out)?;
    let ckpt = opts.out.join("checkpoint");
    let mut start_round = 0;
    let mut stats = vec![ClientStats::default(); cfg.clients];
    let mut meta = None;
    if opts.resume {
        let resumed = resume(&opts.out, config_toml, be, &mut algo)?;
        rng = Rng::new(resumed.meta.rng_state);
        start_round = resumed.meta.round;
        stats = resumed.stats;
        meta = Some(resumed.meta);
        progress.message(&format!("resuming after round {start_round}"));
    } else if opts.out.join("report.json").exists() || ckpt.exists() {
        return Err(Error::Input(format!(
            "{} already holds a run; choose another folder, or pass --resume",
            opts.out.display()
        )));
    }
    let mut books = Ledger::open(&opts.out, cfg, meta.as_ref())?;
    write_atomic(&opts.out.join("config.toml"), config_toml.as_bytes())?;
    progress.message(&split_plan.table());
    write_atomic(
        &opts.out.join("plan.json"),
        split_plan.to_json().to_string().as_bytes(),
    )?;

    let mut welcomes = Vec::with_capacity(cfg.clients);
    for k in 0..cfg.clients {
        let init = algo.initial_personal(be, k)?;
        welcomes.push(Welcome {
            protocol: Protocol::V1 as i32,
            config_toml: config_toml.to_string(),
            round: start_round as u64,
            classes: classes.clone(),
            cut: algo.cut(k) as u32,
            personal: encode(&[(&[init.len()], &init)], WireDType::F32, FRAME_BYTES)?,
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Net(format!("starting the runtime: {e}")))?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let hub = Hub::new(welcomes, events_tx);
    let tls = server_config(&opts.tls)?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(opts.listen))
        .map_err(|e| Error::Net(format!("listening on {}: {e}", opts.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Net(e.to_string()))?;
    let max = opts.limits.max_message_bytes + (1 << 20);
    let service = SplitTrainingServer::new(Service::new(hub.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // HTTP/2's default flow-control window (64 KiB) makes a message of megabytes wait for a
    // window update every 64 KiB, each a round trip through busy processes; a window as large
    // as a step's activations lets them flow.
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(super::FLOW_WINDOW))
        .initial_connection_window_size(Some(super::FLOW_WINDOW))
        .tls_config(tls)
        .map_err(|e| Error::Net(format!("TLS settings: {e}")))?
        .add_service(service);
    let serving = rt.spawn(async move {
        server
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
    });
    progress.message(&format!(
        "serving {} clients on {bound} (flexp-sfl, {} rounds)",
        cfg.clients, cfg.rounds
    ));

    let mut last_eval: Option<Eval> = None;
    let mut st = State {
        connected: vec![false; cfg.clients],
        stats,
        pending: Vec::new(),
        taken: vec![[None; 3]; cfg.clients],
    };
    // Wait for every client to be ready before the first round, so a full deployment samples
    // as the simulation does.
    let deadline = Instant::now() + opts.join_timeout;
    while st.connected.iter().any(|c| !c) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rt.block_on(async { tokio::time::timeout(left, events.recv()).await }) {
            Ok(Some(ev)) => st.absorb(ev, &train_counts, progress),
            _ => {
                let missing: Vec<usize> = (0..cfg.clients).filter(|&k| !st.connected[k]).collect();
                return Err(Error::Net(format!(
                    "clients {missing:?} did not connect and load within {:?}",
                    opts.join_timeout
                )));
            }
        }
    }

    // Wall time counts training, as the simulation's does, not the wait for the clients.
    books.start_clock();
    for round in start_round..cfg.rounds {
        if let Some(g) = &opts.gate {
            g.wait(round)?;
        }
        let participants = sample_participants(cfg.clients, cfg.hyper.client_fraction, &mut rng);
        // Answers that came too late for an earlier round are dropped.
        st.pending.clear();
        let mut log = RoundLog::default();
        let snapshot = algo.round_snapshot(&fed, &participants, &mut log)?;
        let mut cx = RoundCx {
            rt: &rt,
            hub: &hub,
            events: &mut events,
            st: &mut st,
            opts,
            round: round as u64,
            hidden: model.config.hidden,
            classes: n_classes,
            train_counts: &train_counts,
        };
        let mut excluded = vec![false; cfg.clients];
        // One snapshot for every participant: encoded once.
        let frames = match &snapshot {
            Some(g) => encode(&[(&[g.len()], g)], opts.wire, FRAME_BYTES)?,
            None => Vec::new(),
        };
        for &k in &participants {
            let msg = ServerMessage {
                body: Some(server_message::Body::Round(RoundStart {
                    header: Some(cx.header(k, 0)),
                    snapshot: frames.clone(),
                })),
            };
            // A client whose session is not ready (gone, or reconnected and still loading)
            // sits this round out.
            if !cx.st.connected[k] || !cx.send(k, msg) {
                excluded[k] = true;
                log.rejected.push((k, "not connected".into()));
            }
        }
        for step in 0..cfg.hyper.local_steps {
            let active: Vec<usize> = participants
                .iter()
                .copied()
                .filter(|&k| !excluded[k])
                .collect();
            if active.is_empty() {
                break;
            }
            run_step(
                &mut cx,
                &mut algo,
                &fed,
                &mut rng,
                &active,
                step as u64,
                &mut excluded,
                &mut log,
            )?;
        }
        for &k in &participants {
            if !excluded[k] {
                cx.st.stats[k].rounds_completed += 1;
            }
        }
        books.charge(&log, &profiles, cfg.server_flops);
        let r = round + 1;
        for (k, why) in &log.rejected {
            progress.message(&format!("round {r}: client {k} step rejected: {why}"));
        }
        let mut line = None;
        if r % cfg.eval_every == 0 || r == cfg.rounds {
            let ev = evaluate_round(&mut cx, &algo, &fed, &global_rows, &global_eval)?;
            let extra = deployment_fields(&ev, &participants, &st.stats);
            line = Some(books.evaluated(r, log.mean_loss(), &ev, extra)?);
            last_eval = Some(ev);
        }
        progress.round(r, cfg.rounds, log.mean_loss(), line.as_ref());
        if cfg.checkpoint_every > 0 && (r % cfg.checkpoint_every == 0 || r == cfg.rounds) {
            // The deployment's own counters first, named by round: a crash between the two
            // writes leaves meta.json at the previous round, whose file is still there.
            let deploy =
                serde_json::to_vec(&st.stats).map_err(|e| Error::Backend(e.to_string()))?;
            std::fs::create_dir_all(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
            write_atomic(&ckpt.join(format!("deploy-{r}.json")), &deploy)?;
            let meta = books.meta(r, rng.state(), checkpoint::counters(&mut algo));
            checkpoint::save(&ckpt, be, &mut algo, &meta)?;
            let _ = std::fs::remove_file(ckpt.join(format!(
                "deploy-{}.json",
                r.saturating_sub(cfg.checkpoint_every)
            )));
            abort_if_asked(r);
        }
        if let Some(g) = &opts.gate {
            let _ = g.done.send(json!({
                "round": r,
                "rounds": cfg.rounds,
                "participants": participants,
                "completed": participants.iter().filter(|&&k| !excluded[k]).collect::<Vec<_>>(),
                "train_loss": finite_or_null(log.mean_loss()),
                "metrics": line,
            }));
        }
    }
    // A run resumed after its last round has no evaluation yet.
    let ev = match last_eval {
        Some(ev) => ev,
        None => {
            let mut cx = RoundCx {
                rt: &rt,
                hub: &hub,
                events: &mut events,
                st: &mut st,
                opts,
                round: cfg.rounds as u64,
                hidden: model.config.hidden,
                classes: n_classes,
                train_counts: &train_counts,
            };
            evaluate_round(&mut cx, &algo, &fed, &global_rows, &global_eval)?
        }
    };
    for k in 0..cfg.clients {
        let msg = ServerMessage {
            body: Some(server_message::Body::Finished(Finished {
                rounds: cfg.rounds as u64,
            })),
        };
        rt.block_on(hub.send(k as u32, msg));
    }
    let mut report = books.report(cfg, &facts, &ev);
    if let Value::Object(o) = &mut report {
        o.insert(
            "deployment".into(),
            json!({
                "listen": bound.to_string(),
                "wire": format!("{:?}", opts.wire).to_lowercase(),
                "step_deadline_s": opts.step_deadline.as_secs_f64(),
                "wire_bytes_up_total": st.stats.iter().map(|s| s.bytes_received).sum::<u64>(),
                "wire_bytes_down_total": st.stats.iter().map(|s| s.bytes_sent).sum::<u64>(),
                "figures": "bytes_up/bytes_down and simulated_seconds are the simulation's accounting \
                            (activations as f32, device profiles); wire_bytes_* are the encoded \
                            messages that crossed the network, step_latency_s_* the measured time \
                            from sending a step's batch to receiving its activations",
            }),
        );
    }
    if let Some(Value::Array(rows)) = report.get_mut("clients") {
        for (row, s) in rows.iter_mut().zip(&st.stats) {
            if let Value::Object(o) = row {
                o.extend(s.fields());
            }
        }
    }
    write_atomic(
        &opts.out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Backend(e.to_string()))?
            .as_bytes(),
    )?;
    // Give the Finished messages a moment to leave before the listener closes.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    let _ = stop.send(());
    let _ = rt.block_on(serving);
    crate::report::write_run_report(&opts.out)?;
    Ok(report)
}

/// What the server knows of its clients between events.
struct State {
    /// Which clients have a session and are ready (model and data loaded).
    connected: Vec<bool>,
    stats: Vec<ClientStats>,
    /// Messages that arrived while the server waited for another kind.
    pending: Vec<(u32, client_message::Body)>,
    /// Per client and kind of answer, the (round, step) of the last one the server took: the
    /// server asks in increasing (round, step) order, so an answer at or before it is a replay.
    taken: Vec<[Option<(u64, u64)>; 3]>,
}

/// The kinds of answer a client gives, for replay detection: activations, step verdicts,
/// evaluations. `None` for a Hello (only the handshake takes one).
fn answer_kind(b: &client_message::Body) -> Option<(usize, &'static str, Option<&Header>)> {
    match b {
        client_message::Body::Activations(a) => Some((0, "activations", a.header.as_ref())),
        client_message::Body::Done(d) => Some((1, "step verdict", d.header.as_ref())),
        client_message::Body::Eval(e) => Some((2, "evaluation", e.header.as_ref())),
        client_message::Body::Hello(_) | client_message::Body::Ready(_) => None,
    }
}

impl State {
    fn absorb(&mut self, ev: Event, train_counts: &[usize], progress: &mut dyn Progress) {
        match ev {
            Event::Joined { client, hello } => {
                let k = client as usize;
                if hello.train_examples != train_counts[k] as u64 {
                    progress.message(&format!(
                        "client {k} holds {} training rows, the partition gives it {}: its batches \
                         will not match the simulation's",
                        hello.train_examples, train_counts[k]
                    ));
                }
                progress.message(&format!("client {k} connected"));
            }
            Event::Left { client, why } => {
                self.connected[client as usize] = false;
                match why {
                    Some(why) => progress.message(&format!("client {client} disconnected: {why}")),
                    None => progress.message(&format!("client {client} disconnected")),
                }
            }
            Event::Message { client, message } => {
                if let Some(body) = message.body {
                    self.stats[client as usize].bytes_received += body_len(&body) as u64;
                    if let client_message::Body::Ready(_) = body {
                        self.connected[client as usize] = true;
                        progress.message(&format!("client {client} ready"));
                        return;
                    }
                    if !self.ignore_replay(client, &body, progress) {
                        self.pending.push((client, body));
                    }
                }
            }
        }
    }

    /// True (and the replay counted and logged) when `body` answers a (round, step) whose
    /// answer of that kind the server has already taken from `client`: a retry or a replay,
    /// which must not apply a step twice.
    fn ignore_replay(
        &mut self,
        client: u32,
        body: &client_message::Body,
        progress: &mut dyn Progress,
    ) -> bool {
        let Some((kind, name, Some(h))) = answer_kind(body) else {
            return false;
        };
        let k = client as usize;
        let replay = self.taken[k][kind].is_some_and(|t| (h.round, h.step) <= t);
        if replay {
            self.stats[k].replays_ignored += 1;
            let step = if h.step == EVAL_STEP {
                "its evaluation".to_string()
            } else {
                format!("step {}", h.step)
            };
            progress.message(&format!(
                "client {k}: replayed {name} for round {} {step} ignored",
                h.round + 1
            ));
        }
        replay
    }

    /// Records that the server took `body` from `client`, and drops (as replays) whatever of
    /// the same kind and (round, step) or earlier is still pending from it.
    fn took(&mut self, client: u32, body: &client_message::Body, progress: &mut dyn Progress) {
        let Some((kind, _, Some(h))) = answer_kind(body) else {
            return;
        };
        self.taken[client as usize][kind] = Some((h.round, h.step));
        let pending = std::mem::take(&mut self.pending);
        for (c, b) in pending {
            if c == client && self.ignore_replay(c, &b, progress) {
                continue;
            }
            self.pending.push((c, b));
        }
    }
}

fn body_len(b: &client_message::Body) -> usize {
    use prost::Message;
    match b {
        client_message::Body::Hello(m) => m.encoded_len(),
        client_message::Body::Activations(m) => m.encoded_len(),
        client_message::Body::Done(m) => m.encoded_len(),
        client_message::Body::Eval(m) => m.encoded_len(),
        client_message::Body::Ready(m) => m.encoded_len(),
    }
}

/// One round's context.
struct RoundCx<'a> {
    rt: &'a tokio::runtime::Runtime,
    hub: &'a Hub,
    events: &'a mut mpsc::UnboundedReceiver<Event>,
    st: &'a mut State,
    opts: &'a ServeOptions,
    round: u64,
    hidden: usize,
    classes: usize,
    train_counts: &'a [usize],
}

impl RoundCx<'_> {
    fn header(&self, k: usize, step: u64) -> Header {
        Header {
            client: k as u32,
            round: self.round,
            step,
            seq: 0,
        }
    }

    fn send(&mut self, k: usize, msg: ServerMessage) -> bool {
        use prost::Message;
        let n = msg.encoded_len() as u64;
        let ok = self.rt.block_on(self.hub.send(k as u32, msg));
        if ok {
            self.st.stats[k].bytes_sent += n;
        }
        ok
    }

    /// Waits until `want` holds a message from each client it lists (or the deadline passes);
    /// messages of other clients or kinds stay pending. Returns what arrived, by client.
    fn gather<T>(
        &mut self,
        want: &[usize],
        pick: impl Fn(&client_message::Body, u64, u64) -> bool,
        take: impl Fn(client_message::Body) -> Option<T>,
        step: u64,
        progress: &mut dyn Progress,
    ) -> Vec<Option<T>> {
        let deadline = Instant::now() + self.opts.step_deadline;
        let mut got: Vec<Option<T>> = want.iter().map(|_| None).collect();
        // A client that is gone will not answer: do not wait for it.
        let waiting = |got: &[Option<T>], st: &State| {
            want.iter()
                .zip(got)
                .any(|(&k, g)| g.is_none() && st.connected[k])
        };
        loop {
            // Serve what is pending first.
            let mut i = 0;
            while i < self.st.pending.len() {
                let (c, body) = &self.st.pending[i];
                if let Some(slot) = want.iter().position(|&k| k as u32 == *c) {
                    if got[slot].is_none() && pick(body, self.round, step) {
                        let (c, body) = self.st.pending.remove(i);
                        self.st.took(c, &body, progress);
                        got[slot] = take(body);
                        // `took` may have dropped earlier pending messages: start over.
                        i = 0;
                        continue;
                    }
                }
                i += 1;
            }
            if !waiting(&got, self.st) {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .rt
                .block_on(async { tokio::time::timeout(left, self.events.recv()).await })
            {
                Ok(Some(ev)) => self.st.absorb(ev, self.train_counts, progress),
                _ => return got,
            }
        }
    }
}

fn same_step(h: &Option<Header>, round: u64, step: u64) -> bool {
    h.as_ref()
        .is_some_and(|h| h.round == round && h.step == step)
}

/// One local step over the `active` clients (the simulation's `local_step`, with the clients
/// across the network).
#[allow(clippy::too_many_arguments)]
fn run_step<B: Backend>(
    cx: &mut RoundCx<'_>,
    algo: &mut FlexpSfl<B>,
    fed: &Federation<'_, B>,
    rng: &mut Rng,
    active: &[usize],
    step: u64,
    excluded: &mut [bool],
    log: &mut RoundLog,
) -> Result<()> {
    fed.step_started(step as usize + 1);
    // Batches drawn in client order from the run's generator, as the simulation draws them.
    let batches: Vec<Vec<usize>> = active
        .iter()
        .map(|&k| sample_batch_indices(cx.train_counts[k], fed.hyper.batch_size, rng))
        .collect();
    let t0 = Instant::now();
    for (i, &k) in active.iter().enumerate() {
        let msg = ServerMessage {
            body: Some(server_message::Body::Step(StepRequest {
                header: Some(cx.header(k, step)),
                batch: batches[i].iter().map(|&b| b as u32).collect(),
            })),
        };
        cx.send(k, msg);
    }
    let mut progress = crate::run::LogProgress;
    let arrived = cx.gather(
        active,
        |b, r, s| matches!(b, client_message::Body::Activations(a) if same_step(&a.header, r, s)),
        |b| match b {
            client_message::Body::Activations(a) => Some(a),
            _ => None,
        },
        step,
        &mut progress,
    );
    // The clients whose activations arrived and decode, in `active` order.
    let mut members = Vec::new();
    let mut up = UploadParts::default();
    for (i, a) in arrived.into_iter().enumerate() {
        let k = active[i];
        let Some(a) = a else {
            excluded[k] = true;
            let why = if cx.st.connected[k] {
                format!("no activations within {:?}", cx.opts.step_deadline)
            } else {
                "disconnected".to_string()
            };
            log.rejected.push((k, why));
            continue;
        };
        cx.st.stats[k].step_latency.push(t0.elapsed().as_secs_f64());
        match exchange::read_activations(
            &a,
            &cx.opts.limits,
            cx.hidden,
            batches[i].len(),
            cx.classes,
        ) {
            Ok((smashed, outputs)) => {
                up.push(k, algo.cut(k), smashed, outputs);
                members.push(k);
            }
            Err(e) => {
                excluded[k] = true;
                log.rejected
                    .push((k, format!("malformed activations: {e}")));
                let msg = ServerMessage {
                    body: Some(server_message::Body::Rejected(Rejected {
                        header: Some(cx.header(k, step)),
                        reason: e.to_string(),
                    })),
                };
                cx.send(k, msg);
            }
        }
    }
    if members.is_empty() {
        return Ok(());
    }
    let tokens: Vec<usize> = up.tokens(cx.hidden);
    let targets: Vec<usize> = up.targets();
    let upload = up.finish();
    let (rejected, mut dh) = algo.server_step(fed, &upload, log)?;
    let mut sent = Vec::new();
    for (i, &k) in members.iter().enumerate() {
        let msg = if rejected[i] {
            excluded[k] = true;
            server_message::Body::Rejected(Rejected {
                header: Some(cx.header(k, step)),
                reason: "rejected by the server step".into(),
            })
        } else {
            // Each sequence's gradient goes to its owner once: taken, not copied.
            let grads: Vec<Vec<f32>> = upload
                .owner
                .iter()
                .zip(dh.iter_mut())
                .filter(|(&o, _)| o == i)
                .map(|(_, g)| g.take().unwrap_or_default())
                .collect();
            sent.push(i);
            server_message::Body::Gradients(exchange::gradients(
                cx.header(k, step),
                &grads,
                cx.hidden,
                cx.opts.wire,
            )?)
        };
        cx.send(k, ServerMessage { body: Some(msg) });
    }
    let want: Vec<usize> = sent.iter().map(|&i| members[i]).collect();
    let done = cx.gather(
        &want,
        |b, r, s| matches!(b, client_message::Body::Done(d) if same_step(&d.header, r, s)),
        |b| match b {
            client_message::Body::Done(d) => Some(d),
            _ => None,
        },
        step,
        &mut progress,
    );
    for (&i, d) in sent.iter().zip(done) {
        let k = members[i];
        match d {
            Some(d) if d.applied => algo.charge_remote(fed, k, tokens[i], targets[i], log),
            Some(d) => {
                excluded[k] = true;
                log.rejected.push((k, d.reason));
            }
            None => {
                excluded[k] = true;
                log.rejected
                    .push((k, "no answer after its gradients".into()));
            }
        }
    }
    Ok(())
}

/// The fields a deployment's metrics line adds to the simulation's: how many clients answered
/// the evaluation (a dropped client has no figures, and the means are over those that answered),
/// each client's personalized accuracy, the round's participants, and the bytes that crossed the
/// wire so far.
fn deployment_fields(
    ev: &Eval,
    participants: &[usize],
    stats: &[ClientStats],
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(
        "clients_evaluated".into(),
        json!(ev.personal.iter().flatten().count()),
    );
    m.insert(
        "personalized_acc".into(),
        Value::Array(
            ev.personal
                .iter()
                .map(|e| e.map_or(Value::Null, |e| finite_or_null(e.accuracy())))
                .collect(),
        ),
    );
    m.insert("participants".into(), json!(participants));
    m.insert(
        "wire_bytes_up_total".into(),
        json!(stats.iter().map(|s| s.bytes_received).sum::<u64>()),
    );
    m.insert(
        "wire_bytes_down_total".into(),
        json!(stats.iter().map(|s| s.bytes_sent).sum::<u64>()),
    );
    m
}

/// The step number evaluation messages carry (no local step has it).
const EVAL_STEP: u64 = u64::MAX;

fn evaluate_round<B: Backend>(
    cx: &mut RoundCx<'_>,
    algo: &FlexpSfl<B>,
    fed: &Federation<'_, B>,
    global_rows: &[usize],
    global_eval: &[Example],
) -> Result<Eval> {
    let n = cx.st.connected.len();
    let all: Vec<usize> = (0..n).collect();
    for &k in &all {
        let msg = ServerMessage {
            body: Some(server_message::Body::Eval(EvalRequest {
                header: Some(cx.header(k, EVAL_STEP)),
                global_rows: global_rows.iter().map(|&r| r as u32).collect(),
            })),
        };
        cx.send(k, msg);
    }
    let mut progress = crate::run::LogProgress;
    let got = cx.gather(
        &all,
        |b, r, s| matches!(b, client_message::Body::Eval(e) if same_step(&e.header, r, s)),
        |b| match b {
            client_message::Body::Eval(e) => Some(e),
            _ => None,
        },
        EVAL_STEP,
        &mut progress,
    );
    let mut personal = vec![None; n];
    let mut global_of_personal = vec![None; n];
    for (k, e) in got.into_iter().enumerate() {
        let Some(e) = e else { continue };
        let score = |a: &Option<super::proto::Activations>| -> Result<Option<EvalStats>> {
            let Some(a) = a.as_ref().filter(|a| !a.targets.is_empty()) else {
                return Ok(None);
            };
            let (h, o) = exchange::read_activations(
                a,
                &cx.opts.limits,
                cx.hidden,
                a.targets.len(),
                cx.classes,
            )?;
            algo.evaluate_from_cut(fed, algo.cut(k), h, o).map(Some)
        };
        match score(&e.own).and_then(|p| Ok((p, score(&e.global)?))) {
            Ok((p, g)) => {
                personal[k] = p;
                global_of_personal[k] = g;
            }
            Err(err) => progress.message(&format!("client {k}: evaluation refused: {err}")),
        }
    }
    // As the simulation evaluates it (`run_eval`): FlexP-SFL always has its global model.
    let global_model = algo
        .global()
        .map(|g| evaluate(fed, &[g], &[global_eval]))
        .transpose()?
        .and_then(|v| v.first().copied());
    Ok(Eval {
        personal,
        global_of_personal,
        global_model,
        global_model_note: global_model.is_none().then(|| algo.no_global_model()),
    })
}

/// What a resumed server takes from its run folder.
struct Resumed {
    meta: Meta,
    stats: Vec<ClientStats>,
}

/// Loads the last checkpoint of the run in `out` into `algo`, refusing another configuration.
fn resume<B: Backend>(
    out: &Path,
    config_toml: &str,
    be: &B,
    algo: &mut FlexpSfl<B>,
) -> Result<Resumed> {
    let ckpt = out.join("checkpoint");
    if !ckpt.join("meta.json").exists() {
        return Err(Error::Input(format!(
            "{}: no checkpoint to resume from",
            out.display()
        )));
    }
    let recorded = std::fs::read_to_string(out.join("config.toml"))
        .map_err(|e| Error::io(out.join("config.toml"), e))?;
    if recorded != config_toml {
        return Err(Error::Input(format!(
            "{}: the configuration differs from the one the run started with; resume with the same settings",
            out.display()
        )));
    }
    let meta = checkpoint::load(&ckpt, be, algo)?;
    let dp = ckpt.join(format!("deploy-{}.json", meta.round));
    let stats: Vec<ClientStats> = serde_json::from_slice(
        &std::fs::read(&dp).map_err(|e| Error::io(&dp, e))?,
    )
    .map_err(|e| Error::Checkpoint {
        path: dp.clone(),
        reason: e.to_string(),
    })?;
    Ok(Resumed { meta, stats })
}

/// What the server knows of the data: class names, per client (training rows, test rows), and
/// the global test set's examples in global_test.csv's order.
struct Split {
    classes: Vec<String>,
    counts: Vec<(usize, usize)>,
    global_test: Vec<Example>,
}

/// The split from the data file, as the simulation makes it.
fn from_data(
    cfg: &RunConfig,
    tok: &crate::model::Tokenizer,
    max_len: usize,
    progress: &mut dyn Progress,
) -> Result<Split> {
    let (ds, splits) = split_data(cfg, progress)?;
    // Only the global test rows are the server's to tokenise.
    let (global_test, _) = encode_examples(cfg, &subset(&ds, &global_test(&splits)), tok, max_len)?;
    Ok(Split {
        classes: ds.label_names.clone(),
        counts: splits
            .iter()
            .map(|s| (s.train.len(), s.test.len()))
            .collect(),
        global_test,
    })
}

/// The split from a `flexp-run partition` folder: its manifest and global_test.csv, refusing a
/// folder made for another configuration.
fn from_partition(
    cfg: &RunConfig,
    dir: &Path,
    tok: &crate::model::Tokenizer,
    max_len: usize,
) -> Result<Split> {
    let path = dir.join("partition.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let bad = |why: String| Error::Input(format!("{}: {why}", path.display()));
    let made_for = [
        ("seed", json!(cfg.seed)),
        ("clients", json!(cfg.clients)),
        ("partition", json!(cfg.partition.to_string())),
        ("test_fraction", json!(cfg.test_fraction)),
    ];
    for (key, want) in made_for {
        if m[key] != want {
            return Err(bad(format!(
                "made for {key} = {}, this run has {want}; partition again with this configuration",
                m[key]
            )));
        }
    }
    let classes: Vec<String> =
        serde_json::from_value(m["classes"].clone()).map_err(|e| bad(format!("`classes`: {e}")))?;
    let files = m["files"]
        .as_array()
        .ok_or_else(|| bad("no `files` list".into()))?;
    let counts = files
        .iter()
        .map(|f| match (f["train"].as_u64(), f["test"].as_u64()) {
            (Some(a), Some(b)) => Ok((a as usize, b as usize)),
            _ => Err(bad(format!("a file entry without row counts: {f}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    if counts.len() != cfg.clients {
        return Err(bad(format!(
            "{} client files for a run of {} clients",
            counts.len(),
            cfg.clients
        )));
    }
    let global = dir.join(
        m["global_test"]["file"]
            .as_str()
            .unwrap_or("global_test.csv"),
    );
    let rows = super::worker::read_rows(&global, Some(cfg), true)?;
    let global_test = super::worker::client_data(cfg, &rows, &classes, tok, max_len)?.test;
    Ok(Split {
        classes,
        counts,
        global_test,
    })
}
