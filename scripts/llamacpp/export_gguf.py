#!/usr/bin/python3
"""Writes a strata checkpoint as a GGUF file llama.cpp can run, for the side-by-side benchmark (scripts/llamacpp/
bench.sh): the weights read by the independent float64 reader (tests/reference/llama_reference.py), matrices
stored as f32, bf16, q8_0 or q4_0 (the blocks made by llama.cpp's own quantizer, libggml-base.so), written by the tests'
GGUF writer in llama.cpp's layout (q/k rows interleaved), without a vocabulary (tokenizer.ggml.model "none":
the benchmark feeds token ids).
    export_gguf.py CHECKPOINT OUT.gguf f32|bf16|q8_0|q4_0 LIBGGML_BASE
"""
import ctypes
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "quant"))
import gguf_writer  # noqa: E402
import llama_reference  # noqa: E402

checkpoint, out, kind, lib = sys.argv[1:5]
ggml = ctypes.CDLL(lib)
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p]


def encode(w):
    w = np.ascontiguousarray(w, dtype=np.float32)
    if kind == "f32":
        return w.tobytes(), "f32"
    if kind == "bf16":  # the checkpoint's bf16 values are exact: keep their top 16 bits
        return (w.view(np.uint32) >> 16).astype(np.uint16).tobytes(), "bf16"
    code, size = {"q8_0": (8, 34), "q4_0": (2, 18)}[kind]
    blocks = np.zeros(w.size // 32 * size, dtype=np.uint8)
    ggml.ggml_quantize_chunk(code, w.ctypes.data, blocks.ctypes.data, 0, w.shape[0], w.shape[1], None)
    return blocks.tobytes(), kind


weights, cfg, _ = llama_reference.load_checkpoint(checkpoint)
heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
metadata = {"general.architecture": "llama", "general.name": os.path.basename(checkpoint.rstrip("/")),
            "llama.context_length": cfg["max_position_embeddings"], "llama.embedding_length": cfg["hidden_size"],
            "llama.feed_forward_length": cfg["intermediate_size"], "llama.block_count": cfg["num_hidden_layers"],
            "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv,
            "llama.rope.freq_base": float(cfg["rope_theta"]),
            "llama.attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]), "llama.vocab_size": cfg["vocab_size"],
            "tokenizer.ggml.model": "none"}
gguf_writer.write(out, metadata, gguf_writer.llama_tensors(weights, heads, kv, cfg["num_hidden_layers"], encode))
print(f"wrote {out}: {os.path.getsize(out) / 1e6:.0f} MB ({kind})")
