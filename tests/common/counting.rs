//! A backend wrapper that counts the floating-point operations of the matrix products it is
//! asked to run (`2·m·n·k` per product, from each call's own shapes) and passes every call on to
//! the wrapped backend. It measures what the executor actually issues, so a cost model can be
//! checked against it instead of against its own formulas.

use flexp::backend::{
    Activation, AdamW, AttnShape, Backend, LoraGradSeg, LoraSeg, LoraShape, Span, WeightPrecision,
};
use flexp::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `inner` with a shared FLOP counter (lanes from `fork` count into the same one).
pub struct Counting<B> {
    pub inner: B,
    flops: Arc<AtomicU64>,
}

impl<B> Counting<B> {
    pub fn new(inner: B) -> Self {
        Counting {
            inner,
            flops: Arc::new(AtomicU64::new(0)),
        }
    }

    /// FLOPs counted since the last call (and resets the count).
    pub fn take(&self) -> u64 {
        self.flops.swap(0, Ordering::SeqCst)
    }

    fn add(&self, f: usize) {
        self.flops.fetch_add(f as u64, Ordering::SeqCst);
    }
}

/// Query–key pairs of one sequence of `len` tokens.
fn pairs(len: usize, causal: bool) -> usize {
    if causal {
        len * (len + 1) / 2
    } else {
        len * len
    }
}

fn attention_products(seqs: &[Span], shape: AttnShape) -> usize {
    // QKᵀ and PV: two products of 2·pairs·head_dim per head.
    seqs.iter()
        .map(|s| 4 * pairs(s.len, shape.causal) * shape.heads * shape.head_dim)
        .sum()
}

fn segs<'a, B: Backend>(s: &[LoraSeg<'a, Counting<B>>]) -> Vec<LoraSeg<'a, B>> {
    s.iter()
        .map(|x| LoraSeg {
            rows: x.rows,
            a: x.a,
            b: x.b,
        })
        .collect()
}

