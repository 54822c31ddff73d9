//! The cost model, the resource profiles and the split planner: hand-computed counts on tiny
//! configurations, monotonicity, hand-solved plans, error messages, and optimality of the
//! automatic plan against a brute-force search.

use flexp::federated::{
    mixed_profiles, plan_auto, plan_manual, preset_names, step_latency, CostModel, ResourceProfile,
    TaskHead, MIX,
};
use flexp::model::{LoraConfig, ModelConfig, Target};
use flexp::rng::Rng;
use serde_json::json;

/// BERT, hidden 8, 2 heads (head_dim 4), intermediate 16, 3 blocks, vocab 10, 16 positions,
/// 2 token types.
fn tiny_bert(layers: usize) -> ModelConfig {
    ModelConfig::from_json(&json!({
        "model_type": "bert", "hidden_size": 8, "num_attention_heads": 2,
        "intermediate_size": 16, "num_hidden_layers": layers, "vocab_size": 10,
        "max_position_embeddings": 16, "type_vocab_size": 2
    }))
    .unwrap()
}

/// Llama, hidden 8, 2 query heads and 1 kv head of dim 4, intermediate 12, 4 blocks, vocab 10,
/// untied LM head, no biases.
fn tiny_llama() -> ModelConfig {
    ModelConfig::from_json(&json!({
        "model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 12, "num_hidden_layers": 4,
        "vocab_size": 10, "max_position_embeddings": 32
    }))
    .unwrap()
}

fn lora(rank: usize, targets: &[Target]) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        targets: targets.to_vec(),
    }
}

/// Rank 2 on q, k, v, o, up, down; batch 2 of 4 tokens.
fn bert_cost(layers: usize) -> CostModel {
    use Target::*;
    CostModel::new(&tiny_bert(layers), &lora(2, &[Q, K, V, O, Up, Down]), 4, 2).unwrap()
}

fn profile(name: &str, compute: f64, memory: f64, up: f64, down: f64) -> ResourceProfile {
    ResourceProfile {
        name: name.into(),
        compute_flops: compute,
        memory_bytes: memory,
        uplink_bps: up,
        downlink_bps: down,
    }
}

