"""Bad input ends the job promptly on every rank with a clear message naming the thing and the numbers, never a
hang: each case runs under a time bound and must exit non-zero with the expected text. Also: a failure on one rank
only (one corrupt shard) aborts the others waiting in collectives, and an existing results file is never lost.
"""
import json
import os

from harness import Harness, flip_middle

h = Harness(__doc__)
BOUND = 30  # seconds: any case slower than this is a hang
good = h.init("good", "--preset", "tiny", "-tp", "2", "-pp", "2")
single = h.init("single", "--preset", "tiny")
prompts = h.write("prompts.txt", "Hello\nWorld\n")


def expect_failure(name, argv, ranks, *needles):
    code, out, seconds = h.run(argv, ranks=ranks, timeout=BOUND)
    h.check(code is not None, f"{name}: hung (no exit within {BOUND} s)\n{out}")
    h.check(code not in (None, 0), f"{name}: expected a non-zero exit, got {code}\n{out}")
    for needle in needles:
        h.check(needle in out, f"{name}: message lacks {needle!r}\n{out}")
    print(f"ok: {name} ({seconds:.1f} s)")


def gen(model, ranks, *flags, prompt_file=prompts, output="out.jsonl"):
    return ["generate", "--model", model, "--prompts", prompt_file, "--output", output, "--overwrite", *flags]


# Layout and split
expect_failure("world size", gen(good, 3, "-tp", 2, "-pp", 2, "-dp", 1), 3,
               "world size 3 does not equal", "1 x 2 x 2 = 4")
expect_failure("world not a multiple", gen(good, 3, "-tp", 2, "-pp", 2), 3, "not a multiple of", "2 x 2 = 4")
expect_failure("uneven split", gen(single, 3, "-tp", 3), 3,
               "num_attention_heads 8 is not divisible by tensor-parallel size 3")
expect_failure("too many stages", gen(single, 8, "-pp", 8), 8, "pipeline-parallel size 8 exceeds num_hidden_layers 4")

# Checkpoint problems
missing = h.init("missing", "--preset", "tiny", "-tp", "2")
os.remove(os.path.join(missing, "model-pp0-tp1.h5"))
expect_failure("missing shard", gen(missing, 2, "-tp", 2), 2, "model-pp0-tp1.h5 is missing", "rank 1")
expect_failure("no checkpoint", gen(h.path("nowhere"), 1), 1, "does not exist")

corrupt = h.init("corrupt", "--preset", "tiny", "-tp", "2", "-pp", "2")
shard = os.path.join(corrupt, "model-pp1-tp1.h5")  # only rank 3 reads this file
flip_middle(shard)
expect_failure("corrupt shard on one rank", gen(corrupt, 4, "-tp", 2, "-pp", 2), 4,
               "rank 3 (dp 0 pp 1 tp 1)", "checksum mismatch", "model-pp1-tp1.h5")

truncated = h.init("truncated", "--preset", "tiny")
with open(os.path.join(truncated, "model-pp0-tp0.h5"), "r+b") as f:
    f.truncate(4000)
expect_failure("truncated shard", gen(truncated, 1), 1, "model-pp0-tp0.h5")

swapped = h.init("swapped", "--preset", "tiny", "-tp", "2")
a, b = os.path.join(swapped, "model-pp0-tp0.h5"), os.path.join(swapped, "model-pp0-tp1.h5")
os.rename(a, a + ".tmp"); os.rename(b, a); os.rename(a + ".tmp", b)
expect_failure("swapped shard files", gen(swapped, 2, "-tp", 2), 2,
               "model-pp0-tp0.h5 says it is pp rank 0 tp rank 1", "the manifest lists it as pp rank 0 tp rank 0")

