//! GGUF files and GGML block formats against llama.cpp's own Python package (`gguf` 0.19.0):
//! every type decodes bit for bit as `gguf.quants.dequantize` does, a file with every metadata
//! type and every tensor type parses as `gguf.GGUFReader` reads it, and so does the real
//! SmolLM2-135M-Instruct Q4_1 file. Fixtures: tools/torch_reference/gguf_fixtures.py.
//! Malformed files (truncated, offsets past the end, unknown types, random corruption) end in an
//! error that names the problem, never a panic.

mod common;

use common::{fixture, root};
use flexp::backend::quant::{dequantize, GgmlType, SUPPORTED};
use flexp::model::gguf::{Gguf, Value};
use flexp::rng::Rng;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The first index where `got` and `want` differ in bits, with both values.
fn first_difference(got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (a, b))| a.to_bits() != b.to_bits())
        .map(|(i, (a, b))| (i, *a, *b))
}

#[test]
fn every_type_decodes_bit_exactly_as_gguf_py() {
    for ty in SUPPORTED {
        let dir = fixture("gguf/blocks");
        let raw = read(&dir.join(format!("{}.bin", ty.name())));
        let want = f32s(&read(&dir.join(format!("{}.f32", ty.name()))));
        let mut got = vec![f32::NAN; want.len()];
        dequantize(ty, &raw, &mut got).unwrap();
        assert_eq!(first_difference(&got, &want), None, "{ty}");
        // Not a trivial case: the values vary and are not all zero.
        assert!(want.iter().any(|&v| v != 0.0) && want.iter().any(|&v| v != want[0]));
    }
}

#[test]
fn dequantize_refuses_a_partial_block() {
    let raw = read(&fixture("gguf/blocks/Q4_K.bin"));
    let mut out = vec![0.0; 256];
    let e = dequantize(GgmlType::Q4K, &raw[..143], &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Q4_K") && e.contains("143 bytes"), "{e}");
    let mut odd = vec![0.0; 100];
    assert!(dequantize(GgmlType::Q4_0, &raw[..72], &mut odd).is_err());
}

/// A metadata value as GGUFReader reports it: nested arrays flattened.
fn flat(v: &Value, out: &mut Vec<Json>) {
    let j = match v {
        Value::Array(items) => {
            items.iter().for_each(|x| flat(x, out));
            return;
        }
        Value::U8(x) => Json::from(*x),
        Value::I8(x) => Json::from(*x),
        Value::U16(x) => Json::from(*x),
        Value::I16(x) => Json::from(*x),
        Value::U32(x) => Json::from(*x),
        Value::I32(x) => Json::from(*x),
        Value::U64(x) => Json::from(*x),
        Value::I64(x) => Json::from(*x),
        Value::F32(x) => Json::from(*x as f64),
        Value::F64(x) => Json::from(*x),
        Value::Bool(x) => Json::from(*x),
        Value::Str(x) => Json::from(x.as_str()),
    };
    out.push(j);
}

/// The GGUF type names of `v` as GGUFReader lists them (`["ARRAY", "ARRAY", "INT32"]`).
fn type_names(v: &Value) -> Vec<String> {
    let mut names = vec![v.type_name().to_string()];
    if let Value::Array(items) = v {
        if let Some(x) = items.first() {
            names.extend(type_names(x));
        }
    }
    names
}

/// Compares the parsed file with the JSON that GGUFReader wrote for it.
fn assert_matches_reader(g: &Gguf, want: &Json) {
    let meta = want["metadata"].as_object().unwrap();
    assert_eq!(g.metadata.len(), meta.len(), "metadata count");
    for (key, w) in meta {
        let v = g.get(key).unwrap_or_else(|| panic!("key {key} missing"));
        let types: Vec<String> = w["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(type_names(v), types, "{key}");
        if let Some(len) = w.get("len") {
            let Value::Array(items) = v else {
                panic!("{key} is not an array")
            };
            assert_eq!(items.len() as u64, len.as_u64().unwrap(), "{key}");
            continue;
        }
        let mut got = Vec::new();
        flat(v, &mut got);
        let want_vals = match &w["value"] {
            Json::Array(a) => a.clone(),
            x => vec![x.clone()],
        };
        assert_eq!(got, want_vals, "{key}");
    }
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), tensors.len(), "tensor count");
    for (t, w) in g.tensors.iter().zip(tensors) {
        assert_eq!(t.name, w["name"].as_str().unwrap());
        assert_eq!(t.ty.name(), w["type"].as_str().unwrap(), "{}", t.name);
        let dims: Vec<u64> = w["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.offset as u64, w["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.bytes as u64, w["bytes"].as_u64().unwrap(), "{}", t.name);
    }
    assert_eq!(g.data_offset as u64, want["data_offset"].as_u64().unwrap());
}

fn all_types_path() -> PathBuf {
    fixture("gguf/all_types.gguf")
}

