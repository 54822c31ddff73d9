//! Each algorithm's round against a reference written out from docs/algorithms.md's equations.
//!
//! The reference shares nothing with `src/algorithms/` but the executor's forward and backward
//! (held to PyTorch by tests/model_fixtures.rs): it runs every client alone in its own executor
//! call (the algorithms pack them), keeps its own AdamW in f64, and does its own aggregation,
//! alignment, projection and similarity weighting. Every client's training set is no larger than
//! the batch, so each step's batch is the whole set whatever the sampler draws, and the
//! reference needs no copy of the algorithms' random draws.
//!
//! Tolerance: packing and the sampler's order change only the order of f32 sums, so gradients
//! agree to ~1e-7 of their largest entry. AdamW's first steps, `lr · g / (|g| + eps)`, amplify
//! that noise where an entry is itself of the order of eps (1e-8, i.e. 1e-8 of the largest
//! gradient, from cancellation): such an entry moves by `lr` times its relative noise (~1%),
//! which is up to ~1e-4 of the parameters' scale (measured: at most 9e-5 over these tests). A
//! wrong equation (an aggregate from one client, a missing projection, a weight off by a
//! client's share) moves every entry by a fraction of `lr`: 1e-2 of the scale or more.

mod common;

use common::rel_err;
use common::tiny;
use flexp::algorithms::{
    self, evaluate, fedbip, flat, Algorithm, AlgorithmKind, Align, ClientData, Example, Federation,
    Granularity, Hyper, Negative, RoundLog, ServerAgg, ServerUpdate,
};
use flexp::backend::cpu::Cpu;
use flexp::backend::Backend;
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::{AdapterSet, Model};
use flexp::rng::Rng;

type Set = AdapterSet<Cpu>;

/// Every state set of an algorithm, by its checkpoint name.
type State = Vec<(String, Set)>;

/// The agreement every comparison asks for (see the module docs).
const TOL: f64 = 3e-4;

// ---------------------------------------------------------------- reference building blocks

fn values(set: &Set) -> Vec<f32> {
    set.tensors()
        .iter()
        .flat_map(|t| Cpu.download(t).unwrap())
        .collect()
}

fn store(set: &mut Set, v: &[f32]) {
    let mut off = 0;
    for t in set.tensors_mut() {
        let n = Cpu.len(t);
        *t = Cpu.upload(&v[off..off + n]).unwrap();
        off += n;
    }
    assert_eq!(off, v.len(), "vector does not fit the set");
}

/// A set of `template`'s structure holding `v`.
fn set_of(template: &Set, v: &[f32]) -> Set {
    let mut s = template.zeros_like(&Cpu).unwrap();
    store(&mut s, v);
    s
}

/// AdamW (no weight decay) as in Loshchilov & Hutter / PyTorch, in f64.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    lr: f64,
}

impl Adam {
    fn new(n: usize, lr: f32) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr: lr as f64,
        }
    }

    fn step(&mut self, p: &mut [f32], g: &[f32]) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..p.len() {
            let g = g[i] as f64;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let upd = (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
            p[i] = (p[i] as f64 - self.lr * upd) as f32;
        }
    }
}

fn add_scaled(y: &mut [f32], a: f64, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = (*y as f64 + a * *x as f64) as f32;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// `Σ_k w_k v_k`.
fn combine(vs: &[Vec<f32>], w: &[f64]) -> Vec<f32> {
    (0..vs[0].len())
        .map(|i| vs.iter().zip(w).map(|(v, w)| w * v[i] as f64).sum::<f64>() as f32)
        .collect()
}

fn jobs_for(batch: &[Example], blocks: std::ops::Range<usize>, class: bool) -> Vec<SeqJob> {
    batch
        .iter()
        .map(|e| {
            let out = if class {
                e.output(true)
            } else {
                Output::Hidden
            };
            let mut j = SeqJob::new(SeqInput::tokens(e.ids.clone()), blocks.clone(), 0, out);
            j.loss_weight = 1.0 / batch.len() as f32;
            j
        })
        .collect()
}

/// Gradient of the mean cross-entropy over `batch` of the whole model with `set`.
fn full_grad(model: &Model<Cpu>, set: &Set, batch: &[Example]) -> Vec<f32> {
    let exec = Executor::new(&Cpu, model);
    let jobs = jobs_for(batch, 0..model.layers(), true);
    let (_, tape) = exec.forward(&[set], &jobs, true).unwrap();
    let mut g = vec![set.zeros_like(&Cpu).unwrap()];
    exec.backward(&tape.unwrap(), &[set], &mut g, &vec![None; jobs.len()])
        .unwrap();
    values(&g[0])
}

/// `tau` AdamW steps on the whole model from `p`, with `extra(p)` added to the CE gradient.
fn train(
    model: &Model<Cpu>,
    template: &Set,
    p: &mut [f32],
    adam: &mut Adam,
    batch: &[Example],
    tau: usize,
    extra: impl Fn(&[f32]) -> Vec<f32>,
) {
    for _ in 0..tau {
        let mut g = full_grad(model, &set_of(template, p), batch);
        add_scaled(&mut g, 1.0, &extra(p));
        adam.step(p, &g);
    }
}

fn no_extra(p: &[f32]) -> Vec<f32> {
    vec![0.0; p.len()]
}

/// Each client's share of the participants' training examples.
fn size_weights(fed: &Federation<'_, Cpu>, who: &[usize]) -> Vec<f64> {
    let n: Vec<f64> = who
        .iter()
        .map(|&k| fed.clients[k].train.len() as f64)
        .collect();
    let total: f64 = n.iter().sum();
    n.iter().map(|x| x / total).collect()
}

// ---------------------------------------------------------------- the setting

fn hyper() -> Hyper {
    Hyper {
        lr: 5e-3,
        local_steps: 3,
        batch_size: 8,
        ..Hyper::default()
    }
}

/// Training sets of different sizes (all within one batch of 8), so size weighting matters.
fn data() -> Vec<ClientData> {
    tiny::clients_sized(&[5, 8, 3, 6], 4, &mut Rng::new(3))
}

/// Every state set of an algorithm by name.
fn snapshot(algo: &mut dyn Algorithm<Cpu>) -> State {
    algo.state()
        .into_iter()
        .map(|(n, s)| {
            let c = set_of(s, &values(s));
            (n, c)
        })
        .collect()
}

fn named<'s>(state: &'s [(String, Set)], name: &str) -> &'s Set {
    &state
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no state `{name}`"))
        .1
}

/// Builds `kind`, runs one round over `participants`; returns the state before and after.
fn one_round(
    kind: AlgorithmKind,
    fed: &Federation<'_, Cpu>,
    participants: &[usize],
) -> (State, State) {
    let mut rng = Rng::new(7);
    let mut algo = algorithms::build(kind, fed, &mut rng).unwrap();
    let before = snapshot(algo.as_mut());
    let log = algo.round(fed, participants, &mut rng).unwrap();
    assert!(log.rejected.is_empty(), "rejected: {:?}", log.rejected);
    let after = snapshot(algo.as_mut());
    (before, after)
}

fn assert_state(what: &str, got: &Set, want: &[f32]) {
    let e = rel_err(&values(got), want);
    assert!(e <= TOL, "{what}: relative error {e:.3e} > {TOL:.0e}");
}

// ---------------------------------------------------------------- FedAvg, local, Ditto, pFedMe

