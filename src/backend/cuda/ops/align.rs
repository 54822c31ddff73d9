//! Host side of kernels/align.cu: gradient-projection alignment (spec flexp-sfl.md section 2)
//! for all clients of a step in a few launches, instead of downloading every client's adapter
//! gradients and projecting them on the host one group at a time.
//!
//! The results follow [`crate::algorithms::flat`] (`dot`, `project_conflict`, `projected_mean`):
//! inner products in f64, each update step rounded to f32 like `flat::axpy`. The only difference
//! is the order of the f64 summation (a tree instead of a left fold), a relative difference of
//! order 1e-16 in the inner products. Everything is deterministic: no atomics, fixed orders.

use super::super::{check_len, i32_of, CudaBackend, CudaBuf, DeviceMem, KArg, LaunchCfg};
use crate::backend::Span;
use crate::error::{Error, Result};

/// Threads per block (`ALIGN_THREADS`).
const THREADS: u32 = 256;
/// Warps per block (`ALIGN_WARPS`): segments per block of the reduce kernel.
const WARPS: usize = THREADS as usize / 32;
/// Elements per chunk of the inner-product pass: 16 per thread, enough work per block to hide
/// the block's fixed costs while giving tens of thousands of blocks at realistic sizes.
const CHUNK: usize = 4096;
/// Upper bound on the blocks of a grid-stride launch (a few waves of an H100).
const MAX_BLOCKS: usize = 4096;

/// The chunk table of a set of segments, and where each segment's chunks start.
struct Plan {
    /// `(segment, start in g, start in a, len)` per chunk, `len <= CHUNK`.
    chunks: Vec<[i32; 4]>,
    /// `nseg + 1` offsets into `chunks`.
    seg_first: Vec<i32>,
}

impl Plan {
    /// `segs` yields `(start in g, start in a, len)` per segment.
    fn new(segs: impl Iterator<Item = (usize, usize, usize)>) -> Result<Plan> {
        let mut chunks = Vec::new();
        let mut seg_first = vec![0i32];
        for (s, (g0, a0, len)) in segs.enumerate() {
            let s = i32_of("align segments", s)?;
            for off in (0..len).step_by(CHUNK) {
                chunks.push([
                    s,
                    i32_of("align segment start", g0 + off)?,
                    i32_of("align segment start", a0 + off)?,
                    (len - off).min(CHUNK) as i32,
                ]);
            }
            seg_first.push(i32_of("align chunks", chunks.len())?);
        }
        Ok(Plan { chunks, seg_first })
    }

    fn nseg(&self) -> usize {
        self.seg_first.len() - 1
    }
}

/// The uploaded chunk table and the per-segment records `(<g,a>, <a,a>, coefficient)` that
/// [`CudaBackend::segment_records`] computed from it.
struct Records {
    chunks: DeviceMem,
    nchunks: usize,
    seg: DeviceMem,
}

fn grid(blocks: usize) -> LaunchCfg {
    LaunchCfg::linear(blocks.clamp(1, MAX_BLOCKS) as u32, THREADS)
}

/// Segments must lie inside both buffers and must not overlap: the apply kernel updates each
/// segment independently, which is the host's sequential result only for disjoint segments.
fn check_segments(g: &CudaBuf, a: &CudaBuf, segments: &[Span]) -> Result<()> {
    let end = segments.iter().map(Span::end).max().unwrap_or(0);
    check_len("align g", g, end)?;
    check_len("align a", a, end)?;
    let mut sorted: Vec<Span> = segments.iter().copied().filter(|s| s.len > 0).collect();
    sorted.sort_by_key(|s| s.start);
    if let Some(w) = sorted.windows(2).find(|w| w[0].end() > w[1].start) {
        return Err(Error::Backend(format!(
            "align segments overlap: elements {}..{} and {}..{}",
            w[0].start,
            w[0].end(),
            w[1].start,
            w[1].end()
        )));
    }
    Ok(())
}