fn err_text<T: std::fmt::Debug>(r: flexp::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------------------------------------
// Cost model: hand-computed counts.

#[test]
fn bert_block_flops_by_hand() {
    let c = bert_cost(3);
    // N = 2·4 = 8 tokens, d = q = kv = 8, f = 16, r = 2, pairs = 4² = 16.
    // P = d·q + 2·d·kv + q·d + d·f + f·d = 64 + 128 + 64 + 128 + 128 = 512.
    // A = 2·(8+8)·4 [q,k,v,o] + 2·(8+16)·2 [up,down] = 128 + 96 = 224.
    assert_eq!(c.lora_params_per_block(), 224.0);
    // attention forward = 4·B·pairs·q = 4·2·16·8 = 1024.
    // forward = 2·8·512 + 2·8·224 + 1024 = 8192 + 3584 + 1024 = 12800.
    assert_eq!(c.block_fwd_flops(), 12800.0);
    // backward = 2·8·512 + 4·8·224 + 2.5·1024 = 8192 + 7168 + 2560 = 17920.
    assert_eq!(c.block_bwd_flops(), 17920.0);
    assert_eq!(c.embed_flops(), 0.0);
    // classification head, 3 classes: 6·B·d·c + 2·B·c (bias gradient) = 288 + 12 = 300.
    assert_eq!(c.head_flops(3), 300.0);
    // Block 0 skips the input gradients of q, k, v: 2·N·d·(q + 2·kv) = 2·8·8·24 = 3072.
    assert_eq!(c.first_block_skipped_flops(), 3072.0);
    // LM head: 4·N·d·V = 4·8·8·10 = 2560.
    assert_eq!(c.lm_head_flops(), 2560.0);
}

#[test]
fn bert_split_flops_and_bytes_by_hand() {
    let c = bert_cost(3);
    // One block forward + backward = 12800 + 17920 = 30720, less 3072 on block 0 (no input
    // gradient of q, k, v); the default head has 2 classes: 6·2·8·2 + 2·2·2 = 200.
    assert_eq!(c.client_flops(1), 30720.0 - 3072.0);
    assert_eq!(c.client_flops(2), 61440.0 - 3072.0);
    assert_eq!(c.server_flops(1), 2.0 * 30720.0 + 200.0);
    assert_eq!(c.server_flops(2), 30720.0 + 200.0);
    // h: B·T·d·4 = 2·4·8·4 = 256 bytes, each way.
    assert_eq!(c.activation_bytes(), 256.0);
    assert_eq!(c.uplink_bytes(), 256.0);
    assert_eq!(c.downlink_bytes(), 256.0);
    // Adapters: 224 params/block · 4 bytes = 896 per block; AdamW moments twice that.
    assert_eq!(c.adapter_bytes(1), 896.0);
    assert_eq!(c.adapter_bytes(2), 1792.0);
    assert_eq!(c.optimizer_bytes(2), 3584.0);
    // Embeddings: word 10·8 + type 2·8 + positions 16·8 + LayerNorm 2·8 = 80+16+128+16 = 240.
    assert_eq!(c.embedding_params(), 240.0);
    // Block: P 512 + 2 LayerNorms 2·16 + attention biases 8+8+8+8 + MLP biases 16+8 = 600.
    assert_eq!(c.block_params(), 600.0);
    assert_eq!(c.frozen_bytes(1), (240.0 + 600.0) * 4.0); // 3360
    assert_eq!(c.frozen_bytes(2), (240.0 + 1200.0) * 4.0); // 5760
                                                           // Tape per token: 4d 32 + LayerNorm stats 2·2 4 + 2q+2kv 32 + lse H 2 + up,act 2f 32
                                                           // + LoRA u r·6 12 = 114 values; 8 tokens · 114 · 4 bytes = 3648 per block.
    assert_eq!(c.activation_memory(1), 3648.0);
    assert_eq!(c.activation_memory(2), 7296.0);
    // 3360 + 896 + 1792 + 3648 = 9696; 5760 + 1792 + 3584 + 7296 = 18432.
    assert_eq!(c.client_memory(1), 9696.0);
    assert_eq!(c.client_memory(2), 18432.0);
}

#[test]
fn llama_gate_gqa_causal_and_u_shape_by_hand() {
    use Target::*;
    // Rank 1 on q and gate; batch 1 of 3 tokens: N = 3, pairs = 3·4/2 = 6 (causal).
    let c = CostModel::new(&tiny_llama(), &lora(1, &[Q, Gate]), 3, 1).unwrap();
    // d = 8, q = 8, kv = 4, f = 12.
    // P = 64 [q] + 2·32 [k,v] + 64 [o] + 96·3 [gate,up,down] = 480; A = (8+8) + (8+12) = 36.
    assert_eq!(c.lora_params_per_block(), 36.0);
    // forward = 2·3·480 + 2·3·36 + 4·1·6·8 = 2880 + 216 + 192 = 3288.
    assert_eq!(c.block_fwd_flops(), 3288.0);
    // backward = 2880 + 4·3·36 + 2.5·192 = 2880 + 432 + 480 = 3792.
    assert_eq!(c.block_bwd_flops(), 3792.0);
    // Embeddings: only the 10·8 word table (rotary positions, no types, no norm).
    assert_eq!(c.embedding_params(), 80.0);
    // Block: P 480 + two RMSNorms 2·8, no biases = 496.
    assert_eq!(c.block_params(), 496.0);
    // Tape per token: 4d 32 + RMS stats 2·1 + 2q+2kv 24 + H 2 + gate,up,act 3f 36 + r·2 2 = 98;
    // 3 tokens · 98 · 4 = 1176.
    assert_eq!(c.activation_memory(1), 1176.0);
    assert_eq!(c.max_split(), 3);

    // U-shaped with one tail block and the (untied) LM head: 4·N·d·V = 4·3·8·10 = 960.
    let u = c
        .clone()
        .with_head(TaskHead::LanguageModel)
        .unwrap()
        .with_u_shaped_tail(1)
        .unwrap();
    assert_eq!(u.max_split(), 2);
    let block = 3288.0 + 3792.0; // 7080
                                 // Block 0 skips q, k, v input gradients: 2·N·d·(q + 2·kv) = 2·3·8·16 = 768; the tail
                                 // block's input gradient goes to the server, so it is computed.
    assert_eq!(u.client_flops(1), 2.0 * block - 768.0 + 960.0);
    assert_eq!(u.client_flops_u(1, 1), u.client_flops(1));
    assert_eq!(c.client_flops_u(1, 0), block - 768.0);
    // Server: blocks 2..3 of 4, no head.
    assert_eq!(u.server_flops(1), 2.0 * block);
    // h up, the server's output down, its gradient up, dh down: 2·(3·8·4) each way.
    assert_eq!(u.uplink_bytes(), 192.0);
    assert_eq!(u.downlink_bytes(), 192.0);
    // Frozen: embeddings + 2 blocks, the final RMSNorm (8) and the untied head (80):
    // (80 + 992 + 8 + 80)·4 = 4640.
    assert_eq!(u.frozen_bytes_u(1, 1), 4640.0);
    // Memory: frozen + 2 blocks of adapters (36·4·2 = 288), moments 576, tapes 2·1176.
    assert_eq!(u.client_memory(1), 4640.0 + 288.0 + 576.0 + 2352.0);
    // A classification head in U-shape adds its weights and moments: 3·(2·8 + 2)·4 = 216.
    let uc = c.clone().with_u_shaped_tail(1).unwrap();
    assert_eq!(
        uc.client_memory(1),
        (80.0 + 992.0 + 8.0) * 4.0 + 288.0 + 576.0 + 2352.0 + 216.0
    );
    assert_eq!(
        uc.client_flops(1),
        2.0 * block - 768.0 + 6.0 * 8.0 * 2.0 + 2.0 * 2.0
    );
}

#[test]
fn cost_model_rejects_bad_settings() {
    use Target::*;
    let cfg = tiny_bert(3);
    assert!(err_text(CostModel::new(&cfg, &lora(2, &[Gate]), 4, 2)).contains("gate"));
    assert!(err_text(CostModel::new(&cfg, &lora(0, &[Q]), 4, 2)).contains("rank"));
    assert!(err_text(CostModel::new(&cfg, &lora(2, &[Q, Q]), 4, 2)).contains("twice"));
    assert!(err_text(CostModel::new(&cfg, &lora(2, &[Q]), 0, 2)).contains("sequence length"));
    assert!(err_text(CostModel::new(&cfg, &lora(2, &[Q]), 4, 0)).contains("batch"));
    let c = bert_cost(3);
    assert!(err_text(c.clone().with_u_shaped_tail(2)).contains("U-shaped tail of 2"));
    assert!(err_text(c.with_head(TaskHead::Classes(0))).contains("class"));
}

// ---------------------------------------------------------------------------------------------
// Monotonicity on realistic shapes.

fn bert_base() -> ModelConfig {
    ModelConfig::from_json(&json!({
        "model_type": "bert", "hidden_size": 768, "num_attention_heads": 12,
        "intermediate_size": 3072, "num_hidden_layers": 12, "vocab_size": 30522,
        "max_position_embeddings": 512
    }))
    .unwrap()
}

fn small_llama() -> ModelConfig {
    ModelConfig::from_json(&json!({
        "model_type": "llama", "hidden_size": 2048, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 5632, "num_hidden_layers": 22,
        "vocab_size": 32000, "max_position_embeddings": 2048
    }))
    .unwrap()
}

#[test]
fn costs_are_monotone_in_the_split() {
    for cfg in [bert_base(), small_llama()] {
        let c = CostModel::new(&cfg, &LoraConfig::default_for(&cfg), 128, 8).unwrap();
        for s in 1..cfg.layers - 1 {
            assert!(c.client_memory(s + 1) > c.client_memory(s), "{s}");
            assert!(c.client_flops(s + 1) > c.client_flops(s), "{s}");
            assert!(c.server_flops(s + 1) < c.server_flops(s), "{s}");
            assert!(c.frozen_bytes(s + 1) > c.frozen_bytes(s), "{s}");
            assert!(c.activation_memory(s + 1) > c.activation_memory(s), "{s}");
        }
        // Client plus server work is the same whatever the split.
        let total = c.client_flops(1) + c.server_flops(1);
        let total_last = c.client_flops(cfg.layers - 1) + c.server_flops(cfg.layers - 1);
        assert!((total - total_last).abs() <= 1e-9 * total);
    }
}

#[test]
fn bert_base_sizes_are_plausible() {
    // bert-base has ~110 M parameters: ~23.8 M in the embeddings, ~7.1 M per block.
    let cfg = bert_base();
    let c = CostModel::new(&cfg, &LoraConfig::default_for(&cfg), 128, 8).unwrap();
    let params = c.embedding_params() + 12.0 * c.block_params();
    assert!((108e6..111e6).contains(&params), "{params}");
}

// ---------------------------------------------------------------------------------------------
// Planner.

#[test]
fn slow_client_gets_a_smaller_split_and_the_deadline_is_hand_computed() {
    let c = bert_cost(3);
    // Per block 30720 FLOPs, less 3072 on the client's block 0. Client "fast" runs 307200
    // FLOP/s (0.1 s a block, 0.01 s less in all), "slow" 30720 (1 s a block, 0.1 s less); the
    // server 3072000 (0.01 s a block; head 200 / 3072000 s). Both links 2560 B/s: h and dh
    // (256 B) take 0.1 s each.
    // T_fast(s) = 0.1·s − 0.01 + 0.2 + 0.01·(3-s) + head: T(1) = 0.31 + head, T(2) = 0.40 + head.
    // T_slow(s) = 1.0·s − 0.1 + 0.2 + 0.01·(3-s) + head: T(1) = 1.12 + head, T(2) = 2.11 + head.
    // D = max(min T_fast, min T_slow) = 1.12 + head: fast takes s = 2, slow s = 1.
    let profiles = [
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("slow", 30720.0, 1e6, 2560.0, 2560.0),
    ];
    let plan = plan_auto(&c, &profiles, 3072000.0).unwrap();
    assert_eq!(plan.splits, vec![2, 1]);
    let head = 200.0 / 3072000.0;
    assert!(
        (plan.deadline_s - (1.12 + head)).abs() < 1e-12,
        "{}",
        plan.deadline_s
    );
    assert!((plan.rows[0].latency_s - (0.40 + head)).abs() < 1e-12);
    assert!((plan.rows[1].latency_s - (1.12 + head)).abs() < 1e-12);
    assert_eq!(plan.rows[0].feasible_splits, vec![1, 2]);
    assert_eq!(plan.rows[1].feasible_splits, vec![1]);
    assert_eq!(plan.rows[0].memory_bytes, 18432.0);
    assert_eq!(plan.rows[1].memory_bytes, 9696.0);
    assert!(plan.rows.iter().all(|r| !r.over_memory));

    // A fast client with 10000 bytes holds s = 1 (9696) but not s = 2 (18432).
    let profiles = [
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("slow", 30720.0, 1e6, 2560.0, 2560.0),
        profile("small", 307200.0, 10000.0, 2560.0, 2560.0),
    ];
    let plan = plan_auto(&c, &profiles, 3072000.0).unwrap();
    assert_eq!(plan.splits, vec![2, 1, 1]);
    assert_eq!(plan.rows[2].feasible_splits, vec![1]);

    // With only fast clients the deadline is the fast client's s = 1 time, so nobody goes
    // deeper: the straggler decides.
    let profiles = [
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
    ];
    let plan = plan_auto(&c, &profiles, 3072000.0).unwrap();
    assert_eq!(plan.splits, vec![1, 1]);
    assert!((plan.deadline_s - (0.31 + 200.0 / 3072000.0)).abs() < 1e-12);
}

#[test]
fn server_slower_than_clients_pushes_splits_deeper() {
    let c = bert_cost(3);
    // A server slower than the clients makes T decrease with s: the fastest split is the
    // deepest, and every client takes s = L - 1 = 2.
    let profiles = [
        profile("a", 1e6, 1e6, 1e4, 1e4),
        profile("b", 2e6, 1e6, 1e4, 1e4),
    ];
    let plan = plan_auto(&c, &profiles, 1e5).unwrap();
    assert_eq!(plan.splits, vec![2, 2]);
}

#[test]
fn client_that_cannot_hold_one_block_is_named() {
    let c = bert_cost(3);
    let profiles = [
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("tiny", 307200.0, 9000.0, 2560.0, 2560.0),
    ];
    let e = err_text(plan_auto(&c, &profiles, 3072000.0));
    assert!(e.contains("client 2"), "{e}");
    assert!(e.contains("`tiny`"), "{e}");
    assert!(e.contains("9000 bytes"), "{e}"); // what it has
    assert!(e.contains("9696 bytes"), "{e}"); // what s = 1 needs
}

#[test]
fn planner_rejects_bad_inputs() {
    let ok = profile("ok", 1e6, 1e6, 1e4, 1e4);
    let c = bert_cost(3);
    assert!(err_text(plan_auto(&c, &[], 1e6)).contains("no clients"));
    assert!(err_text(plan_auto(&c, std::slice::from_ref(&ok), 0.0)).contains("server"));
    let bad = profile("broken", 0.0, 1e6, 1e4, 1e4);
    assert!(err_text(plan_auto(&c, &[bad], 1e6)).contains("broken"));
    // One block: no split leaves a block on each side.
    let e = err_text(plan_auto(&bert_cost(1), &[ok], 1e6));
    assert!(e.contains("cannot be split"), "{e}");
}

#[test]
fn manual_splits_are_validated_and_flagged() {
    let c = bert_cost(3);
    let profiles = [
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("small", 30720.0, 10000.0, 2560.0, 2560.0),
    ];
    let e = err_text(plan_manual(&c, &profiles, &[1], 3072000.0));
    assert!(e.contains("1 splits given for 2 clients"), "{e}");
    for bad in [0, 3] {
        let e = err_text(plan_manual(&c, &profiles, &[1, bad], 3072000.0));
        assert!(e.contains("client 1"), "{e}");
        assert!(e.contains("1..=2"), "{e}");
    }
    // Split 2 needs 18432 bytes; the small client has 10000: allowed, flagged.
    let plan = plan_manual(&c, &profiles, &[1, 2], 3072000.0).unwrap();
    assert_eq!(plan.splits, vec![1, 2]);
    assert!(!plan.rows[0].over_memory);
    assert!(plan.rows[1].over_memory);
    // Latencies as in the hand-computed case: slow client at s = 2 is the straggler.
    let head = 200.0 / 3072000.0;
    assert!((plan.rows[0].latency_s - (0.31 + head)).abs() < 1e-12);
    assert!((plan.deadline_s - (2.11 + head)).abs() < 1e-12);
    assert_eq!(plan.rows[1].feasible_splits, vec![1]);
    let t = plan.table();
    assert!(t.contains("over memory"), "{t}");
}

#[test]
fn table_and_json() {
    let c = bert_cost(3);
    let profiles = [
        profile("fast", 307200.0, 1e6, 2560.0, 2560.0),
        profile("slow", 30720.0, 1e6, 2560.0, 2560.0),
    ];
    let plan = plan_auto(&c, &profiles, 3072000.0).unwrap();
    let t = plan.table();
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 5, "{t}"); // header, rule, 2 rows, deadline
    for h in ["client", "profile", "split", "memory MiB", "latency ms"] {
        assert!(lines[0].contains(h), "{t}");
    }
    // Fixed width: header and rows line up.
    assert_eq!(lines[0].len(), lines[2].len(), "{t}");
    assert_eq!(lines[2].len(), lines[3].len(), "{t}");
    assert!(
        lines[2].contains("fast") && lines[2].contains("400.07"),
        "{t}"
    );
    assert!(
        lines[3].contains("slow") && lines[3].contains("1120.07"),
        "{t}"
    );
    assert!(lines[4].contains("1120.07 ms"), "{t}");
    let j = plan.to_json();
    assert_eq!(j["splits"], json!([2, 1]));
    assert_eq!(j["rows"][1]["profile"], "slow");
    assert_eq!(j["rows"][0]["feasible_splits"], json!([1, 2]));
    assert_eq!(j["rows"][0]["over_memory"], false);
    let deadline = 1.12 + 200.0 / 3072000.0;
    assert!((j["deadline_s"].as_f64().unwrap() - deadline).abs() < 1e-12);
}

