"""A random Llama's weights in Hugging Face's names, and a safetensors writer of our own: the pieces of the tiny HF
model folders the tokenizer end-to-end tests convert (each test adds its config and tokenizer files)."""
import json
import struct

import numpy as np


def llama_weights(rng, vocab, hidden, inter, layers, heads, kv_heads, head_dim=None, qk_norm=False):
    """Random weights (float64 arrays) of a Llama with untied embeddings, scaled so activations stay near 1; with
    qk_norm, Qwen3's per-head q_norm / k_norm weights too."""
    d = head_dim or hidden // heads
    tensors = {"model.embed_tokens.weight": rng.normal(0, 1.0, (vocab, hidden)),
               "model.norm.weight": 1 + rng.normal(0, 0.1, hidden),
               "lm_head.weight": rng.normal(0, 1 / np.sqrt(hidden), (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, hidden)
        tensors[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, hidden)
        for proj, rows in (("q", heads * d), ("k", kv_heads * d), ("v", kv_heads * d)):
            tensors[p + f"self_attn.{proj}_proj.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (rows, hidden))
        tensors[p + "self_attn.o_proj.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (hidden, heads * d))
        if qk_norm:
            tensors[p + "self_attn.q_norm.weight"] = 1 + rng.normal(0, 0.1, d)
            tensors[p + "self_attn.k_norm.weight"] = 1 + rng.normal(0, 0.1, d)
        tensors[p + "mlp.gate_proj.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (inter, hidden))
        tensors[p + "mlp.up_proj.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (inter, hidden))
        tensors[p + "mlp.down_proj.weight"] = rng.normal(0, 1 / np.sqrt(inter), (hidden, inter))
    return tensors


def write_safetensors(path, tensors):
    """tensors as little-endian f32 in one safetensors file (8-byte header length, JSON header, data)."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.asarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
