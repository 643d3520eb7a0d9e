"""n samples per prompt: the samples share the prompt's computation (the others start from a copy of the first
sample's KV cache and rerun only the prompt's last token), yet each equals a run of the prompt alone with that
sample's seed; the results are the same at every layout and reproducible; greedy samples agree; the prompt tokens
the model ran are counted in the metrics; an n the batch cannot hold is refused naming the line.
"""
import json

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "--seed", "12", "-tp", "2", "-pp", "2")
spec = [
    {"id": "three", "prompt": "Tell me a story about a cat", "temperature": 0.9, "n": 3},
    {"id": "short", "prompt": "A", "temperature": 1.1, "n": 2, "top_k": 40},
    {"id": "greedy", "prompt": "The same every time", "n": 2},
    {"id": "single", "prompt": "Only one", "temperature": 0.7},
    {"id": "four", "prompt": "Four ways to say hello:", "temperature": 0.8, "top_p": 0.9, "n": 4, "logprobs": True},
]
prompts = h.write("prompts.jsonl", "".join(json.dumps(s) + "\n" for s in spec))
LAYOUTS = {"1": (1, []), "tp2": (2, ["-tp", 2]), "pp2": (2, ["-pp", 2]), "tp2pp2": (4, ["-tp", 2, "-pp", 2]),
           "dp2": (2, ["-dp", 2])}
outputs = {}
for name, (ranks, flags) in LAYOUTS.items():
    h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", f"{name}.jsonl", "--overwrite",
              "--max-tokens", 10, "--max-batch-size", 6, "--seed", 5, "--metrics", f"{name}.metrics.json", "-q",
              *flags], ranks=ranks)
    with open(h.path(f"{name}.jsonl"), "rb") as f:
        outputs[name] = f.read()
def without_logprobs(data):
    """The records with log-probability values dropped (they agree across layouts within f32 rounding, 1e-4)."""
    records = [json.loads(line) for line in data.decode().splitlines()]
    for r in records:
        for c in r.get("choices", [r]):
            for e in c.get("logprobs", {}).get("content", []):
                e.pop("logprob")
    return records


for name, data in outputs.items():
    h.check(without_logprobs(data) == without_logprobs(outputs["1"]),
            f"{name}: the same results as 1 rank (tokens, texts, seeds; logprobs within rounding)")
records = h.results("1.jsonl")
by_id = {r["id"]: r for r in records}
for s in spec:
    r = by_id[s["id"]]
    n = s.get("n", 1)
    if n == 1:
        h.check("choices" not in r and "text" in r, f"{s['id']}: n = 1 keeps the plain record")
        continue
    h.check([c["index"] for c in r["choices"]] == list(range(n)), f"{s['id']}: {n} choices in order")
    h.check(r["completion_tokens"] == sum(c["completion_tokens"] for c in r["choices"]), f"{s['id']}: tokens summed")
    h.check(len({c["seed"] for c in r["choices"]}) == n, f"{s['id']}: every sample has its own seed")
h.check(by_id["greedy"]["choices"][0]["token_ids"] == by_id["greedy"]["choices"][1]["token_ids"],
        "greedy samples agree")
h.check(len({tuple(c["token_ids"]) for c in by_id["three"]["choices"]}) > 1, "sampled choices differ")
h.check(all("logprobs" in c for c in by_id["four"]["choices"]), "each choice carries its logprobs when asked")

# Each sample equals the prompt run alone with that sample's seed (no shared computation there).
alone = []
for s in spec:
    for c in by_id[s["id"]].get("choices", []):
        fields = {k: v for k, v in s.items() if k not in ("id", "n")}
        alone.append(dict(fields, id=f"{s['id']}-{c['index']}", seed=c["seed"]))
alone_file = h.write("alone.jsonl", "".join(json.dumps(a) + "\n" for a in alone))
h.run_ok(["generate", "--model", model, "--prompts", alone_file, "--output", "alone.out.jsonl", "--overwrite",
          "--max-tokens", 10, "--max-batch-size", 6, "-q", "-tp", 2, "-pp", 2], ranks=4)
