//! The CPU backend: f32 buffers in host memory, GEMMs through the `gemm` crate, everything
//! parallel over rayon's global pool (its size is the thread count the caller configured).

#[macro_use]
mod simd;

mod activation;
mod attention;
mod bf16_gemm;
mod f32_gemm;
mod gemm;
mod lora;
mod loss;
mod math;
mod norm;
mod optim;
mod packed;
mod pool;
mod quant_gemm;
mod rope;
mod small_gemm;
mod weight;

use super::checks::{buf_len as check, spans_rows};
use super::{
    checks, Activation, AdamW, AttnShape, Backend, LoraGradSeg, LoraSeg, LoraShape, Span,
    WeightPrecision,
};
use crate::error::{Error, Result};
use rayon::prelude::*;

pub(crate) use self::gemm::sgemm;
pub use self::weight::CpuWeight;

/// `y[r,:] += bias` for the first `rows` rows of `dim` values.
fn add_bias(y: &mut [f32], bias: &[f32], rows: usize, dim: usize) -> Result<()> {
    check("add_bias y", y.len(), rows * dim)?;
    check("add_bias bias", bias.len(), dim)?;
    y[..rows * dim]
        .par_chunks_mut(dim)
        .for_each(|r| r.iter_mut().zip(bias.iter()).for_each(|(a, b)| *a += b));
    Ok(())
}

/// Whether bf16 base products on this CPU run on a hand-written kernel (AMX tiles or the
/// AVX-512 BF16 micro-kernel, `true`) or the portable f32 path. Decided once per process: see
/// [`bf16_kernel`].
pub fn bf16_kernel_active() -> bool {
    bf16_gemm::Isa::detect() != bf16_gemm::Isa::Portable
}

/// The implementation of bf16 base products on this CPU: `"amx-bf16"` (AMX tiles, where the
/// CPU has them and Linux grants the tile state), `"avx512-bf16"` (the `vdpbf16ps`
/// micro-kernel) or `"portable"` (f32 GEMM on widened weights). Decided once per process;
/// `FLEXP_BF16_KERNEL=avx512` or `=portable` caps the choice.
pub fn bf16_kernel() -> &'static str {
    bf16_gemm::Isa::detect().name()
}

/// The implementation of f32 base products on this CPU: `"avx512f"` (the packed-panel
/// micro-kernel) or `"gemm-crate"` (the `gemm` crate, on CPUs without AVX-512F or under
/// `FLEXP_F32_KERNEL=portable`). Decided once per process.
pub fn f32_kernel() -> &'static str {
    if f32_gemm::kernel_available() {
        "avx512f"
    } else {
        "gemm-crate"
    }
}

