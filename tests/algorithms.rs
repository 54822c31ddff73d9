//! Every algorithm learns a learnable synthetic task on a tiny model: the training loss falls and
//! personalized accuracy rises well above chance. Plus fault isolation: a client producing NaN is
//! rejected without touching anyone else.

mod common;

use common::tiny;
use flexp::algorithms::{
    self, evaluate, AlgorithmKind, Align, ClientData, Example, Federation, Hyper, Label, ServerAgg,
    ServerUpdate,
};
use flexp::backend::cpu::Cpu;
use flexp::backend::{Backend, WeightPrecision};
use flexp::federated::TaskHead;
use flexp::model::{Model, Pooling};
use flexp::rng::Rng;

fn tiny_model() -> Model<Cpu> {
    tiny::model()
}

fn tiny_model_in(precision: WeightPrecision) -> Model<Cpu> {
    tiny::model_in(precision)
}

/// Four clients of 48 training and 24 test examples, cuts 1, 2, 1, 3.
fn federation<'a>(model: &'a Model<Cpu>, hyper: Hyper) -> Federation<'a, Cpu> {
    let clients = tiny::clients_sized(&[48; 4], 24, &mut Rng::new(3));
    tiny::federation(model, hyper, clients, vec![1, 2, 1, 3])
}

fn hyper() -> Hyper {
    Hyper {
        lr: 5e-3,
        local_steps: 3,
        batch_size: 8,
        ..Hyper::default()
    }
}

/// Trains `rounds` rounds; returns (first-round loss, last-round loss, final mean personal acc).
fn train(kind: AlgorithmKind, hyper: Hyper, rounds: usize) -> (f64, f64, f64) {
    train_in(kind, hyper, rounds, WeightPrecision::F32)
}

/// [`train`] with the base model's block weights stored in `precision`.
fn train_in(
    kind: AlgorithmKind,
    hyper: Hyper,
    rounds: usize,
    precision: WeightPrecision,
) -> (f64, f64, f64) {
    let model = tiny_model_in(precision);
    let fed = federation(&model, hyper);
    let mut rng = Rng::new(7);
    let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
    let all: Vec<usize> = (0..fed.num_clients()).collect();
    let mut losses = Vec::new();
    for _ in 0..rounds {
        let log = algo.round(&fed, &all, &mut rng).unwrap();
        assert!(
            log.rejected.is_empty(),
            "{kind:?}: unexpected rejections {:?}",
            log.rejected
        );
        losses.push(log.mean_loss());
    }
    let chains: Vec<_> = all.iter().map(|&k| algo.personal(k)).collect();
    let tests: Vec<&[Example]> = fed.clients.iter().map(|c| c.test.as_slice()).collect();
    let acc = evaluate(&fed, &chains, &tests).unwrap();
    let mean = acc.iter().map(|a| a.accuracy()).sum::<f64>() / acc.len() as f64;
    if std::env::var("DBG").is_ok() {
        eprintln!("{kind:?} losses {losses:.3?} acc {mean:.3}");
    }
    let head = losses[..3].iter().sum::<f64>() / 3.0;
    let tail = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    (head, tail, mean)
}

fn assert_learns(kind: AlgorithmKind, hyper: Hyper) {
    let (first, last, acc) = train(kind, hyper, 20);
    assert!(
        last < 0.8 * first,
        "{kind:?}: loss {first:.3} -> {last:.3} did not fall enough"
    );
    assert!(
        acc > 0.75,
        "{kind:?}: personalized accuracy {acc:.3} not above chance"
    );
}

#[test]
fn flexp_sfl_proj_learns() {
    assert_learns(AlgorithmKind::FlexpSfl, hyper());
}

