"""Every layout with world <= 4 (tp in {1,2,4} x pp in {1,2}, and dp = 2) against tp = pp = 1 on the same model
(the same seed gives the same weights whatever the sharding):
- greedy: the logits of every generated position agree to 1e-4 relative, and the tokens agree wherever the
  reference's top-two margin exceeds that error;
- seeded sampling (Gumbel, and top-k/top-p) gives identical tokens;
- results come back complete and in input order;
- resharding on load: the same run from the tp 1 pp 1 checkpoint and from the tp 4 one gives results identical
  (same tokens, same logits bit for bit) to the run from a checkpoint written for the layout;
- weights used in place from the page cache (--mmap) and copied (--no-mmap, the default with huge pages where no
  kernel re-lays them out) give identical results, bench reports which it did and what the kernels re-laid out
  (bf16 matrices, for the avx512bf16 kernel, whichever way they were read), with a plausible decode rate, and the two
  flags exclude each other;
- sequence parallelism gives the tokens and logits of plain tensor parallelism, bit for bit.
"""
import re

import numpy as np

from harness import Harness

h = Harness(__doc__)
TOL = 1e-4
prompts = h.write("prompts.txt", "\n".join([
    "Hello world", "The quick brown fox jumps over the lazy dog", "a", "naïve café ✓ 漢字 🙂",
    "    indented code();", "0123456789" * 5, "Once upon a time"]) + "\n")
jsonl = h.write("prompts.jsonl", "\n".join([
    '{"id": "greedy", "prompt": "Hello", "temperature": 0}',
    '{"id": "hot", "prompt": "Hello", "temperature": 1.5, "seed": 11}',
    '{"id": "topk", "prompt": "Tell me", "temperature": 0.8, "top_k": 5, "max_tokens": 6}',
    '{"id": 42, "prompt": "Numbers", "top_p": 0.5, "temperature": 1.0, "stop": ["zzz"]}']) + "\n")

LAYOUTS = [(1, 1, 1), (2, 1, 1), (4, 1, 1), (1, 2, 1), (2, 2, 1), (1, 1, 2), (2, 1, 2), (1, 2, 2)]  # tp, pp, dp


def generate(tag, tp, pp, dp, prompt_file, *flags, model=None):
    model = model or h.path(f"model-tp{tp}-pp{pp}")
    out = f"{tag}-tp{tp}-pp{pp}-dp{dp}.jsonl"
    h.run_ok(["generate", "--model", model, "--prompts", prompt_file, "--output", out, "-tp", tp, "-pp", pp,
              "--max-tokens", 10, "-q", *flags], ranks=tp * pp * dp)
    return h.results(out)


for tp, pp in sorted({(tp, pp) for tp, pp, _ in LAYOUTS}):
    h.init(f"model-tp{tp}-pp{pp}", "--preset", "tiny", "--seed", "3", "-tp", str(tp), "-pp", str(pp))

reference = generate("greedy", 1, 1, 1, prompts, "--record-logits")
h.check(len(reference) == 7 and [r["id"] for r in reference] == list(range(7)), "reference results in input order")
sampled_reference = generate("sampled", 1, 1, 1, prompts, "--temperature", "0.9", "--seed", "5")
filtered_reference = generate("filtered", 1, 1, 1, prompts, "--temperature", "0.8", "--top-k", "20",
                              "--top-p", "0.9", "--seed", "6")
jsonl_reference = generate("jsonl", 1, 1, 1, jsonl)
h.check(len(set(tuple(r["token_ids"]) for r in sampled_reference)) > 1, "sampling produces varied text")

