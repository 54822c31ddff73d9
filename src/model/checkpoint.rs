//! Reading safetensors checkpoints: a single `model.safetensors` or a sharded set described by
//! `model.safetensors.index.json`. Tensors come out as f32 whatever their stored float type.

use crate::error::{Error, Result};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    meta: Metadata,
}

/// An opened checkpoint: every shard read and its header validated.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    by_name: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens the checkpoint in folder `dir`: `model.safetensors.index.json` when present,
    /// otherwise `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            shard_files(&index)?
                .into_iter()
                .map(|f| dir.join(f))
                .collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::Checkpoint {
                    path: dir.into(),
                    reason: "no model.safetensors or model.safetensors.index.json in this folder"
                        .into(),
                });
            }
            vec![single]
        };
        let mut shards = Vec::new();
        let mut by_name = HashMap::new();
        for path in files {
            let shard = Shard::open(&path)?;
            for name in shard.meta.tensors().keys() {
                by_name.insert(name.clone(), shards.len());
            }
            shards.push(shard);
        }
        Ok(Checkpoint {
            dir: dir.into(),
            shards,
            by_name,
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a tensor of this exact name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The first of `candidates` present in the checkpoint.
    pub fn resolve<'a>(&self, candidates: &'a [String]) -> Option<&'a str> {
        candidates
            .iter()
            .find(|c| self.contains(c))
            .map(String::as_str)
    }

    /// Reads tensor `name` as f32, checking it has `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &i = self.by_name.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            path: self.dir.clone(),
            tried: name.into(),
        })?;
        self.shards[i].read(name, shape)
    }

    /// Reads the first of `candidates` that exists, reporting the canonical `what` if none does.
    pub fn tensor_any(
        &self,
        what: &str,
        candidates: &[String],
        shape: &[usize],
    ) -> Result<Vec<f32>> {
        match self.resolve(candidates) {
            Some(name) => self.tensor(name, shape),
            None => Err(Error::MissingTensor {
                name: what.into(),
                path: self.dir.clone(),
                tried: candidates.join(", "),
            }),
        }
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let &i = self.by_name.get(name)?;
        self.shards[i].meta.info(name).map(|t| t.shape.clone())
    }
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |reason: String| Error::Checkpoint {
        path: index.into(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (name, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry `{name}` is not a file name")))?;
        if f.contains('/') || f.contains('\\') {
            return Err(bad(format!("shard name `{f}` must be a plain file name")));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    Ok(files)
}

/// What a safetensors parse error means for someone holding the file: a truncated download reads
/// as `MetadataIncompleteBuffer` or `HeaderTooSmall` otherwise.
pub(crate) fn explain_safetensors(e: &safetensors::SafeTensorError, file_bytes: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer | E::HeaderTooSmall | E::InvalidHeaderLength => format!(
            "the file ends before the data its header describes ({file_bytes} bytes): it is \
             truncated, e.g. by an interrupted download or copy; fetch it again"
        ),
        E::InvalidHeader(_) | E::InvalidHeaderStart | E::InvalidHeaderDeserialization(_) => {
            format!("not a safetensors file (its header is not valid: {e:?})")
        }
        other => format!("{other:?}"),
    }
}

/// Validates `bytes` as one safetensors file and reads every tensor as f32, as opening and
/// loading a checkpoint would (the fuzz target of the header path uses it); `path` names it in
/// errors.
pub fn read_all_tensors(bytes: Vec<u8>, path: &Path) -> Result<Vec<(String, Vec<f32>)>> {
    let shard = Shard::from_bytes(bytes, path)?;
    let mut names: Vec<(String, Vec<usize>)> = shard
        .meta
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape.clone()))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(n, shape)| shard.read(&n, &shape).map(|v| (n, v)))
        .collect()
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(bytes, path)
    }

    fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        let corrupt = |reason: String| Error::Checkpoint {
            path: path.into(),
            reason,
        };
        // `deserialize` validates the header and that every tensor's byte range lies inside the
        // file, so a truncated file fails here rather than at first use.
        let explain =
            |e: safetensors::SafeTensorError| corrupt(explain_safetensors(&e, bytes.len()));
        SafeTensors::deserialize(&bytes).map_err(explain)?;
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).map_err(explain)?;
        Ok(Shard {
            path: path.into(),
            bytes,
            data_start: 8 + header_len,
            meta,
        })
    }

    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.meta.info(name).ok_or_else(|| Error::Checkpoint {
            path: self.path.clone(),
            reason: format!("index lists `{name}` in this shard but the shard has no such tensor"),
        })?;
        if info.shape != shape {
            return Err(Error::BadTensor {
                name: name.into(),
                reason: format!(
                    "shape {:?} in {} but the config needs {:?}",
                    info.shape,
                    self.path.display(),
                    shape
                ),
            });
        }
        let (lo, hi) = info.data_offsets;
        let raw = &self.bytes[self.data_start + lo..self.data_start + hi];
        match info.dtype {
            Dtype::F32 => Ok(raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            Dtype::F16 => Ok(raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            Dtype::BF16 => Ok(raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(Error::BadTensor {
                name: name.into(),
                reason: format!("dtype {other:?} is not a float type (expected F32, F16 or BF16)"),
            }),
        }
    }
}