/// The instruction-set extensions the CPU kernels choose between, as detected at run time
/// (`amx-bf16` only where the OS also grants the tile state).
pub fn instruction_sets() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let found = [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bf16", bf16_gemm::avx512_bf16_available()),
            ("amx-bf16", bf16_gemm::amx_available()),
        ];
        out.extend(found.iter().filter(|(_, on)| *on).map(|(n, _)| *n));
    }
    out
}

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Splits `buf` (rows of `dim`) into disjoint mutable row ranges, one per span. Spans must be
/// sorted by start and not overlap.
pub(crate) fn split_rows_mut<'a>(
    buf: &'a mut [f32],
    spans: &[Span],
    dim: usize,
) -> Result<Vec<&'a mut [f32]>> {
    checks::segments(spans, buf.len(), dim)?;
    let mut out = Vec::with_capacity(spans.len());
    let mut rest = buf;
    let mut consumed = 0usize;
    for s in spans {
        // In range: checks::segments proved the spans sorted, disjoint and inside `buf`.
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((s.start - consumed) * dim);
        let (seg, tail) = tail.split_at_mut(s.len * dim);
        out.push(seg);
        rest = tail;
        consumed = s.end();
    }
    Ok(out)
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn fork(&self, n: usize) -> Result<Vec<Cpu>> {
        Ok(vec![Cpu; n])
    }
    fn join(&self, _lanes: &[Cpu]) -> Result<()> {
        Ok(())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn scratch(&self, len: usize) -> Result<Vec<f32>> {
        Ok(pool::take(len).unwrap_or_else(|| vec![0.0; len]))
    }
    fn recycle(&self, buf: Vec<f32>) {
        pool::put(buf);
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }

    fn matmul(
        &self,
        c: &mut Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        sgemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, 1.0, true)
    }

    fn weight(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        precision: WeightPrecision,
    ) -> Result<CpuWeight> {
        CpuWeight::new(data, rows, cols, precision)
    }
    fn weight_quantized(
        &self,
        ty: super::quant::GgmlType,
        blocks: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<CpuWeight> {
        CpuWeight::quantized(ty, blocks, rows, cols)
    }
    fn weight_ggml_type(&self, w: &CpuWeight) -> Option<super::quant::GgmlType> {
        w.ggml_type()
    }
    fn weight_shape(&self, w: &CpuWeight) -> (usize, usize) {
        w.shape()
    }
    fn weight_precision(&self, w: &CpuWeight) -> WeightPrecision {
        w.precision()
    }
    fn weight_bytes(&self, w: &CpuWeight) -> usize {
        w.bytes()
    }
    fn weight_to_host(&self, w: &CpuWeight) -> Result<Vec<f32>> {
        w.to_f32()
    }
    fn linear(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuWeight,
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.linear(y, x, m, accumulate, bf16_gemm::Isa::detect())
    }
    fn linear_bias(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuWeight,
        bias: &Vec<f32>,
        m: usize,
    ) -> Result<()> {
        w.linear_bias(y, x, bias, m, bf16_gemm::Isa::detect())
    }
    fn linear_backward_input(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        w: &CpuWeight,
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.linear_backward_input(dx, dy, m, accumulate, bf16_gemm::Isa::detect())
    }

    fn add_bias(&self, y: &mut Vec<f32>, bias: &Vec<f32>, rows: usize, dim: usize) -> Result<()> {
        add_bias(y, bias, rows, dim)
    }
    fn add_assign(&self, y: &mut Vec<f32>, x: &Vec<f32>, len: usize) -> Result<()> {
        check("add_assign y", y.len(), len)?;
        check("add_assign x", x.len(), len)?;
        y[..len]
            .par_chunks_mut(4096)
            .zip(x[..len].par_chunks(4096))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(a, b)| *a += b));
        Ok(())
    }
    fn copy(&self, y: &mut Vec<f32>, x: &Vec<f32>, len: usize) -> Result<()> {
        check("copy y", y.len(), len)?;
        check("copy x", x.len(), len)?;
        y[..len].copy_from_slice(&x[..len]);
        Ok(())
    }
    fn gather_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: &[u32],
        dim: usize,
    ) -> Result<()> {
        check("gather dst", dst.len(), rows.len() * dim)?;
        for &r in rows {
            check("gather src", src.len(), (r as usize + 1) * dim)?;
        }
        dst[..rows.len() * dim]
            .par_chunks_mut(dim)
            .zip(rows.par_iter())
            .for_each(|(d, &r)| d.copy_from_slice(&src[r as usize * dim..(r as usize + 1) * dim]));
        Ok(())
    }
    fn scatter_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: &[u32],
        dim: usize,
    ) -> Result<()> {
        check("scatter src", src.len(), rows.len() * dim)?;
        for (i, &r) in rows.iter().enumerate() {
            check("scatter dst", dst.len(), (r as usize + 1) * dim)?;
            dst[r as usize * dim..(r as usize + 1) * dim]
                .copy_from_slice(&src[i * dim..(i + 1) * dim]);
        }
        Ok(())
    }
    fn embedding(
        &self,
        out: &mut Vec<f32>,
        table: &Vec<f32>,
        ids: &[u32],
        dim: usize,
        accumulate: bool,
    ) -> Result<()> {
        check("embedding out", out.len(), ids.len() * dim)?;
        let vocab = table.len() / dim.max(1);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Backend(format!(
                "embedding id {bad} out of range for a table of {vocab} rows"
            )));
        }
        out[..ids.len() * dim]
            .par_chunks_mut(dim)
            .zip(ids.par_iter())
            .for_each(|(o, &i)| {
                let row = &table[i as usize * dim..(i as usize + 1) * dim];
                if accumulate {
                    o.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                } else {
                    o.copy_from_slice(row);
                }
            });
        Ok(())
    }

    fn lora_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        u: &mut Vec<f32>,
        segs: &[LoraSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()> {
        let rows = segs.iter().map(|s| s.rows.end()).max().unwrap_or(0);
        check("lora x", x.len(), rows * shape.d_in)?;
        for s in segs {
            check("lora a", s.a.len(), shape.rank * shape.d_in)?;
            check("lora b", s.b.len(), shape.d_out * shape.rank)?;
        }
        lora::forward(y, x, u, segs, shape)
    }
    fn lora_backward(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        u: &Vec<f32>,
        segs: &mut [LoraGradSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()> {
        let rows = segs.iter().map(|s| s.rows.end()).max().unwrap_or(0);
        check("lora dy", dy.len(), rows * shape.d_out)?;
        check("lora x", x.len(), rows * shape.d_in)?;
        check("lora u", u.len(), rows * shape.rank)?;
        for s in segs.iter() {
            check("lora a", s.a.len(), shape.rank * shape.d_in)?;
            check("lora b", s.b.len(), shape.d_out * shape.rank)?;
            check("lora da", s.da.len(), shape.rank * shape.d_in)?;
            check("lora db", s.db.len(), shape.d_out * shape.rank)?;
        }
        lora::backward(dx, dy, x, u, segs, shape)
    }

    fn attention_forward(
        &self,
        o: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        seqs: &[Span],
        s: AttnShape,
    ) -> Result<()> {
        checks::attention(s, seqs, &[q.len(), o.len()], &[k.len(), v.len()], lse.len())?;
        attention::forward(o, lse, q, k, v, seqs, s);
        Ok(())
    }
    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        do_: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        o: &Vec<f32>,
        lse: &Vec<f32>,
        seqs: &[Span],
        s: AttnShape,
    ) -> Result<()> {
        checks::attention(
            s,
            seqs,
            &[q.len(), o.len(), do_.len(), dq.len()],
            &[k.len(), v.len(), dk.len(), dv.len()],
            lse.len(),
        )?;
        attention::backward(dq, dk, dv, do_, q, k, v, o, lse, seqs, s);
        Ok(())
    }

    fn layer_norm_forward(
        &self,
        y: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        for (w, l, n) in [("y", y.len(), rows * dim), ("x", x.len(), rows * dim)] {
            check(&format!("layer_norm {w}"), l, n)?;
        }
        check("layer_norm stats", mean.len().min(rstd.len()), rows)?;
        check("layer_norm params", gamma.len().min(beta.len()), dim)?;
        norm::layer_norm_forward(
            &mut y[..rows * dim],
            &mut mean[..rows],
            &mut rstd[..rows],
            &x[..rows * dim],
            gamma,
            beta,
            dim,
            eps,
        );
        Ok(())
    }
    fn layer_norm_backward(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        for (w, l) in [("dx", dx.len()), ("dy", dy.len()), ("x", x.len())] {
            check(&format!("layer_norm_backward {w}"), l, rows * dim)?;
        }
        check(
            "layer_norm_backward stats",
            mean.len().min(rstd.len()),
            rows,
        )?;
        check("layer_norm_backward gamma", gamma.len(), dim)?;
        norm::layer_norm_backward(
            &mut dx[..rows * dim],
            &dy[..rows * dim],
            &x[..rows * dim],
            gamma,
            &mean[..rows],
            &rstd[..rows],
            dim,
        );
        Ok(())
    }
    fn rms_norm_forward(
        &self,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        check("rms_norm y", y.len(), rows * dim)?;
        check("rms_norm x", x.len(), rows * dim)?;
        check("rms_norm rstd", rstd.len(), rows)?;
        check("rms_norm gamma", gamma.len(), dim)?;
        norm::rms_norm_forward(
            &mut y[..rows * dim],
            &mut rstd[..rows],
            &x[..rows * dim],
            gamma,
            dim,
            eps,
        );
        Ok(())
    }
    fn rms_norm_backward(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        rstd: &Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        for (w, l) in [("dx", dx.len()), ("dy", dy.len()), ("x", x.len())] {
            check(&format!("rms_norm_backward {w}"), l, rows * dim)?;
        }
        check("rms_norm_backward rstd", rstd.len(), rows)?;
        check("rms_norm_backward gamma", gamma.len(), dim)?;
        norm::rms_norm_backward(
            &mut dx[..rows * dim],
            &dy[..rows * dim],
            &x[..rows * dim],
            gamma,
            &rstd[..rows],
            dim,
        );
        Ok(())
    }

    fn activation_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        check("activation y", y.len(), len)?;
        check("activation x", x.len(), len)?;
        activation::forward(&mut y[..len], &x[..len], act);
        Ok(())
    }
    fn activation_backward(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        for (w, l) in [("dx", dx.len()), ("dy", dy.len()), ("x", x.len())] {
            check(&format!("activation_backward {w}"), l, len)?;
        }
        activation::backward(&mut dx[..len], &dy[..len], &x[..len], act);
        Ok(())
    }
    fn swiglu_forward(
        &self,
        y: &mut Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        len: usize,
    ) -> Result<()> {
        for (w, l) in [("y", y.len()), ("gate", gate.len()), ("up", up.len())] {
            check(&format!("swiglu {w}"), l, len)?;
        }
        activation::swiglu_forward(&mut y[..len], &gate[..len], &up[..len]);
        Ok(())
    }
    fn gated_forward(
        &self,
        y: &mut Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        for (w, l) in [("y", y.len()), ("gate", gate.len()), ("up", up.len())] {
            check(&format!("gated {w}"), l, len)?;
        }
        activation::gated_forward(&mut y[..len], &gate[..len], &up[..len], act);
        Ok(())
    }
    fn gated_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dy: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        for (w, l) in [
            ("dgate", dgate.len()),
            ("dup", dup.len()),
            ("dy", dy.len()),
            ("gate", gate.len()),
            ("up", up.len()),
        ] {
            check(&format!("gated_backward {w}"), l, len)?;
        }
        activation::gated_backward(
            &mut dgate[..len],
            &mut dup[..len],
            &dy[..len],
            &gate[..len],
            &up[..len],
            act,
        );
        Ok(())
    }
    fn scale(&self, x: &mut Vec<f32>, alpha: f32, len: usize) -> Result<()> {
        check("scale x", x.len(), len)?;
        x[..len]
            .par_chunks_mut(4096)
            .for_each(|x| x.iter_mut().for_each(|v| *v *= alpha));
        Ok(())
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dy: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        len: usize,
    ) -> Result<()> {
        for (w, l) in [
            ("dgate", dgate.len()),
            ("dup", dup.len()),
            ("dy", dy.len()),
            ("gate", gate.len()),
            ("up", up.len()),
        ] {
            check(&format!("swiglu_backward {w}"), l, len)?;
        }
        activation::swiglu_backward(
            &mut dgate[..len],
            &mut dup[..len],
            &dy[..len],
            &gate[..len],
            &up[..len],
        );
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) -> Result<()> {
        let n = positions.len() * heads * head_dim;
        check("rope x", x.len(), n)?;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Backend(format!(
                "rope needs an even head_dim, got {head_dim}"
            )));
        }
        rope::rope(&mut x[..n], positions, heads, head_dim, theta, inverse);
        Ok(())
    }

    fn segment_mean(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        spans: &[Span],
        dim: usize,
    ) -> Result<()> {
        check("segment_mean out", out.len(), spans.len() * dim)?;
        check("segment_mean x", x.len(), spans_rows(spans) * dim)?;
        out[..spans.len() * dim]
            .par_chunks_mut(dim)
            .zip(spans.par_iter())
            .for_each(|(o, s)| {
                o.fill(0.0);
                for r in s.start..s.end() {
                    o.iter_mut()
                        .zip(&x[r * dim..(r + 1) * dim])
                        .for_each(|(a, b)| *a += b);
                }
                let inv = 1.0 / s.len.max(1) as f32;
                o.iter_mut().for_each(|a| *a *= inv);
            });
        Ok(())
    }
    fn segment_mean_backward(
        &self,
        dx: &mut Vec<f32>,
        dout: &Vec<f32>,
        spans: &[Span],
        dim: usize,
    ) -> Result<()> {
        check("segment_mean_backward dout", dout.len(), spans.len() * dim)?;
        check(
            "segment_mean_backward dx",
            dx.len(),
            spans_rows(spans) * dim,
        )?;
        for (i, s) in spans.iter().enumerate() {
            let inv = 1.0 / s.len.max(1) as f32;
            let d = &dout[i * dim..(i + 1) * dim];
            for r in s.start..s.end() {
                dx[r * dim..(r + 1) * dim]
                    .iter_mut()
                    .zip(d)
                    .for_each(|(a, b)| *a += b * inv);
            }
        }
        Ok(())
    }

    fn cross_entropy(
        &self,
        dlogits: &mut Vec<f32>,
        logits: &Vec<f32>,
        labels: &[i64],
        weights: &[f32],
        classes: usize,
    ) -> Result<Vec<f32>> {
        let rows = labels.len();
        check("cross_entropy logits", logits.len(), rows * classes)?;
        check("cross_entropy dlogits", dlogits.len(), rows * classes)?;
        check("cross_entropy weights", weights.len(), rows)?;
        if let Some(&bad) = labels.iter().find(|&&l| l >= classes as i64) {
            return Err(Error::Backend(format!(
                "label {bad} out of range for {classes} classes"
            )));
        }
        Ok(loss::cross_entropy(
            &mut dlogits[..rows * classes],
            &logits[..rows * classes],
            labels,
            weights,
            classes,
        ))
    }

    fn adamw_step(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: AdamW,
        step: u64,
    ) -> Result<()> {
        let n = param.len();
        for (w, l) in [("grad", grad.len()), ("m", m.len()), ("v", v.len())] {
            check(&format!("adamw {w}"), l, n)?;
        }
        optim::adamw_step(param, &grad[..n], &mut m[..n], &mut v[..n], hp, step);
        Ok(())
    }
}