impl<B: Backend> Backend for Counting<B> {
    type Buf = B::Buf;
    type Weight = B::Weight;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        self.inner.zeros(len)
    }
    fn scratch(&self, len: usize) -> Result<Self::Buf> {
        self.inner.scratch(len)
    }
    fn recycle(&self, buf: Self::Buf) {
        self.inner.recycle(buf)
    }
    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        self.inner.upload(data)
    }
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.inner.download(buf)
    }
    fn len(&self, buf: &Self::Buf) -> usize {
        self.inner.len(buf)
    }
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()> {
        self.inner.fill_zero(buf)
    }
    fn fork(&self, n: usize) -> Result<Vec<Self>> {
        Ok(self
            .inner
            .fork(n)?
            .into_iter()
            .map(|inner| Counting {
                inner,
                flops: self.flops.clone(),
            })
            .collect())
    }
    fn join(&self, lanes: &[Self]) -> Result<()> {
        // The inner join needs the inner lanes; the CPU's lanes are plain copies, so joining
        // through fresh copies is the same operation.
        let inner: Vec<B> = self.inner.fork(lanes.len())?;
        self.inner.join(&inner)
    }
    fn concurrent_lanes(&self) -> bool {
        self.inner.concurrent_lanes()
    }
    fn matmul(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
    ) -> Result<()> {
        self.add(2 * m * n * k);
        self.inner
            .matmul(c, a, b, m, n, k, trans_a, trans_b, accumulate)
    }
    fn weight(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        precision: WeightPrecision,
    ) -> Result<Self::Weight> {
        self.inner.weight(data, rows, cols, precision)
    }
    fn weight_shape(&self, w: &Self::Weight) -> (usize, usize) {
        self.inner.weight_shape(w)
    }
    fn weight_precision(&self, w: &Self::Weight) -> WeightPrecision {
        self.inner.weight_precision(w)
    }
    fn weight_bytes(&self, w: &Self::Weight) -> usize {
        self.inner.weight_bytes(w)
    }
    fn weight_to_host(&self, w: &Self::Weight) -> Result<Vec<f32>> {
        self.inner.weight_to_host(w)
    }
    fn linear(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (out, inp) = self.inner.weight_shape(w);
        self.add(2 * m * out * inp);
        self.inner.linear(y, x, w, m, accumulate)
    }
    fn linear_bias(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: &Self::Buf,
        m: usize,
    ) -> Result<()> {
        let (out, inp) = self.inner.weight_shape(w);
        self.add(2 * m * out * inp);
        self.inner.linear_bias(y, x, w, bias, m)
    }
    fn linear_backward_input(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (out, inp) = self.inner.weight_shape(w);
        self.add(2 * m * out * inp);
        self.inner.linear_backward_input(dx, dy, w, m, accumulate)
    }
    fn add_bias(&self, y: &mut Self::Buf, bias: &Self::Buf, rows: usize, dim: usize) -> Result<()> {
        self.inner.add_bias(y, bias, rows, dim)
    }
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf, len: usize) -> Result<()> {
        self.inner.add_assign(y, x, len)
    }
    fn copy(&self, y: &mut Self::Buf, x: &Self::Buf, len: usize) -> Result<()> {
        self.inner.copy(y, x, len)
    }
    fn gather_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: &[u32],
        dim: usize,
    ) -> Result<()> {
        self.inner.gather_rows(dst, src, rows, dim)
    }
    fn scatter_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: &[u32],
        dim: usize,
    ) -> Result<()> {
        self.inner.scatter_rows(dst, src, rows, dim)
    }
    fn embedding(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        ids: &[u32],
        dim: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.inner.embedding(out, table, ids, dim, accumulate)
    }
    fn lora_forward(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        u: &mut Self::Buf,
        s: &[LoraSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()> {
        let rows: usize = s.iter().map(|x| x.rows.len).sum();
        // u = x·Aᵀ and y += u·Bᵀ.
        self.add(2 * rows * shape.rank * (shape.d_in + shape.d_out));
        self.inner.lora_forward(y, x, u, &segs(s), shape)
    }
    fn lora_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        u: &Self::Buf,
        s: &mut [LoraGradSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()> {
        let rows: usize = s.iter().map(|x| x.rows.len).sum();
        // dB = dyᵀ·u, du = dy·B, dA = duᵀ·x, dx += du·A.
        self.add(4 * rows * shape.rank * (shape.d_in + shape.d_out));
        let mut inner: Vec<LoraGradSeg<'_, B>> = s
            .iter_mut()
            .map(|x| LoraGradSeg {
                rows: x.rows,
                a: x.a,
                b: x.b,
                da: &mut *x.da,
                db: &mut *x.db,
            })
            .collect();
        self.inner.lora_backward(dx, dy, x, u, &mut inner, shape)
    }
    fn attention_forward(
        &self,
        o: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        seqs: &[Span],
        shape: AttnShape,
    ) -> Result<()> {
        self.add(attention_products(seqs, shape));
        self.inner.attention_forward(o, lse, q, k, v, seqs, shape)
    }
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        do_: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        o: &Self::Buf,
        lse: &Self::Buf,
        seqs: &[Span],
        shape: AttnShape,
    ) -> Result<()> {
        // Recompute S = QKᵀ, then dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q: five products.
        self.add(attention_products(seqs, shape) / 2 * 5);
        self.inner
            .attention_backward(dq, dk, dv, do_, q, k, v, o, lse, seqs, shape)
    }
    fn layer_norm_forward(
        &self,
        y: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.inner
            .layer_norm_forward(y, mean, rstd, x, gamma, beta, rows, dim, eps)
    }
    fn layer_norm_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        self.inner
            .layer_norm_backward(dx, dy, x, gamma, mean, rstd, rows, dim)
    }
    fn rms_norm_forward(
        &self,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.inner
            .rms_norm_forward(y, rstd, x, gamma, rows, dim, eps)
    }
    fn rms_norm_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        self.inner
            .rms_norm_backward(dx, dy, x, gamma, rstd, rows, dim)
    }
    fn activation_forward(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        self.inner.activation_forward(y, x, act, len)
    }
    fn activation_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        self.inner.activation_backward(dx, dy, x, act, len)
    }
    fn swiglu_forward(
        &self,
        y: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<()> {
        self.inner.swiglu_forward(y, gate, up, len)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dy: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<()> {
        self.inner.swiglu_backward(dgate, dup, dy, gate, up, len)
    }
    fn gated_forward(
        &self,
        y: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        self.inner.gated_forward(y, gate, up, act, len)
    }
    fn gated_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dy: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()> {
        self.inner
            .gated_backward(dgate, dup, dy, gate, up, act, len)
    }
    fn scale(&self, x: &mut Self::Buf, alpha: f32, len: usize) -> Result<()> {
        self.inner.scale(x, alpha, len)
    }
    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) -> Result<()> {
        self.inner
            .rope(x, positions, heads, head_dim, theta, inverse)
    }
    fn segment_mean(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        spans: &[Span],
        dim: usize,
    ) -> Result<()> {
        self.inner.segment_mean(out, x, spans, dim)
    }
    fn segment_mean_backward(
        &self,
        dx: &mut Self::Buf,
        dout: &Self::Buf,
        spans: &[Span],
        dim: usize,
    ) -> Result<()> {
        self.inner.segment_mean_backward(dx, dout, spans, dim)
    }
    fn cross_entropy(
        &self,
        dlogits: &mut Self::Buf,
        logits: &Self::Buf,
        labels: &[i64],
        weights: &[f32],
        classes: usize,
    ) -> Result<Vec<f32>> {
        self.inner
            .cross_entropy(dlogits, logits, labels, weights, classes)
    }
    fn adamw_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamW,
        step: u64,
    ) -> Result<()> {
        self.inner.adamw_step(param, grad, m, v, hp, step)
    }
}
