"""A random Llama's weights in Hugging Face's names, and a safetensors writer of our own: the pieces of the tiny HF
model folders the tokenizer end-to-end tests convert (each test adds its config and tokenizer files). Also small
test configs (family_config) and random weights (family_weights) for the Gemma 2, Gemma 3, Mixtral, Qwen2-MoE and
Qwen3-MoE families that tests/reference/families_reference.py computes."""
import json
import os
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


def write_llama_folder(path, tensors, vocab, hidden, inter, layers, heads, kv_heads):
    """A Hugging Face Llama folder (untied embeddings, 64 positions) at path, made if missing: tensors (llama_weights'
    names) in model.safetensors beside their config.json."""
    os.makedirs(path, exist_ok=True)
    write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
                   "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                   "vocab_size": vocab, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
                   "tie_word_embeddings": False}, f)


FAMILY_ARCHITECTURES = {"gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                        "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                        "qwen3_moe": "Qwen3MoeForCausalLM"}


def family_config(model_type, vocab):
    """A small config.json (as a dict) of one family: hidden 32, 4 heads, 2 KV heads; Gemma and Qwen3-MoE with
    head_dim 16 (not hidden / heads); the MoE families with 8 experts, top 2. Gemma 2: soft-capping small enough for
    tanh to bend (attention 5, final 3), query_pre_attn_scalar 24 (not head_dim), sliding window 5 on layers 0 and 2
    (the default even-layer rule: no layer_types). Gemma 3: window 5 on layers 0 and 2 by layer_types (no
    sliding_window_pattern key: the default pattern 6 would make all three slide), local RoPE base 1e4 unscaled,
    global 1e6 with linear factor 2. Qwen2-MoE: shared expert, norm_topk_prob false, layer 1 dense (mlp_only_layers).
    Qwen3-MoE: q/k norms, norm_topk_prob true, layer 0 dense."""
    common = {"model_type": model_type, "architectures": [FAMILY_ARCHITECTURES[model_type]], "hidden_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab,
              "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
              "initializer_range": 0.02, "use_cache": True, "attention_dropout": 0.0}
    if model_type == "gemma2":
        return dict(common, intermediate_size=48, num_hidden_layers=3, head_dim=16, rms_norm_eps=1e-6,
                    rope_theta=10000.0, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                    query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=5.0,
                    final_logit_softcapping=3.0, tie_word_embeddings=True, attention_bias=False, pad_token_id=0,
                    cache_implementation="hybrid")
    if model_type == "gemma3_text":
        return dict(common, intermediate_size=48, num_hidden_layers=3, head_dim=16, rms_norm_eps=1e-6,
                    rope_theta=1000000.0, rope_local_base_freq=10000.0,
                    rope_scaling={"rope_type": "linear", "factor": 2.0}, hidden_activation="gelu_pytorch_tanh",
                    query_pre_attn_scalar=16, sliding_window=5,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    attn_logit_softcapping=None, final_logit_softcapping=None, tie_word_embeddings=True,
                    attention_bias=False, pad_token_id=0)
    if model_type == "mixtral":
        return dict(common, intermediate_size=24, num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=1000000.0,
                    hidden_act="silu", num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
                    tie_word_embeddings=False, router_aux_loss_coef=0.02, router_jitter_noise=0.0,
                    output_router_logits=False)
    if model_type == "qwen2_moe":
        return dict(common, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=40,
                    num_hidden_layers=3, rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu", num_experts=8,
                    num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
                    use_sliding_window=False, sliding_window=4096, max_window_layers=3, tie_word_embeddings=False,
                    router_aux_loss_coef=0.001, output_router_logits=False)
    if model_type == "qwen3_moe":
        return dict(common, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3, head_dim=16,
                    rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, hidden_act="silu", num_experts=8,
                    num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[0],
                    attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=3,
                    tie_word_embeddings=False, router_aux_loss_coef=0.001, output_router_logits=False)
    raise ValueError(f"no test config for model_type {model_type!r}")


