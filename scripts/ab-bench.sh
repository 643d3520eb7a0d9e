#!/bin/bash
# Two strata builds side by side on this machine, alternating, for the before/after tables of docs/performance.md
# (a VM's speed drifts between runs: only figures from one interleaved run compare).
#   [RANKS="1 2"] scripts/ab-bench.sh OLD_STRATA NEW_STRATA ROUNDS MODEL [MODEL_TP2] -- BENCH_ARGS...
# Each round runs `strata bench --model MODEL BENCH_ARGS` with OLD then NEW; with RANKS containing 2 also
# `mpiexec -np 2 strata bench --model MODEL_TP2 -tp 2 BENCH_ARGS` (MODEL_TP2: a checkpoint sharded for tp 2). Prints
# each run's table rows under a "== round R old|new tpN" header.
set -euo pipefail
old=$1 new=$2 rounds=$3 model=$4
shift 4
model_tp2=""
if [ "${1:-}" != "--" ]; then model_tp2=$1; shift; fi
[ "${1:-}" = "--" ] && shift
ranks=${RANKS:-1}
for round in $(seq "$rounds"); do
  for which in old new; do
    binary=$old
    [ "$which" = new ] && binary=$new
    for n in $ranks; do
      echo "== round $round $which tp$n"
      if [ "$n" = 1 ]; then
        "$binary" bench --model "$model" "$@" 2>&1 | grep -E '^measured|^ +[0-9]+ +[0-9]+ '
      else
        mpiexec --oversubscribe -np "$n" "$binary" bench --model "$model_tp2" -tp "$n" "$@" 2>&1 |
          grep -E '^measured|^ +[0-9]+ +[0-9]+ '
      fi
    done
  done
done
