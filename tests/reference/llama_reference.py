#!/usr/bin/python3
r"""Independent float64 reference for strata's Llama forward pass.

This module shares no code or logic with strata's C++ runtime: it was written
from the Hugging Face transformers Llama semantics (LlamaForCausalLM, "default"
RoPE with the rotate-half convention, grouped-query attention, SwiGLU MLP,
RMSNorm) and reads checkpoints only through the documented on-disk format
(manifest.json + HDF5 shards holding slices with global_shape/global_offset).
Everything is computed in float64 with NumPy.

Library use:
    weights, config, manifest = load_checkpoint("ck")
    logits = forward(weights, config, tokenize("Hello"))   # [T, vocab]

CLI (checks a `strata generate --record-logits` results file):
    llama_reference.py compare --checkpoint DIR --results RESULTS.jsonl \
        [--tolerance 1e-4] [--check-greedy | --sampled] [--perturb]
Exit status 0 when every recorded logit row matches the reference within the
tolerance (max|ref - strata| / max|ref|), 1 otherwise. --perturb adds 1e-2 to
one weight first: a negative control that must make the comparison fail.
Needs Debian's python (/usr/bin/python3) with numpy and h5py.
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np

PERTURBED_TENSOR = "model.layers.0.input_layernorm.weight"


# ----------------------------------------------------------------- checkpoint
def _dequantize(raw, fmt):
    """llama.cpp's GGUF blocks of 32 weights, from the format's definition: Q8_0 = f16 scale d, 32 int8 q, w = q * d;
    Q4_0 = f16 d, 16 bytes whose low nibbles are weights 0-15 and high nibbles 16-31, w = (nibble - 8) * d.
    raw: uint8 [rows, row bytes] -> float64 [rows, weights]."""
    size = {"q8_0": 34, "q4_0": 18}[fmt]
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, size)
    d = blocks[:, :, :2].copy().view("<f2").astype(np.float32)            # [rows, nb, 1]
    if fmt == "q8_0":
        q = blocks[:, :, 2:].view(np.int8).astype(np.float32)             # [rows, nb, 32]
    else:
        packed = blocks[:, :, 2:]
        q = np.concatenate([(packed & 0x0F), (packed >> 4)], axis=2).astype(np.float32) - 8
    return (q * d).reshape(rows, -1).astype(np.float64)                    # each product exact in f32


def _read_dataset(dset, dtype_name):
    """Reads one HDF5 dataset as float64, converting 2-byte floats from raw bits and quantized blocks by their
    definition."""
    ftype = dset.id.get_type()
    size = ftype.get_size()
    if "quantization" in dset.attrs:
        fmt = dset.attrs["quantization"]
        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        assert dtype_name == fmt, f"{dset.name}: {fmt} blocks in a {dtype_name} checkpoint"
        return _dequantize(np.asarray(dset[...], dtype=np.uint8), fmt)
    if size == 4:
        return np.asarray(dset[...], dtype=np.float32).astype(np.float64)
    assert size == 2, f"{dset.name}: unsupported element size {size}"
    bits = np.empty(dset.shape, dtype=np.uint16)
    # Memory type == file type, so HDF5 copies the bits without converting.
    dset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=ftype)
    if ftype.get_order() == h5py.h5t.ORDER_BE:
        bits = bits.byteswap()
    fields = ftype.get_fields()  # (sign pos, exp pos, exp size, mant pos, mant size)
    if fields == (15, 10, 5, 0, 10) and ftype.get_ebias() == 15:
        assert dtype_name == "f16", f"{dset.name}: IEEE half in a {dtype_name} checkpoint"
        return bits.view(np.float16).astype(np.float64)
    if fields == (15, 7, 8, 0, 7) and ftype.get_ebias() == 127:
        assert dtype_name == "bf16", f"{dset.name}: bfloat16 in a {dtype_name} checkpoint"
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    raise ValueError(f"{dset.name}: unknown 2-byte float layout {fields}")


def _fletcher32(data):
    """HDF5's Fletcher32 (H5_checksum_fletcher32) of bytes: big-endian 16-bit words, blocks of 360 words."""
    words = np.frombuffer(data, dtype=">u2").astype(np.uint64)
    sum1 = sum2 = 0
    for start in range(0, len(words), 360):
        block = words[start:start + 360]
        n = len(block)
        # word by word: sum1 += w; sum2 += sum1 (mod 2^32), then both folded to 16 bits plus carry
        sum2 = (sum2 + n * sum1 + int(np.dot(np.arange(n, 0, -1, dtype=np.uint64), block))) & 0xFFFFFFFF
        sum1 = (sum1 + int(block.sum())) & 0xFFFFFFFF
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


