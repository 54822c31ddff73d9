//! Shape checks every backend applies before touching memory, with one set of messages: a bad
//! shape is the same error on the CPU and on CUDA (tests compare the texts).

use super::{AttnShape, Span};
use crate::error::{Error, Result};

/// A buffer of `have` elements must hold at least `need`.
pub(crate) fn buf_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::Backend(format!(
            "{what}: buffer holds {have} elements, op needs {need}"
        )));
    }
    Ok(())
}

/// One past the last row any span covers.
pub(crate) fn spans_rows(spans: &[Span]) -> usize {
    spans.iter().map(Span::end).max().unwrap_or(0)
}

/// Segments of a grouped op: sorted by start, disjoint, and within a buffer of `have` elements
/// holding rows of width `dim`.
pub(crate) fn segments(spans: &[Span], have: usize, dim: usize) -> Result<()> {
    let mut consumed = 0usize;
    for s in spans {
        if s.start < consumed {
            return Err(Error::Backend(format!(
                "segments must be sorted and disjoint (row {} after row {consumed})",
                s.start
            )));
        }
        if have < s.end() * dim {
            return Err(Error::Backend(format!(
                "segment rows {}..{} exceed the buffer",
                s.start,
                s.end()
            )));
        }
        consumed = s.end();
    }
    Ok(())
}

/// Attention over packed sequences: heads a multiple of kv heads, sequences disjoint (in any
/// order), and the lengths of the q/o-like, k/v-like and lse buffers. Returns the rows the
/// sequences cover.
pub(crate) fn attention(
    s: AttnShape,
    seqs: &[Span],
    q_like: &[usize],
    kv_like: &[usize],
    lse: usize,
) -> Result<usize> {
    if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        return Err(Error::Backend(format!(
            "attention heads {} not a multiple of kv heads {}",
            s.heads, s.kv_heads
        )));
    }
    let mut sorted: Vec<Span> = seqs.to_vec();
    sorted.sort_by_key(|s| s.start);
    if let Some(w) = sorted.windows(2).find(|w| w[0].end() > w[1].start) {
        return Err(Error::Backend(format!(
            "attention sequences overlap: rows {}..{} and {}..{}",
            w[0].start,
            w[0].end(),
            w[1].start,
            w[1].end()
        )));
    }
    let rows = spans_rows(seqs);
    for &l in q_like {
        buf_len("attention q/o", l, rows * s.heads * s.head_dim)?;
    }
    for &l in kv_like {
        buf_len("attention k/v", l, rows * s.kv_heads * s.head_dim)?;
    }
    buf_len("attention lse", lse, rows * s.heads)?;
    Ok(rows)
}