/// FedAvg from `w`: each participant trains `tau` steps with fresh AdamW; the size-weighted mean.
fn ref_fedavg(fed: &Federation<'_, Cpu>, template: &Set, w: &[f32], who: &[usize]) -> Vec<f32> {
    let trained: Vec<Vec<f32>> = who
        .iter()
        .map(|&k| {
            let mut p = w.to_vec();
            let mut adam = Adam::new(p.len(), fed.hyper.lr);
            let batch = &fed.clients[k].train;
            train(
                fed.model,
                template,
                &mut p,
                &mut adam,
                batch,
                fed.hyper.local_steps,
                no_extra,
            );
            p
        })
        .collect();
    combine(&trained, &size_weights(fed, who))
}

#[test]
fn fedavg_round_is_the_size_weighted_mean_of_local_training() {
    let model = tiny::model();
    let fed = tiny::federation(&model, hyper(), data(), vec![1, 2, 1, 3]);
    // Client 1 drops out of this round: the mean is over the others, by their sizes.
    let who = [0, 2, 3];
    let (before, after) = one_round(AlgorithmKind::FedAvg, &fed, &who);
    let g0 = named(&before, "global");
    let want = ref_fedavg(&fed, g0, &values(g0), &who);
    assert_state("fedavg global", named(&after, "global"), &want);
}

#[test]
fn local_round_trains_each_client_alone() {
    let model = tiny::model();
    let fed = tiny::federation(&model, hyper(), data(), vec![1, 2, 1, 3]);
    let who = [0, 1, 3];
    let (before, after) = one_round(AlgorithmKind::Local, &fed, &who);
    for k in 0..4 {
        let name = format!("client{k}");
        let s0 = named(&before, &name);
        let mut p = values(s0);
        if who.contains(&k) {
            let mut adam = Adam::new(p.len(), fed.hyper.lr);
            let batch = &fed.clients[k].train;
            train(&model, s0, &mut p, &mut adam, batch, 3, no_extra);
        }
        assert_state(&name, named(&after, &name), &p);
    }
}

#[test]
fn ditto_round_is_proximal_personal_training_plus_fedavg() {
    let model = tiny::model();
    let h = Hyper {
        ditto_lambda: 2.0,
        ..hyper()
    };
    let fed = tiny::federation(&model, h, data(), vec![1, 2, 1, 3]);
    let who = [0, 1, 2, 3];
    let (before, after) = one_round(AlgorithmKind::Ditto, &fed, &who);
    let g0 = named(&before, "global");
    let w = values(g0);
    for &k in &who {
        let name = format!("client{k}");
        let mut v = values(named(&before, &name));
        let mut adam = Adam::new(v.len(), fed.hyper.lr);
        // ∇ (λ/2)‖v − w‖² = λ (v − w), with w as sent at the start of the round.
        let prox = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .zip(&w)
                .map(|(v, w)| (2.0 * (*v as f64 - *w as f64)) as f32)
                .collect()
        };
        let batch = &fed.clients[k].train;
        train(&model, g0, &mut v, &mut adam, batch, 3, prox);
        assert_state(&name, named(&after, &name), &v);
    }
    let want = ref_fedavg(&fed, g0, &w, &who);
    assert_state("ditto global", named(&after, "global"), &want);
}

#[test]
fn pfedme_round_follows_the_moreau_envelope_updates() {
    let model = tiny::model();
    let h = Hyper {
        pfedme_lambda: 0.5,
        pfedme_eta: 1.2,
        pfedme_beta: 0.7,
        pfedme_inner_steps: 2,
        local_steps: 2,
        ..hyper()
    };
    let (lambda, eta, beta) = (0.5f64, 1.2f64, 0.7f64);
    let fed = tiny::federation(&model, h, data(), vec![1, 2, 1, 3]);
    let who = [0, 2, 3];
    let (before, after) = one_round(AlgorithmKind::PFedMe, &fed, &who);
    let g0 = named(&before, "global");
    let w0 = values(g0);
    let mut locals = Vec::new();
    for &k in &who {
        let name = format!("client{k}");
        let mut theta = values(named(&before, &name));
        let mut wk = w0.clone();
        let mut adam = Adam::new(theta.len(), fed.hyper.lr);
        let batch = &fed.clients[k].train;
        for _ in 0..2 {
            // K inner steps on CE(θ) + (λ/2)‖θ − w_k‖², then w_k ← w_k − ηλ (w_k − θ).
            let prox = |t: &[f32]| -> Vec<f32> {
                t.iter()
                    .zip(&wk)
                    .map(|(t, w)| (lambda * (*t as f64 - *w as f64)) as f32)
                    .collect()
            };
            train(&model, g0, &mut theta, &mut adam, batch, 2, prox);
            for (w, t) in wk.iter_mut().zip(&theta) {
                *w = (*w as f64 - eta * lambda * (*w as f64 - *t as f64)) as f32;
            }
        }
        assert_state(&name, named(&after, &name), &theta);
        locals.push(wk);
    }
    let mean = combine(&locals, &[1.0 / 3.0; 3]);
    let want: Vec<f32> = w0
        .iter()
        .zip(&mean)
        .map(|(w, m)| ((1.0 - beta) * *w as f64 + beta * *m as f64) as f32)
        .collect();
    assert_state("pfedme global", named(&after, "global"), &want);
}

// ---------------------------------------------------------------- FedBip

/// Cosine similarities, negatives clipped (or kept), rows normalised by the absolute sum.
fn ref_weights(taus: &[&[f32]], negative: Negative) -> Vec<Vec<f64>> {
    let n = taus.len();
    let mut p = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..n {
            let d = (dot(taus[i], taus[i]) * dot(taus[j], taus[j])).sqrt();
            let c = if d > 0.0 {
                dot(taus[i], taus[j]) / d
            } else {
                (i == j) as u8 as f64
            };
            p[i][j] = match negative {
                Negative::Clip => c.max(0.0),
                Negative::Keep => c,
            };
        }
        let z: f64 = p[i].iter().map(|v| v.abs()).sum();
        p[i].iter_mut().for_each(|v| *v /= z);
    }
    p
}

fn check_fedbip(kind: AlgorithmKind, negative: Negative) {
    let model = tiny::model();
    let h = Hyper {
        negative,
        ..hyper()
    };
    let fed = tiny::federation(&model, h, data(), vec![1, 2, 1, 3]);
    let who = [0, 1, 3];
    let (before, after) = one_round(kind, &fed, &who);
    let theta0: Vec<Vec<f32>> = (0..4)
        .map(|k| values(named(&before, &format!("client{k}"))))
        .collect();
    let template = named(&before, "client0");
    let taus: Vec<Vec<f32>> = who
        .iter()
        .map(|&k| {
            let mut p = theta0[k].clone();
            let mut adam = Adam::new(p.len(), fed.hyper.lr);
            let batch = &fed.clients[k].train;
            train(&model, template, &mut p, &mut adam, batch, 3, no_extra);
            p.iter().zip(&theta0[k]).map(|(a, b)| a - b).collect()
        })
        .collect();
    // FedBip: one group; FedBip-L: each block with adapters, and the head.
    let mut groups = Vec::new();
    let mut off = 0;
    let mut push = |n: usize, groups: &mut Vec<std::ops::Range<usize>>| {
        groups.push(off..off + n);
        off += n;
    };
    for block in &template.blocks {
        let n: usize = block
            .iter()
            .flatten()
            .map(|p| Cpu.len(&p.a) + Cpu.len(&p.b))
            .sum();
        if n > 0 {
            push(n, &mut groups);
        }
    }
    let head = template.head.as_ref().unwrap();
    push(Cpu.len(&head.weight) + Cpu.len(&head.bias), &mut groups);
    if kind == AlgorithmKind::FedBip {
        groups = std::iter::once(0..off).collect();
    }
    for (i, &k) in who.iter().enumerate() {
        let mut want = theta0[k].clone();
        for r in &groups {
            let parts: Vec<&[f32]> = taus.iter().map(|t| &t[r.clone()]).collect();
            let p = ref_weights(&parts, negative);
            for (j, part) in parts.iter().enumerate() {
                add_scaled(&mut want[r.clone()], p[i][j], part);
            }
        }
        assert_state(
            &format!("{kind:?} client{k}"),
            named(&after, &format!("client{k}")),
            &want,
        );
    }
    // A client that sat the round out keeps its aggregate.
    assert_state("absent client2", named(&after, "client2"), &theta0[2]);
}