#[test]
fn flexp_sfl_learns_as_well_with_bf16_base_weights() {
    // bf16 storage changes only the frozen base products (by ~2^-8 relative): training must
    // reach the same quality as with f32 weights on the same draws.
    let (f_first, f_last, f_acc) =
        train_in(AlgorithmKind::FlexpSfl, hyper(), 20, WeightPrecision::F32);
    let (b_first, b_last, b_acc) =
        train_in(AlgorithmKind::FlexpSfl, hyper(), 20, WeightPrecision::Bf16);
    assert!(
        b_last < 0.8 * b_first,
        "bf16: loss {b_first:.3} -> {b_last:.3} did not fall enough"
    );
    assert!(
        (b_first - f_first).abs() < 0.02 * f_first,
        "first-round loss differs: bf16 {b_first:.4} vs f32 {f_first:.4}"
    );
    assert!(
        b_last < f_last * 1.15 + 0.02,
        "bf16 final loss {b_last:.4} worse than f32 {f_last:.4}"
    );
    assert!(
        b_acc > 0.75 && b_acc >= f_acc - 0.05,
        "bf16 accuracy {b_acc:.3} vs f32 {f_acc:.3}"
    );
}

#[test]
fn flexp_sfl_variants_learn() {
    assert_learns(
        AlgorithmKind::FlexpSfl,
        Hyper {
            align: Align::Kl,
            server_agg: ServerAgg::Proj,
            ..hyper()
        },
    );
    assert_learns(
        AlgorithmKind::FlexpSfl,
        Hyper {
            align: Align::None,
            server_update: ServerUpdate::Sequential,
            ..hyper()
        },
    );
}

#[test]
fn flexp_sfl_u_shaped_learns() {
    // Cuts must leave a server block before the 1-block tail: use splits 1..2 only.
    let model = tiny_model();
    let mut fed = federation(
        &model,
        Hyper {
            u_tail: 1,
            ..hyper()
        },
    );
    fed.splits = vec![1, 2, 1, 2];
    let mut rng = Rng::new(7);
    let mut algo = algorithms::build(AlgorithmKind::FlexpSfl, &fed, &mut rng).unwrap();
    let all: Vec<usize> = (0..4).collect();
    let mut losses = Vec::new();
    for _ in 0..16 {
        losses.push(algo.round(&fed, &all, &mut rng).unwrap().mean_loss());
    }
    assert!(losses[15] < 0.8 * losses[0], "{losses:?}");
    let chains: Vec<_> = all.iter().map(|&k| algo.personal(k)).collect();
    assert_eq!(
        chains[0].parts.len(),
        3,
        "U-shaped personalized model is client/server/client"
    );
    let tests: Vec<&[Example]> = fed.clients.iter().map(|c| c.test.as_slice()).collect();
    let acc = evaluate(&fed, &chains, &tests).unwrap();
    let mean = acc.iter().map(|a| a.accuracy()).sum::<f64>() / 4.0;
    assert!(mean > 0.75, "{mean}");
}

#[test]
fn fedbip_learns() {
    assert_learns(AlgorithmKind::FedBip, hyper());
}

#[test]
fn fedbip_l_learns() {
    assert_learns(AlgorithmKind::FedBipL, hyper());
}

#[test]
fn local_learns() {
    assert_learns(AlgorithmKind::Local, hyper());
}

#[test]
fn fedavg_learns() {
    assert_learns(AlgorithmKind::FedAvg, hyper());
}

#[test]
fn sfl_v1_learns() {
    assert_learns(AlgorithmKind::SflV1, hyper());
}

#[test]
fn sfl_v2_learns() {
    assert_learns(AlgorithmKind::SflV2, hyper());
}

#[test]
fn pfedme_learns() {
    assert_learns(
        AlgorithmKind::PFedMe,
        Hyper {
            pfedme_inner_steps: 2,
            ..hyper()
        },
    );
}

#[test]
fn ditto_learns() {
    assert_learns(AlgorithmKind::Ditto, hyper());
}

