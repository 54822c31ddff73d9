//! GPU benchmark of the CUDA backend: each kernel family timed against its roofline bound at the
//! sizes of kernels/README.md, and a packed multi-client server sweep against the same clients
//! run one at a time. On a machine without a GPU it says so and exits 0 (the kernels are still
//! verified there, by tests/cuda_compile.rs and the emulator tests).
//!
//! Run: `cargo bench --bench cuda_kernels`. Timings use host timers around a stream
//! synchronisation, after one warm-up call (which also compiles the kernels with NVRTC).

use flexp::backend::cuda::driver::CudaDriver;
use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};
use flexp::backend::{AttnShape, Backend, LoraSeg, LoraShape, Span, WeightPrecision};
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::{AdapterSet, LoraConfig, Model, ModelConfig};
use flexp::rng::Rng;
use std::sync::Arc;
use std::time::Instant;

/// H100 SXM peak numbers the bounds use (kernels/README.md).
const HBM_BYTES_PER_S: f64 = 3.0e12;
const F32_FLOPS: f64 = 67.0e12;
/// Dense bf16 tensor-core peak of the H100 SXM (and H200, the same chip).
const BF16_TC_FLOPS: f64 = 989.0e12;

fn main() {
    let dev = match CudaDriver::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("cuda_kernels: no GPU here ({e}); nothing to time.");
            return;
        }
    };
    println!("device: {}", flexp::backend::cuda::Device::describe(&dev));
    let be = CudaBackend::new(Arc::new(dev));
    if let Err(e) = run(&be) {
        eprintln!("cuda_kernels: {e}");
        std::process::exit(1);
    }
}