#[test]
fn fedbip_round_aggregates_task_vectors_by_similarity() {
    check_fedbip(AlgorithmKind::FedBip, Negative::Clip);
    check_fedbip(AlgorithmKind::FedBip, Negative::Keep);
}

#[test]
fn fedbip_l_round_aggregates_per_block() {
    check_fedbip(AlgorithmKind::FedBipL, Negative::Clip);
}

#[test]
fn similarity_weights_match_hand_computed_cosines() {
    // τ1 = (1, 0), τ2 = (1, 1), τ3 = (−1, 0): cos12 = 1/√2, cos13 = −1, cos23 = −1/√2.
    let t: [&[f32]; 3] = [&[1.0, 0.0], &[1.0, 1.0], &[-1.0, 0.0]];
    let r = std::f64::consts::FRAC_1_SQRT_2;
    let clip = fedbip::similarity_weights(&t, Negative::Clip);
    let want_clip = [
        [1.0 / (1.0 + r), r / (1.0 + r), 0.0],
        [r / (1.0 + r), 1.0 / (1.0 + r), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let keep = fedbip::similarity_weights(&t, Negative::Keep);
    let z1 = 2.0 + r;
    let z2 = 1.0 + 2.0 * r;
    let want_keep = [
        [1.0 / z1, r / z1, -1.0 / z1],
        [r / z2, 1.0 / z2, -r / z2],
        [-1.0 / z1, -r / z1, 1.0 / z1],
    ];
    for i in 0..3 {
        for j in 0..3 {
            assert!((clip[i][j] - want_clip[i][j]).abs() < 1e-12, "clip {i}{j}");
            assert!((keep[i][j] - want_keep[i][j]).abs() < 1e-12, "keep {i}{j}");
        }
    }
    // A zero task vector is similar only to itself.
    let z: [&[f32]; 2] = [&[0.0, 0.0], &[1.0, 2.0]];
    let w = fedbip::similarity_weights(&z, Negative::Clip);
    assert_eq!(w, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    // ... and dissimilar (cosine 0) to the others, with negative cosines kept: τ1 = (1, 0),
    // τ2 = 0, τ3 = (−1, 0): row 1 is (1, 0, −1)/2, row 2 the identity, row 3 (−1, 0, 1)/2.
    let z: [&[f32]; 3] = [&[1.0, 0.0], &[0.0, 0.0], &[-1.0, 0.0]];
    let w = fedbip::similarity_weights(&z, Negative::Keep);
    assert_eq!(
        w,
        vec![
            vec![0.5, 0.0, -0.5],
            vec![0.0, 1.0, 0.0],
            vec![-0.5, 0.0, 0.5]
        ]
    );
}

// ---------------------------------------------------------------- projections

#[test]
fn projected_mean_matches_the_pcgrad_definition() {
    // g1 = (1, 0), g2 = (−3, 1): mean m = (−1, 0.5), ‖m‖² = 1.25. ⟨g1, m⟩ = −1 < 0, so
    // g1 → g1 + 0.8 m = (0.2, 0.4); ⟨g2, m⟩ = 3.5 ≥ 0 stays. Result (−1.4, 0.7).
    let got = flat::projected_mean(&[vec![1.0, 0.0], vec![-3.0, 1.0]]);
    assert!(
        (got[0] + 1.4).abs() < 1e-6 && (got[1] - 0.7).abs() < 1e-6,
        "{got:?}"
    );
    // No conflicts: the plain mean.
    let got = flat::projected_mean(&[vec![1.0, 2.0], vec![3.0, 1.0], vec![2.0, 0.0]]);
    assert!(
        (got[0] - 2.0).abs() < 1e-6 && (got[1] - 1.0).abs() < 1e-6,
        "{got:?}"
    );
    // Orthogonal to the mean is no conflict: g1 = (0, −2, 0), g2 = (2, 2, 0), m = (1, 0, 0),
    // ⟨g1, m⟩ = 0, so the result is the plain mean.
    let got = flat::projected_mean(&[vec![0.0, -2.0, 0.0], vec![2.0, 2.0, 0.0]]);
    assert!(
        (got[0] - 1.0).abs() < 1e-6 && got[1].abs() < 1e-6 && got[2].abs() < 1e-6,
        "{got:?}"
    );
    // Two conflicts: g1 = (−1, 0), g2 = (0, −1), g3 = (4, 4): m = (1, 1), ‖m‖² = 2;
    // ⟨g1, m⟩ = ⟨g2, m⟩ = −1 → g1 = (−0.5, 0.5), g2 = (0.5, −0.5); result (4/3, 4/3).
    let got = flat::projected_mean(&[vec![-1.0, 0.0], vec![0.0, -1.0], vec![4.0, 4.0]]);
    let t = 4.0 / 3.0;
    assert!(
        (got[0] - t).abs() < 1e-6 && (got[1] - t).abs() < 1e-6,
        "{got:?}"
    );
}

#[test]
fn kl_alignment_gradient_is_the_derivative_of_the_kl() {
    // Central differences of the value the function itself reports, on 3 rows of width 5.
    let d = 5;
    let mut rng = Rng::new(5);
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.below(2001) as f32 - 1000.0) / 400.0)
            .collect()
    };
    let h = draw(3 * d);
    let target = draw(3 * d);
    let (kl, grad) = flexp::algorithms::flexp_sfl::kl_alignment_grad(&h, &target, d);
    assert!(kl > 0.0, "KL of different distributions is positive: {kl}");
    let (same, zero) = flexp::algorithms::flexp_sfl::kl_alignment_grad(&h, &h, d);
    assert!(same.abs() < 1e-12 && zero.iter().all(|g| g.abs() < 1e-7));
    let eps = 1e-3f32;
    for i in 0..h.len() {
        let mut up = h.clone();
        up[i] += eps;
        let mut down = h.clone();
        down[i] -= eps;
        let f = |x: &[f32]| flexp::algorithms::flexp_sfl::kl_alignment_grad(x, &target, d).0;
        let fd = (f(&up) - f(&down)) / (2.0 * eps as f64);
        assert!(
            (fd - grad[i] as f64).abs() < 1e-4,
            "entry {i}: finite difference {fd:.6} vs gradient {:.6}",
            grad[i]
        );
    }
}

