//! The multi-tenant executor: a packed batch of sequences with different adapter sets, gradient
//! slots and block ranges gives the outputs and gradients of running each sequence alone.

mod common;

use common::{fixture, rel_err};
use flexp::backend::cpu::Cpu;
use flexp::backend::Backend;
use flexp::executor::{Executor, Output, SeqInput, SeqJob, SeqResult};
use flexp::model::{load_model, AdapterSet, LoraConfig, Model, Pooling};
use flexp::rng::Rng;

fn random_set(
    be: &Cpu,
    m: &Model<Cpu>,
    blocks: std::ops::Range<usize>,
    seed: u64,
) -> AdapterSet<Cpu> {
    let mut rng = Rng::new(seed);
    let cfg = &m.config;
    let mut s = AdapterSet::init_lora(
        be,
        cfg,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default_for(cfg)
        },
        blocks,
        &mut rng,
    )
    .unwrap()
    .with_head(be, cfg.hidden, 3, Pooling::Mean, &mut rng)
    .unwrap();
    // Non-zero B so that every LoRA path carries signal in both directions.
    for b in s.blocks.iter_mut() {
        for p in b.iter_mut().flatten() {
            let n = p.b.len();
            p.b = be.upload(&rng.vec_range(n, -0.2, 0.2)).unwrap();
        }
    }
    s
}

fn host(be: &Cpu, s: &AdapterSet<Cpu>) -> Vec<Vec<f32>> {
    s.tensors()
        .into_iter()
        .map(|t| be.download(t).unwrap())
        .collect()
}

/// Equal up to float reassociation: relative 1e-5 of the reference's scale, with an absolute
/// floor for tensors whose true value is zero (e.g. q/k gradients of a length-1 sequence, whose
/// attention output does not depend on its scores).
fn close(what: &str, a: &[f32], b: &[f32]) {
    let e = rel_err(a, b);
    let scale = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max) as f64;
    assert!(
        e < 1e-5 || e * scale < 1e-6,
        "{what}: packed vs alone relative error {e:.2e} (scale {scale:.1e})"
    );
}

struct Case {
    jobs: Vec<SeqJob>,
    out_grads: Vec<Option<Vec<f32>>>,
}

/// A mix of jobs over a model with `layers` blocks: tokens through everything with a class or LM
/// head, a client segment (tokens, blocks 0..1, hidden out), a server segment (hidden in from
/// block 1 to the end) and a middle segment (hidden in, hidden out).
fn case(m: &Model<Cpu>, rng: &mut Rng, lm: bool) -> Case {
    let cfg = &m.config;
    let (l, d, v) = (cfg.layers, cfg.hidden, cfg.vocab_size as u32);
    let toks = |rng: &mut Rng, n: usize| -> Vec<u32> {
        (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect()
    };
    let hid = |rng: &mut Rng, n: usize| rng.vec_range(n * d, -1.0, 1.0);
    let head = |rng: &mut Rng, n: usize| -> Output {
        if lm {
            Output::Lm {
                labels: Some(
                    (0..n)
                        .map(|i| {
                            if i + 1 < n {
                                (rng.next_u64() % v as u64) as i64
                            } else {
                                -100
                            }
                        })
                        .collect(),
                ),
            }
        } else {
            Output::Class {
                label: Some(rng.below(3)),
            }
        }
    };
    let mut jobs = Vec::new();
    let mut out_grads = Vec::new();
    // adapter 0: global set over every block; 1, 2: clients with their own blocks.
    let mut push = |j: SeqJob, g: Option<Vec<f32>>| {
        jobs.push(j);
        out_grads.push(g);
    };
    let t = toks(rng, 6);
    let o = head(rng, 6);
    push(
        SeqJob {
            loss_weight: 0.5,
            ..SeqJob::new(SeqInput::tokens(t), 0..l, 2, o)
        },
        None,
    );
    let t = toks(rng, 5);
    push(
        SeqJob::new(SeqInput::tokens(t), 0..1, 1, Output::Hidden),
        Some(hid(rng, 5)),
    );
    let h = hid(rng, 7);
    let o = head(rng, 7);
    push(
        SeqJob {
            grad_slot: 3,
            ..SeqJob::new(SeqInput::Hidden(h), 1..l, 0, o)
        },
        None,
    );
    let h = hid(rng, 1);
    push(
        SeqJob::new(SeqInput::Hidden(h), 1..l, 0, Output::Hidden),
        Some(hid(rng, 1)),
    );
    let t = toks(rng, 4);
    let o = head(rng, 4);
    push(
        SeqJob {
            loss_weight: 0.25,
            ..SeqJob::new(SeqInput::tokens(t), 0..l, 1, o)
        },
        None,
    );
    if l > 2 {
        let h = hid(rng, 3);
        push(
            SeqJob::new(SeqInput::Hidden(h), 1..l - 1, 2, Output::Hidden),
            Some(hid(rng, 3)),
        );
    }
    Case { jobs, out_grads }
}

fn run_packed_vs_alone(family: &str, lm: bool) {
    let be = Cpu;
    let m = load_model(&be, &fixture(family)).unwrap();
    let l = m.config.layers;
    let sets = [
        random_set(&be, &m, 0..l, 1),
        random_set(&be, &m, 0..1, 2),
        random_set(&be, &m, 0..l, 3),
    ];
    let refs: Vec<&AdapterSet<Cpu>> = sets.iter().collect();
    // Slots 0..2 mirror the adapters; slot 3 is a second gradient slot for adapter 0.
    let zero_grads = || -> Vec<AdapterSet<Cpu>> {
        vec![
            sets[0].zeros_like(&be).unwrap(),
            sets[1].zeros_like(&be).unwrap(),
            sets[2].zeros_like(&be).unwrap(),
            sets[0].zeros_like(&be).unwrap(),
        ]
    };
    let c = case(&m, &mut Rng::new(7), lm);
    let exec = Executor::new(&be, &m);

    let (packed, tape) = exec.forward(&refs, &c.jobs, true).unwrap();
    let mut packed_grads = zero_grads();
    let packed_dx = exec
        .backward(&tape.unwrap(), &refs, &mut packed_grads, &c.out_grads)
        .unwrap();

    let mut alone_grads = zero_grads();
    for (i, j) in c.jobs.iter().enumerate() {
        let (out, tape) = exec.forward(&refs, std::slice::from_ref(j), true).unwrap();
        let dx = exec
            .backward(
                &tape.unwrap(),
                &refs,
                &mut alone_grads,
                &c.out_grads[i..i + 1],
            )
            .unwrap();
        let (p, a): (&SeqResult, &SeqResult) = (&packed[i], &out[0]);
        for (what, x, y) in [
            ("hidden", &p.hidden, &a.hidden),
            ("logits", &p.logits, &a.logits),
        ] {
            assert_eq!(x.is_some(), y.is_some(), "seq {i} {what} presence");
            if let (Some(x), Some(y)) = (x, y) {
                close(&format!("seq {i} {what}"), x, y);
            }
        }
        assert_eq!(p.loss.is_some(), a.loss.is_some());
        if let (Some(x), Some(y)) = (p.loss, a.loss) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "seq {i} loss {x} vs {y}"
            );
        }
        assert_eq!(
            packed_dx[i].is_some(),
            dx[0].is_some(),
            "seq {i} input-gradient presence"
        );
        if let (Some(x), Some(y)) = (&packed_dx[i], &dx[0]) {
            close(&format!("seq {i} input gradient"), x, y);
        }
    }
    let mut nonzero = 0;
    for (s, (pg, ag)) in packed_grads.iter().zip(&alone_grads).enumerate() {
        for (k, (x, y)) in host(&be, pg).iter().zip(host(&be, ag)).enumerate() {
            close(&format!("slot {s} tensor {k}"), x, &y);
            nonzero += x.iter().any(|v| *v != 0.0) as usize;
        }
    }
    assert!(
        nonzero > 20,
        "too few non-zero gradient tensors ({nonzero}): the test would prove little"
    );
}

