"""Topology and placement through the strata binary: `strata topo` on a machine without an NVIDIA driver says so
cleanly; `auto` sizes on described clusters pick the smallest TP that fits a rank's memory inside a node, then
pipeline stages across nodes, then replicas; a fixed layout that does not fit is refused with one that does (or run
with --force); generate with -tp/-pp auto computes the same tokens as one rank; --device cuda without GPUs names
the host and ranks; a size that is neither positive nor auto is refused; --part K/N slices prompts keeping ids and
seeds (the parts in order equal the whole run).
"""
import json
import re

from harness import Harness

h = Harness(__doc__)

out = h.run_ok(["topo"])
h.check("no NVML (no NVIDIA driver)" in out, f"topo says why there are no GPUs:\n{out}")
desc = json.loads(h.run_ok(["topo", "--json"]))
h.check("no NVML" in desc["nodes"][0].get("gpu_status", "") and desc["nodes"][0]["devices"] == []
        and desc["nodes"][0]["memory_bytes"] > 0, f"the description carries the GPU status and host memory: {desc}")

model = h.init("model", "--preset", "tiny")


def cluster(name, per_rank_bytes):
    """Two nodes of two CPU ranks, each node's memory giving every rank `per_rank_bytes`."""
    nodes = [{"hostname": "a", "ranks": [0, 1], "memory_bytes": 2 * per_rank_bytes},
             {"hostname": "b", "ranks": [2, 3], "memory_bytes": 2 * per_rank_bytes}]
    return h.write(name, json.dumps({"nodes": nodes}))


def busiest_mb(plan):
    return max(float(m) for m in re.findall(r" (\d+\.\d) MB ", plan))


# The plan's own estimate per layout (no memory stated: nothing refused), then clusters sized between them.
free = h.write("free.json", json.dumps({"nodes": [{"hostname": "a", "ranks": [0, 1]}, {"hostname": "b", "ranks": [2, 3]}]}))
need = {(tp, pp): busiest_mb(h.run_ok(["plan", "--model", model, "--topology", free, "-tp", tp, "-pp", pp]))
        for tp, pp in [(1, 1), (2, 1), (2, 2)]}
h.check(need[(1, 1)] > need[(2, 1)] > need[(2, 2)], f"more ranks per replica need less memory each: {need}")

between = lambda hi, lo: int((need[hi] + need[lo]) / 2 * 1e6)
out = h.run_ok(["plan", "--model", model, "--topology", cluster("tp2.json", between((1, 1), (2, 1))),
                "-tp", "auto", "-pp", "auto"])
h.check("-> -tp 2 -pp 1 -dp 2" in out and "inter-node!" not in out,
        f"tp 1 does not fit, tp 2 does: two replicas, each TP group inside a node:\n{out}")
out = h.run_ok(["plan", "--model", model, "--topology", cluster("pp2.json", between((2, 1), (2, 2))),
                "-tp", "auto", "-pp", "auto", "-dp", "auto"])
h.check("-> -tp 2 -pp 2 -dp 1" in out and "(inter-node " in out,
        f"a node is not enough: pipeline stages across the nodes:\n{out}")
code, out, _ = h.run(["plan", "--model", model, "--topology", h.path("tp2.json"), "-tp", 1])
h.check(code != 0 and "does not fit at -tp 1 -pp 1 -dp 4" in out and "A layout that fits: -tp 2 -pp 1 -dp 2" in out,
        f"a fixed layout that does not fit is refused with one that does:\n{out}")
out = h.run_ok(["plan", "--model", model, "--topology", h.path("tp2.json"), "-tp", 1, "--force"])
h.check("warning: the model does not fit" in out and "running anyway: --force" in out, f"--force warns:\n{out}")

prompts = h.write("prompts.txt", "Hello world\nThe quick brown fox\nOnce upon a time\n")
flags = ["generate", "--model", model, "--prompts", prompts, "--max-tokens", 8, "--overwrite"]
h.run_ok(flags + ["--output", "one.jsonl", "-q"], ranks=1)
out = h.run_ok(flags + ["--output", "auto.jsonl", "-tp", "auto", "-pp", "auto"], ranks=2)
h.check("placement: -tp auto -pp auto -dp auto -> -tp 1 -pp 1 -dp 2" in out, f"generate resolves auto:\n{out}")
h.check([r["token_ids"] for r in h.results("auto.jsonl")] == [r["token_ids"] for r in h.results("one.jsonl")],
        "the auto layout computes the same tokens as one rank")

