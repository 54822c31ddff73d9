//! The compute backend: a small set of tensor operations with one implementation per device.
//!
//! Everything above this layer (model, executor, algorithms) is written against [`Backend`] and
//! never touches memory layout details beyond "row-major, f32, packed rows". The CPU
//! implementation ([`cpu::Cpu`]) is also the numerical reference for any accelerator backend.
//!
//! Conventions shared by every op:
//! - Activations are packed row-major matrices `[rows, dim]`: the tokens of all sequences of a
//!   batch one after another, no padding. A sequence is a [`Span`] of rows.
//! - Linear weights are stored as in PyTorch, `[out_features, in_features]`.
//! - Small metadata (token ids, positions, spans) is passed as host slices; a device backend
//!   uploads it as part of the launch.
//! - Ops that write an output overwrite it unless their doc says they accumulate.

pub(crate) mod checks;
pub mod cpu;
pub mod cuda;
pub mod quant;

use crate::error::Result;

/// A contiguous run of rows in a packed activation buffer (one sequence, or one adapter segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    /// First row.
    pub start: usize,
    /// Number of rows.
    pub len: usize,
}

impl Span {
    /// One past the last row.
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Shape of a multi-head attention over packed sequences.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` for multi-head, fewer for grouped-query attention).
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Causal (decoder) or bidirectional (encoder) attention.
    pub causal: bool,
    /// Sliding-window attention (with `causal`): a query sees only the `window` keys ending at
    /// its own position (Gemma 3's local layers). `None`: every key `causal` allows.
    pub window: Option<usize>,
    /// Multiplier of the scores, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// bf16 operands, as the tensor-core kernels compute (set for models whose frozen weights
    /// are bf16): Q, K, V and dO are rounded to bf16, and so are P before `P V` and `Pᵀ dO` and
    /// dS before `dS K` and `dSᵀ Q`; scores, softmax statistics, D and every sum stay f32. Both
    /// backends round at these points, so they stay twins.
    pub bf16: bool,
}

/// Element-wise activation functions of MLP blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the exact erf form (BERT's `gelu`).
    GeluErf,
    /// GELU with the tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// SiLU, x * sigmoid(x).
    Silu,
    /// ReLU.
    Relu,
}

/// One adapter segment of a grouped LoRA product: rows `rows` of the packed input use the adapter
/// pair `(a, b)` with `a: [rank, in]` and `b: [out, rank]`.
pub struct LoraSeg<'a, B: ?Sized + Backend> {
    /// The rows of the packed batch this adapter applies to.
    pub rows: Span,
    /// Down projection `[rank, in]`.
    pub a: &'a B::Buf,
    /// Up projection `[out, rank]`.
    pub b: &'a B::Buf,
}

/// Gradient targets of one adapter segment in a grouped LoRA backward.
pub struct LoraGradSeg<'a, B: ?Sized + Backend> {
    /// The rows of the packed batch this adapter applied to.
    pub rows: Span,
    /// Down projection `[rank, in]`.
    pub a: &'a B::Buf,
    /// Up projection `[out, rank]`.
    pub b: &'a B::Buf,
    /// Gradient of `a`, accumulated into.
    pub da: &'a mut B::Buf,
    /// Gradient of `b`, accumulated into.
    pub db: &'a mut B::Buf,
}

/// Shape of a LoRA-adapted projection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraShape {
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Adapter rank.
    pub rank: usize,
    /// `alpha / rank`.
    pub scale: f32,
}

/// AdamW hyper-parameters for one update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// How a backend stores frozen base weights ([`Backend::weight`]).
///
/// Only the storage of the frozen `[out, in]` matrices of the transformer blocks changes:
/// activations, adapters, gradients and optimizer state stay f32, and products accumulate in
/// f32. In bf16 the activations entering a base product are rounded to bf16 as well (what
/// bf16 matrix units do), so a bf16 product differs from the f32 one by about 2^-8 relative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightPrecision {
    /// 4 bytes a weight, f32 products.
    #[default]
    F32,
    /// 2 bytes a weight (rounded to nearest even at load), bf16 x bf16 products.
    Bf16,
}

impl WeightPrecision {
    /// The configuration name: `"f32"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            WeightPrecision::F32 => "f32",
            WeightPrecision::Bf16 => "bf16",
        }
    }
    /// Bytes one stored weight takes.
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightPrecision::F32 => 4,
            WeightPrecision::Bf16 => 2,
        }
    }
}

impl std::fmt::Display for WeightPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightPrecision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightPrecision::F32),
            "bf16" => Ok(WeightPrecision::Bf16),
            other => Err(crate::error::Error::Input(format!(
                "unknown precision `{other}`; valid: f32, bf16"
            ))),
        }
    }
}

/// The operations a device must provide to run the executor.
///
/// Buffers are flat `f32` arrays owned by the backend. Shapes are passed explicitly; an op may
/// assume the buffers are at least as large as its shape says (a debug assertion checks it on the
/// CPU) and must not read or write beyond that.
pub trait Backend: Send + Sync {
    /// A device buffer of `f32`.
    type Buf: Send + Sync;

