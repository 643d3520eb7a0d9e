#!/bin/bash
# Tensor parallelism against threads on one machine, for issue 13's goal "tp 2 over 2 ranks at least as fast as 1
# rank with 2 threads at every batch size": `strata bench` of MODEL (one rank, a thread per core) against
# `mpiexec -np 2 --bind-to core strata bench -tp 2` of MODEL_TP2 (the same weights sharded for tp 2, each rank one
# thread), alternating, ROUNDS times, for each weights type of KINDS (default "bf16 q8_0 q4_0"; quantized at load).
# Which of the two goes first alternates from round to round, so that a drift of the VM's speed during a round
# (docs/performance.md) does not always favour the same one. Prints every run's rows, then per weights type and
# batch size the medians of prefill and decode tok/s and in how many rounds tp 2 was at least as fast.
#   [BATCHES=1,16,64] [REPEATS=3] [GEN_LEN=32] [KINDS=...] scripts/tp-bench.sh MODEL MODEL_TP2 [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
model=$1 model_tp2=$2 rounds=${3:-3}
strata=${STRATA:-$root/build/launch/strata}
args=(--batch-sizes "${BATCHES:-1,16,64}" --prompt-len 128 --gen-len "${GEN_LEN:-32}" --repeats "${REPEATS:-3}")
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# One run: its table rows as "ROUND KIND tpN BATCH PREFILL DECODE".
run() {
  local round=$1 kind=$2 n=$3 flags=()
  [ "$kind" = bf16 ] || flags=(--quantize "$kind")
  if [ "$n" = 1 ]; then
    "$strata" bench --model "$model" "${args[@]}" "${flags[@]}"
  else
    mpiexec -np 2 --bind-to core "$strata" bench --model "$model_tp2" -tp 2 "${args[@]}" "${flags[@]}"
  fi 2>&1 | awk -v r="$round" -v k="$kind" -v n="tp$n" '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ && NF >= 8 {
    print r, k, n, $1, $3, $6 }' | tee -a "$log"
}

for round in $(seq "$rounds"); do
  for kind in ${KINDS:-bf16 q8_0 q4_0}; do
    if [ $((round % 2)) = 1 ]; then order="1 2"; else order="2 1"; fi
    for n in $order; do run "$round" "$kind" "$n"; done
  done
done

echo
echo "medians over $rounds rounds, tok/s tp 1 / tp 2 (rounds where tp 2 was at least as fast):"
python3 - "$log" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(dict)  # (kind, batch) -> {(round, tpN): (prefill, decode)}
for line in open(sys.argv[1]):
    round_, kind, tp, batch, prefill, decode = line.split()
    runs[(kind, int(batch))][(round_, tp)] = (float(prefill), float(decode))
print(f"{'weights':8} {'batch':>5}  {'prefill tp 1 / tp 2':>21} {'ahead':>6}  {'decode tp 1 / tp 2':>21} {'ahead':>6}")
for (kind, batch), by_run in runs.items():
    rounds = sorted({r for r, _ in by_run if (r, 'tp1') in by_run and (r, 'tp2') in by_run})
    cells = []
    for column in (0, 1):
        one = [by_run[(r, 'tp1')][column] for r in rounds]
        two = [by_run[(r, 'tp2')][column] for r in rounds]
        ahead = sum(b >= a for a, b in zip(one, two))
        cells.append(f"{statistics.median(one):10.1f} / {statistics.median(two):8.1f} {ahead:3d}/{len(rounds):<2d}")
    print(f"{kind:8} {batch:5d}  {cells[0]}  {cells[1]}")
EOF
