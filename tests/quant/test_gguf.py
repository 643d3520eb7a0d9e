"""strata convert --gguf: a Llama model written as GGUF files by our own writer (tests/quant/gguf_writer.py, as
llama.cpp's converter lays them out: its tensor names, q/k rows interleaved, row length first), each also opened by
llama.cpp's own gguf reader (libggml-base.so from npm, pinned) to check the writer; the vocabulary is Llama 3's real
tokenizer.json turned into GGUF metadata (tokens, merges, token types, pre-tokenizer llama-bpe).
- f32 tensors: the converted checkpoint's tokenizer gives the reference library's ids (Hugging Face tokenizers,
  Node binding) on a many-script text set, and generation matches the float64 reference on the original weights
  (1e-4) at tp 1 and tp 2 with the same greedy tokens.
- q8_0 tensors (quantized by llama.cpp), converted for tp 2: the checkpoint stores exactly llama.cpp's blocks of the
  original matrices (read back by the reference by the format's definition), and runs give bit for bit the logits of
  quantizing the f32 model on load.
- Refused, naming what: a truncated file (the offset), a tensor of a type strata does not read (the tensor and
  type), another architecture (the key and value).
"""
import ctypes
import math
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
for sub in ("cli", "reference", "tokenizer"):
    sys.path.insert(0, os.path.join(HERE, "..", sub))
sys.path.insert(0, HERE)
from harness import Harness  # noqa: E402
import gguf_writer  # noqa: E402
import hf_folder  # noqa: E402
import llama_reference  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, files = npm_fixtures.fetch(packages={**npm_fixtures.PACKAGES, **npm_fixtures.LLAMA_CPP})
ggml = ctypes.CDLL(os.path.join(npm_fixtures.llama_cpp_bins(modules), "libggml-base.so"))


class GgufParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


ggml.gguf_init_from_file.restype = ctypes.c_void_p
ggml.gguf_init_from_file.argtypes = [ctypes.c_char_p, GgufParams]
for fn, result in (("gguf_get_n_tensors", ctypes.c_int64), ("gguf_get_n_kv", ctypes.c_int64)):
    getattr(ggml, fn).restype = result
    getattr(ggml, fn).argtypes = [ctypes.c_void_p]
ggml.gguf_find_key.restype = ctypes.c_int64
ggml.gguf_find_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
ggml.gguf_get_val_str.restype = ctypes.c_char_p
ggml.gguf_get_val_str.argtypes = [ctypes.c_void_p, ctypes.c_int64]
ggml.gguf_free.argtypes = [ctypes.c_void_p]
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p]
ggml.dequantize_row_q8_0.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]


def llama_cpp_reads(path, tensors, kv):
    """llama.cpp's gguf reader opens the file and finds its tensors, metadata and architecture."""
    ctx = ggml.gguf_init_from_file(path.encode(), GgufParams(True, None))
    if not ctx:
        return False
    try:
        arch = ggml.gguf_get_val_str(ctx, ggml.gguf_find_key(ctx, b"general.architecture"))
        return ggml.gguf_get_n_tensors(ctx) == tensors and ggml.gguf_get_n_kv(ctx) == kv and arch == b"llama"
    finally:
        ggml.gguf_free(ctx)


