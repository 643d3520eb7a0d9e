#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for RUNS executions (default 200000):
#   scripts/fuzz.sh [RUNS]
# Prints libFuzzer's final stats; exits non-zero on any crash. Also run, briefly, by the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200000}
out=${FUZZ_BUILD:-build/fuzz}
mkdir -p "$out"
sources=(io/safetensors.cpp runtime/base/error.cpp runtime/base/dtype.cpp runtime/tensor/tensor.cpp)
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. \
  tests/fuzz/fuzz_safetensors_header.cpp "${sources[@]}" -o "$out/fuzz_safetensors_header"
corpus="$out/corpus_safetensors"
mkdir -p "$corpus"
cp tests/fuzz/corpus/* "$corpus/"
"$out/fuzz_safetensors_header" -runs="$runs" -max_len=4096 -seed=1 "$corpus" 2>&1 | tail -n 3
