#!/usr/bin/python3
"""Writes a random Llama in Hugging Face format (config.json, two BF16 safetensors files and their index), for
conversion and load benchmarks (docs/performance.md). Tensors are streamed to the files one at a time.

    scripts/random-hf-model.py OUT [--hidden 2048] [--intermediate 5632] [--layers 8] [--heads 16] [--kv-heads 4]
                               [--vocab 32000]
"""
import argparse
import json
import os
import struct

import numpy as np


def tensor_shapes(a):
    d = a.hidden // a.heads
    shapes = {"model.embed_tokens.weight": (a.vocab, a.hidden), "model.norm.weight": (a.hidden,),
              "lm_head.weight": (a.vocab, a.hidden)}
    for i in range(a.layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (a.hidden,), p + "post_attention_layernorm.weight": (a.hidden,),
                       p + "self_attn.q_proj.weight": (a.heads * d, a.hidden),
                       p + "self_attn.k_proj.weight": (a.kv_heads * d, a.hidden),
                       p + "self_attn.v_proj.weight": (a.kv_heads * d, a.hidden),
                       p + "self_attn.o_proj.weight": (a.hidden, a.heads * d),
                       p + "mlp.gate_proj.weight": (a.intermediate, a.hidden),
                       p + "mlp.up_proj.weight": (a.intermediate, a.hidden),
                       p + "mlp.down_proj.weight": (a.hidden, a.intermediate)})
    return shapes


def bf16_bytes(values):
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even


def write_file(path, shapes, rng):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in shapes.items():
            scale = 0.1 if len(shape) == 1 else 1 / np.sqrt(shape[-1])
            f.write(bf16_bytes(rng.normal(0, scale, shape) + (1.0 if name.endswith("norm.weight") else 0.0)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    for flag, default in (("hidden", 2048), ("intermediate", 5632), ("layers", 8), ("heads", 16), ("kv-heads", 4),
                          ("vocab", 32000)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    a = parser.parse_args()
    os.makedirs(a.out, exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": a.hidden,
              "intermediate_size": a.intermediate, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
              "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f)
    names = list(tensor_shapes(a).items())
    rng, weight_map = np.random.default_rng(1), {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-0000{k + 1}-of-00002.safetensors"
        write_file(os.path.join(a.out, file), dict(part), rng)
        weight_map.update({name: file for name, _ in part})
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


if __name__ == "__main__":
    main()
