//! A run's configuration from Python: a path to a TOML file, or a dict with the TOML file's keys
//! (nested dicts or dotted keys), converted value by value.

use crate::errors::{raise, OrRaise};
use flexp::run::{RawConfig, RunConfig};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// The resolved configuration and its TOML text (what the run folder records).
pub fn resolve(obj: &Bound<'_, PyAny>) -> PyResult<(RunConfig, String)> {
    let raw = raw(obj)?;
    let cfg = raw.resolve().or_raise()?;
    Ok((cfg, raw.resolved_toml()))
}

/// The unresolved configuration of `obj`: a dict, or a path (str or `os.PathLike`) to a TOML
/// file.
pub fn raw(obj: &Bound<'_, PyAny>) -> PyResult<RawConfig> {
    let py = obj.py();
    if let Ok(d) = obj.cast::<PyDict>() {
        let table = table(d, "")?;
        return Ok(RawConfig::from_table(&table));
    }
    match path(obj) {
        Some(p) => RawConfig::from_file(&p).or_raise(),
        None => Err(raise(
            py,
            "ConfigTypeError",
            format!(
                "config: expected a dict or a path to a TOML file, got {}",
                type_name(obj)
            ),
        )),
    }
}

/// `obj` as a filesystem path, when it is a str or an `os.PathLike`.
pub fn path(obj: &Bound<'_, PyAny>) -> Option<std::path::PathBuf> {
    if let Ok(s) = obj.extract::<String>() {
        return Some(s.into());
    }
    let os = obj.py().import("os").ok()?;
    let p = os.call_method1("fspath", (obj,)).ok()?;
    p.extract::<String>().ok().map(Into::into)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn table(d: &Bound<'_, PyDict>, at: &str) -> PyResult<toml::Table> {
    let mut t = toml::Table::new();
    for (k, v) in d.iter() {
        let Ok(key) = k.extract::<String>() else {
            return Err(raise(
                d.py(),
                "ConfigTypeError",
                format!(
                    "config{at}: keys must be strings, got {} ({})",
                    k.repr().map(|r| r.to_string()).unwrap_or_default(),
                    type_name(&k)
                ),
            ));
        };
        let here = format!("{at}.{key}");
        t.insert(key, value(&v, &here)?);
    }
    Ok(t)
}

/// A Python value as the TOML value it stands for; `TypeError` for one TOML cannot hold.
fn value(v: &Bound<'_, PyAny>, at: &str) -> PyResult<toml::Value> {
    // bool before int: Python's bool is an int.
    if v.is_instance_of::<PyBool>() {
        return Ok(toml::Value::Boolean(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        return match v.extract::<i64>() {
            Ok(i) => Ok(toml::Value::Integer(i)),
            Err(_) => Err(raise(
                v.py(),
                "ConfigTypeError",
                format!("config{at}: {v} does not fit a 64-bit integer"),
            )),
        };
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(toml::Value::String(v.extract()?));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        return Ok(toml::Value::Table(table(d, at)?));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items = v
            .try_iter()?
            .enumerate()
            .map(|(i, x)| value(&x?, &format!("{at}[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(toml::Value::Array(items));
    }
    if let Some(p) = path(v) {
        return Ok(toml::Value::String(p.display().to_string()));
    }
    Err(raise(
        v.py(),
        "ConfigTypeError",
        format!(
            "config{at}: a {} has no TOML form (use str, int, float, bool, list or dict)",
            type_name(v)
        ),
    ))
}