/// Gradient-projection alignment on the device. Segments are [`Span`]s of *elements* of flat
/// gradient vectors (one per client and group of `proj_granularity`), so one call serves every
/// client of a step.
impl CudaBackend {
    /// Runs the two inner-product passes over `plan` and returns the per-segment records.
    fn segment_records(&self, g: &CudaBuf, a: &CudaBuf, plan: &Plan) -> Result<Records> {
        let nseg = plan.nseg();
        let nchunks = plan.chunks.len();
        // The kernels trust the chunk table: every chunk must lie inside both buffers.
        for &[_, g0, a0, len] in &plan.chunks {
            check_len("align g", g, g0 as usize + len as usize)?;
            check_len("align a", a, a0 as usize + len as usize)?;
        }
        let chunks = self.upload_pod(&plan.chunks)?;
        let seg_first = self.upload_pod(&plan.seg_first)?;
        let partials = self.alloc_bytes(nchunks * 2 * 8)?;
        let seg = self.alloc_bytes(nseg * 3 * 8)?;
        let nchunks_i = i32_of("align chunks", nchunks)?;
        if nchunks > 0 {
            // SAFETY: align_seg_partials(g, a, chunks, nchunks, partials) reads g and a inside each
            // chunk (checked against both lengths above) and writes two f64 per chunk into
            // `partials` (nchunks·16 bytes).
            unsafe {
                self.launch(
                    "align_seg_partials",
                    grid(nchunks),
                    &[
                        g.arg(),
                        a.arg(),
                        chunks.arg(),
                        KArg::I32(nchunks_i),
                        partials.arg(),
                    ],
                )
            }?;
        }
        if nseg > 0 {
            // SAFETY: align_seg_reduce(partials, seg_first, nseg, seg) reads the partials of each
            // segment's chunks (`seg_first`, nseg+1 offsets into nchunks) and writes three f64
            // per segment into `seg` (nseg·24 bytes).
            unsafe {
                self.launch(
                    "align_seg_reduce",
                    grid(nseg.div_ceil(WARPS)),
                    &[
                        partials.arg(),
                        seg_first.arg(),
                        KArg::I32(i32_of("align segments", nseg)?),
                        seg.arg(),
                    ],
                )
            }?;
        }
        Ok(Records {
            chunks,
            nchunks,
            seg,
        })
    }

    /// `(<g, a>, ||a||²)` over each segment, accumulated in f64 (what `flat::dot` computes for
    /// the segment's slices, up to the summation order).
    pub fn align_dots(
        &self,
        g: &CudaBuf,
        a: &CudaBuf,
        segments: &[Span],
    ) -> Result<Vec<(f64, f64)>> {
        check_segments(g, a, segments)?;
        if segments.is_empty() {
            return Ok(Vec::new());
        }
        let plan = Plan::new(segments.iter().map(|s| (s.start, s.start, s.len)))?;
        let rec = self.segment_records(g, a, &plan)?;
        let mut raw = vec![0f64; segments.len() * 3];
        self.read_into(&mut raw, &rec.seg)?;
        Ok(raw.chunks(3).map(|r| (r[0], r[1])).collect())
    }

    /// The client rule of `align = proj` for many clients at once: for every segment `s`, if
    /// `<g_s, a_s> < 0` (and `a_s` is not zero), `g_s -= (<g_s, a_s> / ||a_s||²) · a_s`; then
    /// `g_s += lambda · a_s`. `g` holds the clients' CE gradients and `a` their alignment
    /// gradients, at the same offsets. Equal to `flat::project_conflict` per segment followed by
    /// `flat::axpy(g, lambda, a)` over the segments; elements outside every segment are left
    /// alone (the groups of `flat::groups` cover a client's whole vector). Segments must not
    /// overlap.
    pub fn align_project(
        &self,
        g: &mut CudaBuf,
        a: &CudaBuf,
        segments: &[Span],
        lambda: f32,
    ) -> Result<()> {
        check_segments(g, a, segments)?;
        let plan = Plan::new(segments.iter().map(|s| (s.start, s.start, s.len)))?;
        if plan.chunks.is_empty() {
            return Ok(());
        }
        let rec = self.segment_records(g, a, &plan)?;
        // SAFETY: align_seg_apply(g, a, chunks, nchunks, seg, lambda) updates g and reads a inside
        // each chunk (checked in `segment_records`) and reads the three f64 of its segment.
        unsafe {
            self.launch(
                "align_seg_apply",
                grid(rec.nchunks),
                &[
                    g.arg(),
                    a.arg(),
                    rec.chunks.arg(),
                    KArg::I32(rec.nchunks as i32),
                    rec.seg.arg(),
                    KArg::F32(lambda),
                ],
            )
        }
    }

