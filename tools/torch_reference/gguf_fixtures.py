#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/gguf.rs with the `gguf` Python package (llama.cpp's own
reader and writer), an implementation independent of flexp's.

  tests/fixtures/gguf/blocks/<TYPE>.bin  random blocks of each GGML type flexp decodes
  tests/fixtures/gguf/blocks/<TYPE>.f32  gguf.quants.dequantize of those bytes (little-endian f32)
  tests/fixtures/gguf/all_types.gguf     a small file with every metadata value type and one
                                         tensor of each GGML type (the blocks above), alignment 64
  tests/fixtures/gguf/all_types.json     what gguf.GGUFReader reads from it
  tests/fixtures/gguf/{partial_rope,narrow_values}.gguf  metadata the runtime must refuse
  fuzz/corpus/gguf_tokenizer/bpe.gguf   a seed of the tokenizer fuzz target (also in fuzz/corpus/gguf):
                                         a byte-level BPE (GPT-2 alphabet, 3 merges, 2 control
                                         tokens, add-BOS) and one small tensor
  tests/fixtures/gguf/smollm2_table.json with --smollm2 FILE: the tensor table and scalar metadata
                                         of SmolLM2-135M-Instruct Q4_1 as GGUFReader reads them,
                                         plus dequantized rows of three tensors (one per type)