def _check_block_sums(dset):
    """Format 2: the dataset's stored bytes, block by block, against its `fletcher32` attribute."""
    block = int(dset.attrs["fletcher32_block_bytes"])
    sums = [int(s) for s in dset.attrs["fletcher32"]]
    raw = np.empty(dset.shape, dtype=f"V{dset.id.get_type().get_size()}")
    dset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=dset.id.get_type())
    data = raw.tobytes()
    assert len(sums) == (len(data) + block - 1) // block, f"{dset.name}: {len(sums)} block sums"
    for i, expected in enumerate(sums):
        assert _fletcher32(data[i * block:(i + 1) * block]) == expected, f"{dset.name}: block {i} checksum"


def load_checkpoint(directory):
    """Returns ({HF tensor name: float64 full tensor}, model config, manifest)."""
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == "strata-checkpoint", manifest.get("format")
    assert manifest["format_version"] in (1, 2), manifest.get("format_version")
    dtype_name = manifest["dtype"]
    full, covered = {}, {}
    for shard in manifest["shards"]:
        with h5py.File(os.path.join(directory, shard["file"]), "r") as h5:
            for name, dset in h5.items():
                shape = tuple(int(s) for s in dset.attrs["global_shape"])
                offset = tuple(int(o) for o in dset.attrs["global_offset"])
                assert len(shape) == len(offset) == dset.ndim, name
                if name not in full:
                    full[name] = np.zeros(shape)
                    covered[name] = np.zeros(shape, dtype=bool)
                assert full[name].shape == shape, f"{name}: inconsistent global_shape"
                data = _read_dataset(dset, dtype_name)
                if manifest["format_version"] >= 2:
                    _check_block_sums(dset)
                region = tuple(slice(o, o + n) for o, n in zip(offset, data.shape))
                assert all(o + n <= s for o, n, s in zip(offset, data.shape, shape)), name
                prior = covered[name][region]
                assert np.array_equal(full[name][region][prior], data[prior]), \
                    f"{name}: overlapping slices disagree"
                full[name][region] = data
                covered[name][region] = True
    for name, mask in covered.items():
        assert mask.all(), f"{name}: {int((~mask).sum())} elements not covered by any shard"
    return full, manifest["model"], manifest


# ---------------------------------------------------------------------- model
def tokenize(text, bos_token_id=256):
    """Byte tokenizer: BOS followed by the UTF-8 bytes."""
    return [bos_token_id] + list(text.encode("utf-8"))


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


plain_linear = linear  # tests may swap `linear` for a variant (quantized inputs) and restore this


def round_to_bf16(x):
    """x as float32 (what an engine's activations hold) rounded to bfloat16, to nearest even, back in float64."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def bf16_input_linear(x, w, b=None):
    """linear of a bf16 dot-product kernel: the inputs rounded to bf16, the products and sums exact."""
    return plain_linear(round_to_bf16(x), w, b)


def round_to_f16(x):
    """x as float32 rounded to float16 (to nearest even, as an f16 KV cache stores it), back in float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float64)


def cached(x):
    """What the KV cache gives back for keys or values x: x itself (an f32 cache, whose f32 rounding is below this
    reference's tolerances), or round_to_f16(x) when compare runs with --f16-kv."""
    return x


plain_cached = cached  # as plain_linear: compare swaps `cached` and restores this


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def inverse_frequencies(head_dim, theta, scaling):
    """HF rotary frequencies: "default", "linear" (all divided by factor) or "llama3" (transformers'
    _compute_llama3_parameters: wavelengths above original_context / low_freq_factor divided by factor, below
    original_context / high_freq_factor kept, a linear blend in the smoothed band between)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_context = scaling["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
        return np.where(medium, smoothed, scaled)
    if kind in ("longrope", "su"):  # Phi-3 within its original context: the short factors
        return inv_freq / np.asarray(scaling["short_factor"], dtype=np.float64)
    assert kind == "default", f"rope_scaling {kind} not implemented in the reference"
    return inv_freq


def rope_attention_factor(cfg):
    """transformers' _compute_longrope_parameters: cos and sin are multiplied by this factor (1 otherwise)."""
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) not in ("longrope", "su"):
        return 1.0
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]
    original = scaling.get("original_max_position_embeddings") or cfg["original_max_position_embeddings"]
    factor = cfg["max_position_embeddings"] / original
    return 1.0 if factor <= 1.0 else float(np.sqrt(1 + np.log(factor) / np.log(original)))