#[test]
fn kl_alignment_stays_finite_at_extreme_activations() {
    // Hidden states of a real model can be in the hundreds. Row 0: the global model puts all
    // its mass on entry 0 (entry 1's probability underflows to exactly 0), the client's is
    // uniform: KL = ln 2. Row 1: large logits [800, 799] on both sides (the softmax must
    // subtract the maximum, or exp overflows): KL = 0.
    let h = [0.0f32, 0.0, 800.0, 799.0];
    let global = [0.0f32, -1000.0, 800.0, 799.0];
    let (kl, grad) = flexp::algorithms::flexp_sfl::kl_alignment_grad(&h, &global, 2);
    assert!(
        (kl - std::f64::consts::LN_2 / 2.0).abs() < 1e-12,
        "mean KL over the two rows: {kl}"
    );
    // Gradient (p - q) / rows: row 0 (0.5 - 1, 0.5 - 0) / 2; row 1 zero.
    let want = [-0.25f32, 0.25, 0.0, 0.0];
    for (g, w) in grad.iter().zip(want) {
        assert!((g - w).abs() < 1e-7, "{grad:?}");
    }
}

#[test]
fn project_conflict_removes_only_the_opposing_component() {
    let mut g = vec![1.0f32, -1.0];
    flat::project_conflict(&mut g, &[0.0, 2.0]);
    assert_eq!(g, vec![1.0, 0.0]);
    let mut g = vec![1.0f32, 1.0];
    flat::project_conflict(&mut g, &[0.0, 2.0]);
    assert_eq!(g, vec![1.0, 1.0], "an agreeing gradient is left alone");
    let mut g = vec![1.0f32, 1.0];
    flat::project_conflict(&mut g, &[0.0, 0.0]);
    assert_eq!(g, vec![1.0, 1.0], "a zero direction changes nothing");
}

// ---------------------------------------------------------------- split learning

/// Block ranges of the flat vector of a set without a head: one per block with adapters
/// (`Block`), one per tensor (`Tensor`), or one (`All`).
fn ref_groups(set: &Set, g: Granularity) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut off = 0;
    for block in &set.blocks {
        let sizes: Vec<usize> = block
            .iter()
            .flatten()
            .flat_map(|p| [Cpu.len(&p.a), Cpu.len(&p.b)])
            .collect();
        if g == Granularity::Tensor {
            for n in sizes {
                out.push(off..off + n);
                off += n;
            }
        } else if !sizes.is_empty() {
            let n: usize = sizes.iter().sum();
            out.push(off..off + n);
            off += n;
        }
    }
    assert!(set.head.is_none());
    if g == Granularity::All {
        return std::iter::once(0..off).collect();
    }
    out
}

/// Per token row: (softmax(h) − softmax(h')) / (T · b), the gradient of the batch mean of the
/// per-sequence mean KL(softmax(h') ‖ softmax(h)).
fn ref_kl_grad(h: &[f32], target: &[f32], d: usize, b: usize) -> Vec<f32> {
    let rows = h.len() / d;
    let sm = |x: &[f32]| -> Vec<f64> {
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
        let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect()
    };
    let mut g = Vec::with_capacity(h.len());
    for r in 0..rows {
        let p = sm(&h[r * d..(r + 1) * d]);
        let q = sm(&target[r * d..(r + 1) * d]);
        g.extend(
            p.iter()
                .zip(&q)
                .map(|(p, q)| ((p - q) / (rows * b) as f64) as f32),
        );
    }
    g
}

/// One client's server segment s..L with `g` on its cut activations: (G-gradient, d loss / d h).
fn server_step(
    model: &Model<Cpu>,
    g: &Set,
    s: usize,
    smashed: &[Vec<f32>],
    batch: &[Example],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let exec = Executor::new(&Cpu, model);
    let jobs: Vec<SeqJob> = smashed
        .iter()
        .zip(batch)
        .map(|(h, e)| {
            let mut j = SeqJob::new(
                SeqInput::Hidden(h.clone()),
                s..model.layers(),
                0,
                e.output(true),
            );
            j.loss_weight = 1.0 / batch.len() as f32;
            j
        })
        .collect();
    let (_, tape) = exec.forward(&[g], &jobs, true).unwrap();
    let mut grads = vec![g.zeros_like(&Cpu).unwrap()];
    let dx = exec
        .backward(&tape.unwrap(), &[g], &mut grads, &vec![None; jobs.len()])
        .unwrap();
    (
        values(&grads[0]),
        dx.into_iter().map(|d| d.unwrap()).collect(),
    )
}

/// PCGrad-style server aggregate: gradients opposing the mean projected onto its normal plane,
/// then averaged.
fn ref_projected_mean(gs: &[Vec<f32>]) -> Vec<f32> {
    let w = vec![1.0 / gs.len() as f64; gs.len()];
    let m = combine(gs, &w);
    let mm = dot(&m, &m);
    let fixed: Vec<Vec<f32>> = gs
        .iter()
        .map(|g| {
            let gm = dot(g, &m);
            let mut g = g.clone();
            if gm < 0.0 && mm > 0.0 {
                add_scaled(&mut g, -gm / mm, &m);
            }
            g
        })
        .collect();
    combine(&fixed, &w)
}

/// FlexP-SFL's round written out from docs/algorithms.md (vanilla split): returns G and every
/// participant's P_k after the round.
fn ref_flexp(
    fed: &Federation<'_, Cpu>,
    before: &[(String, Set)],
    who: &[usize],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let model = fed.model;
    let h = &fed.hyper;
    let d = model.config.hidden;
    let exec = Executor::new(&Cpu, model);
    let g_tmpl = named(before, "global");
    let mut g = values(g_tmpl);
    let g_round = g_tmpl; // Ĝ: G as downloaded at the start of the round
    let mut g_adam = Adam::new(g.len(), h.lr);
    let tmpl: Vec<&Set> = who
        .iter()
        .map(|&k| named(before, &format!("client{k}")))
        .collect();
    let mut p: Vec<Vec<f32>> = tmpl.iter().map(|s| values(s)).collect();
    let mut p_adam: Vec<Adam> = p.iter().map(|v| Adam::new(v.len(), h.lr)).collect();
    for _ in 0..h.local_steps {
        // 1.–2. Client forwards (own adapters) and alignment targets (Ĝ), client by client.
        let mut tapes = Vec::new();
        let mut smashed = Vec::new();
        let mut targets = Vec::new();
        for (i, &k) in who.iter().enumerate() {
            let s = fed.splits[k];
            let batch = &fed.clients[k].train;
            let pk = set_of(tmpl[i], &p[i]);
            let jobs = jobs_for(batch, 0..s, false);
            let (out, tape) = exec.forward(&[&pk], &jobs, true).unwrap();
            tapes.push((pk, tape.unwrap()));
            smashed.push(
                out.into_iter()
                    .map(|r| r.hidden.unwrap())
                    .collect::<Vec<_>>(),
            );
            let (t, _) = exec.forward(&[g_round], &jobs, false).unwrap();
            targets.push(t.into_iter().map(|r| r.hidden.unwrap()).collect::<Vec<_>>());
        }
        // 3.–4. Server: per-client G-gradients and cut gradients; G updated by the aggregate
        // (sync) or after each client (sequential).
        let mut dh = Vec::new();
        let mut g_grads = Vec::new();
        for (i, &k) in who.iter().enumerate() {
            let gs = set_of(g_tmpl, &g);
            let (gg, dx) = server_step(
                model,
                &gs,
                fed.splits[k],
                &smashed[i],
                &fed.clients[k].train,
            );
            if h.server_update == ServerUpdate::Sequential {
                g_adam.step(&mut g, &gg);
            }
            g_grads.push(gg);
            dh.push(dx);
        }
        if h.server_update == ServerUpdate::Sync {
            let agg = match h.server_agg {
                ServerAgg::Mean => combine(&g_grads, &vec![1.0 / who.len() as f64; who.len()]),
                ServerAgg::Proj => ref_projected_mean(&g_grads),
            };
            g_adam.step(&mut g, &agg);
        }
        // 5. Client backward with alignment, then the P_k update.
        for (i, &k) in who.iter().enumerate() {
            let b = fed.clients[k].train.len();
            let (pk, tape) = &tapes[i];
            let align: Vec<Option<Vec<f32>>> = smashed[i]
                .iter()
                .zip(&targets[i])
                .map(|(hh, t)| Some(ref_kl_grad(hh, t, d, b)))
                .collect();
            let backward = |outs: &[Option<Vec<f32>>]| {
                let mut gr = vec![pk.zeros_like(&Cpu).unwrap()];
                exec.backward(tape, &[pk], &mut gr, outs).unwrap();
                values(&gr[0])
            };
            let ce: Vec<Option<Vec<f32>>> = dh[i].iter().cloned().map(Some).collect();
            let lam = h.align_lambda as f64;
            let grad = match h.align {
                Align::None => backward(&ce),
                Align::Kl => {
                    let summed: Vec<Option<Vec<f32>>> = ce
                        .iter()
                        .zip(&align)
                        .map(|(c, a)| {
                            let mut c = c.clone().unwrap();
                            add_scaled(&mut c, lam, a.as_ref().unwrap());
                            Some(c)
                        })
                        .collect();
                    backward(&summed)
                }
                Align::Proj => {
                    let mut gc = backward(&ce);
                    let ga = backward(&align);
                    for r in ref_groups(pk, h.proj_granularity) {
                        let (c, a) = (&gc[r.clone()], &ga[r.clone()]);
                        let (ca, aa) = (dot(c, a), dot(a, a));
                        if ca < 0.0 && aa > 0.0 {
                            let a = a.to_vec();
                            add_scaled(&mut gc[r], -ca / aa, &a);
                        }
                    }
                    add_scaled(&mut gc, lam, &ga);
                    gc
                }
            };
            p_adam[i].step(&mut p[i], &grad);
        }
    }
    (g, p)
}

