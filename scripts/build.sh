#!/usr/bin/env bash
# Configures and builds strata in ./build (Release). CUDA sources are compiled when nvcc is found (STRATA_CUDA=AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${STRATA_CMAKE_ARGS:-}
cmake --build build -j "$(nproc)"
