"""--metrics: the run summary agrees with the results file it describes (prompts, tokens in and out), its throughput
is tokens over its wall time, its latency percentiles are ordered, every rank's compute / communication / waiting
shares add up to its wall time (communication non-zero with tensor parallelism), the KV-cache peak holds the longest
sequence and fits the capacity; scripts/plot-metrics.py draws the summaries of several layouts as PNG files.
"""
import json
import os
import subprocess

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "--seed", "6")
prompts = h.write("prompts.jsonl", "".join(
    json.dumps({"id": i, "prompt": "word " * (1 + 3 * i), "max_tokens": 4 + 5 * (i % 4)}) + "\n" for i in range(12)))
LAYOUTS = {"tp2": (2, ["-tp", 2]), "pp2": (2, ["-pp", 2]), "dp2": (2, ["-dp", 2])}
summaries = []
for name, (ranks, flags) in LAYOUTS.items():
    h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", f"{name}.jsonl", "--overwrite",
              "--metrics", f"{name}.metrics.json", "--max-batch-size", 4, "-q", *flags], ranks=ranks)
    records = h.results(f"{name}.jsonl")
    with open(h.path(f"{name}.metrics.json")) as f:
        m = json.load(f)
    summaries.append(h.path(f"{name}.metrics.json"))
    h.check(m["prompts"] == len(records) == 12, f"{name}: prompts {m['prompts']} = records {len(records)}")
    h.check(m["prompt_tokens"] == sum(r["prompt_tokens"] for r in records), f"{name}: prompt tokens add up")
    h.check(m["completion_tokens"] == sum(r["completion_tokens"] for r in records), f"{name}: completion tokens add up")
    wall = m["wall_seconds"]
    h.check(wall > 0 and abs(m["throughput"]["completion_tokens_per_second"] * wall - m["completion_tokens"]) < 1e-6 *
            max(1, m["completion_tokens"]), f"{name}: throughput is completion tokens over the wall time")
    for key in ("time_to_first_token_seconds", "time_per_output_token_seconds"):
        d = m[key]
        h.check(0 < d["p50"] <= d["p90"] <= d["p99"] <= d["max"] and d["p50"] <= wall, f"{name}: {key} ordered: {d}")
    h.check(m["time_to_first_token_seconds"]["count"] == 12, f"{name}: a first-token time per prompt")
    h.check(m["time_per_output_token_seconds"]["count"] == sum(r["completion_tokens"] > 1 for r in records),
            f"{name}: a per-token time for every prompt with more than one token")
    h.check(len(m["ranks"]) == 2 and [r["rank"] for r in m["ranks"]] == [0, 1], f"{name}: every rank reported")
    for r in m["ranks"]:
        shares = r["compute_share"] + r["communication_share"] + r["waiting_share"]
        h.check(all(0 <= r[k] <= 1 for k in ("compute_share", "communication_share", "waiting_share"))
                and abs(shares - 1) < 1e-6, f"{name} rank {r['rank']}: shares add up to 1 ({shares})")
        if name == "dp2":
            # Prompts go to whichever replica asks first: one that starts after the other has taken all 12 (the run
            # takes ~25 ms) computes nothing, and must say so.
            h.check(r["wall_seconds"] > 0 and (r["compute_seconds"] > 0) == (r["prompts_run"] > 0),
                    f"{name} rank {r['rank']}: it computed if it ran prompts ({r['prompts_run']})")
        else:
            h.check(r["wall_seconds"] > 0 and r["compute_seconds"] > 0, f"{name} rank {r['rank']}: it computed")
    if name == "dp2":
        h.check(sum(r["prompts_run"] for r in m["ranks"]) == 12, f"{name}: the replicas ran the 12 prompts between them")
    if name == "tp2":
        h.check(all(r["communication_seconds"] > 0 for r in m["ranks"]), f"{name}: tensor parallelism communicates")
    kv = m["kv_cache"]
    longest = max(r["prompt_tokens"] + r["completion_tokens"] - 1 for r in records)
    h.check(longest <= kv["peak_tokens_per_replica"] <= kv["tokens_per_replica"] == kv["blocks"] * kv["block_size"]
            and 1 <= kv["peak_sequences_per_replica"] <= 4 and kv["block_size"] == 16
            and longest / 16 <= kv["peak_blocks_per_replica"] <= kv["blocks"] and 0 < kv["peak_use"] <= 1,
            f"{name}: the KV peak holds the longest sequence ({longest}) within the capacity: {kv}")
    h.check(m["errors"] == 0 and m["preemptions"] == 0 and m["prefix_cache"]["enabled"]
            and 0 < m["longest_step_seconds"] <= wall, f"{name}: no errors, no preemption, a longest step")

# Prefix cache and preemption, reported: prompts sharing a 64-token prefix find it cached; a pool of 6 blocks of 16
# for 4 sequences of ~70 positions runs out, preempts and recomputes, and the greedy texts are those of a roomy run.
shared = h.write("shared.jsonl", "".join(json.dumps({"id": i, "prompt": "s" * 63 + f" question {i}", "max_tokens": 8})
                                         + "\n" for i in range(6)))
runs = {}
for name, flags in {"roomy": [], "tight": ["--kv-cache-memory", 6 * 16 * 2048 / 2**30]}.items():
    h.run_ok(["generate", "--model", model, "--prompts", shared, "--output", f"{name}.jsonl", "--overwrite",
              "--metrics", f"{name}.metrics.json", "--max-batch-size", 4, "-q", *flags], ranks=1)
    with open(h.path(f"{name}.metrics.json")) as f:
        runs[name] = (json.load(f), [r["text"] for r in h.results(f"{name}.jsonl")])
roomy, tight = runs["roomy"][0], runs["tight"][0]
h.check(roomy["prefix_cache"]["cached_prompt_tokens"] >= 5 * 48 and roomy["prefix_cache"]["hit_rate"] > 0.5,
        f"the shared prefix is found in the cache: {roomy['prefix_cache']}")
h.check(tight["kv_cache"]["blocks"] == 6 and tight["preemptions"] > 0 and tight["kv_cache"]["recomputed_tokens"] > 0,
        f"a pool of 6 blocks preempts: {tight['kv_cache']}, preemptions {tight['preemptions']}")
h.check(runs["tight"][1] == runs["roomy"][1], "preempted and recomputed sequences end with the same greedy text")

plots = h.path("plots")
p = subprocess.run(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "plot-metrics.py"),
                    *summaries, "--output-dir", plots], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
h.check(p.returncode == 0, f"plot-metrics.py runs:\n{p.stdout}")
import matplotlib.image  # noqa: E402  (python3-matplotlib, a test dependency)
for png in ("throughput.png", "time-breakdown.png"):
    path = os.path.join(plots, png)
    ok = os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    h.check(ok, f"{png} is a PNG file")
    if ok:
        pixels = matplotlib.image.imread(path)
        h.check(pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.05, f"{png} has a picture in it")
bad = h.write("bad.json", '{"format": "something else"}')
p = subprocess.run(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "plot-metrics.py"),
                    bad, "--output-dir", plots], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
h.check(p.returncode != 0 and "not a strata metrics summary" in p.stdout, f"another JSON is refused:\n{p.stdout}")
code, out, _ = h.run(["generate", "--model", model, "--prompts", prompts, "--output", "m.jsonl", "--overwrite",
                      "--metrics", prompts], ranks=1)
h.check(code not in (0, None) and "is the prompt file" in out, f"--metrics never overwrites the prompts:\n{out}")
h.finish()