/// Exhaustive search: the smallest max-latency over all memory-feasible split vectors; `None`
/// when some client fits no split.
fn brute_force_deadline(c: &CostModel, profiles: &[ResourceProfile], server: f64) -> Option<f64> {
    let max = c.max_split();
    let k = profiles.len();
    let mut best: Option<f64> = None;
    let mut v = vec![1usize; k];
    loop {
        let fits = v
            .iter()
            .zip(profiles)
            .all(|(&s, p)| c.client_memory(s) <= p.memory_bytes);
        if fits {
            let worst = v
                .iter()
                .zip(profiles)
                .map(|(&s, p)| step_latency(c, p, s, server))
                .fold(f64::NEG_INFINITY, f64::max);
            best = Some(best.map_or(worst, |b: f64| b.min(worst)));
        }
        // Next vector in 1..=max per client (odometer).
        let mut i = 0;
        while i < k && v[i] == max {
            v[i] = 1;
            i += 1;
        }
        if i == k {
            return best;
        }
        v[i] += 1;
    }
}

#[test]
fn auto_plan_is_optimal_on_random_instances() {
    let mut rng = Rng::new(7);
    let mut solved = 0;
    for case in 0..300 {
        let layers = 2 + rng.below(5); // 2..=6
        let c = bert_cost(layers);
        let max = c.max_split();
        let k = 1 + rng.below(4); // 1..=4 clients
                                  // Log-uniform speeds around the per-block work, so slopes of T(s) have both signs.
        let lu = |rng: &mut Rng, lo: f64, hi: f64| lo * (hi / lo).powf(rng.uniform());
        let server = lu(&mut rng, 1e4, 1e7);
        let profiles: Vec<ResourceProfile> = (0..k)
            .map(|i| {
                // Memory between "cannot hold s = 1" (rarely) and "holds everything".
                // 0 (one client in ten): below s = 1.
                let s_mem = if rng.below(10) == 0 {
                    0
                } else {
                    1 + rng.below(max)
                };
                let memory = if s_mem == 0 {
                    c.client_memory(1) * 0.9
                } else {
                    c.client_memory(s_mem) + rng.uniform() * 100.0
                };
                profile(
                    &format!("p{i}"),
                    lu(&mut rng, 1e4, 1e7),
                    memory,
                    lu(&mut rng, 1e2, 1e5),
                    lu(&mut rng, 1e2, 1e5),
                )
            })
            .collect();
        let expected = brute_force_deadline(&c, &profiles, server);
        let plan = plan_auto(&c, &profiles, server);
        let Some(d) = expected else {
            let e = err_text(plan);
            assert!(e.contains("cannot hold even one block"), "case {case}: {e}");
            continue;
        };
        let plan = plan.unwrap_or_else(|e| panic!("case {case}: {e}"));
        solved += 1;
        assert_eq!(plan.deadline_s, d, "case {case}");
        // The straggler of the plan meets the optimum exactly.
        let worst = plan.rows.iter().map(|r| r.latency_s).fold(0.0, f64::max);
        assert_eq!(worst, d, "case {case}");
        for (i, p) in profiles.iter().enumerate() {
            let feasible: Vec<usize> = (1..=max)
                .filter(|&s| {
                    c.client_memory(s) <= p.memory_bytes && step_latency(&c, p, s, server) <= d
                })
                .collect();
            assert_eq!(plan.rows[i].feasible_splits, feasible, "case {case}");
            assert_eq!(plan.splits[i], *feasible.last().unwrap(), "case {case}");
            assert!(plan.rows[i].memory_bytes <= p.memory_bytes, "case {case}");
            assert!(plan.rows[i].latency_s <= d, "case {case}");
        }
    }
    assert!(solved > 180, "only {solved} feasible cases");
}