fn check_flexp(h: Hyper, who: &[usize]) {
    let model = tiny::model();
    let what = format!(
        "align {:?} ({:?}), server {:?}/{:?}",
        h.align, h.proj_granularity, h.server_update, h.server_agg
    );
    let fed = tiny::federation(&model, h, data(), vec![1, 2, 1, 3]);
    let (before, after) = one_round(AlgorithmKind::FlexpSfl, &fed, who);
    let (g, p) = ref_flexp(&fed, &before, who);
    assert_state(&format!("{what}: G"), named(&after, "global"), &g);
    for (i, &k) in who.iter().enumerate() {
        assert_state(
            &format!("{what}: P_{k}"),
            named(&after, &format!("client{k}")),
            &p[i],
        );
    }
}

#[test]
fn flexp_sfl_round_matches_the_equations_with_projection_alignment() {
    // The default: align = proj per block, sync server update with the mean.
    check_flexp(hyper(), &[0, 1, 2, 3]);
    check_flexp(
        Hyper {
            align_lambda: 4.0,
            proj_granularity: Granularity::Tensor,
            ..hyper()
        },
        &[1, 3],
    );
}

#[test]
fn flexp_sfl_round_matches_the_equations_with_kl_and_server_projection() {
    check_flexp(
        Hyper {
            align: Align::Kl,
            // The KL gradient is ~1/(hidden · T · b) per entry: a large weight makes it matter.
            align_lambda: 100.0,
            server_agg: ServerAgg::Proj,
            ..hyper()
        },
        &[0, 1, 2, 3],
    );
}

#[test]
fn flexp_sfl_round_matches_the_equations_without_alignment_sequentially() {
    check_flexp(
        Hyper {
            align: Align::None,
            server_update: ServerUpdate::Sequential,
            ..hyper()
        },
        &[0, 2, 3],
    );
}

/// SplitFed from docs/algorithms.md: returns the client-side and server-side sets after a round.
fn ref_splitfed(
    fed: &Federation<'_, Cpu>,
    before: &[(String, Set)],
    who: &[usize],
    v2: bool,
) -> (Vec<f32>, Vec<f32>) {
    let model = fed.model;
    let h = &fed.hyper;
    let exec = Executor::new(&Cpu, model);
    let s = *fed.splits.iter().min().unwrap();
    let (c_tmpl, s_tmpl) = (named(before, "client"), named(before, "server"));
    let c0 = values(c_tmpl);
    let mut cs: Vec<Vec<f32>> = who.iter().map(|_| c0.clone()).collect();
    let mut c_adam: Vec<Adam> = who.iter().map(|_| Adam::new(c0.len(), h.lr)).collect();
    // V1: a server copy per client with fresh AdamW; V2: the shared copy, its AdamW fresh here
    // because this is the first round.
    let s0 = values(s_tmpl);
    let copies = if v2 { 1 } else { who.len() };
    let mut ss: Vec<Vec<f32>> = (0..copies).map(|_| s0.clone()).collect();
    let mut s_adam: Vec<Adam> = (0..copies).map(|_| Adam::new(s0.len(), h.lr)).collect();
    for _ in 0..h.local_steps {
        let mut pending = Vec::new();
        for (i, &k) in who.iter().enumerate() {
            let batch = &fed.clients[k].train;
            let ck = set_of(c_tmpl, &cs[i]);
            let (out, tape) = exec
                .forward(&[&ck], &jobs_for(batch, 0..s, false), true)
                .unwrap();
            let smashed: Vec<Vec<f32>> = out.into_iter().map(|r| r.hidden.unwrap()).collect();
            pending.push((ck, tape.unwrap(), smashed));
        }
        for (i, &k) in who.iter().enumerate() {
            let j = if v2 { 0 } else { i };
            let server = set_of(s_tmpl, &ss[j]);
            let (gs, dx) = server_step(model, &server, s, &pending[i].2, &fed.clients[k].train);
            s_adam[j].step(&mut ss[j], &gs);
            let (ck, tape, _) = &pending[i];
            let mut gr = vec![ck.zeros_like(&Cpu).unwrap()];
            let outs: Vec<Option<Vec<f32>>> = dx.into_iter().map(Some).collect();
            exec.backward(tape, &[ck], &mut gr, &outs).unwrap();
            c_adam[i].step(&mut cs[i], &values(&gr[0]));
        }
    }
    let w = size_weights(fed, who);
    let server = if v2 { ss.remove(0) } else { combine(&ss, &w) };
    (combine(&cs, &w), server)
}

fn check_splitfed(kind: AlgorithmKind) {
    let model = tiny::model();
    let fed = tiny::federation(&model, hyper(), data(), vec![2, 3, 2, 3]);
    let who = [0, 1, 3];
    let (before, after) = one_round(kind, &fed, &who);
    let (c, s) = ref_splitfed(&fed, &before, &who, kind == AlgorithmKind::SflV2);
    assert_state(
        &format!("{kind:?} client side"),
        named(&after, "client"),
        &c,
    );
    assert_state(
        &format!("{kind:?} server side"),
        named(&after, "server"),
        &s,
    );
}

#[test]
fn sfl_v1_round_averages_client_and_server_copies() {
    check_splitfed(AlgorithmKind::SflV1);
}

#[test]
fn sfl_v2_round_updates_one_server_copy_client_after_client() {
    check_splitfed(AlgorithmKind::SflV2);
}

