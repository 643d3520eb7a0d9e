#!/bin/bash
# Side by side with llama.cpp on this machine: the same model (a strata checkpoint, exported to GGUF by
# export_gguf.py) run by `strata bench` and by llama.cpp's prebuilt CPU library (npm @node-llama-cpp/linux-x64,
# pinned; a small driver built against the same release's headers, taken from the node-llama-cpp package's source
# bundle), alternating the two, ROUNDS times, for bf16, q8_0 and q4_0 weights; prompt 128, 32 generated, 2 threads,
# at each batch size of BATCHES (default "1 16 64": strata's batch against llama.cpp's as many parallel sequences),
# strata once per KV-cache type of KV (default "auto": f16 for these weights, the cache llama.cpp keeps by default;
# "auto f32" adds a run with the f32 cache). KINDS (default "bf16 q8_0 q4_0") picks the weights. Prints every run;
# docs/performance.md takes the medians.
#   [BATCHES="1 16 64"] [KV="auto f32"] [KINDS=bf16] scripts/llamacpp/bench.sh CHECKPOINT [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
checkpoint=$1
rounds=${2:-3}
work=${LLAMACPP_WORK:-$root/build/llamacpp}
mkdir -p "$work"
version=3.21.1
if [ ! -e "$work/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.4.0.so" ]; then
  npm install --prefix "$work" --no-audit --no-fund --ignore-scripts "@node-llama-cpp/linux-x64@$version" >/dev/null
fi
bins=$work/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
if [ ! -e "$work/llama-src/include/llama.h" ]; then
  (cd "$work" && npm pack "node-llama-cpp@$version" >/dev/null && tar xzf "node-llama-cpp-$version.tgz" \
    package/llama/gitRelease.bundle && rm -rf llama-src && git clone -q package/llama/gitRelease.bundle llama-src)
fi
g++ -O2 -std=c++17 "$here/driver.cpp" -I "$work/llama-src/include" -I "$work/llama-src/ggml/include" -L"$bins" \
  -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -l:libggml-base.so -Wl,-rpath,"$bins" -o "$work/driver"
for kind in bf16 q8_0 q4_0; do
  [ -e "$work/model-$kind.gguf" ] || /usr/bin/python3 "$here/export_gguf.py" "$checkpoint" "$work/model-$kind.gguf" \
    "$kind" "$bins/libggml-base.so"
done
strata=${STRATA:-$root/build/launch/strata}
batches=${BATCHES:-1 16 64}
for round in $(seq "$rounds"); do
  for kind in ${KINDS:-bf16 q8_0 q4_0}; do
    flags=()
    [ "$kind" = bf16 ] || flags=(--quantize "$kind")
    for kv in ${KV:-auto}; do
      echo "== round $round $kind strata kv $kv"
      "$strata" bench --model "$checkpoint" --batch-sizes "${batches// /,}" --prompt-len 128 --gen-len 32 \
        --kv-cache-dtype "$kv" "${flags[@]}" 2>&1 | grep -E "^measured|^ +[0-9]+ +128 "
    done
    for b in $batches; do
      echo "== round $round $kind llama.cpp batch $b"
      parallel=()
      [ "$b" = 1 ] || parallel=(--parallel "$b")
      LLAMACPP_BACKENDS=$bins "$work/driver" "$work/model-$kind.gguf" 128 32 2 2 "${parallel[@]}" 2>&1 |
        grep -E "^llama.cpp|load_backend: loaded CPU"
    done
  done
done
