#!/usr/bin/python3
r"""Independent float64 reference forward pass for five Hugging Face model families.

    gemma2       Gemma2ForCausalLM
    gemma3_text  Gemma3ForCausalLM
    mixtral      MixtralForCausalLM
    qwen2_moe    Qwen2MoeForCausalLM
    qwen3_moe    Qwen3MoeForCausalLM

Written from the Hugging Face transformers definitions of these models (modeling_*.py and configuration_*.py of
each family, plus masking_utils' sliding-window rule); it shares no code or logic with strata's C++ runtime.
Everything is computed in float64 with NumPy, on the tensors exactly as the Hugging Face folder stores them (HF
tensor names; Gemma's tied lm_head is embed_tokens).

Library use:
    logits = forward(weights, hf_config, token_ids)            # float64 [T, vocab]
    choices = expert_choices(weights, hf_config, token_ids)    # per layer: int [T, top_k], or None (dense layer)
    plan = layer_plan(hf_config)                               # per layer: window, RoPE, MoE or dense

What each family computes (positions 0..T-1, one sequence, causal):
  * Attention (all): q/k/v projections, GQA (query head h reads kv head h // (heads / kv_heads)), rotate-half RoPE
    on the whole head_dim, softmax(scale * q.k) v, o_proj. scale = query_pre_attn_scalar**-0.5 for Gemma,
    head_dim**-0.5 otherwise.
  * Sliding window (HF masking_utils: causal AND kv_idx > q_idx - sliding_window): in a sliding layer the query at
    position q sees keys max(0, q - W + 1) .. q, i.e. W keys counting itself.
  * gemma2: x = embed * sqrt(hidden); per layer: input_layernorm -> attention -> post_attention_layernorm -> +residual
    -> pre_feedforward_layernorm -> GeGLU MLP (gelu tanh approximation) -> post_feedforward_layernorm -> +residual;
    final norm; logits = x @ embed^T (tied unless tie_word_embeddings is false). RMSNorm is
    x / sqrt(mean(x^2) + eps) * (1 + w). Attention soft-capping s -> cap * tanh(s / cap) after the scale, before
    the mask, when attn_logit_softcapping is set (Gemma2Config default 50.0 when the key is absent); final logits
    soft-capped the same way with final_logit_softcapping (default 30.0 when absent). Sliding layers: layer_types
    when the config has it, else layer i slides when i is even (i = 0, 2, 4, ...).
  * gemma3_text: as gemma2 plus q_norm / k_norm (Gemma (1 + w) RMSNorm over head_dim, before RoPE). Attention
    soft-capping is NOT applied (HF's Gemma3Attention does not pass it to the attention function); final logit
    soft-capping is (default None). Sliding layers: layer_types when present, else layer i slides when
    (i + 1) % sliding_window_pattern != 0 (default pattern 6). Sliding layers use RoPE base rope_local_base_freq
    (default 10000) with no scaling; full layers use rope_theta (default 1e6) with rope_scaling (default, linear).
  * mixtral: Llama layer with the MLP replaced by a sparse MoE block: router = gate (no bias) -> softmax -> top-k
    -> divided by the sum of the k kept probabilities -> sum_k p_k * expert_k(x), each expert w2(silu(w1 x) * w3 x)
    of intermediate_size. A sliding_window (if not null) applies to every layer.
  * qwen2_moe: Qwen2 attention (q/k/v bias when qkv_bias, default true; no o bias); sparse block as Mixtral but
    renormalised only when norm_topk_prob (default false), expert width moe_intermediate_size, plus a shared
    expert: + sigmoid(shared_expert_gate . x) * shared_expert(x) (SwiGLU of shared_expert_intermediate_size).
    Layer i is sparse when i not in mlp_only_layers and num_experts > 0 and (i + 1) % decoder_sparse_step == 0,
    otherwise a dense SwiGLU MLP of intermediate_size (mlp.gate_proj / up_proj / down_proj).
  * qwen3_moe: as qwen2_moe without the shared expert, with q_norm / k_norm (plain RMSNorm times w, over head_dim,
    before RoPE), attention_bias (default false) on q/k/v/o, norm_topk_prob default false.

CLI:
    families_reference.py selftest     # the reference against second, loop-based formulations of itself
Needs Debian's python (/usr/bin/python3) with numpy.
"""
import math
import sys

