//! The deployment on 127.0.0.1 as a user runs it: `flexp-run certs`, `partition`, `serve` and
//! one `client` process per client, each started here and stopped by its PID. With every
//! client up, the server's per-round training loss equals `flexp-run train`'s on the same
//! configuration and seed (f32 on the wire): the same participants, batches, initial adapters,
//! alignment snapshots and updates, computed across processes; so do its evaluations (each
//! personalized model on its client's test rows and on the global test rows, the global model). A client killed mid-run leaves
//! the server finishing, with that client's `rounds_completed` below the others'.

mod common;

use common::root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flexp-run")
}

/// Kills a spawned process (by PID) when dropped, so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String], log: &Path, env: &[(&str, &str)]) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

/// Waits for a process to exit within `limit`; its exit status.
fn wait(p: &mut Proc, limit: Duration, what: &str, log: &Path) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "{what} still running after {limit:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_ok(args: &[String]) {
    let o = Command::new(bin()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "flexp-run {args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn data(dir: &Path) -> PathBuf {
    let mut w = csv::Writer::from_path(dir.join("data.csv")).unwrap();
    w.write_record(["review", "label"]).unwrap();
    let words = [
        ("pos", ["great", "wonderful", "brilliant", "moving"]),
        ("neg", ["awful", "boring", "terrible", "dull"]),
    ];
    for i in 0..48 {
        let (label, w8) = &words[i % 2];
        let text = format!("a {} film, truly {}", w8[i % 4], w8[(i / 2) % 4]);
        w.write_record([text.as_str(), label]).unwrap();
    }
    w.flush().unwrap();
    dir.join("data.csv")
}

