//! `Backend::scratch` may hand out recycled buffers with stale contents (the CPU backend's pool):
//! every op given one must overwrite it. This poisons the pool with NaN buffers of every size a
//! training step on the real MiniLM asks for, then checks that a forward + backward gives
//! bit-identical outputs and gradients to a run on a clean pool, and again after a step's whole
//! tape was recycled (`Executor::recycle`).

mod common;

use common::root;
use flexp::backend::cpu::Cpu;
use flexp::backend::Backend;
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::{load_model, AdapterSet, LoraConfig, Pooling};
use flexp::rng::Rng;

#[test]
fn stale_scratch_buffers_never_reach_results() {
    let be = Cpu;
    let m = load_model(&be, &root().join("models/all-MiniLM-L6-v2")).unwrap();
    let cfg = &m.config;
    let l = cfg.layers;
    let mut rng = Rng::new(5);
    let mut set = AdapterSet::init_lora(
        &be,
        cfg,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default_for(cfg)
        },
        0..l,
        &mut rng,
    )
    .unwrap()
    .with_head(&be, cfg.hidden, 2, Pooling::Mean, &mut rng)
    .unwrap();
    for b in set.blocks.iter_mut() {
        for p in b.iter_mut().flatten() {
            let n = p.b.len();
            p.b = be.upload(&rng.vec_range(n, -0.2, 0.2)).unwrap();
        }
    }
    let v = cfg.vocab_size as u64;
    // Two sequences (40 rows in all): every activation buffer is over the pool's size floor.
    let jobs: Vec<SeqJob> = [24usize, 16]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let ids = (0..n).map(|_| (rng.next_u64() % v) as u32).collect();
            SeqJob::new(
                SeqInput::tokens(ids),
                0..l,
                0,
                Output::Class { label: Some(i % 2) },
            )
        })
        .collect();
    let exec = Executor::new(&be, &m);
    let refs = [&set];
    let step = || {
        let (out, tape) = exec.forward(&refs, &jobs, true).unwrap();
        let tape = tape.unwrap();
        let mut grads = vec![set.zeros_like(&be).unwrap()];
        exec.backward(&tape, &refs, &mut grads, &[None, None])
            .unwrap();
        // The tape's buffers (real activations of this step) go back to the pool: the next
        // step's outputs are handed them, stale values and all.
        exec.recycle(tape);
        let logits: Vec<Vec<f32>> = out.iter().map(|o| o.logits.clone().unwrap()).collect();
        let g: Vec<Vec<f32>> = grads[0]
            .tensors()
            .into_iter()
            .map(|t| be.download(t).unwrap())
            .collect();
        (logits, g)
    };
    let clean = step();
    let rows = 40;
    for len in [
        rows * cfg.hidden,
        rows * cfg.intermediate,
        rows * cfg.q_dim(),
        rows * cfg.kv_dim(),
    ] {
        for _ in 0..12 {
            be.recycle(vec![f32::NAN; len]);
        }
    }
    let poisoned = step();
    assert!(
        clean.1.iter().flatten().all(|x| x.is_finite()),
        "reference gradients are finite"
    );
    assert_eq!(
        clean.0, poisoned.0,
        "logits changed by stale scratch buffers"
    );
    assert_eq!(
        clean.1, poisoned.1,
        "gradients changed by stale scratch buffers"
    );
    // Again, now on the recycled tape of the poisoned step (finite, non-zero stale values).
    let again = step();
    assert_eq!(clean.0, again.0, "logits changed by a recycled tape");
    assert_eq!(clean.1, again.1, "gradients changed by a recycled tape");
}