#[test]
fn nan_client_is_rejected_and_others_unaffected() {
    // One local step: client 1 (sampled last) is poisoned with NaN adapters. Everyone else,
    // the global adapters included, must end exactly as in a round without client 1.
    let model = tiny_model();
    let fed = federation(
        &model,
        Hyper {
            local_steps: 1,
            ..hyper()
        },
    );
    let run = |participants: &[usize], poison: bool| {
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(AlgorithmKind::FlexpSfl, &fed, &mut rng).unwrap();
        if poison {
            for (name, set) in algo.state() {
                if name == "client1" {
                    let a = &mut set.blocks[0][0].as_mut().unwrap().a;
                    *a = Cpu.upload(&vec![f32::NAN; a.len()]).unwrap();
                }
            }
        }
        let log = algo.round(&fed, participants, &mut rng).unwrap();
        let state: Vec<(String, Vec<f32>)> = algo
            .state()
            .into_iter()
            .map(|(n, s)| {
                (
                    n,
                    s.tensors()
                        .iter()
                        .flat_map(|t| Cpu.download(t).unwrap())
                        .collect(),
                )
            })
            .collect();
        (log, state)
    };
    let (clean_log, clean) = run(&[0, 2, 3], false);
    let (log, poisoned) = run(&[0, 2, 3, 1], true);
    assert!(clean_log.rejected.is_empty());
    assert_eq!(log.rejected.len(), 1, "{:?}", log.rejected);
    assert_eq!(log.rejected[0].0, 1);
    assert!(
        log.rejected[0].1.contains("non-finite"),
        "{:?}",
        log.rejected
    );
    let mut compared = 0;
    for ((n, a), (_, b)) in poisoned.iter().zip(&clean) {
        if !n.starts_with("client1") {
            assert_eq!(a, b, "{n} changed because of client 1");
            compared += 1;
        }
    }
    assert!(compared >= 12, "compared only {compared} tensors sets");
}

/// Token that no generated example uses; the poisoned model maps it to NaN.
const POISON: u32 = 7;

#[test]
fn splitfed_client_with_nan_activations_is_rejected_and_others_unaffected() {
    // Client 1's examples all carry a token whose embedding is NaN, so its cut-layer activations
    // are NaN while everyone else's are finite. SplitFed (V1 and V2) must reject it when the
    // activations arrive, say so, and leave the global client and server adapters (and the shared
    // server optimizer) exactly as in a round without client 1.
    let mut model = tiny_model();
    let d = model.config.hidden;
    let mut emb = Cpu.download(&model.word_emb).unwrap();
    emb[POISON as usize * d..(POISON as usize + 1) * d].fill(f32::NAN);
    model.word_emb = Cpu.upload(&emb).unwrap();
    let mut fed = federation(
        &model,
        Hyper {
            local_steps: 1,
            ..hyper()
        },
    );
    for e in &mut fed.clients[1].train {
        e.ids[0] = POISON;
    }
    for kind in [AlgorithmKind::SflV1, AlgorithmKind::SflV2] {
        let run = |participants: &[usize]| {
            let mut rng = Rng::new(7);
            let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
            let log = algo.round(&fed, participants, &mut rng).unwrap();
            let state: Vec<(String, Vec<f32>)> = algo
                .state()
                .into_iter()
                .map(|(n, s)| {
                    let v = s
                        .tensors()
                        .iter()
                        .flat_map(|t| Cpu.download(t).unwrap())
                        .collect();
                    (n, v)
                })
                .collect();
            (log, state)
        };
        let (clean_log, clean) = run(&[0, 2, 3]);
        let (log, poisoned) = run(&[0, 2, 3, 1]);
        assert!(clean_log.rejected.is_empty(), "{:?}", clean_log.rejected);
        assert_eq!(log.rejected.len(), 1, "{kind:?}: {:?}", log.rejected);
        assert_eq!(log.rejected[0].0, 1);
        assert!(
            log.rejected[0].1.contains("activations") && log.rejected[0].1.contains("non-finite"),
            "{kind:?}: {:?}",
            log.rejected
        );
        let c1 = log.clients.iter().find(|c| c.client == 1);
        assert!(c1.is_none_or(|c| c.steps == 0), "{kind:?}: {c1:?}");
        assert_eq!(poisoned.len(), clean.len());
        for ((n, a), (_, b)) in poisoned.iter().zip(&clean) {
            assert!(
                a.iter().all(|x| x.is_finite()),
                "{kind:?}: {n} is not finite"
            );
            assert_eq!(a, b, "{kind:?}: {n} changed because of client 1");
        }
    }
}

#[test]
fn unknown_algorithm_lists_valid_names() {
    let e = AlgorithmKind::parse("fedprox").unwrap_err().to_string();
    assert!(
        e.contains("fedprox") && e.contains("flexp-sfl") && e.contains("sfl-v2"),
        "{e}"
    );
}

