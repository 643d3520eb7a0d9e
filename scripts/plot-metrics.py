#!/usr/bin/python3
"""Plots one or several `strata generate --metrics` summaries as PNG files:
  throughput.png      completion tokens/s of each run, labelled by its layout (dp x pp x tp, device)
  time-breakdown.png  for each run, every rank's share of compute, communication and waiting
Usage: scripts/plot-metrics.py SUMMARY.json [SUMMARY.json ...] [--output-dir DIR] [--labels A,B,...]
Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def label_of(summary, path):
    layout = summary.get("layout", {})
    return f"dp{layout.get('dp', '?')} x pp{layout.get('pp', '?')} x tp{layout.get('tp', '?')} " \
           f"({layout.get('device', '?')})\n{os.path.basename(path)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", nargs="+")
    parser.add_argument("--output-dir", default=".")
    parser.add_argument("--labels", help="comma-separated labels instead of the layouts")
    args = parser.parse_args()
    runs = []
    for path in args.summaries:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        if summary.get("format") != "strata metrics 1":
            sys.exit(f"{path}: not a strata metrics summary (format {summary.get('format')!r})")
        runs.append((path, summary))
    labels = args.labels.split(",") if args.labels else [label_of(s, p) for p, s in runs]
    if len(labels) != len(runs):
        sys.exit(f"--labels has {len(labels)} labels for {len(runs)} summaries")
    os.makedirs(args.output_dir, exist_ok=True)

    fig, ax = plt.subplots(figsize=(max(4, 1.8 * len(runs)), 4))
    rates = [s["throughput"]["completion_tokens_per_second"] for _, s in runs]
    ax.bar(range(len(runs)), rates, color="#4477aa")
    ax.set_xticks(range(len(runs)), labels, fontsize=7)
    ax.set_ylabel("completion tokens / s")
    ax.set_title("throughput by layout")
    for i, rate in enumerate(rates):
        ax.text(i, rate, f"{rate:.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "throughput.png"), dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 1.2 + 0.35 * sum(len(s["ranks"]) for _, s in runs)),
                             squeeze=False)
    parts = [("compute_share", "compute", "#4477aa"), ("communication_share", "communication", "#ee6677"),
             ("waiting_share", "waiting", "#bbbbbb")]
    for ax, label, (_, summary) in zip(axes[:, 0], labels, runs):
        ranks = summary["ranks"]
        left = [0.0] * len(ranks)
        for key, name, color in parts:
            values = [r[key] for r in ranks]
            ax.barh([f"rank {r['rank']}" for r in ranks], values, left=left, color=color, label=name)
            left = [a + b for a, b in zip(left, values)]
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(label.replace("\n", "  "), fontsize=8, loc="left")
    axes[0, 0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=3, frameon=False)
    axes[-1, 0].set_xlabel("share of the rank's wall time")
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "time-breakdown.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.join(args.output_dir, 'throughput.png')} and "
          f"{os.path.join(args.output_dir, 'time-breakdown.png')}")


if __name__ == "__main__":
    main()
