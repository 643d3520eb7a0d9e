#!/usr/bin/env python3
r"""CUDA backend vs CPU backend on the same checkpoint: `strata generate --record-logits` results of both, row by row.

Tolerance (bf16). The CUDA backend keeps activations in bf16 (8-bit significand: unit roundoff u = 2^-8) and
accumulates in fp32 inside each op; the CPU backend computes in fp32 on the same bf16 weights. Their difference is
therefore dominated by rounding the activations to bf16: each decoder layer rounds the residual stream and the
outputs of about six ops (norm, q/k/v, attention, o_proj, gate/up, down), each a relative error of at most u, and
independent roundings add up like a random walk over 6 L of them. A logit row is compared relative to its largest
magnitude, and must satisfy
    max_i |cuda_i - cpu_i| / max_i |cpu_i|  <=  tol = 2 * sqrt(6 L) * u
(the factor 2 covers the final norm and the lm_head rounding, and the tail of the walk): 0.038 for L = 4 layers,
0.066 for L = 12. --tolerance overrides it.

Greedy text. Row k of a record is compared only while both backends generated the same tokens before it (after
that the two continue different texts). Where the chosen tokens differ, the CPU row's top-two margin decides: at
most 2 * tol * max|cpu| (either could move by tol * max|cpu|) is a legitimate tie and ends that record's comparison;
a larger margin is a failure.

Negative control: the candidate rows with one logit moved by 4 * tol * max|row| must fail the same check.
Exit status 0 when every compared row and token passes and the negative control is detected.
"""
import argparse
import json
import math
import os
import sys

import numpy as np


def read_results(path):
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["id"]: r for r in records}


def layers_of(checkpoint):
    with open(os.path.join(checkpoint, "manifest.json")) as f:
        return int(json.load(f)["model"]["num_hidden_layers"])


def compare(reference, candidate, tol, verbose=True):
    """Returns (failures, stats) for two {id: record} maps."""
    failures = rows = agree = ties = 0
    errors = []
    for rid, ref in sorted(reference.items(), key=lambda kv: str(kv[0])):
        cand = candidate.get(rid)
        if cand is None:
            failures += 1
            verbose and print(f"FAIL record {rid}: missing from the candidate results")
            continue
        ref_logits, cand_logits = ref.get("logits", []), cand.get("logits", [])
        ref_tokens, cand_tokens = ref["token_ids"], cand["token_ids"]
        for k in range(min(len(ref_tokens), len(cand_tokens), len(ref_logits), len(cand_logits))):
            r = np.asarray(ref_logits[k], dtype=np.float64)
            c = np.asarray(cand_logits[k], dtype=np.float64)
            if r.shape != c.shape:
                failures += 1
                verbose and print(f"FAIL record {rid} row {k}: vocab {c.shape} vs {r.shape}")
                break
            scale = float(np.max(np.abs(r)))
            err = float(np.max(np.abs(c - r))) / scale if scale > 0 else float(np.max(np.abs(c)))
            rows += 1
            errors.append(err)
            if not err <= tol:  # NaN fails too
                failures += 1
                verbose and print(f"FAIL record {rid} row {k}: relative error {err:.4f} > {tol:.4f}")
            if ref_tokens[k] == cand_tokens[k]:
                agree += 1
                continue
            top2 = np.sort(r)[-2:]
            margin = float(top2[1] - top2[0])
            if margin <= 2 * tol * scale:
                ties += 1
                verbose and print(f"record {rid} row {k}: tokens {ref_tokens[k]} (cpu) and {cand_tokens[k]} (cuda) "
                                  f"differ within the margin ({margin / scale:.4f} <= {2 * tol:.4f}); "
                                  "the texts continue differently from here")
            else:
                failures += 1
                verbose and print(f"FAIL record {rid} row {k}: cuda chose {cand_tokens[k]}, cpu {ref_tokens[k]} "
                                  f"with a clear margin {margin / scale:.4f} > {2 * tol:.4f}")
            break
    stats = {"rows": rows, "agree": agree, "ties": ties,
             "max_err": max(errors) if errors else float("nan"),
             "mean_err": float(np.mean(errors)) if errors else float("nan")}
    return failures, stats


def perturbed(candidate, tol):
    """A copy whose every logit row has one entry moved by 4 * tol * max|row|."""
    out = {}
    for rid, rec in candidate.items():
        rec = dict(rec)
        rows = []
        for row in rec.get("logits", []):
            row = list(row)
            scale = max(abs(v) for v in row) or 1.0
            row[len(row) // 3] += 4 * tol * scale
            rows.append(row)
        rec["logits"] = rows
        out[rid] = rec
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the checkpoint both ran (for its layer count)")
    parser.add_argument("--reference", required=True, help="CPU results (strata generate --record-logits)")
    parser.add_argument("--candidate", required=True, help="CUDA results (same prompts and flags)")
    parser.add_argument("--tolerance", type=float, default=0, help="override 2 * sqrt(6 L) * 2^-8")
    parser.add_argument("--label", default="cuda vs cpu")
    args = parser.parse_args()
    layers = layers_of(args.checkpoint)
    tol = args.tolerance or 2 * math.sqrt(6 * layers) * 2.0 ** -8
    reference, candidate = read_results(args.reference), read_results(args.candidate)
    if not reference or not any(r.get("logits") for r in reference.values()):
        print(f"FAIL {args.label}: no logits in {args.reference} (run generate with --record-logits)")
        return 1
    failures, s = compare(reference, candidate, tol)
    control_failures, _ = compare(reference, perturbed(candidate, tol), tol, verbose=False)
    control_ok = control_failures > 0
    texts_equal = sum(1 for rid, r in reference.items()
                      if rid in candidate and r["token_ids"] == candidate[rid]["token_ids"])
    print(f"{'PASS' if failures == 0 and control_ok else 'FAIL'} {args.label}: {len(reference)} records, "
          f"{s['rows']} logit rows compared, relative error max {s['max_err']:.4f} mean {s['mean_err']:.4f} "
          f"(tolerance {tol:.4f}{'' if args.tolerance else f' = 2 sqrt(6 x {layers} layers) 2^-8'}); greedy tokens: {s['agree']} equal, "
          f"{s['ties']} differ within the top-two margin; identical texts {texts_equal}/{len(reference)}; "
          f"negative control {'detected' if control_ok else 'NOT detected'}")
    return 0 if failures == 0 and control_ok else 1


if __name__ == "__main__":
    sys.exit(main())