#[test]
fn client_fraction_samples_that_share_of_distinct_clients_uniformly() {
    use flexp::run::runner::sample_participants;
    assert_eq!(
        sample_participants(5, 1.0, &mut Rng::new(1)),
        vec![0, 1, 2, 3, 4]
    );
    // round(q · n) distinct clients, at least one; each client equally likely (q of the rounds).
    let mut rng = Rng::new(2);
    let mut seen = [0usize; 10];
    let rounds = 4000;
    for _ in 0..rounds {
        let p = sample_participants(10, 0.3, &mut rng);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.windows(2).all(|w| w[0] < w[1]), "sorted, distinct: {p:?}");
        p.iter().for_each(|&k| seen[k] += 1);
    }
    // Binomial(4000, 0.3): sd ≈ 29; 5 sd either side.
    for (k, &n) in seen.iter().enumerate() {
        assert!(
            (1055..=1345).contains(&n),
            "client {k} sampled {n} of {rounds} rounds"
        );
    }
    assert_eq!(sample_participants(10, 0.01, &mut rng).len(), 1);
}

// ---------------------------------------------------------------- what a round charges

/// What a SplitFed round charges, as docs/algorithms.md states it: every client cuts at the
/// smallest split s; per step, up = 4·tokens·d bytes of h plus 8 bytes per label and down =
/// 4·tokens·d for d loss / d h; per round, the client-side adapters (blocks 0..s) down at the
/// start and up at the end for averaging; client FLOPs from the cost model for blocks 0..s and
/// the server's for s..L, scaled to the tokens processed. Every training set fits one batch, so
/// each step processes the client's whole set.
#[test]
fn splitfed_round_charges_what_the_docs_state() {
    let model = tiny::model();
    let d = model.config.hidden as f64;
    let splits = vec![2, 3, 2, 3];
    let s = 2;
    for kind in [AlgorithmKind::SflV1, AlgorithmKind::SflV2] {
        let h = hyper();
        let fed = tiny::federation(&model, h.clone(), data(), splits.clone());
        let who = [0, 2, 3];
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        let client_model = 4.0 * values(named(&snapshot(algo.as_mut()), "client")).len() as f64;
        let log = algo.round(&fed, &who, &mut rng).unwrap();
        assert!(log.rejected.is_empty(), "{kind:?}: {:?}", log.rejected);
        let steps = h.local_steps as f64;
        let nominal = (h.batch_size * 12) as f64;
        let mut server = 0.0;
        for &k in &who {
            let train = &fed.clients[k].train;
            let tokens: usize = train.iter().map(|e| e.ids.len()).sum();
            let act = 4.0 * tokens as f64 * d;
            let up = steps * (act + 8.0 * train.len() as f64) + client_model;
            let down = steps * act + client_model;
            let flops = steps * fed.cost.client_flops_u(s, 0) * tokens as f64 / nominal;
            server += steps * fed.cost.server_flops_u(s, 0) * tokens as f64 / nominal;
            let c = log.clients.iter().find(|c| c.client == k).unwrap();
            let what = format!("{kind:?}, client {k}");
            assert_eq!(c.steps, h.local_steps, "{what}: steps");
            for (name, got, want) in [
                ("up", c.bytes_up, up),
                ("down", c.bytes_down, down),
                ("flops", c.flops, flops),
            ] {
                assert!(
                    (got - want).abs() <= 1e-9 * want,
                    "{what}: {name} {got} vs {want}"
                );
            }
        }
        assert!(
            (log.server_flops - server).abs() <= 1e-9 * server,
            "{kind:?}: server flops {} vs {server}",
            log.server_flops
        );
    }
}

/// SplitFed's global model is its averaged client-side adapters on blocks 0..s followed by the
/// server-side ones on s..L (docs/algorithms.md): the same sets its state names, in that order.
#[test]
fn splitfed_global_model_is_client_then_server_adapters() {
    let model = tiny::model();
    let l = model.config.layers;
    let fed = tiny::federation(&model, hyper(), data(), vec![2, 3, 2, 3]);
    for kind in [AlgorithmKind::SflV1, AlgorithmKind::SflV2] {
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        algo.round(&fed, &[0, 1, 2], &mut rng).unwrap();
        let state = snapshot(algo.as_mut());
        let chain = algo.global().expect("SplitFed has a global model");
        let blocks: Vec<_> = chain.parts.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(blocks, [0..2, 2..l], "{kind:?}");
        assert_eq!(
            values(chain.parts[0].1),
            values(named(&state, "client")),
            "{kind:?}"
        );
        assert_eq!(
            values(chain.parts[1].1),
            values(named(&state, "server")),
            "{kind:?}"
        );
    }
}

/// SplitFed V1 computes FedAvg's update split across two machines (docs/algorithms.md), and from
/// one seed both start from the same adapters: the training loss each client reports for the
/// first round (taken before any update, averaged over its steps) is FedAvg's.
#[test]
fn splitfed_v1_reports_fedavgs_losses() {
    let model = tiny::model();
    let fed = tiny::federation(&model, hyper(), data(), vec![2, 2, 2, 2]);
    let who = [0, 1, 3];
    let losses = |kind| {
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        let log = algo.round(&fed, &who, &mut rng).unwrap();
        who.iter()
            .map(|&k| log.clients.iter().find(|c| c.client == k).unwrap().loss)
            .collect::<Vec<f64>>()
    };
    let (v1, fa) = (losses(AlgorithmKind::SflV1), losses(AlgorithmKind::FedAvg));
    for (a, b) in v1.iter().zip(&fa) {
        assert!(
            a.is_finite() && (a - b).abs() <= 1e-5 * b.abs(),
            "{v1:?} vs {fa:?}"
        );
    }
}

/// FlexP-SFL reports each client's loss as the mean cross-entropy of its batch under the model
/// it trained: with one local step and every training set within one batch, the loss of round
/// 1 is the personalized model's (P_k on the client blocks, G on the server's, and in the
/// U-shaped form P_k's tail and head) mean NLL over the client's training set before the round,
/// as `evaluate` scores it. The server weights each job's loss by 1/b to form that mean.
#[test]
fn flexp_sfl_reports_the_mean_loss_of_each_clients_batch() {
    let model = tiny::model();
    for (u, splits) in [(0, vec![1, 2, 1, 3]), (1, vec![1, 2, 2, 1])] {
        let h = Hyper {
            local_steps: 1,
            align: Align::None,
            u_tail: u,
            ..hyper()
        };
        let fed = tiny::federation(&model, h, data(), splits);
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(AlgorithmKind::FlexpSfl, &fed, &mut rng).unwrap();
        let who: Vec<usize> = (0..4).collect();
        let chains: Vec<_> = who.iter().map(|&k| algo.personal(k)).collect();
        let train: Vec<&[Example]> = fed.clients.iter().map(|c| c.train.as_slice()).collect();
        let before: Vec<f64> = evaluate(&fed, &chains, &train)
            .unwrap()
            .iter()
            .map(|s| s.nll / s.targets as f64)
            .collect();
        drop(chains);
        let log = algo.round(&fed, &who, &mut rng).unwrap();
        for (k, want) in before.iter().enumerate() {
            let c = log.clients.iter().find(|c| c.client == k).unwrap();
            assert_eq!(c.steps, 1);
            assert!(
                (c.loss - want).abs() <= 1e-5 * want.abs(),
                "u = {u}, client {k}: reported {} vs {want}",
                c.loss
            );
        }
    }
}