    /// A frozen weight matrix, stored in the layout and precision the backend's products want
    /// (see [`Backend::weight`]). It is only read by [`Backend::linear`] and
    /// [`Backend::linear_backward_input`].
    type Weight: Send + Sync;

    /// A short name for logs ("cpu", "cuda").
    fn name(&self) -> &'static str;
    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer of `len` elements whose contents are unspecified (stale values of an earlier
    /// buffer, or zeros): for outputs the next op overwrites entirely. Backends may hand back a
    /// buffer given to [`Backend::recycle`], which saves the zero fill and the page faults of a
    /// fresh allocation.
    fn scratch(&self, len: usize) -> Result<Self::Buf> {
        self.zeros(len)
    }
    /// Gives a buffer that is no longer needed back for [`Backend::scratch`] to reuse; backends
    /// without a pool (and a full pool) just free it.
    fn recycle(&self, buf: Self::Buf) {
        drop(buf);
    }
    /// A buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// A host copy of the buffer.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Number of elements.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Sets every element to zero.
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()>;

    /// Work queues that may run concurrently (CUDA streams): `n` handles on the same device
    /// whose work starts after everything issued on `self` so far. Lanes must not write buffers
    /// that other lanes or `self` use until [`Backend::join`]. The CPU runs everything in issue
    /// order, so its lanes are copies of itself.
    fn fork(&self, n: usize) -> Result<Vec<Self>>
    where
        Self: Sized;
    /// Makes work issued on `self` after this call wait for everything issued on `lanes`.
    fn join(&self, lanes: &[Self]) -> Result<()>
    where
        Self: Sized;
    /// Whether lanes from [`Backend::fork`] can actually overlap on the device.
    fn concurrent_lanes(&self) -> bool {
        false
    }

    /// `c[m,n] (+)= op(a) · op(b)` with `op(a)` `[m,k]` (stored `[k,m]` when `trans_a`) and
    /// `op(b)` `[k,n]` (stored `[n,k]` when `trans_b`). Accumulates when `accumulate`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// A frozen weight from `data`, a row-major `[rows, cols]` = `[out, in]` matrix (PyTorch's
    /// `Linear.weight`), stored in `precision`. With [`WeightPrecision::Bf16`] the values are
    /// rounded to bf16 (nearest even) once, here.
    fn weight(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        precision: WeightPrecision,
    ) -> Result<Self::Weight>;
    /// A frozen weight kept in GGML blocks as a GGUF file stores them: `blocks` holds `rows` rows
    /// of `cols` values of type `ty` (`[out, in]`, each row whole blocks). Products decode it
    /// tile by tile; no f32 copy of the whole matrix is kept. A backend without a decoder for
    /// `ty` answers with an error that says so.
    fn weight_quantized(
        &self,
        ty: quant::GgmlType,
        blocks: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<Self::Weight> {
        let _ = (blocks, rows, cols);
        Err(crate::error::Error::Backend(format!(
            "this backend cannot keep weights quantized ({ty}); use the CPU backend for GGUF models"
        )))
    }
    /// The GGML type of a weight kept in blocks ([`Backend::weight_quantized`]), `None` for a
    /// weight stored in f32 or bf16.
    fn weight_ggml_type(&self, w: &Self::Weight) -> Option<quant::GgmlType> {
        let _ = w;
        None
    }
    /// `(rows, cols)` = `(out, in)` of a weight.
    fn weight_shape(&self, w: &Self::Weight) -> (usize, usize);
    /// The precision a weight is stored in.
    fn weight_precision(&self, w: &Self::Weight) -> WeightPrecision;
    /// Bytes of memory the weight holds (layout padding included).
    fn weight_bytes(&self, w: &Self::Weight) -> usize;
    /// The stored values as a host `[rows, cols]` f32 matrix (after bf16 rounding when stored in
    /// bf16): for tests and inspection, not for the hot path.
    fn weight_to_host(&self, w: &Self::Weight) -> Result<Vec<f32>>;
    /// `y[m,out] (+)= x[m,in] · Wᵀ` for a weight `W: [out, in]`; accumulates when `accumulate`.
    /// In bf16, `x` is rounded to bf16 for the product; the sum is f32.
    fn linear(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// `y[m,out] = x[m,in] · Wᵀ + bias` (the bias broadcast over the rows): by default
    /// [`Backend::linear`] then [`Backend::add_bias`]; a backend may fuse the two (the CPU's
    /// AMX path starts its accumulator tiles from the bias).
    fn linear_bias(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: &Self::Buf,
        m: usize,
    ) -> Result<()> {
        self.linear(y, x, w, m, false)?;
        let (out, _) = self.weight_shape(w);
        self.add_bias(y, bias, m, out)
    }
    /// `dx[m,in] (+)= dy[m,out] · W` (the input gradient of [`Backend::linear`]); accumulates
    /// when `accumulate`. In bf16, `dy` is rounded to bf16 for the product; the sum is f32.
    fn linear_backward_input(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// `y[r,:] += bias` for every row.
    fn add_bias(&self, y: &mut Self::Buf, bias: &Self::Buf, rows: usize, dim: usize) -> Result<()>;
    /// `y += x` element-wise over the first `len` elements.
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf, len: usize) -> Result<()>;
    /// `y = x` over the first `len` elements.
    fn copy(&self, y: &mut Self::Buf, x: &Self::Buf, len: usize) -> Result<()>;
    /// `dst[i,:] = src[rows[i],:]`.
    fn gather_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: &[u32],
        dim: usize,
    ) -> Result<()>;
    /// `dst[rows[i],:] = src[i,:]`.
    fn scatter_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: &[u32],
        dim: usize,
    ) -> Result<()>;
    /// `out[i,:] (+)= table[ids[i],:]`; accumulates when `accumulate`.
    fn embedding(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        ids: &[u32],
        dim: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// Grouped LoRA forward: for each segment, `y[rows] += scale · (x[rows] aᵀ) bᵀ`. Writes the
    /// rank-sized intermediate `x[rows] aᵀ` into `u` (`[rows, rank]`, same row indexing as `x`)
    /// for the backward pass.
    fn lora_forward(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        u: &mut Self::Buf,
        segs: &[LoraSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()>;
    /// Grouped LoRA backward: given `dy`, the saved input `x` and intermediate `u`, accumulates
    /// `da`, `db` per segment and adds the input gradient into `dx`.
    fn lora_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        u: &Self::Buf,
        segs: &mut [LoraGradSeg<'_, Self>],
        shape: LoraShape,
    ) -> Result<()>;

    /// Attention forward over packed sequences. `q: [rows, heads·hd]`, `k, v: [rows,
    /// kv_heads·hd]`, writes `o: [rows, heads·hd]` and the log-sum-exp of the scaled scores
    /// `lse: [rows, heads]`. Tokens attend only within their own sequence.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        o: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        seqs: &[Span],
        shape: AttnShape,
    ) -> Result<()>;
    /// Attention backward: writes (overwrites) `dq`, `dk`, `dv` from `do_`, recomputing the
    /// probabilities from `lse`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// LayerNorm forward: writes `y`, and per row `mean` and `rstd` for the backward.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// LayerNorm backward with respect to the input (the affine parameters are frozen).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// RMSNorm forward: writes `y` and per-row `rstd`.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_forward(
        &self,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// RMSNorm backward with respect to the input.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    ) -> Result<()>;

    /// `y = act(x)` over `len` elements.
    fn activation_forward(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()>;
    /// `dx = act'(x) · dy` over `len` elements (in place on `dy` is not allowed).
    fn activation_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()>;
    /// SwiGLU: `y = silu(gate) · up`.
    fn swiglu_forward(
        &self,
        y: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<()>;
    /// SwiGLU backward: writes `dgate`, `dup`.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dy: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
    ) -> Result<()>;

    /// Gated linear unit with any activation: `y = act(gate) · up` (GeGLU with
    /// [`Activation::GeluTanh`], Gemma's MLP).
    fn gated_forward(
        &self,
        y: &mut Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()>;
    /// Backward of [`Backend::gated_forward`]: `dgate = dy · up · act'(gate)`,
    /// `dup = dy · act(gate)`.
    #[allow(clippy::too_many_arguments)]
    fn gated_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dy: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
        act: Activation,
        len: usize,
    ) -> Result<()>;
    /// `x *= alpha` over `len` elements (Gemma's embedding scale).
    fn scale(&self, x: &mut Self::Buf, alpha: f32, len: usize) -> Result<()>;

    /// Rotary position embedding, in place, on `x: [rows, heads·head_dim]` with the half-split
    /// ("rotate_half") pairing `(i, i + head_dim/2)`. `positions[r]` is row r's position.
    /// `inverse` rotates by the negative angle, which is the backward of the forward rotation.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) -> Result<()>;

    /// Mean of the rows of each span: `out[i,:] = mean(x[span_i,:])`.
    fn segment_mean(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        spans: &[Span],
        dim: usize,
    ) -> Result<()>;
    /// Backward of [`Backend::segment_mean`]: `dx[span_i,:] += dout[i,:] / len_i`.
    fn segment_mean_backward(
        &self,
        dx: &mut Self::Buf,
        dout: &Self::Buf,
        spans: &[Span],
        dim: usize,
    ) -> Result<()>;

    /// Softmax cross-entropy per row. `labels[r] < 0` marks an ignored row (loss 0, gradient 0).
    /// Writes `dlogits[r,:] = weights[r] · (softmax(logits[r,:]) − onehot(labels[r]))` and returns
    /// the unweighted per-row losses.
    fn cross_entropy(
        &self,
        dlogits: &mut Self::Buf,
        logits: &Self::Buf,
        labels: &[i64],
        weights: &[f32],
        classes: usize,
    ) -> Result<Vec<f32>>;

    /// One AdamW step (`step` counts from 1) on `param` with moments `m`, `v`.
    fn adamw_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamW,
        step: u64,
    ) -> Result<()>;
}