fn json(path: &Path) -> Json {
    serde_json::from_slice(&read(path)).unwrap()
}

#[test]
fn a_file_with_every_value_and_tensor_type_parses_as_gguf_reader_reads_it() {
    let g = Gguf::open(&all_types_path()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    assert_matches_reader(&g, &json(&fixture("gguf/all_types.json")));
    // Each tensor holds the fixture blocks of its type: decoding the tensor gives their values.
    for ty in SUPPORTED {
        let t = g.tensor(&format!("w.{}", ty.name())).unwrap();
        assert_eq!(t.ty, ty);
        let want = f32s(&read(&fixture(&format!("gguf/blocks/{}.f32", ty.name()))));
        let got = g.dequantize(t).unwrap();
        assert_eq!(first_difference(&got, &want), None, "{ty}");
        let rows = g.dequantize_rows(t, 1..2).unwrap();
        assert_eq!(rows, want[t.row_len()..2 * t.row_len()], "{ty} row 1");
        assert!(g.dequantize_rows(t, 1..t.rows() + 1).is_err());
    }
}

#[test]
fn typed_metadata_access_names_the_key_and_the_type_found() {
    let g = Gguf::open(&all_types_path()).unwrap();
    assert_eq!(g.u64("t.u16").unwrap(), Some(60000));
    assert_eq!(g.u64("t.u64").unwrap(), Some((1u64 << 63) + 5));
    assert_eq!(g.u64("t.missing").unwrap(), None);
    assert_eq!(g.f64("t.f32").unwrap(), Some(0.1f32 as f64));
    assert_eq!(g.bool("t.bool").unwrap(), Some(true));
    assert_eq!(g.str("t.str").unwrap(), Some("héllo ✓"));
    assert_eq!(g.str_array("t.arr_str").unwrap(), Some(vec!["a", "", "ñ"]));
    assert_eq!(
        g.num_array("t.arr_i32").unwrap(),
        Some(vec![-1.0, 7.0, 9.0])
    );
    let e = g.u64("t.i8").unwrap_err().to_string();
    assert!(
        e.contains("`t.i8`") && e.contains("non-negative integer") && e.contains("INT8"),
        "{e}"
    );
    let e = g.u64("t.str").unwrap_err().to_string();
    assert!(e.contains("`t.str`") && e.contains("STRING"), "{e}");
    let e = g.str_array("t.arr_f32").unwrap_err().to_string();
    assert!(e.contains("ARRAY of STRING"), "{e}");
    assert!(g.f64("t.u32").is_err() && g.bool("t.u8").is_err() && g.str("t.u8").is_err());
}

fn smollm2_path() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the SmolLM2 GGUF file is missing: run `bash tools/fetch_smollm2.sh` first"
    );
    p
}

