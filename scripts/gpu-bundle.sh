#!/usr/bin/env bash
# Run HERE (a Debian 12 machine with the registry and CUDA 13 at /usr/local/cuda; no GPU needed): prepares
# .gpu-bundle/ (git-ignored, under 64 MiB) for scripts/gpu-validate.sh on a GPU machine that reaches no registry:
#   .gpu-bundle/debs/  the Debian packages the binaries need at run time that a CUDA/PyTorch image may lack
#                      (Open MPI and its fabric libraries, HDF5, OpenBLAS), and the headers and CMake packages
#                      for an optional build there, fetched with `apt-get download`;
#   .gpu-bundle/bin/   strata and the GPU test programs, built here for sm_90 (H100/H200) from this checkout;
#   .gpu-bundle/commit the checkout's commit, so the GPU side can say what it ran.
# The binaries are built here as well as (optionally) there: the build here is the dependable path, since a build
# on an image we have never seen can fail for reasons no one can fix from here.
# Usage: scripts/gpu-bundle.sh [--jobs N] [--skip-build]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="$ROOT/.gpu-bundle"
BUILD="${STRATA_GPU_BUILD_DIR:-$ROOT/build-gpu}"
JOBS=2
SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    *) echo "gpu-bundle.sh: unknown argument $1 (use --jobs N, --skip-build)" >&2; exit 2 ;;
  esac
done

# Run-time packages, dependencies spelled out (apt-cache depends --recurse pulls in dpkg, passwd and the like that
# no program of ours loads). gpu-validate.sh links a library from here only when the GPU machine lacks its soname,
# so listing one the image already has costs only download size.
PACKAGES=(
  # Open MPI 4.1 (mpiexec, libmpi) and what it loads: PMIx, hwloc, libevent, fabrics (UCX, libfabric, verbs, PSM).
  openmpi-bin openmpi-common libopenmpi3 libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libfabric1 libucx0 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libnuma1
  libmunge2 libudev1 libatomic1
  # HDF5 (serial) and its dependencies: szip/libaec, curl with OpenSSL and curl's own libraries.
  libhdf5-103-1 libsz2 libaec0 libcurl4 libssl3 libnghttp2-14 libpsl5 librtmp1 libssh2-1 libldap-2.5-0
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libbrotli1 libzstd1 libidn2-0
  libunistring2 libgnutls30 libnettle8 libhogweed6 libgmp10 libp11-kit0 libffi8 libtasn1-6 libsasl2-2
  # OpenBLAS (OpenMP build: the CPU backend, and bench's CPU probe) and its Fortran run time.
  libopenblas0-openmp libgfortran5 libquadmath0 libgomp1
  # Unicode: PCRE2 (tokenizer regexes) and ICU (NFC normalisation); a CUDA image may have neither in this version.
  libpcre2-8-0 libicu72
  # Headers and CMake packages, for `gpu-validate.sh build` (a build there with the machine's own compiler, nvcc
  # and CMake; the binaries built here are used when that is not possible).
  libopenmpi-dev libhdf5-dev libopenblas-openmp-dev libcli11-dev nlohmann-json3-dev libgtest-dev
)
# Not bundled: python3-numpy/python3-h5py (Debian's are built for Python 3.11; the GPU image's Python has both),
# CMake and ninja (the GPU image has them; only the optional build phase needs them).

# root/ and lib/ are what gpu-validate.sh unpacks there: never carry them (they would pass 64 MiB).
rm -rf "$BUNDLE/root" "$BUNDLE/lib"
mkdir -p "$BUNDLE/debs" "$BUNDLE/bin"
grep -qx '/.gpu-bundle/' "$ROOT/.gitignore" || echo '/.gpu-bundle/' >>"$ROOT/.gitignore"

echo "== downloading ${#PACKAGES[@]} packages into $BUNDLE/debs"
(cd "$BUNDLE/debs" && rm -f ./*.deb && apt-get download "${PACKAGES[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
missing=0
for p in "${PACKAGES[@]}"; do
  ls "$BUNDLE/debs/${p}_"*.deb >/dev/null 2>&1 || { echo "MISSING package $p" >&2; missing=1; }
done
[ "$missing" = 0 ] || { echo "gpu-bundle.sh: some packages were not downloaded (see above)" >&2; exit 1; }

if [ "$SKIP_BUILD" = 0 ]; then
  echo "== building strata and the GPU tests for sm_90 in $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
  # The GPU test programs: every test target named cuda_*, nccl_* or gpu_* (tests/cuda, tests/nccl).
  mapfile -t gpu_tests < <(ninja -C "$BUILD" -t targets all | sed -n 's/^\(\(cuda\|nccl\|gpu\)_[A-Za-z0-9_]*\): phony$/\1/p' | sort -u)
  echo "GPU test programs: ${gpu_tests[*]:-none}"
  cmake --build "$BUILD" -j "$JOBS" --target strata "${gpu_tests[@]}"
  rm -f "$BUNDLE/bin/"*
  cp "$BUILD/launch/strata" "$BUNDLE/bin/"
  for t in "${gpu_tests[@]}"; do cp "$BUILD/tests/$t" "$BUNDLE/bin/"; done
  strip --strip-debug "$BUNDLE/bin/"*
  git -C "$ROOT" rev-parse HEAD >"$BUNDLE/commit"
  git -C "$ROOT" status --porcelain | grep -q . && echo "(with uncommitted changes)" >>"$BUNDLE/commit" || true
fi

size=$(du -sb "$BUNDLE" | cut -f1)
echo "== $BUNDLE: $((size / 1048576)) MiB ($(ls "$BUNDLE/debs" | wc -l) packages, $(ls "$BUNDLE/bin" | wc -l) programs)"
# The device tool carries at most 64 MiB with the working tree: keep a margin for the sources.
if [ "$size" -gt $((56 * 1048576)) ]; then
  echo "gpu-bundle.sh: the bundle is over 56 MiB; the device tool carries 64 MiB including the working tree" >&2
  exit 1
fi
echo "next: run scripts/gpu-validate.sh on the GPU machine with carry [\".gpu-bundle\"] (docs/performance.md)"
