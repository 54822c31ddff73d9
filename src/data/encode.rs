//! Tokenizing a whole data set with the model's tokenizer.

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::model::tokenizer::{preview, LongText, Tokenizer};

/// Token ids (special tokens included) of every example of `ds`, at most `max_len` each; texts
/// longer than that are truncated ([`LongText::Truncate`]). Returns the ids and the number of
/// truncated texts, which a run should report: heavy truncation changes the task.
pub fn encode_dataset(
    ds: &Dataset,
    tok: &Tokenizer,
    max_len: usize,
) -> Result<(Vec<Vec<u32>>, usize)> {
    if max_len == 0 {
        return Err(Error::Input(
            "maximum sequence length must be at least 1".into(),
        ));
    }
    let mut ids = Vec::with_capacity(ds.len());
    let mut truncated = 0;
    for (i, text) in ds.texts.iter().enumerate() {
        let enc = tok
            .encode(text, max_len, LongText::Truncate)
            .map_err(|e| Error::Input(format!("example {i} ({:?}): {e}", preview(text))))?;
        truncated += usize::from(enc.truncated);
        ids.push(enc.ids);
    }
    Ok((ids, truncated))
}