#[test]
fn presets_plan_on_a_real_model() {
    let cfg = bert_base();
    let c = CostModel::new(&cfg, &LoraConfig::default_for(&cfg), 128, 8).unwrap();
    let profiles = mixed_profiles(8);
    let plan = plan_auto(&c, &profiles, 10e12).unwrap();
    assert_eq!(plan.splits.len(), 8);
    assert!(plan.splits.iter().all(|&s| (1..=11).contains(&s)));
    let worst = plan.rows.iter().map(|r| r.latency_s).fold(0.0, f64::max);
    assert_eq!(worst, plan.deadline_s);
    // The weakest device is the straggler at its smallest split.
    let weak = &plan.rows[1];
    assert_eq!(weak.profile, "weak-phone");
    assert_eq!(weak.split, 1);
    assert_eq!(weak.latency_s, plan.deadline_s);
}

// ---------------------------------------------------------------------------------------------
// Profiles.

#[test]
fn presets_exist_and_are_ordered() {
    let names = preset_names();
    assert_eq!(
        names,
        vec!["weak-phone", "phone", "strong-phone", "laptop", "edge-box"]
    );
    let ps: Vec<ResourceProfile> = names
        .iter()
        .map(|n| ResourceProfile::preset(n).unwrap())
        .collect();
    for p in &ps {
        p.validate().unwrap();
        assert_eq!(ResourceProfile::parse(&p.name).unwrap(), *p);
    }
    // Phones get stronger in every respect along the list.
    for w in ps[..3].windows(2) {
        assert!(w[0].compute_flops < w[1].compute_flops);
        assert!(w[0].memory_bytes < w[1].memory_bytes);
        assert!(w[0].uplink_bps < w[1].uplink_bps);
        assert!(w[0].downlink_bps < w[1].downlink_bps);
    }
    let phone = &ps[1];
    assert_eq!(phone.compute_flops, 30e9);
    assert_eq!(phone.memory_bytes, 1.5 * 1024.0 * 1024.0 * 1024.0);
    assert_eq!(phone.uplink_bps, 1e6); // 8 Mbit/s
}