worst = 0.0
for tp, pp, dp in LAYOUTS[1:]:
    layout = f"tp {tp} pp {pp} dp {dp}"
    got = generate("greedy", tp, pp, dp, prompts, "--record-logits")
    h.check([r["id"] for r in got] == [r["id"] for r in reference], f"{layout}: results complete, in input order")
    for ref, res in zip(reference, got):
        ref_tokens, tokens = ref["token_ids"], res["token_ids"]
        for k, (ref_row, row) in enumerate(zip(ref["logits"], res["logits"])):
            a, b = np.array(row), np.array(ref_row)
            error = np.abs(a - b).max() / np.abs(b).max()
            worst = max(worst, error)
            h.check(error <= TOL, f"{layout} prompt {ref['id']} position {k}: logits relative error {error:.2e}")
            if tokens[k] != ref_tokens[k]:
                top2 = np.sort(b)[-2:]
                margin = (top2[1] - top2[0]) / np.abs(b).max()
                h.check(margin <= 2 * TOL, f"{layout} prompt {ref['id']} position {k}: greedy token differs "
                        f"although the top-two margin {margin:.2e} exceeds the error bound")
                break  # later positions follow different text
    for source in ("model-tp1-pp1", "model-tp4-pp1"):
        if source == f"model-tp{tp}-pp{pp}":
            continue
        resharded = generate(f"reshard-{source}", tp, pp, dp, prompts, "--record-logits", model=h.path(source))
        h.check([(r["token_ids"], r["logits"]) for r in resharded] == [(r["token_ids"], r["logits"]) for r in got],
                f"{layout}: loading the {source} checkpoint (resharding) gives identical tokens and logits")
    for name, ref_run, flags in [("sampled", sampled_reference, ["--temperature", "0.9", "--seed", "5"]),
                                 ("filtered", filtered_reference, ["--temperature", "0.8", "--top-k", "20",
                                                                   "--top-p", "0.9", "--seed", "6"])]:
        run = generate(name, tp, pp, dp, prompts, *flags)
        h.check([r["token_ids"] for r in run] == [r["token_ids"] for r in ref_run],
                f"{layout}: seeded {name} sampling gives the same tokens as tp 1 pp 1")
        h.check([r["text"] for r in run] == [r["text"] for r in ref_run], f"{layout}: same {name} text")
    run = generate("jsonl", tp, pp, dp, jsonl)
    h.check([(r["id"], r["token_ids"]) for r in run] == [(r["id"], r["token_ids"]) for r in jsonl_reference],
            f"{layout}: per-prompt JSONL parameters give the same tokens")

# Weights used in place from the page cache (--mmap) or copied into memory (--no-mmap, and the CPU backend's default
# for weights used as stored where transparent huge pages are on): identical results; bench reports which it did, for
# a bf16 model too, whose matrices the avx512bf16 kernel copies into its interleaved layout whichever way they were
# read (so mapping them is the default there).
mapped = generate("mapped", 2, 2, 1, prompts, "--record-logits", "--mmap")
copied = generate("copied", 2, 2, 1, prompts, "--record-logits", "--no-mmap")
h.check([(r["token_ids"], r["logits"]) for r in copied] == [(r["token_ids"], r["logits"]) for r in mapped],
        "tp 2 pp 2: weights copied (--no-mmap) give the tokens and logits of weights used in place (--mmap)")
# Sequence parallelism (each tp rank normalizing its share of a step's tokens, the products gathering the rows;
# --sequence-parallel-tokens 1 runs it on every step here, 0 on none): the same tokens and logits bit for bit, at
# tp 2 pp 2 (the residual stream gathered for the next stage) and tp 4 (shares of unequal and empty rows), by
# default and with --even-row-shares (runs this short measure too little work for the shares to move: uneven shares
# are checked in mpi_tensor_parallel and unit_cpu_backend).
for tp, pp in ((2, 2), (4, 1)):
    plain = generate("no-sp", tp, pp, 1, prompts, "--record-logits", "--sequence-parallel-tokens", 0)
    for shares in ((), ("--even-row-shares",)):
        split = generate("sp-even" if shares else "sp", tp, pp, 1, prompts, "--record-logits",
                         "--sequence-parallel-tokens", 1, *shares)
        h.check([(r["token_ids"], r["logits"]) for r in split] == [(r["token_ids"], r["logits"]) for r in plain],
                f"tp {tp} pp {pp} {' '.join(shares)}: sequence parallelism gives the tokens and logits of plain "
                "tensor parallelism")
code, out, _ = h.run(["generate", "--model", h.path("model-tp1-pp1"), "--prompts", prompts, "--mmap", "--no-mmap"])
h.check(code not in (0, None) and "--no-mmap" in out and "excludes" in out,
        f"--mmap and --no-mmap together are refused: {out.strip()[-200:]!r}")
with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
    huge_pages = "[never]" not in f.read()
