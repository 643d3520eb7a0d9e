"""A GGUF writer of our own, from the format's definition (version 3, little-endian): what llama.cpp's
convert_hf_to_gguf.py writes for a Llama model, including its q/k row interleave, so that the tests can give
`strata convert --gguf` files with known contents. The files are also opened with llama.cpp's own gguf reader
(libggml-base.so) in the tests, which checks this writer independently."""
import struct

import numpy as np

UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64 = 4, 5, 6, 7, 8, 9, 10
TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}


class Int32s(list):
    """A metadata array written as INT32 (llama.cpp's converter writes tokenizer.ggml.token_type so, and llama.cpp's
    loader requires it)."""


def _string(text):
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(value):
    """(type, bytes) of a metadata value: bool, int (u32, or i32 when negative), float (f32), str, list."""
    if isinstance(value, bool):
        return BOOL, struct.pack("<B", int(value))
    if isinstance(value, int):
        return (INT32, struct.pack("<i", value)) if value < 0 else (UINT32, struct.pack("<I", value))
    if isinstance(value, float):
        return FLOAT32, struct.pack("<f", value)
    if isinstance(value, str):
        return STRING, _string(value)
    if isinstance(value, Int32s):
        return ARRAY, struct.pack("<IQ", INT32, len(value)) + struct.pack(f"<{len(value)}i", *value)
    if isinstance(value, list):
        kinds = [_value(v) for v in value]
        kind = kinds[0][0] if kinds else STRING
        if kind == UINT32 and any(k == INT32 for k, _ in kinds):
            kind, kinds = INT32, [(INT32, struct.pack("<i", v)) for v in value]
        return ARRAY, struct.pack("<IQ", kind, len(value)) + b"".join(b for _, b in kinds)
    raise TypeError(value)


def interleave_rotary(w, heads):
    """llama.cpp's permute(): each head's rows [first half; second half] become pairs (row i, row i + D/2)."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write(path, metadata, tensors, alignment=32):
    """tensors: list of (name, raw bytes, dims in GGUF order (row length first), type name)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value in metadata.items():
        kind, raw = _value(value)
        head += _string(key) + struct.pack("<I", kind) + raw
    offsets, at = [], 0
    for _, raw, _, _ in tensors:
        offsets.append(at)
        at += (len(raw) + alignment - 1) // alignment * alignment
    for (name, raw, dims, kind), offset in zip(tensors, offsets):
        head += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", TYPES[kind], offset)
    head += b"\0" * ((len(head) + alignment - 1) // alignment * alignment - len(head))
    with open(path, "wb") as f:
        f.write(head)
        for raw, offset in zip((t[1] for t in tensors), offsets):
            f.write(raw + b"\0" * ((len(raw) + alignment - 1) // alignment * alignment - len(raw)))


def llama_tensors(weights, heads, kv_heads, layers, encode):
    """HF-named float64 weights -> GGUF tensors: llama.cpp's names, q/k rows interleaved, matrices as
    encode(array) -> (raw bytes, type name); vectors f32."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight",
                 "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(layers):
        for ours, theirs in per_layer.items():
            names[f"model.layers.{i}.{ours}"] = f"blk.{i}.{theirs}"
    out = []
    for hf, gguf in names.items():
        if hf not in weights:
            continue
        w = np.asarray(weights[hf], dtype=np.float32)
        if hf.endswith("q_proj.weight"):
            w = interleave_rotary(w, heads)
        elif hf.endswith("k_proj.weight"):
            w = interleave_rotary(w, kv_heads)
        if w.ndim == 1:
            out.append((gguf, w.tobytes(), [w.shape[0]], "f32"))
        else:
            raw, kind = encode(w)
            out.append((gguf, raw, [w.shape[1], w.shape[0]], kind))
    return out