#[test]
fn unknown_preset_lists_the_presets() {
    let e = err_text(ResourceProfile::parse("toaster"));
    assert!(e.contains("toaster"), "{e}");
    for n in preset_names() {
        assert!(e.contains(n), "{e}");
    }
}

#[test]
fn custom_profiles_parse_units() {
    let p = ResourceProfile::parse("custom:compute=2e9,memory=512MiB,up=1MB/s,down=5MB/s").unwrap();
    assert_eq!(p, profile("custom", 2e9, 512.0 * 1024.0 * 1024.0, 1e6, 5e6));
    let p = ResourceProfile::parse(
        " custom: compute = 2GFLOP/s, memory=1.5GiB, up=10Mbit/s, down=250kB/s, name=my-pi ",
    )
    .unwrap();
    assert_eq!(
        p,
        profile("my-pi", 2e9, 1.5 * 1024.0 * 1024.0 * 1024.0, 1.25e6, 250e3)
    );
    let p =
        ResourceProfile::parse("custom:compute=1.5e+10,memory=3000000,up=4KiB,down=2e6/s").unwrap();
    assert_eq!(p, profile("custom", 1.5e10, 3e6, 4096.0, 2e6));
    let p = ResourceProfile::parse("custom:compute=1T,memory=1Gi,up=1G,down=1Mi").unwrap();
    assert_eq!(
        p,
        profile(
            "custom",
            1e12,
            1024.0 * 1024.0 * 1024.0,
            1e9,
            1024.0 * 1024.0
        )
    );
}