/// What a FlexP-SFL round charges each participant and the server, as docs/algorithms.md
/// states it: per step, up = 4·tokens·d bytes of h plus 8 bytes per label and down = 4·tokens·d
/// for d loss / d h (U-shaped: z down and d loss / d z up as well); per round with alignment,
/// G's blocks 0..s_k down; client FLOPs from the cost model for blocks 0..s_k (and the tail
/// with the head when U-shaped), the server's for s_k..L-u, each scaled to the tokens processed.
/// Every training set fits one batch, so each step processes the client's whole set.
#[test]
fn flexp_sfl_round_charges_what_the_docs_state() {
    let model = tiny::model();
    let d = model.config.hidden as f64;
    for (h, splits, who) in [
        (hyper(), vec![1, 2, 1, 3], vec![0, 1, 2, 3]),
        (
            Hyper {
                align: Align::None,
                u_tail: 1,
                ..hyper()
            },
            vec![1, 2, 2, 1],
            vec![0, 2, 3],
        ),
    ] {
        let u = h.u_tail;
        let fed = tiny::federation(&model, h.clone(), data(), splits.clone());
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(AlgorithmKind::FlexpSfl, &fed, &mut rng).unwrap();
        let g_params = values(named(&snapshot(algo.as_mut()), "global")).len() as f64;
        let log = algo.round(&fed, &who, &mut rng).unwrap();
        assert!(log.rejected.is_empty(), "{:?}", log.rejected);
        let steps = h.local_steps as f64;
        let nominal = (h.batch_size * 12) as f64;
        let l = model.config.layers as f64;
        let mut server = 0.0;
        for &k in &who {
            let train = &fed.clients[k].train;
            let tokens: usize = train.iter().map(|e| e.ids.len()).sum();
            let act = 4.0 * tokens as f64 * d;
            let s = splits[k];
            let mut up = steps * (act + 8.0 * train.len() as f64);
            let mut down = steps * act;
            if u > 0 {
                up += steps * act;
                down += steps * act;
            }
            if h.align != Align::None {
                down += 4.0 * g_params * s as f64 / l;
            }
            let flops = steps * fed.cost.client_flops_u(s, u) * tokens as f64 / nominal;
            server += steps * fed.cost.server_flops_u(s, u) * tokens as f64 / nominal;
            let c = log
                .clients
                .iter()
                .find(|c| c.client == k)
                .unwrap_or_else(|| panic!("client {k} not in the log"));
            let what = format!("u_tail {u}, client {k}");
            assert_eq!(c.steps, h.local_steps, "{what}: steps");
            assert!(
                (c.bytes_up - up).abs() <= 1e-9 * up,
                "{what}: up {} vs {up}",
                c.bytes_up
            );
            assert!(
                (c.bytes_down - down).abs() <= 1e-9 * down,
                "{what}: down {} vs {down}",
                c.bytes_down
            );
            assert!(
                (c.flops - flops).abs() <= 1e-9 * flops,
                "{what}: flops {} vs {flops}",
                c.flops
            );
        }
        assert_eq!(log.clients.len(), who.len());
        assert!(
            (log.server_flops - server).abs() <= 1e-9 * server,
            "u_tail {u}: server flops {} vs {server}",
            log.server_flops
        );
    }
}

/// What a round of each full-model algorithm charges, as docs/algorithms.md states it: each
/// participant downloads the model it starts from and uploads what it trained (4 bytes a
/// parameter each way; `local` communicates nothing), and each training step it runs costs a
/// whole-model step from the cost model (every block, block 0 without its input gradient, and
/// the head) scaled to its tokens: `local_steps` steps for FedAvg, local and FedBip, twice that
/// for Ditto (its personal model and the global one), `local_steps · pfedme.inner_steps` for
/// pFedMe.
#[test]
fn full_model_rounds_charge_what_the_docs_state() {
    let model = tiny::model();
    let h = hyper();
    let fed = tiny::federation(&model, h.clone(), data(), vec![1, 2, 1, 3]);
    let l = model.config.layers;
    let whole = fed.cost.client_flops(l - 1) + fed.cost.server_flops(l - 1);
    let nominal = (h.batch_size * 12) as f64;
    let who = [0, 1, 3];
    let tau = h.local_steps as f64;
    for (kind, steps, talks) in [
        (AlgorithmKind::FedAvg, tau, true),
        (AlgorithmKind::Local, tau, false),
        (AlgorithmKind::Ditto, 2.0 * tau, true),
        (
            AlgorithmKind::PFedMe,
            tau * h.pfedme_inner_steps as f64,
            true,
        ),
        (AlgorithmKind::FedBip, tau, true),
    ] {
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        let state = snapshot(algo.as_mut());
        // The model a participant receives: the global one, or (FedBip) its own aggregate.
        let sent = state
            .iter()
            .find(|(n, _)| n == "global" || n == "client0")
            .map(|(_, s)| 4.0 * values(s).len() as f64)
            .unwrap_or(0.0);
        let log = algo.round(&fed, &who, &mut rng).unwrap();
        assert!(log.rejected.is_empty(), "{kind:?}: {:?}", log.rejected);
        for &k in &who {
            let c = log.clients.iter().find(|c| c.client == k);
            let tokens: usize = fed.clients[k].train.iter().map(|e| e.ids.len()).sum();
            let flops = steps * whole * tokens as f64 / nominal;
            let (up, down, got_flops) =
                c.map_or((0.0, 0.0, 0.0), |c| (c.bytes_up, c.bytes_down, c.flops));
            let bytes = if talks { sent } else { 0.0 };
            assert!(
                bytes > 0.0 || !talks,
                "{kind:?}: no model found in the state"
            );
            assert_eq!((up, down), (bytes, bytes), "{kind:?}, client {k}: bytes");
            assert!(
                (got_flops - flops).abs() <= 1e-9 * flops,
                "{kind:?}, client {k}: flops {got_flops} vs {flops}"
            );
        }
    }
}

// ---------------------------------------------------------------- checkpoints

/// A checkpoint holds everything a round depends on: for every algorithm, two rounds straight
/// equal one round, a save, a load into a fresh instance (built from another seed) and the
/// second round. Optimizer step counters matter here: AdamW's bias correction depends on them.
#[test]
fn every_algorithm_resumes_from_its_checkpoint_exactly() {
    use flexp::run::checkpoint::{self, Meta};
    let model = tiny::model();
    let fed = tiny::federation(&model, hyper(), data(), vec![1, 2, 1, 3]);
    let who = [0, 1, 3];
    for kind in [
        AlgorithmKind::FlexpSfl,
        AlgorithmKind::FedBip,
        AlgorithmKind::FedBipL,
        AlgorithmKind::Local,
        AlgorithmKind::FedAvg,
        AlgorithmKind::SflV1,
        AlgorithmKind::SflV2,
        AlgorithmKind::PFedMe,
        AlgorithmKind::Ditto,
    ] {
        let mut straight = algorithms::build(kind, &fed, &mut Rng::new(7)).unwrap();
        straight.round(&fed, &who, &mut Rng::new(11)).unwrap();
        let dir = std::env::temp_dir().join(format!("flexp-ckpt-{kind:?}-{}", std::process::id()));
        let meta = Meta {
            round: 1,
            rng_state: 0,
            counters: checkpoint::counters(straight.as_mut()),
            client_totals: Vec::new(),
            simulated_seconds: 0.0,
            wall_seconds: 0.0,
            metrics_lines: 0,
            rejected: 0,
        };
        checkpoint::save(&dir, &Cpu, straight.as_mut(), &meta).unwrap();
        let mut resumed = algorithms::build(kind, &fed, &mut Rng::new(99)).unwrap();
        checkpoint::load(&dir, &Cpu, resumed.as_mut()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        straight.round(&fed, &who, &mut Rng::new(13)).unwrap();
        resumed.round(&fed, &who, &mut Rng::new(13)).unwrap();
        let (a, b) = (snapshot(straight.as_mut()), snapshot(resumed.as_mut()));
        assert_eq!(a.len(), b.len(), "{kind:?}");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let (x, y) = (values(x), values(y));
            let first = x
                .iter()
                .zip(&y)
                .position(|(p, q)| p.to_bits() != q.to_bits());
            assert!(
                x.len() == y.len() && first.is_none(),
                "{kind:?}: state `{name}` differs after the resume (first at {first:?} of {})",
                x.len()
            );
        }
    }
}