#[test]
fn parse_choice_picks_the_named_option_and_lists_all_on_error() {
    let choices = [("mean", 1), ("sum", 2), ("proj", 3)];
    assert_eq!(algorithms::parse_choice("agg", "sum", &choices).unwrap(), 2);
    assert_eq!(
        algorithms::parse_choice("agg", "proj", &choices).unwrap(),
        3
    );
    let e = algorithms::parse_choice("agg", "median", &choices)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agg") && e.contains("`median`") && e.contains("mean, sum, proj"),
        "{e}"
    );
}

#[test]
fn u_shaped_flexp_sfl_trains_each_clients_tail_and_head() {
    // With u_tail = 1 the last block and the head are personal and run on the client: their
    // gradients come back from the server sweep and must reach P_k's AdamW step. LoRA B starts
    // at zero, so after one round a trained tail has a nonzero B, and the head has moved.
    let model = tiny_model();
    let clients = tiny::clients_sized(&[48; 4], 24, &mut Rng::new(3));
    // Cuts that leave at least one server block before the 1-block tail (4 blocks).
    let fed = tiny::federation(
        &model,
        Hyper {
            u_tail: 1,
            local_steps: 2,
            ..hyper()
        },
        clients,
        vec![1, 2, 1, 2],
    );
    let mut rng = Rng::new(7);
    let mut algo = algorithms::build(AlgorithmKind::FlexpSfl, &fed, &mut rng).unwrap();
    let head_before: Vec<Vec<f32>> = (0..fed.num_clients())
        .map(|k| {
            let chain = algo.personal(k);
            let set = chain.parts.last().unwrap().1;
            Cpu.download(&set.head.as_ref().unwrap().weight).unwrap()
        })
        .collect();
    let all: Vec<usize> = (0..fed.num_clients()).collect();
    let log = algo.round(&fed, &all, &mut rng).unwrap();
    assert!(log.rejected.is_empty(), "{:?}", log.rejected);
    let last = model.config.layers - 1;
    for (k, before) in head_before.iter().enumerate() {
        let chain = algo.personal(k);
        let (range, set) = chain.parts.last().unwrap();
        assert!(
            range.contains(&last),
            "client {k}: the tail is not personal"
        );
        let b = Cpu
            .download(&set.blocks[last][0].as_ref().unwrap().b)
            .unwrap();
        assert!(
            b.iter().any(|v| *v != 0.0),
            "client {k}: the tail block's LoRA B never moved"
        );
        let after = Cpu.download(&set.head.as_ref().unwrap().weight).unwrap();
        assert_ne!(&after, before, "client {k}: the head never moved");
    }
}

/// A 4-block random Llama (vocab 64, hidden 32) for the causal-LM task.
fn tiny_decoder() -> Model<Cpu> {
    let cfg = flexp::model::ModelConfig::from_json(&serde_json::json!({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": true
    }))
    .unwrap();
    let mut m = Model::random_with(&Cpu, cfg, &mut Rng::new(5), WeightPrecision::F32).unwrap();
    // Embeddings of a trained model's scale (random_with draws 0.02): with 0.02 the tied LM head's
    // logits cannot leave about ±0.6 and no answer can become likely.
    let e: Vec<f32> = Cpu.download(&m.word_emb).unwrap();
    m.word_emb = Cpu
        .upload(&e.iter().map(|x| x * 10.0).collect::<Vec<_>>())
        .unwrap();
    m
}

/// Answer tokens of the causal-LM task: `YES` after a prompt ending in cue 1 or 2, `NO` after
/// cue 3 or 4.
const YES: u32 = 6;
const NO: u32 = 7;

/// A prompt of random tokens ending in a cue token, then the answer; only the answer is learned
/// (the target of the prompt's last position).
fn lm_example(rng: &mut Rng) -> Example {
    let mut ids = tiny::example(rng).ids;
    let cue = 1 + rng.below(4) as u32;
    ids.push(cue);
    let answer = if cue <= 2 { YES } else { NO };
    let mut targets = vec![-1i64; ids.len() + 1];
    targets[ids.len() - 1] = answer as i64;
    ids.push(answer);
    Example {
        ids,
        label: Label::Tokens(targets),
    }
}

/// The LM head is the frozen (random) embedding table: the adapters have further to move the
/// hidden states than a trainable class head needs, so the step is twice the classification
/// tests'.
fn lm_hyper() -> Hyper {
    Hyper {
        lr: 1e-2,
        ..hyper()
    }
}

