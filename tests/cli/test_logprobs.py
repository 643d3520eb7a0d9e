"""Log-probabilities: each generated token's logprob and its top alternatives, in OpenAI's layout, equal at every
layout (tp, pp, dp) within 1e-4 with the same tokens, and equal to an independent float64 computation (NumPy) from
the full-vocabulary logits the same run records: log softmax(logits / T), T the prompt's temperature (1 when
greedy). Bad values are refused naming the line.
"""
import json

import numpy as np

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "--seed", "8", "-tp", "2", "-pp", "2")
lines = []
for i in range(8):
    fields = {"id": f"q{i}", "prompt": f"Question {i}: what is {'ab' * i}?"}
    if i % 2:
        fields.update(temperature=0.6 + 0.1 * i, seed=100 + i)
    if i % 4 == 3:
        fields.update(top_logprobs=20)
    elif i == 6:
        fields.update(logprobs=True, top_logprobs=0)
    lines.append(json.dumps(fields))
prompts = h.write("prompts.jsonl", "\n".join(lines) + "\n")
LAYOUTS = {"1": (1, []), "tp2": (2, ["-tp", 2]), "pp2": (2, ["-pp", 2]), "tp2pp2": (4, ["-tp", 2, "-pp", 2]),
           "dp2": (2, ["-dp", 2])}
runs = {}
for name, (ranks, flags) in LAYOUTS.items():
    out = h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", f"{name}.jsonl", "--overwrite",
                    "--max-tokens", 8, "--top-logprobs", 3, "--record-logits", "-q", *flags], ranks=ranks)
    runs[name] = h.results(f"{name}.jsonl")

expected_top = {f"q{i}": (20 if i % 4 == 3 else 0 if i == 6 else 3) for i in range(8)}
base = runs["1"]
for record in base:
    content = record["logprobs"]["content"]
    h.check(len(content) == len(record["token_ids"]), f"{record['id']}: one logprobs entry per generated token")
    h.check(all(len(e["top_logprobs"]) == expected_top[record["id"]] for e in content),
            f"{record['id']}: top_logprobs per token as asked ({expected_top[record['id']]})")
    h.check(all(e["token_id"] == t for e, t in zip(content, record["token_ids"])), f"{record['id']}: entries follow the tokens")

# The independent reference: float64 log-softmax of the recorded logits after temperature.
spec = {json.loads(line)["id"]: json.loads(line) for line in lines}
worst = 0.0
for record in base:
    temperature = spec[record["id"]].get("temperature", 0.0)
    scale = 1.0 / temperature if temperature > 0 else 1.0
    for entry, row in zip(record["logprobs"]["content"], record["logits"]):
        x = np.asarray(row, dtype=np.float64) * scale
        log_z = x.max() + np.log(np.exp(x - x.max()).sum())
        reference = x - log_z
        worst = max(worst, abs(entry["logprob"] - reference[entry["token_id"]]))
        order = sorted(range(len(x)), key=lambda i: (-x[i], i))[:len(entry["top_logprobs"])]
        h.check([t["token_id"] for t in entry["top_logprobs"]] == order,
                f"{record['id']}: the top alternatives are the most likely ids in order")
        for alt in entry["top_logprobs"]:
            worst = max(worst, abs(alt["logprob"] - reference[alt["token_id"]]))
        total = sum(np.exp(t["logprob"]) for t in entry["top_logprobs"])
        h.check(total <= 1 + 1e-5, f"{record['id']}: top probabilities sum to at most 1 ({total})")
        h.check(abs(np.exp(reference).sum() - 1) < 1e-9, "the reference distribution sums to 1")
print(f"largest difference from the float64 reference: {worst:.2e}")
h.check(worst < 1e-4, f"logprobs equal the float64 log-softmax within 1e-4 (worst {worst:.2e})")

for name, records in runs.items():
    if name == "1":
        continue
    h.check([r["token_ids"] for r in records] == [r["token_ids"] for r in base], f"{name}: the same tokens as 1 rank")
    diff = 0.0
    for a, b in zip(records, base):
        for ea, eb in zip(a["logprobs"]["content"], b["logprobs"]["content"]):
            diff = max(diff, abs(ea["logprob"] - eb["logprob"]))
            h.check([t["token_id"] for t in ea["top_logprobs"]] == [t["token_id"] for t in eb["top_logprobs"]]
                    or diff < 1e-4, f"{name}: the same top alternatives")
            for ta, tb in zip(ea["top_logprobs"], eb["top_logprobs"]):
                diff = max(diff, abs(ta["logprob"] - tb["logprob"]))
    print(f"{name}: largest logprob difference from 1 rank {diff:.2e}")
    h.check(diff < 1e-4, f"{name}: logprobs within 1e-4 of 1 rank ({diff:.2e})")

# Without asking, no logprobs; bad values are refused with file:line.
out = h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", "plain.jsonl", "--overwrite",
                "--max-tokens", 2, "-q", "-tp", 2, "-pp", 2], ranks=4)
h.check(all("logprobs" not in r for r in h.results("plain.jsonl") if r["id"] in ("q0", "q2")),
        "prompts that do not ask get no logprobs")
bad = h.write("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b", "top_logprobs": 21}\n')
code, out, _ = h.run(["generate", "--model", model, "--prompts", bad, "--output", "bad_out.jsonl", "--overwrite",
                      "-tp", 2, "-pp", 2], ranks=4)
h.check(code not in (0, None) and "bad.jsonl:2: top_logprobs must be in [0, 20] (got 21)" in out, f"refused:\n{out}")
wrong = h.write("wrong.jsonl", '{"prompt": "a", "logprobs": "yes"}\n')
code, out, _ = h.run(["generate", "--model", model, "--prompts", wrong, "--output", "bad_out.jsonl", "--overwrite",
                      "-tp", 2, "-pp", 2], ranks=4)
h.check(code not in (0, None) and "wrong.jsonl:1: field 'logprobs' must be true or false" in out, f"refused:\n{out}")
h.finish()
