"""A model run with --quantize q8_0 / q4_0 (matrix weights quantized on load to llama.cpp's blocks): the same greedy
tokens and the same logits (to 1e-4) at tp 1, tp 2, pp 2 and dp 2; its logits against an independent float64
reference in which llama.cpp itself (libggml-base.so from npm, pinned, through ctypes) quantizes every matrix
weight and every input row of a matrix product, as llama.cpp's CPU matmul does; the unquantized reference is much
further away (negative control), and q4_0 further than q8_0. Most rows agree with the reference to f32 rounding
(1e-6); a row may differ by more where an activation lands within f32 rounding of a quantization boundary (the
reference's float64 activation then rounds to the neighbouring int8, one step of its block), which moves that row
and, through the KV cache, its sequence's later rows by about 1e-2 at most. Layouts differ the same way: their sums
of f32 partial products differ in the last bits, which is enough to move an activation across a boundary now and
then; greedy tokens must still agree. The runs keep an f32 KV cache (KV_F32; quantized weights get f16 by
default): with f16 keys and values, which way one rounds turns on its last f32 bits as well, and those differences
carried through the int8 roundings left half the rows off by up to 2e-2, where an f32 cache leaves every row within
1e-6 (the f16 cache is checked against the reference in tests/cli/test_reference.py). A split that leaves rows of a
matrix not a multiple of 32 weights is refused naming the tensor. Checkpoints stored quantized: see below.
"""
import ctypes
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tokenizer"))
from harness import Harness, flip_middle  # noqa: E402
import llama_reference  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, _ = npm_fixtures.fetch(packages=npm_fixtures.LLAMA_CPP)
ggml = ctypes.CDLL(os.path.join(npm_fixtures.llama_cpp_bins(modules), "libggml-base.so"))
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p]
for fn in ("dequantize_row_q8_0", "dequantize_row_q4_0"):
    getattr(ggml, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
TYPES, BLOCK = {"q8_0": 8, "q4_0": 2}, {"q8_0": 34, "q4_0": 18}


def ggml_round_trip(fmt, rows):
    """rows [n, k] through llama.cpp's quantizer and dequantizer (f32), as float64."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n, k = rows.shape
    blocks = np.zeros(n * k // 32 * BLOCK[fmt], dtype=np.uint8)
    ggml.ggml_quantize_chunk(TYPES[fmt], rows.ctypes.data, blocks.ctypes.data, 0, n, k, None)
    out = np.zeros(n * k, dtype=np.float32)
    getattr(ggml, f"dequantize_row_{fmt}")(blocks.ctypes.data, out.ctypes.data, n * k)
    return out.reshape(n, k).astype(np.float64)


def quantized_reference(weights, fmt):
    """llama_reference with llama.cpp's arithmetic: weights through `fmt`, each product's input rows through q8_0."""
    wq = {name: ggml_round_trip(fmt, w) if w.ndim == 2 else w for name, w in weights.items()}
    plain = llama_reference.linear

    def linear(x, w, b=None):
        return plain(ggml_round_trip("q8_0", x), w, b)
    return wq, linear


model = h.init("tiny", "--preset", "tiny", "--seed", "21", "--intermediate-size", "384")  # 192 per rank at tp 2
KV_F32 = ["--kv-cache-dtype", "f32"]  # see above
prompts = h.write("prompts.txt", "Hello world\nThe quick brown fox jumps over\nA\nquantized weights, 1234\n")
weights, config, manifest = llama_reference.load_checkpoint(model)
LAYOUTS = [("1", 1, []), ("tp2", 2, ["-tp", 2]), ("pp2", 2, ["-pp", 2]), ("dp2", 2, ["-dp", 2])]
errors, loaded = {}, {}
for fmt in ("q8_0", "q4_0"):
    runs = loaded[fmt] = {}
    for label, ranks, flags in LAYOUTS:
        out = f"{fmt}-{label}.jsonl"
        h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", out, "--max-tokens", 6,
                  "--record-logits", "--quantize", fmt, "-q", *KV_F32, *flags], ranks=ranks)
        runs[label] = h.results(out)
    base = runs["1"]
    for label, records in runs.items():
        h.check([r["token_ids"] for r in records] == [r["token_ids"] for r in base],
                f"{fmt} {label}: the same greedy tokens as 1 rank")
        diff = max(float(np.abs(np.array(a["logits"]) - np.array(b["logits"])).max() / np.abs(b["logits"]).max())
                   for a, b in zip(records, base))
        h.check(diff <= 3e-2, f"{fmt} {label}: logits within 3e-2 of 1 rank ({diff:.2e}; see above: int8 roundings)")
    wq, qlinear = quantized_reference(weights, fmt)
    rows_errors, unquantized_rows = [], []
    for record in base:
        ids = llama_reference.tokenize(record["prompt"], config["bos_token_id"]) + record["token_ids"][:-1]
        n = len(record["token_ids"])
        llama_reference.linear = qlinear
        try:
            ref = llama_reference.forward(wq, config, ids)[-n:]
        finally:
            llama_reference.linear = llama_reference.plain_linear
        exact = llama_reference.forward(weights, config, ids)[-n:]
        got = np.array(record["logits"])
        rows_errors += [float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in range(n)]
        unquantized_rows += [float(np.abs(got[k] - exact[k]).max() / np.abs(exact[k]).max()) for k in range(n)]
    errors[fmt] = unquantized = float(np.median(unquantized_rows))
    worst, median = max(rows_errors), float(np.median(rows_errors))
    exact = sum(e <= 1e-6 for e in rows_errors) / len(rows_errors)
    print(f"{fmt}: logits vs llama.cpp-quantized float64 reference: median row {median:.1e}, {exact:.0%} of rows "
          f"within 1e-6, worst {worst:.2e}; vs the unquantized model: median row {unquantized:.1e}")
    h.check(worst <= 3e-2, f"{fmt}: logits vs the quantized reference, relative error {worst:.2e}")
    h.check(unquantized > 3 * max(median, 1e-6), f"{fmt}: the unquantized reference is much further (median row "
            f"{unquantized:.1e}) than the quantized one ({median:.1e}) (negative control)")
h.check(errors["q4_0"] > errors["q8_0"], f"q4_0 ({errors['q4_0']:.2e}) loses more than q8_0 ({errors['q8_0']:.2e})")

# Stored quantized (`init --dtype`, the same writer as `convert --quantize`), sharded for tp 2: the reference reads the
# blocks by the format's definition and must find exactly llama.cpp's quantization of the f32 model's matrices
# (vectors stay f32); the shards hold about a quarter (q8_0) or an eighth (q4_0) of the f32 bytes; runs from them at
# tp 2 (used as stored), tp 1 and pp 2 (resharded: column slices dequantized and quantized again, which gives the
# same blocks) give bit for bit the logits of quantizing the f32 model on load. A flipped byte is caught.
def shard_bytes(directory):
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".h5"))


for fmt in ("q8_0", "q4_0"):
    stored = h.init(f"tiny-{fmt}", "--preset", "tiny", "--seed", "21", "--intermediate-size", "384", "--dtype", fmt,
                    "-tp", "2")
    qweights, _, qmanifest = llama_reference.load_checkpoint(stored)
    h.check(qmanifest["dtype"] == fmt, f"{fmt}: the manifest says {qmanifest['dtype']}")
    same = all(np.array_equal(qweights[n], ggml_round_trip(fmt, w) if w.ndim == 2 else w) for n, w in weights.items())
    h.check(same and set(qweights) == set(weights), f"{fmt}: the stored blocks are llama.cpp's quantization")
    ratio = shard_bytes(stored) / shard_bytes(model)
    h.check(ratio < (0.3 if fmt == "q8_0" else 0.17), f"{fmt}: shards hold {ratio:.2f} of the f32 bytes")
    for label, ranks, flags in [("tp2", 2, ["-tp", 2]), ("1", 1, []), ("pp2", 2, ["-pp", 2])]:
        out = f"{fmt}-stored-{label}.jsonl"
        h.run_ok(["generate", "--model", stored, "--prompts", prompts, "--output", out, "--max-tokens", 6,
                  "--record-logits", "-q", *KV_F32, *flags], ranks=ranks)
        got = [r["logits"] for r in h.results(out)]
        h.check(got == [r["logits"] for r in loaded[fmt][label]],
                f"{fmt} stored, {label}: logits bit-identical to quantizing on load")
    print(f"{fmt}: stored checkpoint {ratio:.2f} of the f32 bytes, runs identical to quantizing on load")
# convert --quantize: a Hugging Face folder (safetensors written here) stored as q4_0 blocks for tp 2, exactly
# llama.cpp's quantization of its matrices.
sys.path.insert(0, os.path.join(HERE, "..", "tokenizer"))
import hf_folder  # noqa: E402
hf = h.path("hf-llama")
hf_weights = {k: np.asarray(v, dtype=np.float32).astype(np.float64)
              for k, v in hf_folder.llama_weights(np.random.default_rng(3), 260, 64, 128, 2, 4, 2).items()}
hf_folder.write_llama_folder(hf, hf_weights, 260, 64, 128, 2, 4, 2)
converted = h.path("converted-q4_0")
h.run_ok(["convert", "--hf", hf, "--output", converted, "--quantize", "q4_0", "-tp", 2, "--tokenizer", "byte"])
cweights, _, cmanifest = llama_reference.load_checkpoint(converted)
h.check(cmanifest["dtype"] == "q4_0" and all(
    np.array_equal(cweights[n], ggml_round_trip("q4_0", w) if w.ndim == 2 else w) for n, w in hf_weights.items()),
    "convert --quantize q4_0 stores llama.cpp's quantization of the folder's matrices, its vectors as they are")

corrupt = h.path("tiny-q8_0")
flip_middle(os.path.join(corrupt, "model-pp0-tp1.h5"))
code, out, _ = h.run(["generate", "--model", corrupt, "--prompts", prompts, "-tp", 2, "-q"], ranks=2)
h.check(code not in (0, None) and "checksum mismatch" in out, f"a flipped byte in a q8_0 shard is caught:\n{out[-800:]}")

# The preset's intermediate size 352 leaves down_proj rows of 176 weights at tp 2: not whole blocks.
uneven = h.init("uneven", "--preset", "tiny")
code, out, _ = h.run(["generate", "--model", uneven, "--prompts", prompts, "--quantize", "q8_0", "-tp", 2, "-q"],
                     ranks=2)
h.check(code not in (0, None) and "down_proj.weight has rows of 176 weights" in out and "blocks of 32" in out,
        f"tp 2 with q8_0 and rows of 176 weights is refused naming the tensor:\n{out[-1500:]}")
h.finish()