def long_rope_rows(cfg, positions, prompt_tokens):
    """Which positions rotate with longrope's long_factor, as transformers' generation does: a forward pass whose
    longest sequence exceeds original_max_position_embeddings uses the long factors (longrope_frequency_update), so a
    prompt longer than it uses them throughout, and a shorter prompt's generated tokens switch to them at the first
    position past it (keys already cached keep theirs). prompt_tokens None: one forward pass over all positions."""
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) not in ("longrope", "su") or not scaling.get("long_factor"):
        return np.zeros(len(positions), dtype=bool)
    original = scaling.get("original_max_position_embeddings") or cfg["original_max_position_embeddings"]
    prompt = len(positions) if prompt_tokens is None else prompt_tokens
    return np.maximum(prompt, np.asarray(positions) + 1) > original


def rope(x, positions, theta, scaling=None, factor=1.0, long_rows=None):
    """x: [T, heads, head_dim]; HF rotary embedding (rotate-half), cos and sin times `factor` (longrope); rows in
    long_rows use longrope's long_factor."""
    head_dim = x.shape[-1]
    inv_freq = inverse_frequencies(head_dim, theta, scaling)
    angles = np.outer(positions, inv_freq)                  # [T, head_dim/2]
    if long_rows is not None and long_rows.any():
        long_freq = inverse_frequencies(head_dim, theta, dict(scaling, short_factor=scaling["long_factor"]))
        angles[long_rows] = np.outer(np.asarray(positions)[long_rows], long_freq)
    emb = np.concatenate([angles, angles], axis=-1)[:, None, :]  # [T, 1, head_dim]
    return x * (np.cos(emb) * factor) + rotate_half(x) * (np.sin(emb) * factor)