#[test]
fn smollm2_q4_1_parses_and_decodes_as_gguf_reader_does() {
    let g = Gguf::open(&smollm2_path()).unwrap();
    let want = json(&fixture("gguf/smollm2_table.json"));
    assert_matches_reader(&g, &want);
    assert_eq!(g.str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(g.u64("llama.block_count").unwrap(), Some(30));
    for (name, values) in want["rows"].as_object().unwrap() {
        let t = g.tensor(name).unwrap();
        let values: Vec<f32> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let rows = values.len() / t.row_len();
        let got = g.dequantize_rows(t, 0..rows).unwrap();
        assert_eq!(first_difference(&got, &values), None, "{name} ({})", t.ty);
    }
}

// ---- malformed files ----

fn parse(bytes: Vec<u8>) -> Result<Gguf, String> {
    Gguf::parse(bytes, Path::new("bad.gguf")).map_err(|e| e.to_string())
}

/// A minimal GGUF v3 written by hand (independently of the parser): one UINT32 key and one
/// Q8_0 tensor of 2 rows × 32 values, alignment 32. Returns the bytes and the offsets of the
/// tensor's type id and offset fields.
fn tiny_file() -> (Vec<u8>, usize, usize) {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    let key = b"llama.block_count";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    let name = b"w";
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name);
    b.extend(2u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    let type_at = b.len();
    b.extend(8u32.to_le_bytes()); // Q8_0
    let offset_at = b.len();
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let raw = read(&fixture("gguf/blocks/Q8_0.bin"));
    b.extend(&raw[..2 * 34]);
    (b, type_at, offset_at)
}

#[test]
fn the_hand_written_file_parses() {
    let (b, _, _) = tiny_file();
    let g = parse(b).unwrap();
    assert_eq!(g.u64("llama.block_count").unwrap(), Some(2));
    let t = g.tensor("w").unwrap();
    assert_eq!(
        (t.ty, t.rows(), t.row_len(), t.bytes),
        (GgmlType::Q8_0, 2, 32, 68)
    );
    let want = f32s(&read(&fixture("gguf/blocks/Q8_0.f32")));
    assert_eq!(g.dequantize(t).unwrap(), want[..64]);
}

#[test]
fn every_truncation_is_an_error_that_says_so() {
    let (b, _, _) = tiny_file();
    for cut in 0..b.len() {
        let e = match parse(b[..cut].to_vec()) {
            Err(e) => e,
            Ok(_) => panic!("a file cut at {cut} of {} bytes parsed", b.len()),
        };
        assert!(
            e.contains("bad.gguf") && (e.contains("truncated") || e.contains("not a GGUF")),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn a_tensor_past_the_end_an_unknown_type_and_a_wrong_header_are_named() {
    let (b, type_at, offset_at) = tiny_file();
    let mut past = b.clone();
    past[offset_at..offset_at + 8].copy_from_slice(&64u64.to_le_bytes());
    let e = parse(past).unwrap_err();
    assert!(e.contains("`w`") && e.contains("past the end"), "{e}");
    let mut misaligned = b.clone();
    misaligned[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
    let e = parse(misaligned).unwrap_err();
    assert!(e.contains("alignment"), "{e}");
    let mut iq = b.clone();
    iq[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let e = parse(iq).unwrap_err();
    assert!(e.contains("`w`") && e.contains("IQ2_XXS"), "{e}");
    let mut unknown = b.clone();
    unknown[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let e = parse(unknown).unwrap_err();
    assert!(e.contains("unknown GGML type id 77"), "{e}");
    let mut magic = b.clone();
    magic[..4].copy_from_slice(b"GGML");
    assert!(parse(magic).unwrap_err().contains("not a GGUF file"));
    let mut v1 = b.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(parse(v1)
        .unwrap_err()
        .contains("version 1 is not supported"));
    let mut huge = b.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse(huge).unwrap_err().contains("tensor count"));
}

#[test]
fn random_corruption_never_panics() {
    // A seeded fuzz of the parser: flip bytes of the all-types file (header region mostly) and
    // parse. Any outcome but a panic or an absurd allocation is fine.
    let base = read(&all_types_path());
    let g = Gguf::open(&all_types_path()).unwrap();
    let header = g.data_offset;
    let mut rng = Rng::new(5);
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            let at = if rng.below(8) == 0 {
                rng.below(b.len())
            } else {
                rng.below(header)
            };
            b[at] = rng.below(256) as u8;
        }
        if let Ok(g) = Gguf::parse(b, Path::new("fuzz.gguf")) {
            for t in &g.tensors {
                let _ = g.dequantize(t);
            }
        } else {
            errors += 1;
        }
    }
    assert!(
        errors > 300,
        "only {errors} of 3000 corruptions were refused"
    );
}

#[test]
fn a_configuration_the_runtime_cannot_compute_is_refused_by_name() {
    // Written by gguf_fixtures.py: llama metadata with a head size of 64 (256 / 4 heads).
    let g = Gguf::open(&fixture("gguf/partial_rope.gguf")).unwrap();
    let e = g.model_config().unwrap_err().to_string();
    assert!(
        e.contains("llama.rope.dimension_count = 32") && e.contains("head size 64"),
        "{e}"
    );
    let g = Gguf::open(&fixture("gguf/narrow_values.gguf")).unwrap();
    let e = g.model_config().unwrap_err().to_string();
    assert!(e.contains("llama.attention.value_length = 32"), "{e}");
    // The SmolLM2-like shape is accepted: rope.dimension_count equal to the head size.
    let g = Gguf::open(&fixture("gguf/tiny_llama.gguf")).unwrap();
    assert_eq!(g.model_config().unwrap().head_dim, 64);
}

/// An architecture the runtime has no blocks for is refused by name, with the supported ones
/// listed, before any tensor is read. (The tiny Qwen2 file with every `qwen2` renamed `falcn`:
/// the architecture and its metadata keys.)
#[test]
fn an_architecture_the_runtime_does_not_have_is_refused_by_name() {
    let bytes = read(&fixture("gguf/tiny_qwen2.gguf"));
    let mut renamed = bytes.clone();
    let mut count = 0;
    for i in 0..renamed.len().saturating_sub(5) {
        if &renamed[i..i + 5] == b"qwen2" {
            renamed[i..i + 5].copy_from_slice(b"falcn");
            count += 1;
        }
    }
    assert!(count > 5, "the fixture names its architecture in its keys");
    let dir = std::env::temp_dir().join(format!("flexp-gguf-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("falcn.gguf");
    std::fs::write(&path, &renamed).unwrap();
    let g = Gguf::open(&path).unwrap();
    let e = g.model_config().unwrap_err().to_string();
    assert!(
        e.contains("`falcn` is not supported") && e.contains("llama, qwen2, qwen3, gemma3"),
        "{e}"
    );
    let e = flexp::model::load_model(&flexp::backend::cpu::Cpu, &path)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("falcn"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
