//! `flexp.Model`: a checkpoint folder or a `.gguf` file, to embed, score and generate with.

use crate::errors::{raise, OrRaise};
use crate::training::to_python;
use flexp::backend::cpu::Cpu;
use flexp::embed::{EmbedOptions, Embedder};
use flexp::generate::{GenerateOptions, Generator};
use flexp::model::tokenizer::LongText;
use flexp::score::Scorer;
use numpy::PyArray2;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A loaded model. Encoders embed; decoders score and generate. Computation runs on the CPU
/// backend with the GIL released.
#[pyclass(module = "flexp._flexp", frozen)]
pub struct Model {
    path: PathBuf,
    causal: bool,
    embedder: OnceLock<Embedder<Cpu>>,
    scorer: OnceLock<Scorer<Cpu>>,
    generator: OnceLock<Generator<Cpu>>,
}

impl Model {
    /// The value of `cell`, made by `make` on first use (with the GIL released).
    fn get<'a, T: Send + Sync>(
        &'a self,
        py: Python<'_>,
        cell: &'a OnceLock<T>,
        make: impl FnOnce() -> flexp::Result<T> + Send,
    ) -> PyResult<&'a T> {
        if let Some(v) = cell.get() {
            return Ok(v);
        }
        let v = py.detach(make).or_raise()?;
        Ok(cell.get_or_init(|| v))
    }

    fn need(&self, py: Python<'_>, causal: bool, what: &str) -> PyResult<()> {
        if self.causal == causal {
            return Ok(());
        }
        let kind = if self.causal {
            "a decoder"
        } else {
            "an encoder"
        };
        Err(raise(
            py,
            "ModelError",
            format!("{}: {what}; this is {kind}", self.path.display()),
        ))
    }
}

#[pymethods]
impl Model {
    /// Loads a checkpoint folder (safetensors + config.json + tokenizer.json) or a `.gguf`
    /// file.
    #[staticmethod]
    fn load(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<Model> {
        let path = crate::config::path(path).ok_or_else(|| {
            raise(
                py,
                "ConfigTypeError",
                "Model.load: expected a path (str or os.PathLike)".into(),
            )
        })?;
        let (config, _) = py.detach(|| flexp::model::describe(&path)).or_raise()?;
        let m = Model {
            path,
            causal: config.causal,
            embedder: OnceLock::new(),
            scorer: OnceLock::new(),
            generator: OnceLock::new(),
        };
        // Load now what this kind of model does first, so a broken checkpoint fails here.
        if m.causal {
            m.get(py, &m.scorer, || Scorer::load(Cpu, &m.path))?;
        } else {
            m.get(py, &m.embedder, || Embedder::load(Cpu, &m.path))?;
        }
        Ok(m)
    }

    /// The path it was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// True for a decoder (score, generate), false for an encoder (embed).
    #[getter]
    fn is_decoder(&self) -> bool {
        self.causal
    }

    /// Sentence embeddings, one row per text (float32), pooled as the checkpoint says;
    /// `normalize` overrides the checkpoint's normalisation.
    #[pyo3(signature = (texts, normalize=None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        normalize: Option<bool>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        self.need(py, false, "embed needs an encoder")?;
        let e = self.get(py, &self.embedder, || Embedder::load(Cpu, &self.path))?;
        let opts = EmbedOptions {
            normalize,
            ..EmbedOptions::default()
        };
        let out = py.detach(|| e.embed(&texts, opts)).or_raise()?;
        if out.vectors.is_empty() {
            let dim = e.model().config.hidden;
            return Ok(PyArray2::zeros(py, [0, dim], false));
        }
        PyArray2::from_vec2(py, &out.vectors).map_err(|err| {
            raise(
                py,
                "BackendError",
                format!("embeddings of unequal length: {err}"),
            )
        })
    }

    /// Per text: its token ids, the mean log-likelihood of tokens 1..n-1, and the `top_k`
    /// largest logits at the last position as (token id, logit) pairs.
    #[pyo3(signature = (texts, top_k=10))]
    fn score(&self, py: Python<'_>, texts: Vec<String>, top_k: usize) -> PyResult<Py<PyAny>> {
        self.need(py, true, "score needs a decoder")?;
        let s = self.get(py, &self.scorer, || Scorer::load(Cpu, &self.path))?;
        let scores = py
            .detach(|| s.score(&texts, top_k, LongText::Truncate))
            .or_raise()?;
        let v: Vec<serde_json::Value> = scores
            .iter()
            .map(|s| {
                serde_json::json!({
                    "tokens": s.tokens,
                    "mean_log_likelihood": s.mean_log_likelihood,
                    "top_k": s.top_k.iter().map(|(i, l)| serde_json::json!([i, l])).collect::<Vec<_>>(),
                })
            })
            .collect();
        to_python(py, &serde_json::Value::Array(v))
    }

    /// Continues `prompt` with up to `max_new_tokens` tokens: greedy at `temperature` 0, else
    /// sampled with `seed`. Returns the generated text.
    #[pyo3(signature = (prompt, max_new_tokens=32, temperature=0.0, seed=0))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        max_new_tokens: usize,
        temperature: f32,
        seed: u64,
    ) -> PyResult<String> {
        self.need(py, true, "generate needs a decoder")?;
        let g = self.get(py, &self.generator, || Generator::load(Cpu, &self.path))?;
        let opts = GenerateOptions {
            max_new_tokens,
            temperature,
            seed,
        };
        let out = py.detach(|| g.generate(&prompt, opts)).or_raise()?;
        Ok(out.text)
    }

    fn __repr__(&self) -> String {
        format!(
            "flexp.Model({:?}, {})",
            self.path.display().to_string(),
            if self.causal { "decoder" } else { "encoder" }
        )
    }
}