    /// Checks of the server-rule ops on `grads: [k, n]` and `out: [n]`.
    fn check_rows(what: &str, grads: &CudaBuf, k: usize, n: usize, out: &CudaBuf) -> Result<()> {
        if k == 0 && n > 0 {
            return Err(Error::Backend(format!("{what} of zero gradients")));
        }
        let kn = k
            .checked_mul(n)
            .ok_or_else(|| Error::Backend(format!("{what}: k·n overflows")))?;
        check_len(&format!("{what} grads"), grads, kn)?;
        check_len(&format!("{what} out"), out, n)?;
        // k and n reach the kernels as ints; with k·n an int, both are.
        i32_of(&format!("{what} k·n"), kn)?;
        Ok(())
    }

    fn launch_mean_rows(&self, grads: &CudaBuf, k: usize, n: usize, out: &CudaBuf) -> Result<()> {
        Self::check_rows("mean_rows", grads, k, n, out)?;
        // SAFETY: align_mean_rows(grads, k, n, out) reads grads[0, k·n) and writes out[0, n), both
        // checked just above.
        unsafe {
            self.launch(
                "align_mean_rows",
                grid(n.div_ceil(THREADS as usize)),
                &[
                    grads.arg(),
                    KArg::I32(k as i32),
                    KArg::I32(n as i32),
                    out.arg(),
                ],
            )
        }
    }

    /// `out = (1/k) Σ_r grads[r, :]` over `k` gradients stacked as `grads: [k, n]`, summed in f64
    /// in row order (`flat::weighted_sum` with equal weights, bit for bit): `server_agg = mean`.
    pub fn mean_rows(&self, grads: &CudaBuf, k: usize, n: usize, out: &mut CudaBuf) -> Result<()> {
        Self::check_rows("mean_rows", grads, k, n, out)?;
        if n == 0 {
            return Ok(());
        }
        self.launch_mean_rows(grads, k, n, out)
    }

    /// The server rule `server_agg = proj` (`flat::projected_mean`): with `m` the mean of the
    /// `k` gradients stacked as `grads: [k, n]`, every row with `<g_r, m> < 0` is replaced by its
    /// projection on the plane normal to `m`, and `out` receives the mean of the resulting rows.
    /// `grads` is not modified.
    pub fn projected_mean(
        &self,
        grads: &CudaBuf,
        k: usize,
        n: usize,
        out: &mut CudaBuf,
    ) -> Result<()> {
        Self::check_rows("projected_mean", grads, k, n, out)?;
        if n == 0 {
            return Ok(());
        }
        let m_mem = self.alloc_bytes(n * 4)?;
        let m = CudaBuf { mem: m_mem, len: n };
        self.launch_mean_rows(grads, k, n, &m)?;
        let plan = Plan::new((0..k).map(|r| (r * n, 0, n)))?;
        let rec = self.segment_records(grads, &m, &plan)?;
        // SAFETY: align_proj_mean(grads, m, seg, k, n, out) reads grads[0, k·n) (checked in
        // `check_rows`), m[0, n) (allocated with n), the 3·k f64 records of the k row segments
        // and writes out[0, n) (checked in `check_rows`).
        unsafe {
            self.launch(
                "align_proj_mean",
                grid(n.div_ceil(THREADS as usize)),
                &[
                    grads.arg(),
                    m.arg(),
                    rec.seg.arg(),
                    KArg::I32(k as i32),
                    KArg::I32(n as i32),
                    out.arg(),
                ],
            )
        }
    }
}