def q8_0(w):
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.zeros(w.size // 32 * 34, dtype=np.uint8)
    ggml.ggml_quantize_chunk(8, w.ctypes.data, out.ctypes.data, 0, w.shape[0], w.shape[1], None)
    return out.tobytes(), "q8_0"


def q8_0_round_trip(w):
    raw = np.frombuffer(q8_0(w)[0], dtype=np.uint8).copy()
    out = np.zeros(w.size, dtype=np.float32)
    ggml.dequantize_row_q8_0(raw.ctypes.data, out.ctypes.data, w.size)
    return out.reshape(w.shape).astype(np.float64)


# Llama 3's vocabulary as GGUF metadata, as llama.cpp's converter writes it.
with open(files["llama3"], encoding="utf-8") as f:
    spec = json.load(f)
V = max(max(spec["model"]["vocab"].values()), max(a["id"] for a in spec["added_tokens"])) + 1
tokens, types = [None] * V, [1] * V
for text, i in spec["model"]["vocab"].items():
    tokens[i] = text
for a in spec["added_tokens"]:
    tokens[a["id"]], types[a["id"]] = a["content"], 3 if a["special"] else 4
h.check(all(t is not None for t in tokens), "every id of the Llama 3 vocabulary has a token")
merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
H, I, LAYERS, HEADS, KV = 64, 64, 2, 4, 2  # rows of 32 weights at tp 2 (o_proj, down_proj) for q8_0
weights = {k: np.asarray(v, dtype=np.float32).astype(np.float64)
           for k, v in hf_folder.llama_weights(np.random.default_rng(9), V, H, I, LAYERS, HEADS, KV).items()}
metadata = {"general.architecture": "llama", "general.name": "strata test", "llama.context_length": 64,
            "llama.embedding_length": H, "llama.feed_forward_length": I, "llama.block_count": LAYERS,
            "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV, "llama.rope.freq_base": 10000.0,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": V, "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": gguf_writer.Int32s(types),
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": 128000,
            "tokenizer.ggml.eos_token_id": 128001, "tokenizer.ggml.add_bos_token": True}
cfg = {"hidden_size": H, "intermediate_size": I, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
       "num_key_value_heads": KV, "vocab_size": V, "rms_norm_eps": float(np.float32(1e-5)), "rope_theta": 10000.0,
       "tie_word_embeddings": False, "max_position_embeddings": 64}


def write_gguf(name, encode, meta=metadata, corrupt=None):
    path = h.path(name)
    tensors = gguf_writer.llama_tensors(weights, HEADS, KV, LAYERS, encode)
    if corrupt:
        tensors = corrupt(tensors)
    gguf_writer.write(path, meta, tensors)
    if not corrupt:  # (a q4_k tensor whose rows are not whole 256-weight blocks is refused by llama.cpp too)
        h.check(llama_cpp_reads(path, len(tensors), len(meta)), f"llama.cpp's gguf reader opens {name}")
    return path


texts = ["Hello world", "The quick brown fox jumps over the lazy dog — naïve café 😀", "数字 12345 и кириллица",
         "  indented\tcode(x) {\n  return 42;\n}", "<|begin_of_text|>special tokens stay whole"]
prompts = h.path("prompts.jsonl")
with open(prompts, "w", encoding="utf-8") as f:
    for k, t in enumerate(texts):
        f.write(json.dumps({"id": k, "prompt": t}) + "\n")
ref_ids = [r["ids"] for r in npm_fixtures.reference(modules, files["llama3"], prompts)]

f32_file = write_gguf("model-f32.gguf", lambda w: (w.tobytes(), "f32"))
ckpt = h.path("ckpt-f32")
h.run_ok(["convert", "--gguf", f32_file, "--output", ckpt])
out = h.run_ok(["tokenize", "--tokenizer", ckpt, "--input", prompts, "--jsonl"])
ours = [json.loads(line)["ids"] for line in out.split("\n") if line.startswith("{")]
h.check(ours == ref_ids, f"the GGUF vocabulary tokenizes as Hugging Face's library does:\n{ours}\n{ref_ids}")
runs = {}
for label, ranks, flags in [("1", 1, []), ("tp2", 2, ["-tp", 2])]:
    h.run_ok(["generate", "--model", ckpt, "--prompts", prompts, "--output", f"f32-{label}.jsonl", "--max-tokens", 5,
              "--record-logits", "-q", *flags], ranks=ranks)
    runs[label] = h.results(f"f32-{label}.jsonl")
worst = 0.0
for record, ids in zip(runs["1"], ref_ids):
    ids = [128000] + ids  # generate adds the BOS of tokenizer.ggml.bos_token_id (add_bos_token true)
    h.check(record["prompt_tokens"] == len(ids), f"prompt {record['id']}: {record['prompt_tokens']} tokens, "
            f"the reference {len(ids)}")
    full = ids + record["token_ids"][:-1]
    ref = llama_reference.forward(weights, cfg, full)[len(ids) - 1:]
    worst = max(worst, float(np.abs(np.array(record["logits"]) - ref).max() / np.abs(ref).max()))
h.check(worst <= 1e-4, f"f32 GGUF: logits vs the float64 reference on the original weights, error {worst:.2e}")
h.check([r["token_ids"] for r in runs["tp2"]] == [r["token_ids"] for r in runs["1"]], "tp 2: the same tokens")
print(f"f32 GGUF: tokenizer ids equal the reference's; logits max relative error {worst:.2e}")

q8_file = write_gguf("model-q8_0.gguf", q8_0)
qckpt = h.path("ckpt-q8_0")
h.run_ok(["convert", "--gguf", q8_file, "--output", qckpt, "-tp", 2])
stored, _, manifest = llama_reference.load_checkpoint(qckpt)
h.check(manifest["dtype"] == "q8_0" and all(
    np.array_equal(stored[n], q8_0_round_trip(w) if w.ndim == 2 else w) for n, w in weights.items()),
    "q8_0 GGUF: the checkpoint stores llama.cpp's blocks of the original matrices (q/k rows back in order)")
h.run_ok(["generate", "--model", qckpt, "--prompts", prompts, "--output", "q8-stored.jsonl", "--max-tokens", 5,
          "--record-logits", "-q", "-tp", 2], ranks=2)
h.run_ok(["generate", "--model", ckpt, "--prompts", prompts, "--output", "q8-onload.jsonl", "--max-tokens", 5,
          "--record-logits", "-q", "-tp", 2, "--quantize", "q8_0"], ranks=2)
h.check([r["logits"] for r in h.results("q8-stored.jsonl")] == [r["logits"] for r in h.results("q8-onload.jsonl")],
        "q8_0 GGUF at tp 2: logits bit-identical to quantizing the f32 model on load")

# Llama 3.1+ files: the llama3 rope scaling as rope_freqs.weight, computed as llama.cpp's converter does (float32
# frequencies, one divisor each), checked against the float64 reference applying the llama3 parameters themselves.
# A short original context (64) puts the blended and the stretched bands inside a 64-position test.
llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def llama3_rope_freqs(head_dim, theta, s):
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    factors = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        old, low, high = s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"]
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(s["factor"])
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.asarray(factors, dtype=np.float32)


rope_freqs = llama3_rope_freqs(H // HEADS, 10000.0, llama3)
h.check(len(set(rope_freqs.tolist())) > 2, f"the test's rope_freqs have all three bands: {rope_freqs}")


def with_rope_freqs(factors):
    return lambda tensors: tensors + [("rope_freqs.weight", factors.tobytes(), [factors.size], "f32")]


path = write_gguf("llama31.gguf", lambda w: (w.tobytes(), "f32"), corrupt=with_rope_freqs(rope_freqs))
h.check(llama_cpp_reads(path, 3 + 9 * LAYERS + 1, len(metadata)), "llama.cpp's gguf reader opens llama31.gguf")
rckpt = h.path("ckpt-llama31")
h.run_ok(["convert", "--gguf", path, "--output", rckpt])
with open(os.path.join(rckpt, "manifest.json"), encoding="utf-8") as f:
    stored_scaling = json.load(f)["model"]["rope_scaling"]
h.check(stored_scaling["rope_type"] == "frequency_factors" and
        np.array_equal(np.float32(stored_scaling["factors"]), rope_freqs),
        f"the checkpoint keeps rope_freqs.weight as frequency factors: {stored_scaling}")
h.run_ok(["generate", "--model", rckpt, "--prompts", prompts, "--output", "llama31.jsonl", "--max-tokens", 5,
          "--record-logits", "-q",], ranks=1)
worst, scaled_cfg = 0.0, dict(cfg, rope_scaling=llama3)
for record, ids in zip(h.results("llama31.jsonl"), ref_ids):
    full = [128000] + ids + record["token_ids"][:-1]
    ref = llama_reference.forward(weights, scaled_cfg, full)[len(ids):]
    worst = max(worst, float(np.abs(np.array(record["logits"]) - ref).max() / np.abs(ref).max()))
unscaled = llama_reference.forward(weights, cfg, [128000] + ref_ids[1])[-1]
moved = float(np.abs(unscaled - llama_reference.forward(weights, scaled_cfg, [128000] + ref_ids[1])[-1]).max())
h.check(moved > 1e-3, f"the llama3 scaling changes the reference's logits ({moved:.2e}), so the test can see it")
h.check(worst <= 1e-4, f"GGUF with rope_freqs: logits vs the reference with llama3 rope_scaling, error {worst:.2e}")
print(f"GGUF with rope_freqs.weight: logits max relative error {worst:.2e} against the llama3 reference")
path = write_gguf("bad-rope-freqs.gguf", lambda w: (w.tobytes(), "f32"), corrupt=with_rope_freqs(rope_freqs[:5]))
code, out, _ = h.run(["convert", "--gguf", path, "--output", h.path("bad0")])
h.check(code not in (0, None) and "factors has 5 entries, head_dim / 2 = 8" in out, f"5 rope_freqs:\n{out[-600:]}")

# Refusals.
truncated = h.path("truncated.gguf")
with open(q8_file, "rb") as src, open(truncated, "wb") as dst:
    dst.write(src.read()[:os.path.getsize(q8_file) // 2])
code, out, _ = h.run(["convert", "--gguf", truncated, "--output", h.path("bad1")])
h.check(code not in (0, None) and "truncated" in out and "bytes" in out, f"a truncated GGUF:\n{out[-600:]}")
gguf_writer.TYPES["q4_k"] = 12


def as_q4_k(tensors):
    return [(n, raw, dims, "q4_k" if n == "blk.0.attn_v.weight" else kind) for n, raw, dims, kind in tensors]


q4k = write_gguf("q4k.gguf", lambda w: (w.tobytes(), "f32"), corrupt=as_q4_k)
code, out, _ = h.run(["convert", "--gguf", q4k, "--output", h.path("bad2")])
h.check(code not in (0, None) and "blk.0.attn_v.weight has type q4_k (12)" in out, f"a q4_k tensor:\n{out[-600:]}")
qwen = dict(metadata, **{"general.architecture": "qwen2"})
path = h.path("qwen2.gguf")
gguf_writer.write(path, qwen, gguf_writer.llama_tensors(weights, HEADS, KV, LAYERS, lambda w: (w.tobytes(), "f32")))
code, out, _ = h.run(["convert", "--gguf", path, "--output", h.path("bad3")])
h.check(code not in (0, None) and "general.architecture 'qwen2' is not supported" in out, f"qwen2:\n{out[-600:]}")
h.finish()