# Attributes written by other tools: a variable-length string (h5py's default) reads fine; an oversized array of
# strings is refused, never read past its buffer.
import h5py  # noqa: E402  (Debian's python3-h5py; the tests run under /usr/bin/python3)
import numpy as np  # noqa: E402
edited = h.init("edited", "--preset", "tiny")
with h5py.File(os.path.join(edited, "model-pp0-tp0.h5"), "r+") as f:
    f["model.norm.weight"].attrs["split"] = "replicated"  # h5py writes a variable-length string
code, out, _ = h.run(["inspect", edited], timeout=BOUND)
h.check(code == 0 and "model.norm.weight" in out and "replicated" in out, f"inspect reads h5py string attributes\n{out}")
with h5py.File(os.path.join(edited, "model-pp0-tp0.h5"), "r+") as f:
    f["model.norm.weight"].attrs["split"] = np.array([b"x" * 8] * 1000, dtype="S8")
expect_failure("oversized attribute", ["inspect", edited], None, "attribute 'split'", "model.norm.weight")

# Prompt problems
bad_jsonl = h.write("bad.jsonl", '{"prompt": "fine"}\n{"prompt": "broken",\n')
expect_failure("malformed JSONL", gen(single, 2, prompt_file=bad_jsonl), 2, "bad.jsonl:2: not valid JSON")
typo = h.write("typo.jsonl", '{"prompt": "fine", "temprature": 0.5}\n')
expect_failure("unknown JSONL field", gen(single, 1, prompt_file=typo), 1, "typo.jsonl:1: unknown field 'temprature'")
bad_value = h.write("value.jsonl", '{"prompt": "a"}\n{"prompt": "b", "top_p": 1.5}\n')
expect_failure("out-of-range JSONL value", gen(single, 1, prompt_file=bad_value), 1,
               "value.jsonl:2: top_p must be in (0, 1]")


def expect_error_records(name, argv, ranks, output, errors):
    """The job goes on: exit 0, one record per prompt, and errors {line index: needle} as error records."""
    code, out, seconds = h.run(argv, ranks=ranks, timeout=BOUND)
    h.check(code == 0, f"{name}: expected the job to go on (exit 0), got {code}\n{out}")
    records = [json.loads(line) for line in open(output, encoding="utf-8")] if code == 0 else []
    for i, record in enumerate(records):
        if i in errors:
            h.check(errors[i] in str(record.get("error")), f"{name}: record {i} lacks error {errors[i]!r}: {record}")
        else:
            h.check("text" in record and "error" not in record, f"{name}: record {i} should have run: {record}")
    h.check(len(records) == 3, f"{name}: {len(records)} records for 3 prompts\n{out}")
    print(f"ok: {name} ({seconds:.1f} s)")


# A prompt that cannot run is an error record with the numbers; the others run.
long_prompt = h.write("long.txt", "short\n" + "x" * 600 + "\nend\n")
expect_error_records("prompt longer than the context",
                     gen(single, 2, prompt_file=long_prompt, output=h.path("long.jsonl")), 2, h.path("long.jsonl"),
                     {1: "prompt is 601 tokens but the context (--max-model-len) is 512 tokens"})
# A KV pool of 8 blocks of 16 positions (tiny on CPU: 4 layers x 4 KV heads x 16 dims x 2 x 4 bytes = 2 KiB per position)
# holds
# 128 positions: a 301-token prompt can never fit, the short ones do.
pool_prompts = h.write("pool.txt", "short\n" + "y" * 300 + "\nend\n")
expect_error_records("prompt larger than the KV pool",
                     gen(single, 1, "--kv-cache-memory", 8 * 16 * 2048 / 2**30, prompt_file=pool_prompts,
                         output=h.path("pool.jsonl")), 1, h.path("pool.jsonl"),
                     {1: "the prompt needs 19 KV-cache blocks of 16 positions (301 tokens) but the whole pool has 8"})
expect_failure("KV budget below one block", gen(single, 1, "--kv-cache-memory", 1e-9), 1,
               "holds no KV-cache block on rank 0", "one block of 16 positions takes")
expect_failure("missing prompt file", gen(single, 1, prompt_file=h.path("none.txt")), 1, "cannot open", "none.txt",
               "No such file or directory")