/// The global model each algorithm reports (scored as `global_model_acc`) is the one
/// docs/algorithms.md names: the global adapters on every block for FedAvg, Ditto, pFedMe and
/// FlexP-SFL; none for local training, FedBip (per-client aggregates) and U-shaped FlexP-SFL.
#[test]
fn global_models_are_the_documented_ones() {
    let model = tiny::model();
    let l = model.config.layers;
    // Without one, the report says why, naming what is missing.
    for (kind, u, has, why) in [
        (AlgorithmKind::FedAvg, 0, true, ""),
        (AlgorithmKind::Ditto, 0, true, ""),
        (AlgorithmKind::PFedMe, 0, true, ""),
        (AlgorithmKind::FlexpSfl, 0, true, ""),
        (AlgorithmKind::FlexpSfl, 1, false, "U-shaped"),
        (AlgorithmKind::Local, 0, false, "never aggregates"),
        (AlgorithmKind::FedBip, 0, false, "per client"),
        (AlgorithmKind::FedBipL, 0, false, "per client"),
    ] {
        let h = Hyper {
            u_tail: u,
            ..hyper()
        };
        let fed = tiny::federation(&model, h, data(), vec![1, 2, 1, 2]);
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        algo.round(&fed, &[0, 1, 2, 3], &mut rng).unwrap();
        let global = snapshot(algo.as_mut())
            .into_iter()
            .find(|(n, _)| n == "global")
            .map(|(_, s)| values(&s));
        match algo.global() {
            None => {
                assert!(!has, "{kind:?} (u_tail {u}) reports no global model");
                let note = algo.no_global_model();
                assert!(note.contains(why), "{kind:?}: {note:?}");
            }
            Some(chain) => {
                assert!(has, "{kind:?} (u_tail {u}) reports a global model");
                assert_eq!(chain.parts.len(), 1, "{kind:?}");
                let (blocks, set) = &chain.parts[0];
                assert_eq!(*blocks, 0..l, "{kind:?}");
                assert_eq!(
                    Some(values(set)),
                    global,
                    "{kind:?}: not the global adapters"
                );
            }
        }
    }
}

/// Each algorithm calls itself by its configuration name (logs and reports use either).
#[test]
fn algorithms_are_named_as_configured() {
    let model = tiny::model();
    let fed = tiny::federation(&model, hyper(), data(), vec![1, 2, 1, 3]);
    for (kind, name) in AlgorithmKind::ALL {
        let algo = algorithms::build(kind, &fed, &mut Rng::new(7)).unwrap();
        assert_eq!(algo.name(), name);
        assert_eq!(kind.name(), name);
        assert_eq!(AlgorithmKind::parse(name).unwrap(), kind);
    }
}

/// Only the split-learning algorithms cut the model between client and server (the report's
/// per-client `split` column is theirs alone): FlexP-SFL and SplitFed V1 and V2, as
/// docs/algorithms.md describes them; FedAvg, FedBip, FedBip-L, local, pFedMe and Ditto run the
/// whole model on the device.
#[test]
fn exactly_the_split_learning_algorithms_are_split() {
    let split: Vec<&str> = AlgorithmKind::ALL
        .iter()
        .filter(|(k, _)| k.is_split())
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(split, ["flexp-sfl", "sfl-v1", "sfl-v2"]);
}

/// Every algorithm announces each local step once, numbered from 1 (the progress display).
#[test]
fn every_algorithm_reports_its_local_steps_in_order() {
    use std::sync::Mutex;
    let model = tiny::model();
    let seen = Mutex::new(Vec::new());
    let record = |s: usize| seen.lock().unwrap().push(s);
    for (kind, _) in AlgorithmKind::ALL {
        let mut fed = tiny::federation(&model, hyper(), data(), vec![1, 2, 1, 3]);
        fed.on_step = Some(&record);
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        seen.lock().unwrap().clear();
        algo.round(&fed, &[0, 1, 3], &mut rng).unwrap();
        let got = seen.lock().unwrap().clone();
        let want: Vec<usize> = (1..=hyper().local_steps).collect();
        // Ditto trains the personal and the global model: the steps are announced for each.
        let want = if kind == AlgorithmKind::Ditto {
            [want.clone(), want].concat()
        } else {
            want
        };
        assert_eq!(got, want, "{kind:?}");
    }
}

/// A round log's client loss is the mean of its accepted steps' losses, and the round's mean
/// loss the mean over the clients that have accepted steps (a client whose steps were all
/// rejected does not count, and no client at all gives NaN).
#[test]
fn round_log_means_are_the_means_of_accepted_steps() {
    let mut log = RoundLog::default();
    assert!(log.mean_loss().is_nan());
    for l in [1.0, 2.0, 6.0] {
        log.loss(0, l);
    }
    log.loss(2, 5.0);
    log.client(1).bytes_up = 10.0; // a participant without an accepted step
    let c0 = log.clients.iter().find(|c| c.client == 0).unwrap();
    assert_eq!((c0.loss, c0.steps), (3.0, 3));
    assert_eq!(log.client(2).steps, 1);
    assert_eq!(log.clients.len(), 3);
    assert_eq!(log.mean_loss(), 4.0);
}

/// Every algorithm's optimizer takes the run's learning rate and weight decay, with AdamW's
/// moments as docs/algorithms.md states them (beta1 0.9, beta2 0.999, eps 1e-8).
#[test]
fn the_optimizer_takes_the_runs_learning_rate_and_weight_decay() {
    let model = tiny::model();
    let h = Hyper {
        lr: 3e-3,
        weight_decay: 0.05,
        ..hyper()
    };
    let fed = tiny::federation(&model, h, data(), vec![1, 2, 1, 3]);
    let a = fed.adamw();
    assert_eq!((a.lr, a.weight_decay), (3e-3, 0.05));
    assert_eq!((a.beta1, a.beta2, a.eps), (0.9, 0.999, 1e-8));
}

/// What the reports print from an evaluation: accuracy (or exact match) is correct / total,
/// perplexity exp(NLL / targets), and both are NaN (shown as null) without examples.
#[test]
fn eval_stats_give_accuracy_and_perplexity() {
    let s = flexp::algorithms::EvalStats {
        correct: 3,
        total: 4,
        nll: 6.0,
        targets: 3,
    };
    assert_eq!(s.accuracy(), 0.75);
    assert!((s.perplexity() - 2f64.exp()).abs() < 1e-12);
    let empty = flexp::algorithms::EvalStats::default();
    assert!(empty.accuracy().is_nan() && empty.perplexity().is_nan());
}