fn lm_federation(model: &Model<Cpu>, hyper: Hyper, splits: Vec<usize>) -> Federation<'_, Cpu> {
    let mut rng = Rng::new(3);
    let clients = (0..splits.len())
        .map(|_| ClientData {
            train: (0..48).map(|_| lm_example(&mut rng)).collect(),
            test: (0..24).map(|_| lm_example(&mut rng)).collect(),
        })
        .collect();
    let mut fed = tiny::federation(model, hyper, clients, splits);
    fed.head = TaskHead::LanguageModel;
    fed.pooling = Pooling::Last;
    fed
}

/// Every algorithm runs the causal-LM task (the model's frozen LM head, the loss on the answer
/// token only): its training loss falls and its personalized models answer well above chance
/// (exact match), with perplexity falling with the loss. FlexP-SFL also in its U-shaped form,
/// where the tail blocks and the LM head run on the client.
#[test]
fn every_algorithm_learns_a_causal_lm_task() {
    let model = tiny_decoder();
    let mut runs: Vec<(String, Hyper, Vec<usize>)> = AlgorithmKind::ALL
        .iter()
        .map(|(_, name)| (name.to_string(), lm_hyper(), vec![1, 2, 1, 3]))
        .collect();
    runs.push((
        "flexp-sfl u-shaped".into(),
        Hyper {
            u_tail: 1,
            ..lm_hyper()
        },
        vec![1, 2, 1, 2],
    ));
    for (name, hyper, splits) in runs {
        let kind = AlgorithmKind::parse(name.split(' ').next().unwrap()).unwrap();
        let fed = lm_federation(&model, hyper, splits);
        let mut rng = Rng::new(7);
        let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
        let all: Vec<usize> = (0..fed.num_clients()).collect();
        let chains: Vec<_> = all.iter().map(|&k| algo.personal(k)).collect();
        let tests: Vec<&[Example]> = fed.clients.iter().map(|c| c.test.as_slice()).collect();
        let before = evaluate(&fed, &chains, &tests).unwrap();
        drop(chains);
        let mut losses = Vec::new();
        for _ in 0..16 {
            let log = algo.round(&fed, &all, &mut rng).unwrap();
            assert!(log.rejected.is_empty(), "{name}: {:?}", log.rejected);
            losses.push(log.mean_loss());
        }
        let chains: Vec<_> = all.iter().map(|&k| algo.personal(k)).collect();
        if name.contains("u-shaped") {
            assert_eq!(chains[0].parts.len(), 3, "client / server / client tail");
        }
        let after = evaluate(&fed, &chains, &tests).unwrap();
        let em = after.iter().map(|s| s.accuracy()).sum::<f64>() / after.len() as f64;
        let ppl = |v: &[flexp::algorithms::EvalStats]| {
            v.iter().map(|s| s.perplexity()).sum::<f64>() / v.len() as f64
        };
        assert!(
            after.iter().all(|s| s.targets == s.total),
            "one target each"
        );
        assert!(losses[15] < 0.5 * losses[0], "{name}: {losses:?}");
        assert!(
            ppl(&after) < 0.5 * ppl(&before),
            "{name}: perplexity {} -> {}",
            ppl(&before),
            ppl(&after)
        );
        assert!(em > 0.9, "{name}: exact match {em}");
    }
}