#[test]
fn bad_custom_profiles_say_what_is_wrong() {
    let full = "compute=2e9,memory=512MiB,up=1MB/s,down=5MB/s";
    let cases = [
        ("custom:compute=2e9,memory=512MiB,up=1MB/s", "missing down"),
        ("custom:memory=512MiB", "missing compute, up, down"),
        (
            &format!("custom:{full},speed=3") as &str,
            "unknown key `speed`",
        ),
        (&format!("custom:{full},up=2MB/s"), "`up` given twice"),
        (
            "custom:compute=2e9,memory=512XB,up=1MB/s,down=5MB/s",
            "unknown unit `XB`",
        ),
        (
            "custom:compute=2e9,memory=512MiB/s,up=1MB/s,down=5MB/s",
            "not a rate",
        ),
        (
            "custom:compute=2e9,memory=512MiB,up=-1MB/s,down=5MB/s",
            "positive",
        ),
        (
            "custom:compute=2e9,memory=0,up=1MB/s,down=5MB/s",
            "positive",
        ),
        (
            "custom:compute=2e9,memory=MiB,up=1MB/s,down=5MB/s",
            "expected a number",
        ),
        (
            "custom:compute=2e9,memory=1.2.3,up=1MB/s,down=5MB/s",
            "not a number",
        ),
        (
            "custom:compute=2GB,memory=1,up=1MB/s,down=5MB/s",
            "unknown unit `B`",
        ),
        (
            "custom:compute=2e9,memory=1,up=1FLOP,down=5MB/s",
            "unknown unit `FLOP`",
        ),
        ("custom:compute,memory=1,up=1,down=5", "not `key=value`"),
        (
            "custom:compute=2e9,memory=1,up=1,down=5,name=",
            "empty name",
        ),
    ];
    for (spec, want) in cases {
        let e = err_text(ResourceProfile::parse(spec));
        assert!(e.contains(want), "{spec}: {e}");
        assert!(e.starts_with("input: "), "{spec}: {e}");
    }
    // The failing key is named.
    let e = err_text(ResourceProfile::parse(
        "custom:compute=2e9,memory=512MiB,up=1MB/s,down=5XB/s",
    ));
    assert!(e.contains("bad down `5XB/s`"), "{e}");
}