/// The run's settings, shared by the simulation and the deployment.
fn sets(data: &Path, extra: &[&str]) -> Vec<String> {
    let m = root().join("models/all-MiniLM-L6-v2");
    assert!(
        m.join("model.safetensors").exists(),
        "run `bash tools/fetch_minilm.sh` first"
    );
    let mut v = vec![
        format!("model=\"{}\"", m.display()),
        format!("data.path=\"{}\"", data.display()),
        "data.text_column=\"review\"".into(),
        "data.label_column=\"label\"".into(),
        "partition=\"iid\"".into(),
        "clients=3".into(),
        "rounds=3".into(),
        "local_steps=2".into(),
        "batch_size=4".into(),
        "seq_len=16".into(),
        "lora.rank=2".into(),
        "split=[1, 2, 4]".into(),
        "eval_every=1".into(),
        "seed=5".into(),
        "test_fraction=0.25".into(),
        "eval.global_max=7".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for the server and then every client to exit successfully; the server's log.
fn finish(server: &mut Proc, server_log: &Path, clients: &mut [(Proc, PathBuf)]) -> String {
    let status = wait(server, Duration::from_secs(240), "the server", server_log);
    let log = std::fs::read_to_string(server_log).unwrap();
    assert!(status.success(), "server:\n{log}");
    for (c, l) in clients.iter_mut() {
        let s = wait(c, Duration::from_secs(30), "a client", l);
        assert!(s.success(), "{}", std::fs::read_to_string(&*l).unwrap());
    }
    log
}

/// Runs the simulation (`flexp-run train`) of `sets` into `dir/sim`.
fn simulate(dir: &Path, sets: &[String]) {
    let mut t = vec!["--quiet".to_string(), "train".into()];
    t.extend(sets.iter().cloned());
    t.extend([
        "--set".into(),
        format!("out=\"{}\"", dir.join("sim").display()),
    ]);
    run_ok(&t);
}

/// The `report.json` of the run folder `run`.
fn read_report(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap()
}

/// Each client's `rounds_completed` in a deployment's report.
fn completed(report: &Value) -> Vec<u64> {
    report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rounds_completed"].as_u64().unwrap())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server and the clients of a deployment of `sets` in `dir`; returns the server and
/// the clients' processes with their log files.
fn deploy(
    dir: &Path,
    sets: &[String],
    clients: u32,
    env_of: impl Fn(u32) -> Vec<(&'static str, &'static str)>,
) -> Running {
    deploy_with(dir, sets, clients, env_of, &[], "f32", &[]).0
}

/// A started deployment: the server with its log, and each client with its log.
type Running = (Proc, PathBuf, Vec<(Proc, PathBuf)>);

/// [`deploy`] with the server's environment; also returns the server's arguments.
fn deploy_with(
    dir: &Path,
    sets: &[String],
    clients: u32,
    env_of: impl Fn(u32) -> Vec<(&'static str, &'static str)>,
    server_env: &[(&str, &str)],
    wire: &str,
    server_args: &[&str],
) -> (Running, Vec<String>) {
    let tls = dir.join("tls");
    let parts = dir.join("parts");
    run_ok(
        &[
            "--quiet",
            "certs",
            "--clients",
            &clients.to_string(),
            "--out",
            tls.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let mut p = vec!["--quiet".to_string(), "partition".into()];
    p.extend(sets.iter().cloned());
    p.extend(["--out".into(), parts.display().to_string()]);
    run_ok(&p);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut s = vec![
        "--quiet".to_string(),
        "--threads".into(),
        "1".into(),
        "serve".into(),
    ];
    s.extend(sets.iter().cloned());
    s.extend([
        "--listen".into(),
        addr.clone(),
        "--tls".into(),
        tls.display().to_string(),
        "--out".into(),
        dir.join("run").display().to_string(),
        "--step-deadline".into(),
        "20".into(),
        "--join-timeout".into(),
        "60".into(),
        "--wire".into(),
        wire.into(),
    ]);
    s.extend(server_args.iter().map(|a| a.to_string()));
    let server_log = dir.join("server.log");
    let server = spawn(&s, &server_log, server_env);
    let mut cs = Vec::new();
    for k in 0..clients {
        let log = dir.join(format!("client-{k}.log"));
        let args: Vec<String> = [
            "--quiet",
            "--threads",
            "1",
            "client",
            "--connect",
            &addr,
            "--tls",
            tls.to_str().unwrap(),
            "--id",
            &k.to_string(),
            "--data",
            parts.join(format!("client-{k}.csv")).to_str().unwrap(),
            "--global-test",
            parts.join("global_test.csv").to_str().unwrap(),
            "--timeout",
            "60",
            "--wire",
            wire,
        ]
        .map(String::from)
        .to_vec();
        cs.push((spawn(&args, &log, &env_of(k)), log));
    }
    ((server, server_log, cs), s)
}

#[test]
fn a_loopback_deployment_trains_exactly_as_the_simulation() {
    let dir = tmp("equal");
    let data = data(&dir);
    let sets = sets(
        &data,
        &["align=\"proj\"", "clients=4", "split=[1, 2, 4, 2]"],
    );
    // The simulation.
    simulate(&dir, &sets);
    let sim = lines(&dir.join("sim/metrics.jsonl"));
    // The deployment: four client processes.
    let (mut server, server_log, mut clients) = deploy(&dir, &sets, 4, |_| vec![]);
    let status = wait(
        &mut server,
        Duration::from_secs(240),
        "the server",
        &server_log,
    );
    assert!(
        status.success(),
        "server:\n{}",
        std::fs::read_to_string(&server_log).unwrap()
    );
    for (c, log) in clients.iter_mut() {
        let s = wait(c, Duration::from_secs(30), "a client", log);
        assert!(
            s.success(),
            "client:\n{}",
            std::fs::read_to_string(&*log).unwrap()
        );
    }
    let dep = lines(&dir.join("run/metrics.jsonl"));
    assert_eq!(dep.len(), sim.len(), "one line per evaluation");
    // Every figure of every metrics line: loss, the evaluations (each personalized model on its
    // own test rows and on the global rows, the client's blocks then the server's; the global
    // model), the cost accounting and the simulated clock. Only the measured wall time differs.
    for (d, s) in dep.iter().zip(&sim) {
        same(s, d, &format!("metrics round {}", s["round"]));
        eprintln!(
            "round {}: loss {} vs {}",
            s["round"], d["train_loss"], s["train_loss"]
        );
    }
    // Not a trivial case: the models learned something and differ between clients.
    let last = sim.last().unwrap();
    assert!(
        last["personalized_acc_mean"].as_f64().unwrap() > 0.5,
        "{last}"
    );
    let first = &sim[0];
    assert!(
        last["train_loss"].as_f64().unwrap() < 0.5 * first["train_loss"].as_f64().unwrap(),
        "{first} -> {last}"
    );
    // The report: the same run folder, the same figures, with the deployment's own beside them.
    let (sim_report, report) = (read_report(&dir.join("sim")), read_report(&dir.join("run")));
    same(&sim_report, &report, "report.json");
    for c in report["clients"].as_array().unwrap() {
        assert_eq!(c["rounds_completed"], 3, "{c}");
        assert!(
            c["wire_bytes_up"].as_u64().unwrap() > 0 && c["wire_bytes_down"].as_u64().unwrap() > 0
        );
        assert!(
            c["step_latency_s_p95"].as_f64().unwrap()
                >= c["step_latency_s_mean"].as_f64().unwrap() * 0.5
        );
    }
    for f in [
        "config.toml",
        "plan.json",
        "report.md",
        "acc_vs_round.svg",
        "clients.svg",
    ] {
        assert!(
            dir.join("run").join(f).is_file(),
            "the deployment wrote no {f}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("sim/plan.json")).unwrap(),
        std::fs::read_to_string(dir.join("run/plan.json")).unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Every field of the simulation's `want` is in the deployment's `got` with the same value
/// (numbers to 1e-6 relative), but for the measured wall time; `got` may hold more fields.
fn same(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                if k == "wall_seconds" {
                    continue;
                }
                let Some(gv) = g.get(k) else {
                    panic!("{at}: the deployment has no `{k}`");
                };
                same(v, gv, &format!("{at}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{at}: lengths");
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                same(a, b, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{at}: simulation {a} vs deployment {b}"
            );
        }
        (w, g) if at.ends_with(".out") || at.ends_with(".model") => {
            // Paths of the two run folders.
            assert!(w.is_string() && g.is_string(), "{at}: {w} vs {g}");
        }
        (w, g) => assert_eq!(w, g, "{at}"),
    }
}

#[test]
fn a_killed_client_and_refused_identities_leave_the_server_serving() {
    let dir = tmp("faults");
    let data = data(&dir);
    let sets = sets(&data, &["rounds=6", "align=\"none\""]);
    let (mut server, server_log, mut clients) = deploy(&dir, &sets, 3, |_| vec![]);
    let port = wait_for_port(&server_log);
    let tls = dir.join("tls");
    // A certificate from a CA the server does not trust.
    let other = dir.join("other-ca");
    run_ok(
        &[
            "--quiet",
            "certs",
            "--clients",
            "3",
            "--out",
            other.to_str().unwrap(),
        ]
        .map(String::from),
    );
    // Client 0's certificate and key, presented by a process claiming to be client 1.
    let borrowed = dir.join("borrowed");
    std::fs::create_dir_all(&borrowed).unwrap();
    std::fs::copy(tls.join("ca.pem"), borrowed.join("ca.pem")).unwrap();
    std::fs::copy(tls.join("client-0.pem"), borrowed.join("client-1.pem")).unwrap();
    std::fs::copy(tls.join("client-0.key"), borrowed.join("client-1.key")).unwrap();
    // And client 1's own certificate from a process speaking another protocol version.
    for (folder, protocol, words) in [
        (&other, "1", "network"),
        (&borrowed, "1", "not valid for client-1"),
        (&tls, "2", "protocol version 2 is not spoken here"),
    ] {
        let o = Command::new(bin())
            .env("FLEXP_FAULT_PROTOCOL", protocol)
            .args(["--quiet", "client", "--connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--id", "1", "--timeout", "20", "--tls"])
            .arg(folder)
            .arg("--data")
            .arg(dir.join("parts/client-1.csv"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(words),
            "{}: {err}",
            folder.display()
        );
    }
    // Kill client 2 once two rounds are done.
    let metrics = dir.join("run/metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no progress:\n{}",
            std::fs::read_to_string(&server_log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(clients.remove(2));
    let log = finish(&mut server, &server_log, &mut clients);
    let report = read_report(&dir.join("run"));
    let done = completed(&report);
    assert_eq!(&done[..2], &[6, 6], "{report}");
    assert!(done[2] < 6 && done[2] >= 2, "{report}");
    let lines = lines(&metrics);
    assert_eq!(lines.len(), 6);
    let last = lines.last().unwrap();
    assert_eq!(last["clients_evaluated"], 2, "{last}");
    assert!(last["personalized_acc_mean"].as_f64().is_some(), "{last}");
    assert!(log.contains("client 2 disconnected"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The port the server says it listens on.
fn wait_for_port(log: &Path) -> u16 {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.split("on 127.0.0.1:").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
        {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client that sends a NaN among its activations (fault injection) is rejected for that step
/// by name and sits out the rest of that round; the server and the other clients go on, and it
/// takes part again in the next round.
#[test]
fn a_nan_payload_is_rejected_and_harms_no_one_else() {
    let dir = tmp("nan");
    let data = data(&dir);
    let sets = sets(&data, &["align=\"none\""]);
    let (mut server, server_log, mut clients) = deploy(&dir, &sets, 3, |k| {
        if k == 1 {
            vec![("FLEXP_FAULT", "nan:1")]
        } else {
            vec![]
        }
    });
    let log = finish(&mut server, &server_log, &mut clients);
    assert!(
        log.contains("round 2: client 1 step rejected: malformed activations")
            && log.contains("not finite"),
        "{log}"
    );
    let report = read_report(&dir.join("run"));
    let done = completed(&report);
    assert_eq!(done, vec![3, 2, 3], "{report}");
    let lines = lines(&dir.join("run/metrics.jsonl"));
    assert_eq!(lines[0]["rejected"], 0);
    assert_eq!(lines[1]["rejected"], 1);
    assert!(lines[2]["train_loss"].as_f64().unwrap().is_finite());
    std::fs::remove_dir_all(&dir).ok();
}

/// The server killed right after round 2's checkpoint (as a crash would) and restarted with
/// `--resume` on the same address: the clients reconnect by themselves, roll back to where the
/// checkpoint left them, and the run ends with exactly the metrics of an uninterrupted one.
#[test]
fn a_killed_server_resumes_and_the_run_ends_as_if_uninterrupted() {
    let dir = tmp("resume");
    let data = data(&dir);
    let sets = sets(&data, &["rounds=4", "align=\"proj\""]);
    simulate(&dir, &sets);
    let sim = lines(&dir.join("sim/metrics.jsonl"));
    let ((mut server, server_log, mut clients), args) = deploy_with(
        &dir,
        &sets,
        3,
        |_| vec![],
        &[("FLEXP_ABORT_AFTER_CHECKPOINT", "2")],
        "f32",
        &[],
    );
    let status = wait(
        &mut server,
        Duration::from_secs(240),
        "the server",
        &server_log,
    );
    assert!(
        !status.success(),
        "the server should have died after round 2"
    );
    assert_eq!(lines(&dir.join("run/metrics.jsonl")).len(), 2);
    // The same command with --resume (its settings come from the run folder).
    let mut again: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--set" {
            it.next();
        } else {
            again.push(a.clone());
        }
    }
    again.push("--resume".into());
    let log2 = dir.join("server-resumed.log");
    let mut server = spawn(&again, &log2, &[]);
    let status = wait(
        &mut server,
        Duration::from_secs(240),
        "the resumed server",
        &log2,
    );
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(status.success(), "resumed server:\n{log}");
    assert!(log.contains("resuming after round 2"), "{log}");
    for (c, l) in clients.iter_mut() {
        let s = wait(c, Duration::from_secs(60), "a client", l);
        let text = std::fs::read_to_string(&*l).unwrap();
        assert!(
            s.success() && text.contains("reconnected"),
            "client:\n{text}"
        );
    }
    // Every figure, the books carried over the restart (cost, simulated clock, best round)
    // included.
    let dep = lines(&dir.join("run/metrics.jsonl"));
    assert_eq!(dep.len(), 4);
    for (d, s) in dep.iter().zip(&sim) {
        same(s, d, &format!("metrics round {}", s["round"]));
    }
    same(
        &read_report(&dir.join("sim")),
        &read_report(&dir.join("run")),
        "report.json",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// bf16 frames (`--wire bf16` on both sides) halve what the activations and gradients weigh on
/// the wire; the run is then close to the f32 one, not equal (each value is rounded to bf16).
#[test]
fn bf16_frames_halve_the_traffic_and_train_alike() {
    let dir = tmp("bf16");
    let data = data(&dir);
    let sets = sets(&data, &["align=\"none\""]);
    simulate(&dir, &sets);
    let sim = lines(&dir.join("sim/metrics.jsonl"));
    let traffic = |run: &str| -> (u64, u64) {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(run).join("report.json")).unwrap(),
        )
        .unwrap();
        r["clients"]
            .as_array()
            .unwrap()
            .iter()
            .fold((0, 0), |(u, d), c| {
                (
                    u + c["wire_bytes_up"].as_u64().unwrap(),
                    d + c["wire_bytes_down"].as_u64().unwrap(),
                )
            })
    };
    let mut runs = Vec::new();
    for wire in ["f32", "bf16"] {
        let sub = dir.join(wire);
        std::fs::create_dir_all(&sub).unwrap();
        let ((mut server, log, mut clients), _) =
            deploy_with(&sub, &sets, 3, |_| vec![], &[], wire, &[]);
        let s = wait(&mut server, Duration::from_secs(240), "the server", &log);
        assert!(s.success(), "{}", std::fs::read_to_string(&log).unwrap());
        for (c, l) in clients.iter_mut() {
            assert!(wait(c, Duration::from_secs(30), "a client", l).success());
        }
        runs.push((
            traffic(&format!("{wire}/run")),
            lines(&sub.join("run/metrics.jsonl")),
        ));
    }
    let ((up32, down32), _) = runs[0];
    let ((up16, down16), ref bf) = runs[1];
    // Activations up and gradients down dominate; the per-message overhead stays.
    assert!(
        up16 * 10 < up32 * 6 && up16 * 10 > up32 * 4,
        "up: bf16 {up16} vs f32 {up32}"
    );
    assert!(down16 < down32, "down: bf16 {down16} vs f32 {down32}");
    for (d, s) in bf.iter().zip(&sim) {
        let (a, b) = (
            d["train_loss"].as_f64().unwrap(),
            s["train_loss"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 0.05 * b.abs().max(0.05),
            "round {}: bf16 loss {a} vs {b}",
            s["round"]
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A client that sends its activations and its step verdict twice (a retry after a timeout, or
/// a replay): the server takes each answer once, so the run is exactly the simulation's, and
/// counts what it ignored.
#[test]
fn a_replayed_step_is_applied_once() {
    let dir = tmp("replay");
    let data = data(&dir);
    let sets = sets(&data, &[]);
    simulate(&dir, &sets);
    let (mut server, server_log, mut clients) = deploy(&dir, &sets, 3, |k| {
        if k == 1 {
            vec![("FLEXP_FAULT", "replay:1")]
        } else {
            vec![]
        }
    });
    let log = finish(&mut server, &server_log, &mut clients);
    assert!(
        log.contains("client 1: replayed activations for round 2 step 0 ignored")
            && log.contains("client 1: replayed step verdict for round 2 step 0 ignored"),
        "{log}"
    );
    let sim = lines(&dir.join("sim/metrics.jsonl"));
    let dep = lines(&dir.join("run/metrics.jsonl"));
    assert_eq!(dep.len(), sim.len());
    for (d, s) in dep.iter().zip(&sim) {
        same(s, d, &format!("metrics round {}", s["round"]));
    }
    let report = read_report(&dir.join("run"));
    let replays: Vec<u64> = report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["replays_ignored"].as_u64().unwrap())
        .collect();
    assert_eq!(replays, vec![0, 2, 0], "{report}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Hostile bytes cost only their sender: a frame declaring a gigabyte (refused unread, the
/// client sits out the round), a message over the server's size limit (its session ends, it
/// reconnects and rejoins), and a tensor cut short by a client that then dies. The server keeps
/// serving, the healthy client completes every round.
#[test]
fn oversized_and_truncated_messages_cost_only_their_sender() {
    let dir = tmp("hostile");
    let data = data(&dir);
    let sets = sets(
        &data,
        &[
            "clients=4",
            "split=[1, 2, 4, 2]",
            "rounds=4",
            "align=\"none\"",
        ],
    );
    let ((mut server, server_log, mut clients), _) = deploy_with(
        &dir,
        &sets,
        4,
        |k| match k {
            1 => vec![("FLEXP_FAULT", "bogus-size:1")],
            2 => vec![("FLEXP_FAULT", "oversize:1")],
            3 => vec![("FLEXP_FAULT", "truncate:2")],
            _ => vec![],
        },
        &[],
        "f32",
        &["--max-message-mb", "1"],
    );
    let status = wait(
        &mut server,
        Duration::from_secs(240),
        "the server",
        &server_log,
    );
    let log = std::fs::read_to_string(&server_log).unwrap();
    assert!(status.success(), "server:\n{log}");
    let dead = clients.pop().unwrap();
    for (c, l) in clients.iter_mut() {
        let s = wait(c, Duration::from_secs(60), "a client", l);
        assert!(s.success(), "{}", std::fs::read_to_string(&*l).unwrap());
    }
    let (mut c3, l3) = dead;
    assert!(
        !wait(&mut c3, Duration::from_secs(30), "client 3", &l3).success(),
        "client 3 should have died"
    );
    for want in [
        "round 2: client 1 step rejected: malformed activations: input: wire: tensor 0: 1073741824 bytes would exceed the message limit of 1048576 bytes",
        "client 2 disconnected: ",
        "round 3: client 3 step rejected: malformed activations: ",
        "truncated: ",
        "client 3 disconnected",
    ] {
        assert!(log.contains(want), "no `{want}` in the server's log:\n{log}");
    }
    let l2 = std::fs::read_to_string(dir.join("client-2.log")).unwrap();
    assert!(l2.contains("reconnected"), "{l2}");
    let report = read_report(&dir.join("run"));
    let done = completed(&report);
    // Client 2 rejoins as soon as it has reconnected: the next round, or the one after.
    assert_eq!((done[0], done[1], done[3]), (4, 3, 2), "{report}");
    assert!((2..=3).contains(&done[2]), "{report}");
    let last = lines(&dir.join("run/metrics.jsonl")).pop().unwrap();
    assert_eq!(last["clients_evaluated"], 3, "{last}");
    assert!(last["train_loss"].as_f64().unwrap().is_finite(), "{last}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The load test: 64 client processes on loopback (a tiny Llama checkpoint, so 65 processes fit
/// a small machine) train exactly as the simulation does; every client completes every round.
#[test]
fn sixty_four_clients_train_exactly_as_the_simulation() {
    let dir = tmp("load");
    let mut w = csv::Writer::from_path(dir.join("data.csv")).unwrap();
    w.write_record(["review", "label"]).unwrap();
    let words = [
        ("pos", ["great", "wonderful", "brilliant", "moving"]),
        ("neg", ["awful", "boring", "terrible", "dull"]),
    ];
    for i in 0..64 * 6 {
        let (label, w8) = &words[i % 2];
        let text = format!("a {} film, truly {}", w8[i % 4], w8[(i / 2) % 4]);
        w.write_record([text.as_str(), label]).unwrap();
    }
    w.flush().unwrap();
    let model = root().join("tests/fixtures/gguf/tiny_llama.gguf");
    let sets: Vec<String> = [
        format!("model=\"{}\"", model.display()),
        format!("data.path=\"{}\"", dir.join("data.csv").display()),
        "data.text_column=\"review\"".into(),
        "data.label_column=\"label\"".into(),
        "partition=\"iid\"".into(),
        "clients=64".into(),
        "rounds=2".into(),
        "local_steps=2".into(),
        "batch_size=2".into(),
        "seq_len=12".into(),
        "lora.rank=2".into(),
        "split=[1]".into(),
        "eval_every=1".into(),
        "seed=9".into(),
        "test_fraction=0.34".into(),
        "eval.global_max=16".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect();
    simulate(&dir, &sets);
    let ((mut server, server_log, mut clients), _) =
        deploy_with(&dir, &sets, 64, |_| vec![], &[], "f32", &[]);
    let status = wait(
        &mut server,
        Duration::from_secs(600),
        "the server",
        &server_log,
    );
    assert!(
        status.success(),
        "server:\n{}",
        std::fs::read_to_string(&server_log).unwrap()
    );
    for (c, l) in clients.iter_mut() {
        assert!(wait(c, Duration::from_secs(60), "a client", l).success());
    }
    let sim = lines(&dir.join("sim/metrics.jsonl"));
    let dep = lines(&dir.join("run/metrics.jsonl"));
    assert_eq!(dep.len(), sim.len());
    for (d, s) in dep.iter().zip(&sim) {
        same(s, d, &format!("metrics round {}", s["round"]));
    }
    let report = read_report(&dir.join("run"));
    let done = completed(&report);
    assert_eq!(done, vec![2; 64]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A server given the partition folder (`serve --partition`) never reads the clients' rows: its
/// data path points nowhere, and the run still equals the simulation figure for figure. A
/// partition made for another seed is refused by name.
#[test]
fn a_server_with_only_the_partition_trains_as_the_simulation() {
    let dir = tmp("partition-only");
    let data = data(&dir);
    let sets = sets(&data, &["align=\"proj\""]);
    simulate(&dir, &sets);
    let missing = dir.join("the-server-has-no-data.csv");
    let parts = dir.join("parts");
    let server_args = [
        "--set".to_string(),
        format!("data.path=\"{}\"", missing.display()),
        "--partition".into(),
        parts.display().to_string(),
    ];
    let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let ((mut server, server_log, mut clients), _) =
        deploy_with(&dir, &sets, 3, |_| vec![], &[], "f32", &args);
    finish(&mut server, &server_log, &mut clients);
    assert!(!missing.exists());
    let sim = lines(&dir.join("sim/metrics.jsonl"));
    let dep = lines(&dir.join("run/metrics.jsonl"));
    assert_eq!(dep.len(), sim.len());
    for (d, s) in dep.iter().zip(&sim) {
        same(s, d, &format!("metrics round {}", s["round"]));
    }
    // The same folder for another seed: refused before serving.
    let mut s = vec!["--quiet".to_string(), "serve".into()];
    s.extend(sets.iter().cloned());
    s.extend(
        [
            "--set",
            "seed=6",
            "--partition",
            parts.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls",
            dir.join("tls").to_str().unwrap(),
            "--out",
            dir.join("other").to_str().unwrap(),
        ]
        .map(String::from),
    );
    let o = Command::new(bin()).args(&s).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("made for seed = 5, this run has 6"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
