"""The paged KV cache changes where keys and values live, never what is generated: greedy texts are identical with
prefix caching on and off, at block sizes 1, 5, 16 and one block per context (the contiguous slot per sequence of the
engine before paging), with prompts chunked to 7 tokens per step or prefilled whole, at batch sizes 3, 4 and 8, with
a pool so small that sequences are preempted and recomputed, and at every layout (tp, pp with micro-batches, dp) with
small blocks and a tight pool. The prompts share prefixes (a system prompt, repeated prompts, n samples) so the
prefix cache is exercised, and the metrics say it was (cached prompt tokens, preemptions).
"""
import json

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "--seed", "21", "-tp", "2", "-pp", "2")
system = "You are a helpful assistant. Answer briefly and well. "
spec = []
for i in range(9):
    spec.append({"id": f"q{i}", "prompt": system + f"Question {i}: what is {i} + {i}?", "max_tokens": 6 + 3 * (i % 4)})
spec.append({"id": "again", "prompt": system + "Question 1: what is 1 + 1?", "max_tokens": 9})
spec.append({"id": "samples", "prompt": system + "Give two answers.", "n": 3, "max_tokens": 7})
spec.append({"id": "short", "prompt": "Hi", "max_tokens": 12})
prompts = h.write("prompts.jsonl", "".join(json.dumps(s) + "\n" for s in spec))
# tiny on CPU: 4 layers x 4 KV heads x 16 dims x 2 (K, V) x 4 bytes = 2 KiB per position (halved per rank by tp 2)
def pool(blocks, block_size=16, tp=1):
    return ["--kv-cache-memory", blocks * block_size * 2048 / tp / 2**30, "--kv-block-size", block_size]


VARIANTS = {
    "default": (1, []),
    "no-prefix-caching": (1, ["--no-prefix-caching"]),
    "block-1": (1, ["--kv-block-size", 1]),
    "block-5": (1, ["--kv-block-size", 5]),
    "contiguous": (1, ["--kv-block-size", 512]),
    "chunks-of-7": (1, ["--max-num-batched-tokens", 7]),
    "whole-prefill": (1, ["--no-chunked-prefill"]),
    "batch-3": (1, ["--max-batch-size", 3]),
    "batch-4": (1, ["--max-batch-size", 4]),
    # Prompts of up to 81 tokens and 15 generated: a sequence needs at most 96 positions, the pools hold about 1.2
    # times that (the system prompt's blocks are shared).
    "tight-pool": (1, pool(14, 8)),
    "tp2-tight": (2, ["-tp", 2, *pool(14, 8, tp=2)]),
    "pp2-tight": (2, ["-pp", 2, "--micro-batches", 3, *pool(28, 4), "--max-num-batched-tokens", 16]),
    "tp2pp2": (4, ["-tp", 2, "-pp", 2, "--kv-block-size", 3]),
    "dp2-tight": (2, ["-dp", 2, *pool(14, 8)]),
    # --kv-cache-dtype f16: half the bytes per position (so pool(7, 8)'s budget holds 14 blocks of 8)
    "f16": (1, ["--kv-cache-dtype", "f16"]),
    "f16-tp2pp2": (4, ["-tp", 2, "-pp", 2, "--kv-block-size", 3, "--kv-cache-dtype", "f16"]),
    "f16-tight": (1, ["--kv-cache-dtype", "f16", *pool(7, 8)]),
}
F16 = [name for name in VARIANTS if name.startswith("f16")]
texts, metrics = {}, {}
for name, (ranks, flags) in VARIANTS.items():
    h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", f"{name}.jsonl", "--overwrite",
              "--metrics", f"{name}.metrics.json", "-q", *flags,
              *([] if "--max-batch-size" in flags else ["--max-batch-size", 8])], ranks=ranks)
    texts[name] = [(r["id"], r.get("text"), [c["text"] for c in r.get("choices", [])]) for r in h.results(f"{name}.jsonl")]
    with open(h.path(f"{name}.metrics.json")) as f:
        metrics[name] = json.load(f)

base = texts["default"]
h.check(len(base) == len(spec) and all(t or c for _, t, c in base), f"every prompt has text: {base}")
for name, got in texts.items():
    reference = texts["f16"] if name in F16 else base  # f16 rounds the cached values: its own reference
    h.check(got == reference, f"{name}: the same greedy texts as the {'f16' if name in F16 else 'default'} run\n"
            f"{got}\n{reference}")
cached = metrics["default"]["prefix_cache"]["cached_prompt_tokens"]
h.check(cached >= 6 * 48, f"default: the system prompt was found in the cache for most prompts ({cached} tokens)")
h.check(metrics["no-prefix-caching"]["prefix_cache"]["cached_prompt_tokens"] == 0, "no prefix caching: nothing cached")
h.check(metrics["default"]["prompt_tokens_computed"] < metrics["no-prefix-caching"]["prompt_tokens_computed"],
        "prefix caching computes fewer prompt tokens")
for name in ("tight-pool", "tp2-tight", "pp2-tight", "dp2-tight"):
    h.check(metrics[name]["preemptions"] > 0, f"{name}: the pool ran out and sequences were preempted "
            f"({metrics[name]['kv_cache']})")
h.check(metrics["contiguous"]["kv_cache"]["block_size"] == 512, "contiguous: one block per context")
h.check(metrics["f16"]["kv_cache"]["bytes_per_rank"] * 2 == metrics["default"]["kv_cache"]["bytes_per_rank"],
        f"f16: half the KV bytes of the default ({metrics['f16']['kv_cache']} / {metrics['default']['kv_cache']})")
h.check(metrics["f16-tight"]["kv_cache"]["blocks"] == 14 and metrics["f16-tight"]["preemptions"] > 0,
        f"f16-tight: the f32 budget of 7 blocks holds 14, and they ran out ({metrics['f16-tight']['kv_cache']})")
# The rounding is real and small: the first generated position's logits, f16 cache against f32.
first = {}
for name, flags in (("f32", []), ("f16", ["--kv-cache-dtype", "f16"])):
    h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", f"logits-{name}.jsonl", "--overwrite",
              "-q", "--record-logits", "--max-tokens", 1, *flags])
    first[name] = [r["logits"][0] for r in h.results(f"logits-{name}.jsonl") if "logits" in r]
pairs = [(a, b) for la, lb in zip(first["f32"], first["f16"]) for a, b in zip(la, lb)]
scale = max(abs(a) for a, _ in pairs) if pairs else 0
gap = max(abs(a - b) for a, b in pairs) / scale if scale else -1
h.check(len(first["f16"]) == len(first["f32"]) > 0 and 1e-7 < gap < 1e-2,
        f"f16 KV cache: first-token logits within 1e-2 of the f32 cache's, and not identical ({gap:.2e})")
h.finish()
