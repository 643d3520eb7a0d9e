#!/usr/bin/env bash
# Installs everything strata needs to build and test on Debian 12 (run as root). Idempotent.
# Why each package is here is written in README.md ("Dependencies").
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  openmpi-bin libopenmpi-dev          # MPI: launch, communicators, point-to-point between pipeline stages
  libhdf5-dev hdf5-tools              # sharded checkpoints with per-chunk Fletcher32 checksums
  libcli11-dev                        # command line
  libgtest-dev googletest             # unit and MPI tests
  libopenblas-openmp-dev              # fp32 GEMM for the CPU backend (OpenMP build: one thread pool with ours)
  nlohmann-json3-dev                  # manifest, JSONL prompts and results
  libpcre2-dev                        # Unicode regexes (tokenizers)
  python3 python3-numpy python3-h5py  # independent float64 reference forward pass used by the tests
  clang libclang-rt-14-dev            # libFuzzer + sanitizers for the parser fuzz targets
)
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