def family_weights(rng, cfg):
    """Random float64 weights in Hugging Face's names for a gemma2 / gemma3_text / mixtral / qwen2_moe / qwen3_moe
    config dict, scaled so activations stay near 1. Gemma's norm weights are near 0 (its RMSNorm multiplies by
    1 + w), its embeddings N(0, 1/hidden) (multiplied by sqrt(hidden) on the way in, and the tied lm_head on the way
    out, so logits stay O(1) under the soft-cap); the others' norms near 1."""
    kind = cfg["model_type"]
    gemma = kind in ("gemma2", "gemma3_text")
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    d = cfg.get("head_dim") or H // heads

    def mat(rows, cols):
        return rng.normal(0, 1 / np.sqrt(cols), (rows, cols))

    def norm(n):
        return rng.normal(0, 0.1, n) if gemma else 1 + rng.normal(0, 0.1, n)

    def mlp(prefix, inter, names=("gate_proj", "up_proj", "down_proj")):
        gate, up, down = names
        tensors[prefix + gate + ".weight"] = mat(inter, H)
        tensors[prefix + up + ".weight"] = mat(inter, H)
        tensors[prefix + down + ".weight"] = mat(H, inter)

    tensors = {"model.embed_tokens.weight": rng.normal(0, 1 / np.sqrt(H) if gemma else 1.0, (V, H)),
               "model.norm.weight": norm(H)}
    if not cfg.get("tie_word_embeddings", gemma):
        tensors["lm_head.weight"] = mat(V, H)
    if kind == "qwen2_moe":
        qkv_bias, o_bias = cfg.get("qkv_bias", True), False
    elif kind == "qwen3_moe" or gemma:
        qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
    else:
        qkv_bias = o_bias = False
    experts = cfg.get("num_local_experts", 8) if kind == "mixtral" else cfg.get("num_experts", 0)
    step = cfg.get("decoder_sparse_step", 1)
    dense_layers = cfg.get("mlp_only_layers") or []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = norm(H)
        tensors[p + "post_attention_layernorm.weight"] = norm(H)
        if gemma:
            tensors[p + "pre_feedforward_layernorm.weight"] = norm(H)
            tensors[p + "post_feedforward_layernorm.weight"] = norm(H)
        for proj, rows in (("q", heads * d), ("k", kv * d), ("v", kv * d)):
            tensors[p + f"self_attn.{proj}_proj.weight"] = mat(rows, H)
            if qkv_bias:
                tensors[p + f"self_attn.{proj}_proj.bias"] = rng.normal(0, 0.1, rows)
        tensors[p + "self_attn.o_proj.weight"] = mat(H, heads * d)
        if o_bias:
            tensors[p + "self_attn.o_proj.bias"] = rng.normal(0, 0.1, H)
        if kind in ("gemma3_text", "qwen3_moe"):
            tensors[p + "self_attn.q_norm.weight"] = norm(d)
            tensors[p + "self_attn.k_norm.weight"] = norm(d)
        if gemma:
            mlp(p + "mlp.", cfg["intermediate_size"])
        elif kind == "mixtral":
            tensors[p + "block_sparse_moe.gate.weight"] = mat(experts, H)
            for e in range(experts):
                mlp(p + f"block_sparse_moe.experts.{e}.", cfg["intermediate_size"], ("w1", "w3", "w2"))
        elif i not in dense_layers and experts > 0 and (i + 1) % step == 0:
            tensors[p + "mlp.gate.weight"] = mat(experts, H)
            for e in range(experts):
                mlp(p + f"mlp.experts.{e}.", cfg["moe_intermediate_size"])
            if kind == "qwen2_moe":
                mlp(p + "mlp.shared_expert.", cfg["shared_expert_intermediate_size"])
                tensors[p + "mlp.shared_expert_gate.weight"] = mat(1, H)
        else:
            mlp(p + "mlp.", cfg["intermediate_size"])
    return tensors