/// Evaluation splits its work into calls of at most 1,024 LM rows (a row of vocabulary logits
/// each), and a single example with more targets than that still runs, alone: the statistics of
/// examples evaluated together are the sums of their statistics evaluated one by one.
#[test]
fn evaluation_chunks_long_lm_examples_without_changing_results() {
    let cfg = flexp::model::ModelConfig::from_json(&serde_json::json!({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 2048,
        "tie_word_embeddings": true
    }))
    .unwrap();
    let model = Model::random_with(&Cpu, cfg, &mut Rng::new(9), WeightPrecision::F32).unwrap();
    let mut rng = Rng::new(4);
    let example = |n: usize, rng: &mut Rng| {
        let ids: Vec<u32> = (0..n).map(|_| rng.below(64) as u32).collect();
        let targets = (0..n)
            .map(|t| if t + 1 < n { ids[t + 1] as i64 } else { -1 })
            .collect();
        Example {
            ids,
            label: Label::Tokens(targets),
        }
    };
    // 1,100 targets (more than one call holds), then two of 600 (one call each).
    let examples = vec![
        example(1101, &mut rng),
        example(601, &mut rng),
        example(601, &mut rng),
    ];
    let clients = vec![ClientData {
        train: examples.clone(),
        test: examples.clone(),
    }];
    let mut fed = tiny::federation(&model, hyper(), clients, vec![1]);
    fed.head = TaskHead::LanguageModel;
    let set = fed.new_set(0..1, true, &mut Rng::new(1)).unwrap();
    let together = evaluate(&fed, &[algorithms::whole(&set)], &[&examples]).unwrap()[0];
    let mut alone = flexp::algorithms::EvalStats::default();
    for e in &examples {
        let s = evaluate(&fed, &[algorithms::whole(&set)], &[std::slice::from_ref(e)]).unwrap()[0];
        alone.correct += s.correct;
        alone.total += s.total;
        alone.targets += s.targets;
        alone.nll += s.nll;
    }
    assert_eq!((together.total, together.targets), (3, 1100 + 600 + 600));
    assert_eq!(
        (together.correct, together.total, together.targets),
        (alone.correct, alone.total, alone.targets)
    );
    assert!(
        (together.nll - alone.nll).abs() < 1e-6 * alone.nll,
        "{together:?} vs {alone:?}"
    );
}

/// A full-model algorithm whose client's loss or gradients are not finite (its examples carry a
/// token whose embedding is NaN) rejects that client's step, says why, and leaves every other
/// client's adapters exactly as in a round without it, and the global adapters too where the
/// round draws nothing after client 1's personal step (Ditto and pFedMe draw the global model's
/// batches after it, from a random stream client 1 has advanced, so their global models differ
/// for that reason alone).
#[test]
fn full_model_client_with_nan_loss_is_rejected_and_others_unaffected() {
    let mut model = tiny_model();
    let d = model.config.hidden;
    let mut emb = Cpu.download(&model.word_emb).unwrap();
    emb[POISON as usize * d..(POISON as usize + 1) * d].fill(f32::NAN);
    model.word_emb = Cpu.upload(&emb).unwrap();
    let mut fed = federation(
        &model,
        Hyper {
            local_steps: 1,
            ..hyper()
        },
    );
    for e in &mut fed.clients[1].train {
        e.ids[0] = POISON;
    }
    for kind in [
        AlgorithmKind::FedAvg,
        AlgorithmKind::Local,
        AlgorithmKind::FedBip,
        AlgorithmKind::Ditto,
        AlgorithmKind::PFedMe,
    ] {
        let run = |participants: &[usize]| {
            let mut rng = Rng::new(7);
            let mut algo = algorithms::build(kind, &fed, &mut rng).unwrap();
            let log = algo.round(&fed, participants, &mut rng).unwrap();
            let state: Vec<(String, Vec<f32>)> = algo
                .state()
                .into_iter()
                .filter(|(n, _)| {
                    !n.starts_with("client1")
                        && (n.starts_with("client")
                            || !matches!(kind, AlgorithmKind::Ditto | AlgorithmKind::PFedMe))
                })
                .map(|(n, s)| {
                    let v = s
                        .tensors()
                        .iter()
                        .flat_map(|t| Cpu.download(t).unwrap())
                        .collect();
                    (n, v)
                })
                .collect();
            (log, state)
        };
        let (clean_log, clean) = run(&[0, 2, 3]);
        let (log, poisoned) = run(&[0, 2, 3, 1]);
        assert!(
            clean_log.rejected.is_empty(),
            "{kind:?}: {:?}",
            clean_log.rejected
        );
        assert!(
            !log.rejected.is_empty()
                && log
                    .rejected
                    .iter()
                    .all(|(k, why)| *k == 1 && why.contains("non-finite")),
            "{kind:?}: {:?}",
            log.rejected
        );
        assert_eq!(poisoned.len(), clean.len());
        for ((n, a), (_, b)) in poisoned.iter().zip(&clean) {
            assert_eq!(a, b, "{kind:?}: {n} changed because of client 1");
        }
    }
}