separately = {r["id"]: r for r in h.results("alone.out.jsonl")}
for s in spec:
    for c in by_id[s["id"]].get("choices", []):
        other = separately[f"{s['id']}-{c['index']}"]
        h.check(other["token_ids"] == c["token_ids"] and other["text"] == c["text"],
                f"{s['id']} choice {c['index']}: equals the prompt run alone with seed {c['seed']}")
        if "logprobs" in c:
            diff = max(abs(a["logprob"] - b["logprob"]) for a, b in zip(c["logprobs"]["content"],
                                                                      other["logprobs"]["content"]))
            h.check(diff < 1e-4, f"{s['id']} choice {c['index']}: logprobs equal the separate run's ({diff:.1e})")

with open(h.path("1.metrics.json")) as f:
    metrics = json.load(f)
shared = sum(r["prompt_tokens"] for r in records) + sum(s.get("n", 1) - 1 for s in spec)
separate = sum(r["prompt_tokens"] * s.get("n", 1) for r, s in zip(records, spec))
h.check(metrics["prompt_tokens_computed"] == shared < separate,
        f"the prompt is computed once: {metrics['prompt_tokens_computed']} prompt tokens ran ({shared} expected, "
        f"{separate} without sharing)")

h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", "again.jsonl", "--overwrite",
          "--max-tokens", 10, "--max-batch-size", 6, "--seed", 5, "-q", "-tp", 2, "-pp", 2], ranks=4)
with open(h.path("again.jsonl"), "rb") as f:
    h.check(f.read() == outputs["tp2pp2"], "n samples are reproducible (byte for byte at the same layout)")
# Sample 0 ending with its first token frees its slot while its samples still have to copy the prompt from it: with
# three micro-batches on one stage, and more requests than slots, that slot must not be handed to another request
# before the copy (it was, and the samples continued from another prompt's cache).
quick = [dict(id=f"q{i}", prompt=f"Prompt {i} with several tokens", temperature=0.9, n=2, max_tokens=1 + (i % 2) * 3)
         for i in range(10)]
quick_file = h.write("quick.jsonl", "".join(json.dumps(q) + "\n" for q in quick))
h.run_ok(["generate", "--model", model, "--prompts", quick_file, "--output", "quick.out.jsonl", "--overwrite",
          "--max-batch-size", 4, "--micro-batches", 3, "-q"], ranks=1)
quick_alone = []
for r in h.results("quick.out.jsonl"):
    q = next(q for q in quick if q["id"] == r["id"])
    for c in r["choices"]:
        quick_alone.append(dict({k: v for k, v in q.items() if k not in ("id", "n")}, id=f"{r['id']}-{c['index']}",
                                seed=c["seed"]))
h.write("quick_alone.jsonl", "".join(json.dumps(q) + "\n" for q in quick_alone))
h.run_ok(["generate", "--model", model, "--prompts", h.path("quick_alone.jsonl"), "--output", "quick_alone.out.jsonl",
          "--overwrite", "-q"], ranks=1)
alone_tokens = {r["id"]: r["token_ids"] for r in h.results("quick_alone.out.jsonl")}
mismatched = [f"{r['id']}-{c['index']}" for r in h.results("quick.out.jsonl") for c in r["choices"]
              if c["token_ids"] != alone_tokens[f"{r['id']}-{c['index']}"]]
h.check(not mismatched, f"with 3 micro-batches and slots reused, every sample equals its prompt alone: {mismatched}")

too_many = h.write("too_many.jsonl", '{"prompt": "a"}\n{"prompt": "b", "n": 7}\n')
code, out, _ = h.run(["generate", "--model", model, "--prompts", too_many, "--output", "x.jsonl", "--overwrite",
                      "--max-batch-size", 6, "-tp", 2, "-pp", 2], ranks=4)
h.check(code not in (0, None) and "too_many.jsonl:2: n must be in [1, --max-batch-size 6] (got 7)" in out,
        f"an n the batch cannot hold is refused naming the line:\n{out}")
h.finish()