import numpy as np

FAMILIES = ("gemma2", "gemma3_text", "mixtral", "qwen2_moe", "qwen3_moe")
GEMMA = ("gemma2", "gemma3_text")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")

# Defaults of each family's configuration class, used when config.json lacks the key.
_DEFAULTS = {
    "gemma2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
               "hidden_activation": "gelu_pytorch_tanh", "head_dim": 256, "attention_bias": False},
    "gemma3_text": {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                    "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
                    "attn_logit_softcapping": None, "final_logit_softcapping": None, "tie_word_embeddings": True,
                    "hidden_activation": "gelu_pytorch_tanh", "head_dim": 256, "attention_bias": False},
    "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
                "hidden_act": "silu", "num_experts_per_tok": 2, "num_local_experts": 8},
    "qwen2_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
                  "use_sliding_window": False, "decoder_sparse_step": 1, "norm_topk_prob": False, "qkv_bias": True,
                  "num_experts_per_tok": 4, "num_experts": 60, "mlp_only_layers": []},
    "qwen3_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
                  "use_sliding_window": False, "decoder_sparse_step": 1, "norm_topk_prob": False,
                  "attention_bias": False, "num_experts_per_tok": 8, "num_experts": 128, "mlp_only_layers": []},
}


def family(cfg):
    kind = cfg.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r} is not one of {FAMILIES}")
    return kind


def get(cfg, key):
    """cfg[key], or the family's default when the key is absent (a key present with null stays None)."""
    if key in cfg:
        return cfg[key]
    return _DEFAULTS[family(cfg)].get(key)


def head_dim(cfg):
    return cfg.get("head_dim") or (_DEFAULTS[family(cfg)].get("head_dim") if family(cfg) in GEMMA else None) \
        or cfg["hidden_size"] // cfg["num_attention_heads"]


def kv_heads(cfg):
    return cfg.get("num_key_value_heads") or cfg["num_attention_heads"]


def num_experts(cfg):
    return get(cfg, "num_local_experts" if family(cfg) == "mixtral" else "num_experts")


# ------------------------------------------------------------------- layer plan
def _rope_theta(cfg, default_key="rope_theta"):
    """rope_theta from the flat key, or from a (transformers 5) rope_parameters dict."""
    if default_key in cfg and cfg[default_key] is not None:
        return float(cfg[default_key])
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(get(cfg, default_key))


def _rope_scaling(cfg):
    scaling = cfg.get("rope_scaling")
    if scaling is None and isinstance(cfg.get("rope_parameters"), dict) and "rope_type" in cfg["rope_parameters"]:
        scaling = cfg["rope_parameters"]
    return scaling


def layer_plan(cfg):
    """Per layer: {"sliding": bool, "window": int or None, "rope_theta", "rope_scaling", "moe": bool}."""
    kind = family(cfg)
    n = cfg["num_hidden_layers"]
    plan = []
    for i in range(n):
        entry = {"moe": False}
        if kind in GEMMA:
            if cfg.get("layer_types") is not None:
                types = cfg["layer_types"]
                assert len(types) == n, f"layer_types has {len(types)} entries for {n} layers"
                assert all(t in ("sliding_attention", "full_attention") for t in types), types
                sliding = types[i] == "sliding_attention"
            elif kind == "gemma2":
                sliding = i % 2 == 0
            else:
                sliding = (i + 1) % get(cfg, "sliding_window_pattern") != 0
            entry["sliding"] = sliding
            entry["window"] = get(cfg, "sliding_window") if sliding else None
            if kind == "gemma3_text":
                params = cfg.get("rope_parameters")
                if isinstance(params, dict) and "full_attention" in params:  # transformers 5 per-layer-type form
                    p = params["sliding_attention" if sliding else "full_attention"]
                    entry["rope_theta"] = float(p["rope_theta"])
                    entry["rope_scaling"] = p if p.get("rope_type", "default") != "default" else None
                elif sliding:
                    entry["rope_theta"] = _rope_theta(cfg, "rope_local_base_freq")
                    entry["rope_scaling"] = None
                else:
                    entry["rope_theta"] = _rope_theta(cfg)
                    entry["rope_scaling"] = _rope_scaling(cfg)
            else:
                entry["rope_theta"] = _rope_theta(cfg)
                entry["rope_scaling"] = _rope_scaling(cfg)
        else:
            if kind == "mixtral":
                window = cfg.get("sliding_window")
            else:
                if get(cfg, "use_sliding_window"):
                    raise NotImplementedError(f"{kind}: use_sliding_window is not implemented in the reference")
                window = None
            entry["sliding"] = window is not None
            entry["window"] = window
            entry["rope_theta"] = _rope_theta(cfg)
            entry["rope_scaling"] = _rope_scaling(cfg)
            if kind == "mixtral":
                entry["moe"] = True
            else:
                entry["moe"] = (i not in (get(cfg, "mlp_only_layers") or [])) and num_experts(cfg) > 0 \
                    and (i + 1) % get(cfg, "decoder_sparse_step") == 0
        plan.append(entry)
    return plan