#[test]
fn mixed_profiles_cycle_through_the_mix() {
    assert!(mixed_profiles(0).is_empty());
    let ps = mixed_profiles(19);
    assert_eq!(ps.len(), 19);
    for (k, p) in ps.iter().enumerate() {
        assert_eq!(p.name, MIX[k % MIX.len()]);
        assert_eq!(*p, ResourceProfile::preset(MIX[k % MIX.len()]).unwrap());
    }
    // The first few clients are already heterogeneous.
    let first: std::collections::HashSet<&str> = ps[..4].iter().map(|p| p.name.as_str()).collect();
    assert_eq!(first.len(), 4);
    // Every preset appears in the mix.
    for n in preset_names() {
        assert!(MIX.contains(&n), "{n}");
    }
}

/// A GGUF model's blocks stay in their GGML types, and the client's memory counts them at that
/// size: the tiny Llama fixture's projections, type by type from the GGML block sizes, replace
/// their f32 size in every block the client holds.
#[test]
fn client_memory_counts_a_gguf_models_blocks_as_stored() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf/tiny_llama.gguf");
    let (cfg, stored) = flexp::model::describe(&path).unwrap();
    // (rows, cols) of q, k, v, o, gate, up, down at hidden 256, kv 128, MLP 512, and the
    // types tools/torch_reference/gguf_tiny_llama.py gives them: (values / block) · bytes.
    let shapes = [
        (256, 256),
        (128, 256),
        (128, 256),
        (256, 256),
        (512, 256),
        (512, 256),
        (256, 512),
    ];
    let bytes_per = |ty: &str| -> (usize, usize) {
        match ty {
            "Q4_0" => (32, 18),
            "Q4_1" => (32, 20),
            "Q5_0" => (32, 22),
            "Q5_1" => (32, 24),
            "Q8_0" => (32, 34),
            "Q2_K" => (256, 84),
            "Q3_K" => (256, 110),
            "Q4_K" => (256, 144),
            "Q5_K" => (256, 176),
            "Q6_K" => (256, 210),
            "F16" | "BF16" => (1, 2),
            _ => (1, 4),
        }
    };
    let types = [
        ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K"],
        ["Q8_0", "Q5_K", "F32", "F16", "BF16", "Q6_K", "Q4_K"],
    ];
    let per_block: Vec<f64> = types
        .iter()
        .map(|b| {
            b.iter()
                .zip(shapes)
                .map(|(t, (r, c))| {
                    let (n, by) = bytes_per(t);
                    (r * c / n * by) as f64
                })
                .sum()
        })
        .collect();
    let want = (per_block[0] + per_block[1]) / 2.0;
    assert_eq!(stored, Some(want));
    let lora = LoraConfig::default_for(&cfg);
    let f32_model = CostModel::new(&cfg, &lora, 16, 4).unwrap();
    let q = CostModel::new(&cfg, &lora, 16, 4)
        .unwrap()
        .with_projection_bytes(want)
        .unwrap();
    let f32_proj: f64 = shapes.iter().map(|(r, c)| (r * c * 4) as f64).sum();
    for s in 0..=2 {
        let saved = f32_model.client_memory(s) - q.client_memory(s);
        assert!(
            (saved - s as f64 * (f32_proj - want)).abs() < 1e-6,
            "split {s}: saved {saved}"
        );
    }
    assert!(CostModel::new(&cfg, &lora, 16, 4)
        .unwrap()
        .with_projection_bytes(0.0)
        .is_err());
}