def attention(x, w, prefix, cfg, positions, prompt_tokens=None):
    T = x.shape[0]
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    q = linear(x, w[prefix + "q_proj.weight"], w.get(prefix + "q_proj.bias"))
    k = linear(x, w[prefix + "k_proj.weight"], w.get(prefix + "k_proj.bias"))
    v = linear(x, w[prefix + "v_proj.weight"], w.get(prefix + "v_proj.bias"))
    q, k = q.reshape(T, n_heads, head_dim), k.reshape(T, n_kv, head_dim)
    if prefix + "q_norm.weight" in w:  # Qwen3Attention: q_norm / k_norm (RMSNorm over head_dim) before the rotary
        q = rms_norm(q, w[prefix + "q_norm.weight"], cfg["rms_norm_eps"])
        k = rms_norm(k, w[prefix + "k_norm.weight"], cfg["rms_norm_eps"])
    factor = rope_attention_factor(cfg)
    long_rows = long_rope_rows(cfg, positions, prompt_tokens)
    q = rope(q, positions, cfg["rope_theta"], cfg.get("rope_scaling"), factor, long_rows)
    k = rope(k, positions, cfg["rope_theta"], cfg.get("rope_scaling"), factor, long_rows)
    k, v = cached(k), cached(v.reshape(T, n_kv, head_dim))
    group = n_heads // n_kv
    k = np.repeat(k, group, axis=1)  # query head h reads kv head h // group
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(T, n_heads * head_dim)
    return linear(out, w[prefix + "o_proj.weight"], w.get(prefix + "o_proj.bias"))


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(weights, config, token_ids, prompt_tokens=None):
    """float64 logits [len(token_ids), vocab] for positions 0..T-1 (the first prompt_tokens of them the prompt, for
    longrope's choice of factors; None: all of them, one forward pass)."""
    eps = config["rms_norm_eps"]
    ids = np.asarray(token_ids, dtype=np.int64)
    positions = np.arange(len(ids), dtype=np.float64)
    h = weights["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, weights[p + "input_layernorm.weight"], eps)
        h = h + attention(x, weights, p + "self_attn.", config, positions, prompt_tokens)
        x = rms_norm(h, weights[p + "post_attention_layernorm.weight"], eps)
        gate = linear(x, weights[p + "mlp.gate_proj.weight"])
        up = linear(x, weights[p + "mlp.up_proj.weight"])
        h = h + linear(silu(gate) * up, weights[p + "mlp.down_proj.weight"])
    h = rms_norm(h, weights["model.norm.weight"], eps)
    head = weights["model.embed_tokens.weight"] if config.get("tie_word_embeddings") \
        else weights["lm_head.weight"]
    return linear(h, head)


# -------------------------------------------------------------------- compare
def compare(args):
    global linear, cached
    linear = bf16_input_linear if args.bf16_inputs else plain_linear
    cached = round_to_f16 if args.f16_kv else plain_cached
    weights, config, manifest = load_checkpoint(args.checkpoint)
    if args.perturb:
        weights[PERTURBED_TENSOR] = weights[PERTURBED_TENSOR] + 1e-2
        print(f"perturbed {PERTURBED_TENSOR} by +1e-2 (negative control)")
    bos = manifest.get("tokenizer", {}).get("bos_token_id", config["bos_token_id"])
    failures, rows, max_err = 0, 0, 0.0
    agree = disagree = ambiguous = 0
    with open(args.results) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in records:
        rid, generated = rec["id"], list(rec["token_ids"])
        prompt_ids = tokenize(rec["prompt"], bos)
        if len(prompt_ids) != rec["prompt_tokens"]:
            print(f"FAIL record {rid}: prompt has {len(prompt_ids)} tokens, "
                  f"strata says {rec['prompt_tokens']}")
            failures += 1
            continue
        recorded = np.asarray(rec.get("logits", []), dtype=np.float64)
        if recorded.shape[0] != len(generated):
            print(f"FAIL record {rid}: {recorded.shape[0]} logit rows for "
                  f"{len(generated)} generated tokens")
            failures += 1
            continue
        if not generated:
            continue
        P, n = len(prompt_ids), len(generated)
        ref = forward(weights, config, prompt_ids + generated[:-1])[P - 1:P + n - 1]
        # strata's records do not say how a token was chosen: the user does (--sampled).
        greedy = not args.sampled and not rec.get("temperature")
        for k in range(n):
            scale = np.max(np.abs(ref[k]))
            err = np.max(np.abs(ref[k] - recorded[k])) / scale
            rows += 1
            max_err = max(max_err, err)
            if not err <= args.tolerance:
                failures += 1
                print(f"FAIL record {rid} row {k}: error {err:.3e} > {args.tolerance:g}")
            if greedy:
                top2 = np.sort(ref[k])[-2:]
                if top2[1] - top2[0] <= 2 * args.tolerance * scale:
                    ambiguous += 1
                elif int(np.argmax(ref[k])) == generated[k]:
                    agree += 1
                else:
                    disagree += 1
                    if args.check_greedy:
                        failures += 1
                        print(f"FAIL record {rid} row {k}: reference argmax "
                              f"{int(np.argmax(ref[k]))}, strata chose {generated[k]}")
    greedy_summary = "not checked (--sampled)" if args.sampled else \
        f"{agree} agree, {disagree} disagree, {ambiguous} within margin"
    print(f"{'FAIL' if failures else 'PASS'}: {len(records)} records, {rows} logit rows, "
          f"max error {max_err:.3e} (tolerance {args.tolerance:g}); greedy argmax "
          f"{greedy_summary}")
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="check strata's recorded logits against this reference")
    c.add_argument("--checkpoint", required=True, help="strata checkpoint directory")
    c.add_argument("--results", required=True, help="strata generate --record-logits JSONL")
    c.add_argument("--tolerance", type=float, default=1e-4,
                   help="max allowed max|ref - strata| / max|ref| per row")
    c.add_argument("--check-greedy", action="store_true",
                   help="fail when a confident reference argmax differs from strata's token")
    c.add_argument("--sampled", action="store_true",
                   help="tokens were sampled (temperature > 0): skip the argmax comparison")
    c.add_argument("--bf16-inputs", action="store_true",
                   help="round every product's inputs to bf16 (the engine ran bf16 weights with bf16 dot products)")
    c.add_argument("--f16-kv", action="store_true",
                   help="round keys and values to float16 (the engine ran with an f16 KV cache: --kv-cache-dtype "
                        "f16, or auto for a 16-bit checkpoint on a CPU)")
    c.add_argument("--perturb", action="store_true",
                   help=f"add 1e-2 to {PERTURBED_TENSOR} first (negative control)")
    args = parser.parse_args(argv)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
