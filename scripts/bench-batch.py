#!/usr/bin/python3
"""Batch-engine benchmarks: a workload generator and side-by-side runs of `strata generate --metrics`.

Workloads (prompts as plain text: the presets' byte tokenizer makes one token per character, plus <s>):
  shared-prefix  N prompts = one 1,024-token system prompt + a distinct 32-token question, 16 tokens out:
                 throughput with prefix caching vs --no-prefix-caching.
  capacity       a fixed KV budget, long-tailed prompt lengths (64 .. 4,096 tokens): peak sequences in flight and
                 throughput with 16-position blocks vs one block of max_model_len per sequence (--kv-block-size
                 equal to the context: the contiguous slot per sequence of the engine before paging).
  long-prompt    64 sequences decoding, one long prompt among them: the longest step (the longest gap between two
                 tokens of a decoding sequence) with chunked prefill vs --no-chunked-prefill.
  makespan       dp 2 (2 ranks, 1 thread each) on long-tailed prompt and output lengths: the job's wall time against
                 (total compute of both replicas) / 2, handing prompts out dynamically vs --static-dp (i % dp).
  big-file       10,000 and 1,000,000 one-line prompts, max_tokens 1, dp 2: each rank's peak resident memory (the
                 memory property does not depend on the model: this one uses the tiny preset, which the 2 cores run
                 through a million prompts in minutes; the 100M model would take hours).
  huge-file      a 10,000,000-line prompt file run with --part 9999/10000: rank 0 reads, checks and streams all of it
                 (10 million prompts) and the last thousand run; peak RSS per rank.

Usage: scripts/bench-batch.py --strata build/launch/strata --work DIR [--workloads a,b] [--scale S]
The model is written once into DIR (strata init --preset 100m --dtype bf16, context 8192). --scale multiplies the
prompt counts (1 = the sizes recorded in docs/performance.md).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time


def write_prompts(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"p{i}", "prompt": t}) + "\n")


def words(rng, n):
    """n characters of lowercase letters and spaces (n tokens with the byte tokenizer)."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz    ") for _ in range(n))


def shared_prefix(rng, count):
    system = words(rng, 1024)
    return [system + words(rng, 32) for _ in range(count)], 16


def long_tailed(rng, count):
    """Lengths 64 .. 4,096, most short (a Pareto tail), as batch prompt files are."""
    out = []
    for _ in range(count):
        n = int(min(4096, 64 * rng.paretovariate(1.2)))
        out.append(words(rng, max(64, n)))
    return out, 16


def run(args, name, prompts_file, extra, ranks=1, model=None):
    out = os.path.join(args.work, f"{name}.jsonl")
    metrics = os.path.join(args.work, f"{name}.metrics.json")
    cmd = [args.strata, "generate", "--model", model or args.model, "--prompts", prompts_file, "--output", out,
           "--overwrite", "--metrics", metrics, "--progress", "none", "--temperature", "0", *map(str, extra)]
    env = dict(os.environ)
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), "--oversubscribe"] + cmd
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")  # CI and containers run as root
    start = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.time() - start
    if p.returncode != 0:
        sys.exit(f"{name} failed ({' '.join(cmd)}):\n{p.stdout[-3000:]}")
    with open(metrics, encoding="utf-8") as f:
        m = json.load(f)
    texts = [json.loads(line).get("text") for line in open(out, encoding="utf-8")]
    return m, wall, texts


def side_by_side(args, path, common, first, second):
    """Runs the (label, run name, extra flags) pair one after the other on the same prompts and prints a row each;
    returns both summaries and walls, and whether their greedy texts are identical."""
    results = []
    for label, name, extra in (first, second):
        m, wall, texts = run(args, name, path, common + extra)
        results.append((label, m, wall, texts))
    for label, m, wall, _ in results:
        print(row(label, m, wall))
    (_, a, a_wall, a_texts), (_, b, b_wall, b_texts) = results
    return a, a_wall, b, b_wall, a_texts == b_texts