#[test]
fn packed_equals_alone_bert_classification() {
    run_packed_vs_alone("bert", false);
}

#[test]
fn packed_equals_alone_llama_lm() {
    run_packed_vs_alone("llama", true);
}

#[test]
fn gradient_slots_split_a_shared_adapter() {
    // Two sequences on one adapter set: gradients into two slots sum to the single-slot gradient.
    let be = Cpu;
    let m = load_model(&be, &fixture("gpt2")).unwrap();
    let l = m.config.layers;
    let set = random_set(&be, &m, 0..l, 5);
    let mut rng = Rng::new(3);
    let mk = |rng: &mut Rng, slot: usize| SeqJob {
        grad_slot: slot,
        ..SeqJob::new(
            SeqInput::tokens((0..5).map(|_| rng.below(120) as u32).collect()),
            0..l,
            0,
            Output::Class {
                label: Some(rng.below(3)),
            },
        )
    };
    let mut r2 = rng.clone();
    let split = vec![mk(&mut rng, 0), mk(&mut rng, 1)];
    let joint = vec![mk(&mut r2, 0), mk(&mut r2, 0)];
    let exec = Executor::new(&be, &m);
    let mut g_split = vec![set.zeros_like(&be).unwrap(), set.zeros_like(&be).unwrap()];
    let (_, t) = exec.forward(&[&set], &split, true).unwrap();
    exec.backward(&t.unwrap(), &[&set], &mut g_split, &[None, None])
        .unwrap();
    let mut g_joint = vec![set.zeros_like(&be).unwrap()];
    let (_, t) = exec.forward(&[&set], &joint, true).unwrap();
    exec.backward(&t.unwrap(), &[&set], &mut g_joint, &[None, None])
        .unwrap();
    let (a, b, j) = (
        host(&be, &g_split[0]),
        host(&be, &g_split[1]),
        host(&be, &g_joint[0]),
    );
    for k in 0..j.len() {
        let sum: Vec<f32> = a[k].iter().zip(&b[k]).map(|(x, y)| x + y).collect();
        close(&format!("tensor {k}"), &sum, &j[k]);
        assert!(
            rel_err(&a[k], &j[k]) > 1e-3 || j[k].iter().all(|v| *v == 0.0),
            "slots must differ from the total"
        );
    }
}
