//! Run checkpoints: every adapter set and optimizer moment of the algorithm, its step counters,
//! the random stream, and the accounting so far, written atomically so a killed run resumes
//! exactly where its last checkpoint left it.

use crate::algorithms::Algorithm;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Everything but the tensors.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Rounds completed.
    pub round: usize,
    /// Random stream state after that round.
    pub rng_state: u64,
    /// Optimizer step counters by name.
    pub counters: Vec<(String, u64)>,
    /// Per-client accumulated (bytes up, bytes down, FLOPs).
    pub client_totals: Vec<(f64, f64, f64)>,
    /// Simulated seconds so far.
    pub simulated_seconds: f64,
    /// Wall seconds so far (of the runs before the resume).
    pub wall_seconds: f64,
    /// Metrics lines written so far.
    pub metrics_lines: usize,
    /// Rejected client steps so far.
    pub rejected: usize,
}

/// Saves the algorithm's state and `meta` into `dir` (state.safetensors + meta.json).
pub fn save<B: Backend>(
    dir: &Path,
    be: &B,
    algo: &mut dyn Algorithm<B>,
    meta: &Meta,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    for (name, set) in algo.state() {
        for (i, t) in set.tensors().into_iter().enumerate() {
            names.push(format!("{name}/{i}"));
            data.push(bytemuck::cast_slice::<f32, u8>(&be.download(t)?).to_vec());
        }
    }
    let views = names
        .iter()
        .zip(&data)
        .map(|(n, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d.len() / 4], d)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Backend(format!("checkpoint: {e:?}")))?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::Backend(format!("checkpoint: {e:?}")))?;
    // Tensors first, then the metadata that points at them: a crash between the two leaves the
    // previous meta.json, which a resume detects by its round number in the tensor file name.
    write_atomic(
        &dir.join(format!("state-{}.safetensors", meta.round)),
        &bytes,
    )?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Backend(e.to_string()))?;
    write_atomic(&dir.join("meta.json"), &json)?;
    // Older tensor files are no longer referenced.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("state-") && n != format!("state-{}.safetensors", meta.round) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Loads a checkpoint from `dir` into `algo` (built from the same configuration) and returns
/// its metadata.
pub fn load<B: Backend>(dir: &Path, be: &B, algo: &mut dyn Algorithm<B>) -> Result<Meta> {
    let mp = dir.join("meta.json");
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: mp.clone(),
        reason: e.to_string(),
    })?;
    let sp = dir.join(format!("state-{}.safetensors", meta.round));
    let bytes = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
        path: sp.clone(),
        reason: format!("{e:?}"),
    })?;
    for (name, set) in algo.state() {
        for (i, t) in set.tensors_mut().into_iter().enumerate() {
            let key = format!("{name}/{i}");
            let view = st.tensor(&key).map_err(|_| Error::Checkpoint {
                path: sp.clone(),
                reason: format!(
                    "no tensor `{key}`: the checkpoint was made with another configuration"
                ),
            })?;
            if view.shape() != [be.len(t)] {
                return Err(Error::Checkpoint {
                    path: sp.clone(),
                    reason: format!(
                        "tensor `{key}` has {:?} values, expected {}",
                        view.shape(),
                        be.len(t)
                    ),
                });
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            *t = be.upload(&v)?;
        }
    }
    let counters: HashMap<String, u64> = meta.counters.iter().cloned().collect();
    for (name, c) in algo.counters() {
        *c = *counters.get(&name).ok_or_else(|| Error::Checkpoint {
            path: mp.clone(),
            reason: format!("no step counter `{name}`"),
        })?;
    }
    Ok(meta)
}

/// The step counters of `algo`, for [`Meta::counters`].
pub fn counters<B: Backend>(algo: &mut dyn Algorithm<B>) -> Vec<(String, u64)> {
    algo.counters().into_iter().map(|(n, c)| (n, *c)).collect()
}