Usage (from the repository root, in the venv of tools/torch_reference/setup.sh):
  tools/torch_reference/.venv/bin/python tools/torch_reference/gguf_fixtures.py \
      [--smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = os.path.join("tests", "fixtures", "gguf")

# Byte ranges of each type's f16 fields (scale d, and min / dmin where the type has one). Random
# bytes are valid codes everywhere else; these get finite f16 values so the expected output has
# no inf or NaN (bit-exact comparison of NaN payloads would test nothing useful).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
         T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def random_blocks(rng, ty, n_values):
    block, nbytes = gguf.GGML_QUANT_SIZES[ty]
    n_blocks = n_values // block
    if ty == T.F32:
        return rng.standard_normal(n_values).astype(np.float32).view(np.uint8)
    if ty == T.F16:
        v = (rng.standard_normal(n_values) * 3).astype(np.float16)
        v[:4] = np.array([6.0e-8, -6.0e-8, 1.0e-5, 65504.0], dtype=np.float16)  # subnormals, max
        return v.view(np.uint8)
    if ty == T.BF16:
        bits = rng.standard_normal(n_values).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for k, at in enumerate(F16_FIELDS[ty]):
        scales = (rng.standard_normal(n_blocks) * (0.05 if k == 0 else 0.5)).astype(np.float16)
        scales[0] = np.float16(3.0e-6)  # a subnormal f16 scale
        if n_blocks > 1:
            scales[1] = -scales[1] if scales[1] > 0 else scales[1]  # a negative one
        raw[:, at:at + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def write_blocks(rng):
    os.makedirs(os.path.join(OUT, "blocks"), exist_ok=True)
    made = {}
    for ty in TYPES:
        block, _ = gguf.GGML_QUANT_SIZES[ty]
        n_values = 8 * 256 if block > 1 else 96
        raw = random_blocks(rng, ty, n_values)
        expect = gguf.quants.dequantize(raw, ty).astype(np.float32).reshape(-1)
        assert expect.size == n_values and np.isfinite(expect).all(), ty.name
        raw.tofile(os.path.join(OUT, "blocks", ty.name + ".bin"))
        expect.astype("<f4").tofile(os.path.join(OUT, "blocks", ty.name + ".f32"))
        made[ty] = (raw, n_values)
    return made


def value_json(v):
    if isinstance(v, (list, tuple)):
        return [value_json(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def table_json(reader, scalars_only=False):
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [t.name for t in field.types]
        if scalars_only and types[0] == "ARRAY":
            meta[name] = {"types": types, "len": len(field.data)}
            continue
        meta[name] = {"types": types, "value": value_json(field.contents())}
    tensors = [{
        "name": t.name,
        "type": t.tensor_type.name,
        "dims": [int(d) for d in t.shape],
        "offset": int(t.data_offset),
        "bytes": int(t.n_bytes),
    } for t in reader.tensors]
    return {"metadata": meta, "tensors": tensors, "data_offset": int(reader.data_offset)}


def write_all_types(made):
    path = os.path.join(OUT, "all_types.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.data_alignment = 64
    w.add_uint32("general.alignment", 64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", -2.5e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.arr_str", ["a", "", "ñ"])
    w.add_array("t.arr_f32", [1.5, -2.0])
    w.add_array("t.arr_i32", [-1, 7, 9])
    w.add_key_value("t.arr_nested", [[1, 2], [3]], gguf.GGUFValueType.ARRAY,
                    sub_type=gguf.GGUFValueType.ARRAY)
    for ty in TYPES:
        raw, n_values = made[ty]
        rows = 2 if n_values % 512 == 0 else 3
        # The byte shape, outermost first: the writer turns it into [rows, row_len] values.
        shape = (rows, raw.size // rows)
        w.add_tensor("w." + ty.name, raw.reshape(shape), raw_shape=shape, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf.GGUFReader(path)
    with open(os.path.join(OUT, "all_types.json"), "w") as f:
        json.dump(table_json(reader), f, indent=1)


def write_smollm2(path):
    reader = gguf.GGUFReader(path)
    table = table_json(reader, scalars_only=True)
    rows = {}
    for name, n in [("token_embd.weight", 2), ("blk.0.attn_q.weight", 3),
                    ("blk.0.attn_norm.weight", 1)]:
        t = next(t for t in reader.tensors if t.name == name)
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        values = values.reshape(-1, int(t.shape[0]))[:n]
        rows[name] = values.reshape(-1).tolist()
    table["rows"] = rows
    table["file_bytes"] = os.path.getsize(path)
    with open(os.path.join(OUT, "smollm2_table.json"), "w") as f:
        json.dump(table, f)


def write_fuzz_seed():
    alpha = {}
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = 0
    for b in range(256):
        if b in printable:
            alpha[b] = chr(b)
        else:
            alpha[b] = chr(256 + extra)
            extra += 1
    tokens = [alpha[b] for b in range(256)] + ["th", "the", "\u0120the", "<|endoftext|>", "<|pad|>"]
    for folder in ("gguf_tokenizer", "gguf"):
        path = os.path.join("fuzz", "corpus", folder, "bpe.gguf")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        w = gguf.GGUFWriter(path, arch="llama")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([1] * 259 + [3, 3])
        w.add_token_merges(["t h", "th e", "\u0120 the"])
        w.add_bos_token_id(259)
        w.add_eos_token_id(259)
        w.add_add_bos_token(True)
        w.add_tensor("w", np.arange(8, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def write_unsupported_configs():
    """Llama metadata (no tensors) that the runtime must refuse by name: a rotary embedding of
    half of each head, and value heads narrower than key heads."""
    for name, key, value in [("partial_rope", "rope.dimension_count", 32),
                             ("narrow_values", "attention.value_length", 32)]:
        w = gguf.GGUFWriter(os.path.join(OUT, name + ".gguf"), arch="llama")
        w.add_block_count(2)
        w.add_context_length(128)
        w.add_embedding_length(256)
        w.add_feed_forward_length(512)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_vocab_size(300)
        w.add_uint32("llama." + key, value)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    print("gguf", getattr(gguf, "__version__", "?"), "numpy", np.__version__)
    made = write_blocks(np.random.default_rng(20261205))
    write_all_types(made)
    write_fuzz_seed()
    write_unsupported_configs()
    if args.smollm2:
        write_smollm2(args.smollm2)


if __name__ == "__main__":
    main()