# The output: an empty folder is a folder (not "not empty"); the prompt file itself is refused and left intact.
os.makedirs(h.path("out_folder"), exist_ok=True)
expect_failure("output is an empty folder", gen(single, 1, output=h.path("out_folder")), 1,
               "out_folder is a directory")
same = h.write("same.txt", "hello\n")
expect_failure("output is the prompt file", gen(single, 1, prompt_file=same, output=same), 1,
               "is the prompt file")
h.check(open(same).read() == "hello\n", "the prompt file is untouched when --output names it")

# Flags
expect_failure("unknown device", gen(single, None, "--device", "tpu"), None, "--device", "tpu")
expect_failure("negative temperature", gen(single, None, "--temperature", "-1"), None, "--temperature")
code, out, _ = h.run(gen(single, None, "--max-tokens", "0"), timeout=BOUND)
h.check(code != 0 and "--max-tokens" in out and "must be a number >= 1 (got 0)" in out and "range" not in out,
        f"--max-tokens 0 says what it must be, not that 0 is in range:\n{out}")
expect_failure("negative GPU reserve", gen(single, None, "--gpu-reserve-mib", "-5"), None, "--gpu-reserve-mib")
expect_failure("unknown flag", gen(single, None, "--tensor-parallel", "2"), None, "tensor-parallel")
expect_failure("max-model-len beyond the model", gen(single, 1, "--max-model-len", 4096), 1,
               "--max-model-len 4096 exceeds the model's max_position_embeddings 512")

# --device cuda with no GPU visible (an empty CUDA_VISIBLE_DEVICES hides any): every rank stops, saying why
# ("no GPU visible" in CUDA builds, "built without CUDA" otherwise)
os.environ["CUDA_VISIBLE_DEVICES"] = ""
expect_failure("no GPU", gen(single, 2, "-pp", 2, "--device", "cuda"), 2, "--device cuda", "CUDA")
del os.environ["CUDA_VISIBLE_DEVICES"]

# Memory that does not fit: a KV cache of 2^20 slots x 512 positions cannot be allocated here
expect_failure("memory", gen(single, 1, "--max-batch-size", 1048576), 1, "this rank needs", "KV cache",
               "--max-batch-size")

# A key or value beyond f16's range (65504) in the f16 KV cache a bf16 checkpoint gets by default would be stored as
# infinity, every later score of its sequence NaN: both tp ranks stop instead, naming the remedy, which then runs.
import sys  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tokenizer"))
import hf_folder  # noqa: E402
hf = h.path("hf-large-values")
large = hf_folder.llama_weights(np.random.default_rng(5), 260, 64, 128, 2, 4, 2)
for name in large:
    if name.endswith("v_proj.weight"):
        large[name] = large[name] * 1e6  # values of ~1e6
hf_folder.write_llama_folder(hf, large, 260, 64, 128, 2, 4, 2)
large_bf16 = h.path("large-bf16")
h.run_ok(["convert", "--hf", hf, "--output", large_bf16, "--dtype", "bf16", "-tp", 2, "--tokenizer", "byte"])
expect_failure("KV value beyond f16", gen(large_bf16, 2, "-tp", 2), 2,
               "KV cache (f16): a value of magnitude", "beyond f16's range (65504); run with --kv-cache-dtype f32")
code, out, _ = h.run(gen(large_bf16, 2, "-tp", 2, "--kv-cache-dtype", "f32"), ranks=2, timeout=BOUND)
h.check(code == 0, f"the same model runs with --kv-cache-dtype f32\n{out}")

# An existing output is never clobbered without --overwrite
existing = h.write("existing.jsonl", '{"keep": "me"}\n')
expect_failure("existing output", ["generate", "--model", single, "--prompts", prompts, "--output", existing], 1,
               "already exists")
with open(existing) as f:
    h.check(f.read() == '{"keep": "me"}\n', "the existing output file is untouched")

h.finish()