# --part K/N (job arrays): contiguous parts keeping ids and seeds, so the parts in order are the whole run.
sampled = flags + ["--temperature", 0.9, "--top-k", 30, "--seed", 3, "-q"]
h.run_ok(sampled + ["--output", "whole.jsonl"], ranks=1)
h.run_ok(sampled + ["--output", "part0.jsonl", "--part", "0/2"], ranks=1)
h.run_ok(sampled + ["--output", "part1.jsonl", "--part", "1/2"], ranks=2)
parts = h.results("part0.jsonl") + h.results("part1.jsonl")
h.check([r["id"] for r in h.results("part0.jsonl")] == [0, 1] and [r["id"] for r in parts] == [0, 1, 2],
        f"parts 0/2 and 1/2 of 3 prompts hold prompts 0-1 and 2: {[r['id'] for r in parts]}")
h.check(parts == h.results("whole.jsonl"), "the parts in order equal the whole run (same ids, seeds, tokens)")
code, out, _ = h.run(sampled + ["--output", "bad.jsonl", "--part", "2/2"], ranks=1)
h.check(code != 0 and "--part 2/2: expected K/N with 0 <= K < N" in out, f"--part 2/2 is refused:\n{out}")

# A GPU plan from a description: each rank's device, 16-bit sizes, and whether its TP group talks over NVLink or PCIe.
def gpu_node(peers):
    devices = [{"id": d, "name": "H100", "memory_bytes": 80 << 30, "nvlink_peers": peers(d)} for d in range(4)]
    return h.write("gpus.json", json.dumps({"nodes": [{"hostname": "g", "ranks": [0, 1, 2, 3], "devices": devices}]}))


islands = gpu_node(lambda d: [d ^ 1])  # 0-1 and 2-3
# The same KV budget on both devices (by default a GPU's pool takes 90% of its memory).
plan = ["plan", "--model", model, "-tp", 2, "--device", "cuda", "--kv-cache-memory", 0.0001]
out = h.run_ok(plan + ["--topology", islands])
h.check(re.search(r"\n3 +g +3 +gpu:3 ", out) is not None and out.count("(NVLink)") == 4 and "(PCIe)" not in out,
        f"a GPU plan names each rank's device and NVLink for TP groups inside an island:\n{out}")
cpu_mb = busiest_mb(h.run_ok(["plan", "--model", model, "-tp", 2, "--topology", islands, "--kv-cache-memory", 0.0001]))
default_gpu = h.run_ok(plan[:-2] + ["--topology", islands])
h.check(re.search(r"KV cache: \d+ blocks of 16 positions per rank .*90% of the GPU after weights and workspace",
                  default_gpu) is not None, f"by default a GPU's KV pool takes what 90% of it leaves:\n{default_gpu}")
h.check(busiest_mb(out) < 0.6 * cpu_mb, f"GPU memory is estimated in 16 bits, below the CPU's f32: {out}")
out = h.run_ok(plan + ["--topology", gpu_node(lambda d: []), "--force"])
h.check(out.count("(PCIe)") == 4, f"without NVLink the TP all-reduces go over PCIe:\n{out}")

code, out, _ = h.run(flags + ["--output", "cuda.jsonl", "--device", "cuda"], ranks=2)
if "built without CUDA" in h.run_ok(["--version"]):  # a CPU-only build says so instead
    h.check(code != 0 and "--device cuda: this strata was built without CUDA" in out, f"CPU-only build:\n{out}")
else:
    h.check(code != 0 and re.search(r"--device cuda: host \S+ \(ranks 0,1\) has no GPU: no NVML", out) is not None,
            f"--device cuda without GPUs names the host and its ranks:\n{out}")
code, out, _ = h.run(["plan", "--model", model, "--topology", free, "-tp", 0])
h.check(code != 0 and "'0' is neither a positive number nor auto" in out, f"-tp 0 is refused:\n{out}")
h.finish()