bf16 = h.init("model-bf16-tp2", "--preset", "tiny", "--seed", "3", "-tp", "2", "--dtype", "bf16")
interleaves = h.rounds_bf16_activations()  # the avx512bf16 kernel, which reads bf16 matrices interleaved
for flags, mapped_expected in [((), interleaves or not huge_pages), (("--mmap",), True), (("--no-mmap",), False)]:
    out = h.run_ok(["bench", "--model", bf16, "-tp", 2, "--batch-sizes", 1, "--gen-len", 2, "--prompt-len", 4,
                    "--repeats", 1, *flags], ranks=2)
    line = next((l for l in out.splitlines() if l.startswith("weights on rank 0:")), "")
    words = line.split()
    in_place, read = (float(words[4]), float(words[13])) if len(words) > 13 else (-1, -1)
    h.check(in_place > 0 and read < 0.01 * in_place if mapped_expected else in_place == 0 and read > 0,
            f"bench {' '.join(flags) or '(default)'}: weights in place / read as expected: {line!r}")
    h.check(line.endswith("; KV cache f16"), f"bench: a bf16 model's default KV cache on the CPU is f16: {line!r}")
    rearranged = re.search(r"([0-9.]+) MB of weights then rearranged", line)
    total = in_place + read
    h.check(rearranged is not None and (0.9 * total < float(rearranged[1]) <= total if interleaves
                                        else float(rearranged[1]) == 0),
            f"bench {' '.join(flags) or '(default)'}: bf16 matrices re-laid out only for the avx512bf16 kernel "
            f"({'it runs' if interleaves else 'not this CPU'}): {line!r}")
    # The compute roofline where the avx512bf16 kernel runs every product: its rate on a weight the backend made as
    # it makes the model's (interleaved), not sgemm's.
    rate = re.search(r"bf16-weight products \(avx512bf16 kernel, weights interleaved by 16 rows, [^)]*\) ([0-9.]+) "
                     r"GFLOP/s: the compute roofline", out)
    h.check(rate is not None and float(rate[1]) > 1 if interleaves else rate is None,
            f"bench {' '.join(flags) or '(default)'}: the avx512bf16 kernel's own rate is the roofline "
            f"({'it runs' if interleaves else 'not this CPU'}): {rate and rate[0]!r}")
    # Attention's FLOPs count in the roofline at the f32 rate of the arithmetic that runs them, the KV cache's bytes
    # at the memory rate (plan/step_cost.h).
    attention = re.search(r"attention's FLOPs at ([0-9.]+) GFLOP/s .*KV cache's keys and values \(f16\)", out)
    h.check(attention is not None and float(attention[1]) > 0,
            f"bench {' '.join(flags) or '(default)'}: attention and the KV cache in the roofline: "
            f"{attention and attention[0]!r}")
    # Decode is timed inside one run (from the last first token to the end): a rate from two runs' difference could
    # come out absurd (2.4e11 tok/s once) or negative when the second prefill ran slower than the first.
    row = next((l.split() for l in out.splitlines() if l.split()[:2] == ["1", "4"]), [])
    decode = float(row[5]) if len(row) == 13 else -1
    h.check(0 < decode < 1e6, f"bench {' '.join(flags) or '(default)'}: a plausible decode rate: {row}")
    # Each row's roofline from the memory probe read just before and just after its runs: both readings printed.
    readings = [float(v.rstrip(",")) for v in row[8:10]] if len(row) == 13 else []
    h.check(len(readings) == 2 and all(0 < r < 1e5 for r in readings),
            f"bench {' '.join(flags) or '(default)'}: the row's two memory readings (GB/s): {row}")
    # And the two ranks' cores' speeds at the same work, the slower over the faster, on either side of the row.
    spreads = [float(v.rstrip(",")) for v in row[10:12]] if len(row) == 13 else []
    h.check(len(spreads) == 2 and all(0 < r <= 1 for r in spreads),
            f"bench {' '.join(flags) or '(default)'}: the row's two core-speed readings: {row}")
    # Sequence parallelism's shares of the rows, rank by rank (even here: no step long enough to split its rows).
    shares = [float(v) for v in row[12].split("/")] if len(row) == 13 else []
    h.check(shares == [0.5, 0.5], f"bench {' '.join(flags) or '(default)'}: the ranks' shares of the rows: {row}")
    spread = re.search(r"measured: the slowest core at ([0-9]+)% of the fastest's rate", out)
    h.check(spread is not None and 0 < int(spread[1]) <= 100, f"bench: the cores' spread: {spread and spread[0]!r}")

h.check(jsonl_reference[2]["completion_tokens"] == 6, "per-prompt max_tokens overrides --max-tokens")
h.check(jsonl_reference[0]["token_ids"] == generate("check", 1, 1, 1, h.write("one.txt", "Hello\n"))[0]["token_ids"],
        "temperature 0 in JSONL equals the greedy default")
print(f"largest logits relative error across layouts: {worst:.3e}")
h.finish()
