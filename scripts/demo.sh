#!/usr/bin/env bash
# The README's first command: install what is needed, build, write the built-in `tiny` model sharded for
# tensor-parallel 2 x pipeline-parallel 2, and generate completions for a small prompt file on 4 MPI ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
source scripts/mpi-env.sh

mkdir -p demo
build/launch/strata init --preset tiny --output demo/tiny-tp2-pp2 -tp 2 -pp 2 --dtype bf16 --seed 1
cat > demo/prompts.jsonl <<'PROMPTS'
{"id": "hello", "prompt": "Hello, world"}
{"id": "story", "prompt": "Once upon a time", "max_tokens": 24}
{"id": "sampled", "prompt": "The weather today is", "temperature": 0.8, "top_p": 0.9, "seed": 7}
{"id": "stop", "prompt": "Count: 1, 2, 3,", "stop": [","]}
PROMPTS
mpirun -np 4 build/launch/strata generate --model demo/tiny-tp2-pp2 --prompts demo/prompts.jsonl \
  --output demo/results.jsonl --overwrite --tensor-parallel-size 2 --pipeline-parallel-size 2 --max-tokens 16
echo
echo "Completions (demo/results.jsonl; the model has random weights, so the text is noise):"
python3 - <<'SHOW'
import json
for line in open("demo/results.jsonl", encoding="utf-8"):
    r = json.loads(line)
    print(f"  {r['id']:>8} | {r['prompt']!r} -> {r['text']!r} ({r['completion_tokens']} tokens, {r['finish_reason']})")
SHOW