fn time(
    be: &CudaBackend,
    iters: usize,
    mut f: impl FnMut() -> flexp::Result<()>,
) -> flexp::Result<f64> {
    f()?;
    be.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    be.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn row(name: &str, secs: f64, flops: f64, bytes: f64) {
    row_at(name, secs, flops, bytes, F32_FLOPS);
}

/// A row whose compute bound is `peak` FLOP/s (the tensor cores' for the bf16 kernels).
fn row_at(name: &str, secs: f64, flops: f64, bytes: f64, peak: f64) {
    let bound = (flops / peak).max(bytes / HBM_BYTES_PER_S);
    println!(
        "{name:34} {:9.3} ms   bound {:9.3} ms   {:5.1}% of bound   {:7.1} TFLOP/s  {:7.1} GB/s",
        secs * 1e3,
        bound * 1e3,
        100.0 * bound / secs,
        flops / secs / 1e12,
        bytes / secs / 1e9
    );
}

fn run(be: &CudaBackend) -> flexp::Result<()> {
    let mut rng = Rng::new(0);
    let (clients, seq, d, rank) = (64usize, 512usize, 4096usize, 16usize);
    let tokens = clients * seq;
    let rand = |rng: &mut Rng, n: usize| be.upload(&rng.vec_range(n, -1.0, 1.0));

    // Base GEMM: one projection over all clients' tokens.
    let x = rand(&mut rng, tokens * d)?;
    let w = rand(&mut rng, d * d)?;
    let mut y = be.zeros(tokens * d)?;
    let s = time(be, 5, || {
        be.matmul(&mut y, &x, &w, tokens, d, d, false, true, false)
    })?;
    let flops = 2.0 * (tokens * d * d) as f64;
    row(
        "gemm f32 32768x4096x4096",
        s,
        flops,
        4.0 * (2 * tokens * d + d * d) as f64,
    );

    // The same projection with the weight in bf16: kernels/gemm_tc.cu on the tensor cores (the
    // input is cast to bf16 first, which the time includes, as in training).
    let wb = be.weight(
        &rng.vec_range(d * d, -1.0, 1.0),
        d,
        d,
        WeightPrecision::Bf16,
    )?;
    let s = time(be, 10, || be.linear(&mut y, &x, &wb, tokens, false))?;
    row_at(
        "gemm bf16 tensor cores 32768x4096x4096",
        s,
        flops,
        (2 * tokens * d + 2 * d * d + 4 * tokens * d + 4 * tokens * d) as f64,
        BF16_TC_FLOPS,
    );
    let s = time(be, 10, || {
        be.linear_backward_input(&mut y, &x, &wb, tokens, false)
    })?;
    row_at(
        "gemm bf16 tc input grad 32768x4096x4096",
        s,
        flops,
        (2 * tokens * d + 2 * d * d + 4 * tokens * d + 4 * tokens * d) as f64,
        BF16_TC_FLOPS,
    );

    // Multi-LoRA: 64 adapters, one segment each.
    let ab: Vec<_> = (0..clients)
        .map(|_| Ok((rand(&mut rng, rank * d)?, rand(&mut rng, d * rank)?)))
        .collect::<flexp::Result<_>>()?;
    let segs: Vec<LoraSeg<'_, CudaBackend>> = ab
        .iter()
        .enumerate()
        .map(|(i, (a, b))| LoraSeg {
            rows: Span {
                start: i * seq,
                len: seq,
            },
            a,
            b,
        })
        .collect();
    let mut u = be.zeros(tokens * rank)?;
    let shape = LoraShape {
        d_in: d,
        d_out: d,
        rank,
        scale: 2.0,
    };
    let s = time(be, 10, || be.lora_forward(&mut y, &x, &mut u, &segs, shape))?;
    let flops = 2.0 * 2.0 * (tokens * d * rank) as f64;
    let bytes = 4.0 * (2 * tokens * d + 2 * clients * rank * d + tokens * rank) as f64;
    row("lora fwd 64 adapters r16", s, flops, bytes);

    // Attention over 64 sequences of 512, 32 heads of 128.
    let (heads, hd) = (32usize, 128usize);
    let q = rand(&mut rng, tokens * heads * hd)?;
    let k = rand(&mut rng, tokens * heads * hd)?;
    let v = rand(&mut rng, tokens * heads * hd)?;
    let mut o = be.zeros(tokens * heads * hd)?;
    let mut lse = be.zeros(tokens * heads)?;
    let seqs: Vec<Span> = (0..clients)
        .map(|i| Span {
            start: i * seq,
            len: seq,
        })
        .collect();
    let shape = AttnShape {
        heads,
        kv_heads: heads,
        head_dim: hd,
        causal: true,
        window: None,
        scale: 1.0 / (hd as f32).sqrt(),
        bf16: false,
    };
    let s = time(be, 5, || {
        be.attention_forward(&mut o, &mut lse, &q, &k, &v, &seqs, shape)
    })?;
    // Causal: half the score matrix.
    let flops = 0.5 * 4.0 * (clients * seq * seq * heads * hd) as f64;
    row(
        "attention fwd causal 64x512 32x128",
        s,
        flops,
        16.0 * (tokens * heads * hd) as f64,
    );
    // The same attention on the tensor cores (kernels/attn_flash.cu, bf16 Q, K, V), launched by
    // name: it is not behind the Backend trait yet.
    let bits = |rng: &mut Rng, n: usize| -> Vec<u16> {
        rng.vec_range(n, -1.0, 1.0)
            .into_iter()
            .map(|x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let (qb, kb, vb) = (
        be.upload_pod(&bits(&mut rng, tokens * heads * hd))?,
        be.upload_pod(&bits(&mut rng, tokens * heads * hd))?,
        be.upload_pod(&bits(&mut rng, tokens * heads * hd))?,
    );
    let mut table: Vec<i32> = Vec::new();
    for i in 0..clients {
        for q0 in (0..seq).step_by(64) {
            table.extend([(i * seq) as i32, seq as i32, q0 as i32]);
        }
    }
    let tiles = be.upload_pod(&table)?;
    let cfg = LaunchCfg {
        grid: ((table.len() / 3) as u32, heads as u32, 1),
        block: (128, 1, 1),
        shared_bytes: (3 * 64 * (hd + 8) * 2) as u32,
    };
    let s = time(be, 5, || {
        // SAFETY: attn_flash_fwd_d128 reads q, k, v [tokens, 32·128] bf16 and writes o
        // [tokens, 32·128], lse [tokens, 32] f32 for the rows of the table's sequences, which
        // cover exactly 0..tokens; heads = kv_heads.
        unsafe {
            be.launch(
                "attn_flash_fwd_d128",
                cfg,
                &[
                    o.arg(),
                    lse.arg(),
                    qb.arg(),
                    kb.arg(),
                    vb.arg(),
                    tiles.arg(),
                    KArg::I32(heads as i32),
                    KArg::I32(heads as i32),
                    KArg::I32(1),
                    KArg::F32(shape.scale),
                ],
            )
        }
    })?;
    row_at(
        "attn flash fwd (tc) causal 64x512 32x128",
        s,
        flops,
        10.0 * (tokens * heads * hd) as f64,
        BF16_TC_FLOPS,
    );
    let (mut dq, mut dk, mut dv) = (
        be.zeros(tokens * d)?,
        be.zeros(tokens * d)?,
        be.zeros(tokens * d)?,
    );
    let s = time(be, 5, || {
        be.attention_backward(
            &mut dq, &mut dk, &mut dv, &o, &q, &k, &v, &o, &lse, &seqs, shape,
        )
    })?;
    row(
        "attention bwd causal 64x512 32x128",
        s,
        2.5 * flops,
        32.0 * (tokens * heads * hd) as f64,
    );

    // LayerNorm over all tokens.
    let g = rand(&mut rng, d)?;
    let bias = rand(&mut rng, d)?;
    let (mut mean, mut rstd) = (be.zeros(tokens)?, be.zeros(tokens)?);
    let s = time(be, 10, || {
        be.layer_norm_forward(&mut y, &mut mean, &mut rstd, &x, &g, &bias, tokens, d, 1e-5)
    })?;
    row(
        "layernorm fwd 32768x4096",
        s,
        8.0 * (tokens * d) as f64,
        8.0 * (tokens * d) as f64,
    );

    // AdamW over 64 clients' adapters (q and v, 32 layers).
    let n = clients * 32 * 2 * 2 * rank * d;
    let (mut p, gr, mut m1, mut m2) = (
        rand(&mut rng, n)?,
        rand(&mut rng, n)?,
        be.zeros(n)?,
        be.zeros(n)?,
    );
    let mut step = 0;
    let s = time(be, 10, || {
        step += 1;
        be.adamw_step(&mut p, &gr, &mut m1, &mut m2, Default::default(), step)
    })?;
    row("adamw 537M params", s, 12.0 * n as f64, 28.0 * n as f64);

    round(be)
}

/// A server sweep (blocks 2..8 of an 8-block Llama-style model, hidden 1024) for 64 clients:
/// packed into one executor call, and one client at a time.
fn round(be: &CudaBackend) -> flexp::Result<()> {
    let cfg = ModelConfig::from_json(&serde_json::json!({
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 1024, "num_hidden_layers": 8,
        "num_attention_heads": 16, "num_key_value_heads": 4, "intermediate_size": 2816,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": false
    }))
    .map_err(flexp::Error::Input)?;
    let mut rng = Rng::new(1);
    let model = Model::random(be, cfg.clone(), &mut rng)?;
    let lora = LoraConfig {
        rank: 16,
        alpha: 32.0,
        ..LoraConfig::default_for(&cfg)
    };
    let (clients, batch, seq) = (64usize, 4usize, 128usize);
    let sets: Vec<AdapterSet<CudaBackend>> = (0..clients)
        .map(|_| AdapterSet::init_lora(be, &cfg, lora.clone(), 2..8, &mut rng))
        .collect::<flexp::Result<_>>()?;
    let refs: Vec<&AdapterSet<CudaBackend>> = sets.iter().collect();
    let mut grads: Vec<AdapterSet<CudaBackend>> = sets
        .iter()
        .map(|s| s.zeros_like(be))
        .collect::<flexp::Result<_>>()?;
    let exec = Executor::new(be, &model);
    let d = cfg.hidden;
    let jobs: Vec<SeqJob> = (0..clients * batch)
        .map(|i| {
            let mut j = SeqJob::new(
                SeqInput::Hidden(rng.vec_range(seq * d, -1.0, 1.0)),
                2..8,
                i / batch,
                Output::Hidden,
            );
            j.grad_slot = i / batch;
            j
        })
        .collect();
    let dy: Vec<Option<Vec<f32>>> = jobs
        .iter()
        .map(|_| Some(rng.vec_range(seq * d, -1.0, 1.0)))
        .collect();
    let tokens = (clients * batch * seq) as f64;
    let packed = time(be, 3, || {
        let (_, tape) = exec.forward(&refs, &jobs, true)?;
        let tape = tape.ok_or_else(|| flexp::Error::Backend("no tape".into()))?;
        exec.backward(&tape, &refs, &mut grads, &dy).map(|_| ())
    })?;
    let one_by_one = time(be, 1, || {
        for c in 0..clients {
            let mine: Vec<SeqJob> = jobs[c * batch..(c + 1) * batch]
                .iter()
                .map(|j| {
                    let mut j = j.clone();
                    j.adapter = 0;
                    j.grad_slot = 0;
                    j
                })
                .collect();
            let (_, tape) = exec.forward(&[refs[c]], &mine, true)?;
            let tape = tape.ok_or_else(|| flexp::Error::Backend("no tape".into()))?;
            exec.backward(
                &tape,
                &[refs[c]],
                &mut grads[c..c + 1],
                &dy[c * batch..(c + 1) * batch],
            )?;
        }
        Ok(())
    })?;
    println!(
        "server sweep, 64 clients x {batch}x{seq} tokens, blocks 2..8: packed {:.0} tokens/s, one client at a time {:.0} tokens/s ({:.2}x)",
        tokens / packed,
        tokens / one_by_one,
        one_by_one / packed
    );
    Ok(())
}