def ensure_model(args, name, *flags):
    """strata init into WORK/name unless it is there already; returns its path."""
    path = os.path.join(args.work, name)
    if not (os.path.isdir(path) and os.listdir(path)):
        subprocess.run([args.strata, "init", *flags, "--output", path], check=True)
    return path


def one_line_prompts(path, count, what):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            f.write(f"prompt number {i} of the {what}\n")


def peak_rss(m):
    return ", ".join(f"rank {r['rank']} {r['peak_rss_mib']:.0f} MiB" for r in m["ranks"])


def row(name, m, wall):
    kv = m["kv_cache"]
    return (f"{name:<34} {wall:8.1f} s {m['throughput']['total_tokens_per_second']:9.1f} tok/s "
            f"peak seqs {kv['peak_sequences_per_replica']:4d}  peak blocks {kv['peak_blocks_per_replica']:6d}/"
            f"{kv['blocks']:<6d} cached prompt tok {m['prefix_cache']['cached_prompt_tokens']:8d}  "
            f"preempt {m['preemptions']:4d}  longest token gap {m['longest_token_gap_seconds']:.3f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", default="build/launch/strata")
    ap.add_argument("--work", default="bench-batch-work")
    ap.add_argument("--workloads", default="shared-prefix,capacity,long-prompt,makespan,big-file")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    args.model = ensure_model(args, "m100-ctx8k", "--preset", "100m", "--dtype", "bf16", "--seed", "5",
                              "--max-position-embeddings", "8192")
    rng = random.Random(args.seed)
    chosen = args.workloads.split(",")
    print(f"strata batch benchmarks: 100M preset (bf16, context 8192), 1 rank, {os.cpu_count()} cores")

    if "shared-prefix" in chosen:
        count = max(2, int(200 * args.scale))
        texts, out_tokens = shared_prefix(rng, count)
        path = os.path.join(args.work, "shared.jsonl")
        write_prompts(path, texts)
        common = ["--max-tokens", out_tokens, "--max-batch-size", 32, "--max-model-len", 2048]
        print(f"\nshared prefix: {count} prompts of 1,024 + 32 tokens, {out_tokens} out")
        on, on_wall, off, off_wall, same = side_by_side(
            args, path, common, ("prefix caching", "shared-on", []),
            ("--no-prefix-caching", "shared-off", ["--no-prefix-caching"]))
        print(f"speed-up {off_wall / on_wall:.2f}x; greedy texts identical: {same}")

    if "capacity" in chosen:
        count = max(4, int(48 * args.scale))
        texts, out_tokens = long_tailed(rng, count)
        path = os.path.join(args.work, "capacity.jsonl")
        write_prompts(path, texts)
        lengths = sorted(len(t) + 1 for t in texts)
        # The budget holds 8 contexts of 8,192 positions' worth of blocks either way (an f32 cache, as recorded in
        # docs/performance.md before the bf16 model's default cache became f16).
        budget = 8 * 8192 * 2 * 12 * 4 * 64 * 4 / 2**30  # positions x 2 x layers x KV heads x head_dim x f32
        common = ["--max-tokens", out_tokens, "--max-batch-size", 64, "--max-model-len", 8192,
                  "--kv-cache-memory", budget, "--no-prefix-caching", "--kv-cache-dtype", "f32"]
        print(f"\ncapacity: {count} prompts, lengths {lengths[0]} .. {lengths[-1]} (median {lengths[len(lengths) // 2]}),"
              f" {out_tokens} out, KV budget {budget:.3f} GiB (65,536 positions)")
        paged, paged_wall, slots, slots_wall, same = side_by_side(
            args, path, common, ("paged, blocks of 16", "capacity-paged", ["--kv-block-size", 16]),
            ("one 8,192-position block per seq", "capacity-slots", ["--kv-block-size", 8192]))
        ratio = paged["kv_cache"]["peak_sequences_per_replica"] / max(1, slots["kv_cache"]["peak_sequences_per_replica"])
        print(f"sequences in flight {ratio:.1f}x, throughput {slots_wall / paged_wall:.2f}x; "
              f"greedy texts identical: {same}")

    if "long-prompt" in chosen:
        long_len = int(os.environ.get("STRATA_BENCH_LONG_PROMPT", "4096"))
        # 64 short prompts fill the batch and decode 32 .. 95 tokens; the long one is admitted when the first of
        # them finishes, so it arrives among 63 decoding sequences.
        path = os.path.join(args.work, "long.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i in range(64):
                f.write(json.dumps({"id": i, "prompt": words(rng, 24), "max_tokens": 32 + i}) + "\n")
            f.write(json.dumps({"id": 64, "prompt": words(rng, long_len), "max_tokens": 8}) + "\n")
        common = ["--max-batch-size", 64, "--max-model-len", 8192, "--max-num-batched-tokens", 256]
        print(f"\nlong prompt: 64 sequences decoding 32 .. 95 tokens, one prompt of {long_len + 1} tokens arriving "
              "among them")
        chunked, _, whole, _, same = side_by_side(
            args, path, common, ("chunked prefill (256 per step)", "long-chunked", []),
            ("--no-chunked-prefill", "long-whole", ["--no-chunked-prefill"]))
        a, b = chunked["longest_token_gap_seconds"], whole["longest_token_gap_seconds"]
        print(f"longest gap between two tokens of a sequence: {a:.3f} s vs {b:.3f} s ({a / b:.3f} of it); "
              f"greedy texts identical: {same}")

    if "makespan" in chosen:
        count = max(8, int(96 * args.scale))
        path = os.path.join(args.work, "makespan.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i in range(count):  # long-tailed prompt and output lengths
                prompt = words(rng, int(min(1024, 32 * rng.paretovariate(1.1))))
                out = int(min(256, 8 * rng.paretovariate(1.0)))
                f.write(json.dumps({"id": i, "prompt": prompt, "max_tokens": out}) + "\n")
        common = ["-dp", 2, "--max-batch-size", 8, "--max-model-len", 2048]
        print(f"\nmakespan: dp 2 (1 thread per rank), {count} prompts of 32 .. 1,024 tokens and 8 .. 256 out "
              "(long-tailed)")
        for name, extra in (("dynamic", []), ("static i % dp", ["--static-dp"])):
            m, wall, _ = run(args, "makespan-" + name.split()[0], path, common + extra, ranks=2)
            work = sum(r["compute_seconds"] + r["communication_seconds"] for r in m["ranks"])
            ran = [r.get("prompts_run") for r in m["ranks"]]
            print(f"{name:<16} makespan {m['wall_seconds']:7.1f} s, total work / 2 = {work / 2:7.1f} s "
                  f"(makespan {m['wall_seconds'] / (work / 2):.2f}x of it); prompts per replica {ran}")

    if "big-file" in chosen or "huge-file" in chosen:
        tiny = ensure_model(args, "tiny", "--preset", "tiny", "--seed", "5")
        tiny_flags = ["-dp", 2, "--max-tokens", 1, "--max-batch-size", 256, "--max-model-len", 64]

    if "big-file" in chosen:
        print("\nbig file: one-line prompts, max_tokens 1, dp 2, tiny preset")
        for count in (10_000, 1_000_000):
            path = os.path.join(args.work, f"big-{count}.txt")
            one_line_prompts(path, count, "big file")
            m, wall, _ = run(args, f"big-{count}", path, tiny_flags, ranks=2, model=tiny)
            print(f"{count:>9,} prompts: {wall:6.1f} s ({count / wall:,.0f} prompts/s); peak RSS {peak_rss(m)}; "
                  f"prompts per replica {[r.get('prompts_run') for r in m['ranks']]}")
            os.remove(path)

    if "huge-file" in chosen:
        path = os.path.join(args.work, "huge.txt")
        one_line_prompts(path, 10_000_000, "huge file")
        m, wall, texts = run(args, "huge", path, tiny_flags + ["--part", "9999/10000"], ranks=2, model=tiny)
        print(f"\nhuge file: 10,000,000 lines ({os.path.getsize(path) / 1e6:.0f} MB), --part 9999/10000: {len(texts)} "
              f"records in {wall:.1f} s; peak RSS {peak_rss(m)}")
        os.remove(path)

if __name__ == "__main__":
    main()