# ---------------------------------------------------------------------- pieces
def rms_norm(x, weight, eps, gemma=False):
    """x / sqrt(mean(x^2) + eps) times w (Llama, Mixtral, Qwen) or times (1 + w) (Gemma)."""
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return normed * ((1.0 + weight) if gemma else weight)


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
    """gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def activation(name):
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):  # the same tanh formula in float64
        return gelu_tanh
    if name == "silu" or name == "swish":
        return silu
    raise NotImplementedError(f"activation {name!r} not implemented in the reference")


def softcap(x, cap):
    return x if cap is None else cap * np.tanh(x / cap)


def inverse_frequencies(dim, theta, scaling):
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind != "default":
        raise NotImplementedError(f"rope_scaling {kind!r} not implemented in the reference")
    return inv_freq


def rope(x, positions, theta, scaling):
    """x: [T, heads, d]. Rotate-half convention: pairs (i, i + d/2) rotated by position * inv_freq[i]."""
    d = x.shape[-1]
    angles = np.outer(positions, inverse_frequencies(d, theta, scaling))      # [T, d/2]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    rotated = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * cos + rotated * sin


def visible(T, window):
    """Boolean [T, T] (query, key): causal, and within the window (kv > q - window) when window is set."""
    q = np.arange(T)[:, None]
    k = np.arange(T)[None, :]
    mask = k <= q
    if window is not None:
        mask &= k > q - window
    return mask


def _qkv(x, w, prefix, cfg, spec, positions):
    """Projected, q/k-normed and rotated q [T, H, d], k [T, KV, d], v [T, KV, d]."""
    T = x.shape[0]
    kind = family(cfg)
    H, KV, d = cfg["num_attention_heads"], kv_heads(cfg), head_dim(cfg)
    q = linear(x, w[prefix + "q_proj.weight"], w.get(prefix + "q_proj.bias")).reshape(T, H, d)
    k = linear(x, w[prefix + "k_proj.weight"], w.get(prefix + "k_proj.bias")).reshape(T, KV, d)
    v = linear(x, w[prefix + "v_proj.weight"], w.get(prefix + "v_proj.bias")).reshape(T, KV, d)
    if kind in ("gemma3_text", "qwen3_moe"):
        eps = get(cfg, "rms_norm_eps")
        q = rms_norm(q, w[prefix + "q_norm.weight"], eps, gemma=kind in GEMMA)
        k = rms_norm(k, w[prefix + "k_norm.weight"], eps, gemma=kind in GEMMA)
    q = rope(q, positions, spec["rope_theta"], spec["rope_scaling"])
    k = rope(k, positions, spec["rope_theta"], spec["rope_scaling"])
    return q, k, v


def attention_scale(cfg):
    if family(cfg) in GEMMA:
        return float(get(cfg, "query_pre_attn_scalar")) ** -0.5
    return head_dim(cfg) ** -0.5


def attention_softcap(cfg):
    return get(cfg, "attn_logit_softcapping") if family(cfg) == "gemma2" else None


def attention(x, w, prefix, cfg, spec, positions):
    """Vectorised attention of one layer: [T, hidden] -> [T, hidden]."""
    T = x.shape[0]
    H, KV = cfg["num_attention_heads"], kv_heads(cfg)
    q, k, v = _qkv(x, w, prefix, cfg, spec, positions)
    k = np.repeat(k, H // KV, axis=1)
    v = np.repeat(v, H // KV, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) * attention_scale(cfg)
    scores = softcap(scores, attention_softcap(cfg))
    scores = np.where(visible(T, spec["window"])[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(T, -1)
    return linear(out, w[prefix + "o_proj.weight"], w.get(prefix + "o_proj.bias"))


def attention_loop(x, w, prefix, cfg, spec, positions):
    """Second formulation for the self-test: RoPE as complex rotation of (x_i, x_{i+d/2}), and a per head, per
    query, per key loop with an explicit window test and a running softmax."""
    T = x.shape[0]
    kind = family(cfg)
    H, KV, d = cfg["num_attention_heads"], kv_heads(cfg), head_dim(cfg)
    window = spec["window"]
    scale = attention_scale(cfg)
    cap = attention_softcap(cfg)
    eps = get(cfg, "rms_norm_eps")

    def project(name, rows_heads):
        W = w[prefix + name + "_proj.weight"]
        b = w.get(prefix + name + "_proj.bias")
        out = np.zeros((T, rows_heads, d))
        for t in range(T):
            for r in range(rows_heads * d):
                out[t, r // d, r % d] = np.dot(W[r], x[t]) + (0.0 if b is None else b[r])
        return out

    def norm_head(vec, weight):
        ms = sum(float(c) * float(c) for c in vec) / len(vec)
        factor = (1.0 + weight) if kind in GEMMA else weight
        return vec / math.sqrt(ms + eps) * factor

    def rotate(vec, pos):
        half = d // 2
        inv = inverse_frequencies(d, spec["rope_theta"], spec["rope_scaling"])
        z = (vec[:half] + 1j * vec[half:]) * np.exp(1j * pos * inv)
        return np.concatenate([z.real, z.imag])

    q, k, v = project("q", H), project("k", KV), project("v", KV)
    for t in range(T):
        for h in range(H):
            if kind in ("gemma3_text", "qwen3_moe"):
                q[t, h] = norm_head(q[t, h], w[prefix + "q_norm.weight"])
            q[t, h] = rotate(q[t, h], positions[t])
        for h in range(KV):
            if kind in ("gemma3_text", "qwen3_moe"):
                k[t, h] = norm_head(k[t, h], w[prefix + "k_norm.weight"])
            k[t, h] = rotate(k[t, h], positions[t])
    out = np.zeros((T, H * d))
    group = H // KV
    for h in range(H):
        g = h // group
        for i in range(T):
            m, denom, acc = -math.inf, 0.0, np.zeros(d)
            for j in range(T):
                if j > i or (window is not None and i - j >= window):
                    continue
                s = float(np.dot(q[i, h], k[j, g])) * scale
                if cap is not None:
                    s = cap * math.tanh(s / cap)
                new_m = max(m, s)
                correction = math.exp(m - new_m) if m != -math.inf else 0.0
                p = math.exp(s - new_m)
                denom = denom * correction + p
                acc = acc * correction + p * v[j, g]
                m = new_m
            out[i, h * d:(h + 1) * d] = acc / denom
    return linear(out, w[prefix + "o_proj.weight"], w.get(prefix + "o_proj.bias"))


def gated_mlp(x, w, prefix, names, act):
    """down(act(gate x) * up x); names = (gate, up, down) tensor name stems under prefix."""
    gate, up, down = names
    return linear(act(linear(x, w[prefix + gate + ".weight"])) * linear(x, w[prefix + up + ".weight"]),
                  w[prefix + down + ".weight"])


def _moe_prefix(cfg, layer):
    return f"model.layers.{layer}." + ("block_sparse_moe." if family(cfg) == "mixtral" else "mlp.")


def _expert_names(cfg):
    return ("w1", "w3", "w2") if family(cfg) == "mixtral" else ("gate_proj", "up_proj", "down_proj")


def route(x, w, cfg, layer):
    """Router of one sparse layer: (probabilities [T, E], chosen experts [T, k] best first, weights [T, k])."""
    kind = family(cfg)
    k = get(cfg, "num_experts_per_tok")
    logits = linear(x, w[_moe_prefix(cfg, layer) + "gate.weight"])
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    chosen = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, chosen, axis=-1)
    if kind == "mixtral" or get(cfg, "norm_topk_prob"):
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return probs, chosen, weights


def moe_block(x, w, cfg, layer, record=None):
    """Vectorised sparse block: every expert on every token, combined with a dense [T, E] weight matrix."""
    kind = family(cfg)
    prefix = _moe_prefix(cfg, layer)
    act = activation(get(cfg, "hidden_act"))
    probs, chosen, weights = route(x, w, cfg, layer)
    if record is not None:
        record.append({"layer": layer, "probs": probs, "chosen": chosen})
    E = num_experts(cfg)
    dense = np.zeros((x.shape[0], E))
    np.put_along_axis(dense, chosen, weights, axis=-1)
    out = np.zeros_like(x)
    for e in range(E):
        if dense[:, e].any():
            out += dense[:, e:e + 1] * gated_mlp(x, w, prefix + f"experts.{e}.", _expert_names(cfg), act)
    if kind == "qwen2_moe":
        shared = gated_mlp(x, w, prefix + "shared_expert.", ("gate_proj", "up_proj", "down_proj"), act)
        gate = 1.0 / (1.0 + np.exp(-linear(x, w[prefix + "shared_expert_gate.weight"])))   # [T, 1]
        out = out + gate * shared
    return out


def moe_block_loop(x, w, cfg, layer):
    """Second formulation for the self-test: token by token, softmax, a sort by probability, the top k."""
    kind = family(cfg)
    prefix = _moe_prefix(cfg, layer)
    act = activation(get(cfg, "hidden_act"))
    k = get(cfg, "num_experts_per_tok")
    gate_w = w[prefix + "gate.weight"]
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        logits = [float(np.dot(row, x[t])) for row in gate_w]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        p = [e / total for e in exps]
        order = sorted(range(len(p)), key=lambda e: -p[e])[:k]
        kept = [p[e] for e in order]
        if kind == "mixtral" or get(cfg, "norm_topk_prob"):
            s = sum(kept)
            kept = [v / s for v in kept]
        for e, pw in zip(order, kept):
            out[t] += pw * gated_mlp(x[t:t + 1], w, prefix + f"experts.{e}.", _expert_names(cfg), act)[0]
        if kind == "qwen2_moe":
            shared = gated_mlp(x[t:t + 1], w, prefix + "shared_expert.", ("gate_proj", "up_proj", "down_proj"),
                               act)[0]
            g = float(np.dot(w[prefix + "shared_expert_gate.weight"][0], x[t]))
            out[t] += shared / (1.0 + math.exp(-g))
    return out


# --------------------------------------------------------------------- model
def _run(weights, cfg, token_ids, record=None):
    kind = family(cfg)
    eps = get(cfg, "rms_norm_eps")
    ids = np.asarray(token_ids, dtype=np.int64)
    positions = np.arange(len(ids), dtype=np.float64)
    embed = weights["model.embed_tokens.weight"]
    h = embed[ids].astype(np.float64)
    gemma = kind in GEMMA
    if gemma:
        h = h * math.sqrt(cfg["hidden_size"])
    for i, spec in enumerate(layer_plan(cfg)):
        p = f"model.layers.{i}."
        if gemma:
            act = activation(get(cfg, "hidden_activation") or "gelu_pytorch_tanh")
            x = rms_norm(h, weights[p + "input_layernorm.weight"], eps, gemma=True)
            a = attention(x, weights, p + "self_attn.", cfg, spec, positions)
            h = h + rms_norm(a, weights[p + "post_attention_layernorm.weight"], eps, gemma=True)
            x = rms_norm(h, weights[p + "pre_feedforward_layernorm.weight"], eps, gemma=True)
            m = gated_mlp(x, weights, p + "mlp.", ("gate_proj", "up_proj", "down_proj"), act)
            h = h + rms_norm(m, weights[p + "post_feedforward_layernorm.weight"], eps, gemma=True)
        else:
            x = rms_norm(h, weights[p + "input_layernorm.weight"], eps)
            h = h + attention(x, weights, p + "self_attn.", cfg, spec, positions)
            x = rms_norm(h, weights[p + "post_attention_layernorm.weight"], eps)
            if spec["moe"]:
                h = h + moe_block(x, weights, cfg, i, record)
            else:
                if record is not None:
                    record.append({"layer": i, "probs": None, "chosen": None})
                h = h + gated_mlp(x, weights, p + "mlp.", ("gate_proj", "up_proj", "down_proj"),
                                  activation(get(cfg, "hidden_act")))
    h = rms_norm(h, weights["model.norm.weight"], eps, gemma=gemma)
    head = embed if get(cfg, "tie_word_embeddings") else weights["lm_head.weight"]
    logits = h @ head.T
    if gemma:
        logits = softcap(logits, get(cfg, "final_logit_softcapping"))
    return logits


def forward(weights, hf_config, token_ids):
    """float64 logits [len(token_ids), vocab] for positions 0..T-1."""
    return _run(weights, hf_config, token_ids)


def routing(weights, cfg, token_ids):
    """Per layer: None for a dense layer, else {"chosen": int [T, k] best first, "probs": [T, E] router softmax}."""
    record = []
    if family(cfg) in MOE:
        _run(weights, cfg, token_ids, record)
    else:
        return [None] * cfg["num_hidden_layers"]
    return [None if r["chosen"] is None else {"chosen": r["chosen"], "probs": r["probs"]} for r in record]


def expert_choices(weights, cfg, token_ids):
    """Per layer: None for a dense layer, else int array [T, top_k] of the chosen experts (best first)."""
    return [None if r is None else r["chosen"] for r in routing(weights, cfg, token_ids)]


def router_margin(weights, cfg, token_ids):
    """The smallest gap, over tokens and sparse layers, between the k-th and (k+1)-th router probability (how far
    the choices are from a tie); inf for a dense model or when k = E."""
    margin = math.inf
    for r in routing(weights, cfg, token_ids):
        if r is None:
            continue
        s = -np.sort(-r["probs"], axis=-1)
        k = r["chosen"].shape[1]
        if k < s.shape[1]:
            margin = min(margin, float((s[:, k - 1] - s[:, k]).min()))
    return margin


# ------------------------------------------------------------------ self-test
def _tiny_config(kind):
    base = {"model_type": kind, "hidden_size": 16, "intermediate_size": 12, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "max_position_embeddings": 64}
    if kind == "gemma2":
        base.update(head_dim=6, query_pre_attn_scalar=10, sliding_window=3, attn_logit_softcapping=1.5,
                    final_logit_softcapping=2.0, rms_norm_eps=1e-6)
    elif kind == "gemma3_text":
        base.update(head_dim=6, query_pre_attn_scalar=10, sliding_window=3, sliding_window_pattern=2,
                    rope_theta=1e6, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 3.0},
                    final_logit_softcapping=None, attn_logit_softcapping=None)
    elif kind == "mixtral":
        base.update(num_local_experts=5, num_experts_per_tok=2, sliding_window=4)
    elif kind == "qwen2_moe":
        base.update(num_experts=5, num_experts_per_tok=2, moe_intermediate_size=6,
                    shared_expert_intermediate_size=10, norm_topk_prob=False, mlp_only_layers=[1])
    elif kind == "qwen3_moe":
        base.update(num_experts=5, num_experts_per_tok=3, moe_intermediate_size=6, head_dim=6, norm_topk_prob=True,
                    decoder_sparse_step=2)
    return base


def _tiny_weights(rng, cfg):
    sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tokenizer")
    import hf_folder  # noqa: E402  (tests/tokenizer/hf_folder.py)
    return hf_folder.family_weights(rng, cfg)


def selftest():
    rng = np.random.default_rng(1234)
    failures = []

    def check(ok, message):
        print(("ok   " if ok else "FAIL ") + message)
        if not ok:
            failures.append(message)

    # The window rule: W keys counting the query itself, causal.
    m = visible(10, 4)
    check(all(m[q].sum() == min(q + 1, 4) and m[q, max(0, q - 3):q + 1].all() for q in range(10)),
          "sliding window 4: query q sees keys max(0, q-3)..q")
    check(visible(6, None).sum() == 21, "no window: causal")

    # Which layers slide, from which keys.
    g2 = {"model_type": "gemma2", "num_hidden_layers": 4, "hidden_size": 8, "num_attention_heads": 2,
          "sliding_window": 5}
    check([s["sliding"] for s in layer_plan(g2)] == [True, False, True, False], "gemma2 default: even layers slide")
    g2t = dict(g2, layer_types=["full_attention", "sliding_attention", "full_attention", "full_attention"])
    check([s["sliding"] for s in layer_plan(g2t)] == [False, True, False, False], "gemma2: layer_types wins")
    g3 = {"model_type": "gemma3_text", "num_hidden_layers": 7, "hidden_size": 8, "num_attention_heads": 2,
          "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    plan = layer_plan(g3)
    check([s["sliding"] for s in plan] == [True] * 5 + [False, True], "gemma3 default pattern 6: layer 5 full")
    check(plan[0]["rope_theta"] == 10000.0 and plan[0]["rope_scaling"] is None and plan[5]["rope_theta"] == 1e6
          and plan[5]["rope_scaling"]["factor"] == 8.0, "gemma3: local RoPE 1e4 unscaled, global 1e6 scaled")
    check([s["sliding"] for s in layer_plan(dict(g3, sliding_window_pattern=3))] ==
          [True, True, False, True, True, False, True], "gemma3 sliding_window_pattern 3")
    q2 = {"model_type": "qwen2_moe", "num_hidden_layers": 6, "hidden_size": 8, "num_attention_heads": 2,
          "num_experts": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]}
    check([s["moe"] for s in layer_plan(q2)] == [False, True, False, False, False, True],
          "qwen MoE layers: (i+1) % decoder_sparse_step == 0 and not in mlp_only_layers")

    # GELU tanh against the exact GELU (they differ by < 1e-3) and a known value.
    xs = np.linspace(-4, 4, 81)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xs])
    check(np.abs(gelu_tanh(xs) - exact).max() < 1e-3 and abs(gelu_tanh(np.array(1.0)) - 0.8411919906) < 1e-9,
          "gelu tanh approximation")

    # RoPE: rotations keep norms, q(m).k(n) depends on m - n only.
    x = rng.normal(size=(1, 1, 8))
    y = rng.normal(size=(1, 1, 8))
    for theta, scaling in ((10000.0, None), (1e6, {"rope_type": "linear", "factor": 2.0})):
        a = float(np.sum(rope(x, np.array([7.0]), theta, scaling) * rope(y, np.array([3.0]), theta, scaling)))
        b = float(np.sum(rope(x, np.array([14.0]), theta, scaling) * rope(y, np.array([10.0]), theta, scaling)))
        c = float(np.linalg.norm(rope(x, np.array([5.0]), theta, scaling)))
        check(abs(a - b) < 1e-12 and abs(c - np.linalg.norm(x)) < 1e-12, f"rope {scaling}: relative, isometric")
    lin = rope(x, np.array([6.0]), 1e4, {"rope_type": "linear", "factor": 2.0})
    check(np.allclose(lin, rope(x, np.array([3.0]), 1e4, None)), "linear factor 2 at position 6 = default at 3")

    for kind in FAMILIES:
        cfg = _tiny_config(kind)
        w = _tiny_weights(rng, cfg)
        T = 9
        x = rng.normal(size=(T, cfg["hidden_size"]))
        positions = np.arange(T, dtype=np.float64)
        for i, spec in enumerate(layer_plan(cfg)):
            p = f"model.layers.{i}.self_attn."
            a = attention(x, w, p, cfg, spec, positions)
            b = attention_loop(x, w, p, cfg, spec, positions)
            err = np.abs(a - b).max() / np.abs(b).max()
            check(err < 1e-12, f"{kind} layer {i} ({'window ' + str(spec['window']) if spec['window'] else 'full'}"
                  f"): vectorised attention = loop attention ({err:.1e})")
            if spec["window"] is not None:  # negative control: the loop tells a window one key wider apart
                wider = attention(x, w, p, cfg, dict(spec, window=spec["window"] + 1), positions)
                check(np.abs(wider - b).max() / np.abs(b).max() > 1e-6,
                      f"{kind} layer {i}: a window of {spec['window'] + 1} differs (negative control)")
            if spec["moe"]:
                a = moe_block(x, w, cfg, i)
                b = moe_block_loop(x, w, cfg, i)
                err = np.abs(a - b).max() / np.abs(b).max()
                check(err < 1e-12, f"{kind} layer {i}: vectorised MoE = per-token loop ({err:.1e})")
        # Causality: the logits of a prefix do not change when tokens are appended.
        ids = list(rng.integers(0, cfg["vocab_size"], 12))
        full = forward(w, cfg, ids)
        part = forward(w, cfg, ids[:7])
        check(np.abs(full[:7] - part).max() < 1e-12, f"{kind}: causal (prefix logits unchanged)")
        choices = expert_choices(w, cfg, ids)
        plan = layer_plan(cfg)
        check(all((c is None) == (not s["moe"]) for c, s in zip(choices, plan)), f"{kind}: choices on MoE layers")
        if kind in GEMMA:
            cap = get(cfg, "final_logit_softcapping")
            if cap is not None:
                check(np.abs(full).max() < cap, f"{kind}: logits within the final soft-cap")

    # Receptive field: with every layer sliding (window W, L layers), token 0 reaches only positions < L*(W-1)+1.
    cfg = dict(_tiny_config("gemma2"), layer_types=["sliding_attention"] * 3)
    w = _tiny_weights(rng, cfg)
    ids = list(rng.integers(1, 50, 12))
    other = [ids[0] % 49 + 1] + ids[1:]
    diff = np.abs(forward(w, cfg, ids) - forward(w, cfg, other)).max(axis=-1)
    reach = 3 * (3 - 1) + 1
    check(diff[reach:].max() < 1e-12 and diff[reach - 1] > 1e-9,
          f"sliding layers only: token 0 reaches positions < {reach} and no further")

    # Cross-check against the Llama reference: one expert, top 1, is a Llama with that expert as its MLP.
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import llama_reference  # noqa: E402
    for kind in ("mixtral", "qwen3_moe"):
        cfg = dict(_tiny_config(kind), num_experts_per_tok=1, decoder_sparse_step=1, mlp_only_layers=[],
                   rope_theta=10000.0, sliding_window=None)
        cfg["num_local_experts" if kind == "mixtral" else "num_experts"] = 1
        if kind == "qwen3_moe":
            cfg["moe_intermediate_size"] = cfg["intermediate_size"]
        w = _tiny_weights(rng, cfg)
        llama_w = {}
        for name, value in w.items():
            for src, dst in (("block_sparse_moe.experts.0.w1", "mlp.gate_proj"),
                             ("block_sparse_moe.experts.0.w3", "mlp.up_proj"),
                             ("block_sparse_moe.experts.0.w2", "mlp.down_proj"), ("mlp.experts.0.", "mlp.")):
                name = name.replace(src, dst)
            llama_w[name] = value
        lcfg = {"rms_norm_eps": get(cfg, "rms_norm_eps"), "num_hidden_layers": cfg["num_hidden_layers"],
                "num_attention_heads": cfg["num_attention_heads"], "num_key_value_heads": cfg["num_key_value_heads"],
                "head_dim": head_dim(cfg), "hidden_size": cfg["hidden_size"], "rope_theta": 10000.0,
                "tie_word_embeddings": False}
        ids = list(rng.integers(0, 50, 10))
        a, b = forward(w, cfg, ids), llama_reference.forward(llama_w, lcfg, ids)
        err = np.abs(a - b).max() / np.abs(b).max()
        check(err < 1e-12, f"{kind} with one expert, top 1 = llama_reference ({err:.1e})")

    print(f"{'FAIL' if failures else 'PASS'}: {len(failures)} failed")
    return 1 if failures else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["selftest"]:
        return selftest()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
