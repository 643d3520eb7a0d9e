#!/usr/bin/env bash
# The README's second command (and what .ci/run calls): install what is needed, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
scripts/build.sh
source scripts/mpi-env.sh
cd build
ctest --output-on-failure --timeout 900
