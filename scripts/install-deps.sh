#!/usr/bin/env bash
# Installs everything strata needs on Debian 12 (run as root). Idempotent.
#   scripts/install-deps.sh          what building and running need (the README's first command)
#   scripts/install-deps.sh --tests  that, plus what only the test suite needs (the README's second command)
# Why each package is here is written in README.md ("Dependencies").
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  openmpi-bin libopenmpi-dev          # MPI: launch, communicators, point-to-point between pipeline stages
  libhdf5-dev hdf5-tools              # sharded checkpoints with per-chunk Fletcher32 checksums
  libcli11-dev                        # command line
  libgtest-dev googletest             # unit and MPI tests (configured by default, so needed to build)
  libopenblas-openmp-dev              # fp32 GEMM for the CPU backend without AVX-512 (OpenMP build: one team with ours)
  nlohmann-json3-dev                  # manifest, JSONL prompts and results, tokenizer.json
  libpcre2-dev                        # Unicode regexes (Hugging Face tokenizers' pre-tokenizers)
  libicu-dev                          # Unicode NFC normalization (Qwen2 tokenizer.json)
  python3 python3-numpy python3-h5py  # independent float64 reference forward pass used by the tests and demo
)
test_packages=(
  clang libclang-rt-14-dev            # libFuzzer + sanitizers for the parser fuzz targets
  iproute2                            # network namespaces and veth pairs for the emulated multi-node tests
  munge slurmctld slurmd slurm-client # a real Slurm on this machine for the job-script tests
  gdb                                 # backtraces of core files a crashed rank leaves in the Slurm test
  python3-matplotlib                  # scripts/plot-metrics.py (the metrics test draws its plots)
  python3-jinja2                      # the reference renderer the chat-template tests compare strata's Jinja with
)
if [ "${1:-}" = "--tests" ]; then
  packages+=("${test_packages[@]}")
  # Node.js and npm run the independent JavaScript tokenizer the tokenizer tests compare against; a machine that
  # already has a Node.js with npm (e.g. from NodeSource) keeps it, since Debian's npm would conflict with it.
  command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi
