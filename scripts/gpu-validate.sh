#!/usr/bin/env bash
# Run THERE, on a GPU machine that reaches no registry, after scripts/gpu-bundle.sh ran here (its .gpu-bundle/
# carried along). Unpacks the bundled Debian packages with dpkg -x into .gpu-bundle/root (never into /), links the
# libraries the machine lacks into .gpu-bundle/lib, prints what the machine has, then runs the phases asked for:
#   env     the machine: GPU, driver, CUDA, compilers, MPI, Python packages, libraries strata resolves (env.txt)
#   build   builds strata and the GPU tests there for sm_90 with the machine's CMake, g++ and nvcc against the
#           bundled headers (build.log); later phases then use that build. Without it, or when it fails, they use
#           the binaries gpu-bundle.sh built (same sources, sm_90)
#   tests   the GPU test programs (tests/nccl, tests/cuda) under the bundled mpiexec (tests.log)
#   logits  CPU vs CUDA logits and greedy text on small checkpoints, tests/gpu/compare_logits.py, and transformers
#           on the same weights vs the CPU backend, tests/gpu/hf_generate.py --check-results (logits.txt)
#   bench   a ~7B random Llama (strata init --preset 7b --dtype bf16): strata bench at batch 1/32/128 next to the
#           HBM roofline measured in the same run, then Hugging Face transformers' generate on the same weights and
#           prompts, side by side (bench.txt, hf.txt, summary.txt)
# Usage: scripts/gpu-validate.sh [env] [build] [tests] [logits] [bench]     (default: env build tests logits)
# STRATA_GPU_LOGITS_MODELS=tiny compares the tiny model only; STRATA_BENCH_PRESET=100m benches the 100M preset.
# Logs and figures go to $OUT (the device tool's folder; ./gpu-out when unset). Each phase prints its wall time;
# `bench` takes about 8 minutes on an H100, so give it a call of its own (docs/performance.md has the commands).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="$ROOT/.gpu-bundle"
SYSROOT="$BUNDLE/root"
LIBDIR="$BUNDLE/lib"
OUT="${OUT:-$ROOT/gpu-out}"
WORK="${STRATA_GPU_WORK:-/tmp/strata-gpu}"
mkdir -p "$OUT" "$WORK"
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(env build tests logits)
FAILED=()

say() { echo "[gpu-validate $(date -u +%H:%M:%S)] $*"; }
fail() { say "FAILED: $*"; FAILED+=("$*"); }

[ -d "$BUNDLE/debs" ] && [ -x "$BUNDLE/bin/strata" ] || {
  echo "gpu-validate.sh: $BUNDLE/debs or $BUNDLE/bin/strata missing: run scripts/gpu-bundle.sh on the machine with" \
    "the registry and carry .gpu-bundle" >&2
  exit 2
}

# --- unpack: dpkg -x, or (no dpkg) the ar archive read by Python and its data.tar.* by tarfile ---------------------
unpack_deb() {
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -x "$1" "$SYSROOT"
  else
    python3 - "$1" "$SYSROOT" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
at = 8
while at < len(data):
    name = data[at:at + 16].decode().strip().rstrip("/")
    size = int(data[at + 48:at + 58].decode().strip())
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(data[at + 60:at + 60 + size])) as tar:
            tar.extractall(sys.argv[2])
    at += 60 + size + (size % 2)
EOF
  fi
}

if [ ! -f "$SYSROOT/.unpacked" ]; then
  say "unpacking $(ls "$BUNDLE/debs" | wc -l) packages into $SYSROOT"
  rm -rf "$SYSROOT" && mkdir -p "$SYSROOT"
  for deb in "$BUNDLE/debs/"*.deb; do unpack_deb "$deb" || fail "unpacking $deb"; done
  touch "$SYSROOT/.unpacked"
fi

# --- libraries: a bundled one is linked into $LIBDIR only when the machine has no library of that soname (its own
# build wins); Open MPI's and PMIx's always come from the bundle, to match the bundled mpiexec and plugins.
MULTIARCH=x86_64-linux-gnu
rm -rf "$LIBDIR" && mkdir -p "$LIBDIR"
SYSTEM_SONAMES="$(ldconfig -p 2>/dev/null | awk '/=>/ {print $1}' | sort -u)"
for f in "$SYSROOT/usr/lib/$MULTIARCH/"lib*.so.* "$SYSROOT/lib/$MULTIARCH/"lib*.so.* \
  "$SYSROOT/usr/lib/$MULTIARCH/openblas-openmp/"lib*.so.*; do
  [ -e "$f" ] || continue
  name="$(basename "$f")"
  case "$name" in
    libmpi* | libopen-pal* | libopen-rte* | libpmix* | libmca_common*) ln -sf "$f" "$LIBDIR/$name" ;;
    *) if [ "${STRATA_BUNDLE_ALL_LIBS:-0}" = 1 ] || ! grep -qxF "$name" <<<"$SYSTEM_SONAMES"; then
         ln -sf "$f" "$LIBDIR/$name"
       fi ;;
  esac
done

# CUDA libraries strata was linked against (cudart, cuBLAS, NCCL): the toolkit's, the driver's, or PyTorch's wheels.
CUDA_DIRS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
  /usr/local/nvidia/lib; do
  [ -d "$d" ] && CUDA_DIRS="$CUDA_DIRS:$d"
done
PYSITE="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)"
for s in $PYSITE; do
  for d in "$s"/nvidia/*/lib "$s"/nvidia/cu13/lib; do [ -d "$d" ] && CUDA_DIRS="$CUDA_DIRS:$d"; done
done

# The environment strata and mpiexec run in (never exported to Python, whose PyTorch has its own libraries).
OMPI_ENV=(
  "LD_LIBRARY_PATH=$LIBDIR$CUDA_DIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  "OPAL_PREFIX=$SYSROOT/usr"  # Open MPI finds its plugins and help files under the bundle (PMIx needs none)
  "PATH=$SYSROOT/usr/bin:$PATH"
  # One node: no ssh (plm isolated), shared memory between ranks, no UCX probing of the fabric or of CUDA.
  OMPI_MCA_plm=isolated OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
  OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_orte_tmpdir_base=/tmp
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
)
MPIEXEC="$SYSROOT/usr/bin/orterun"
BUILD="$WORK/build"
# The binaries: those built here by the build phase (now or by an earlier call on this machine), else the bundle's.
use_binaries() {
  if [ -f "$BUILD/.built" ]; then
    STRATA="$BUILD/launch/strata"
    GPU_TESTS=$(find "$BUILD/tests" -maxdepth 1 -type f -executable \( -name 'cuda_*' -o -name 'nccl_*' -o -name 'gpu_*' \) | sort)
    BINARIES="built on this machine ($BUILD)"
  else
    STRATA="$BUNDLE/bin/strata"
    GPU_TESTS=$(find "$BUNDLE/bin" -maxdepth 1 -type f ! -name strata | sort)
    BINARIES="built by gpu-bundle.sh ($(head -1 "$BUNDLE/commit" 2>/dev/null))"
  fi
}
use_binaries
with_env() { env "${OMPI_ENV[@]}" "$@"; }
mpirun_n() { local n="$1"; shift; with_env "$MPIEXEC" -n "$n" --bind-to none "$@"; }
# The machine's Python (PyTorch, transformers, h5py live there), in the machine's own environment: our library
# path is passed to strata and mpiexec only, never exported.
PY="$(command -v python3)"
pyrun() { PYTHONUNBUFFERED=1 "$PY" "$@"; }
GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"

phase_env() {
  {
    echo "== gpu-validate env, $(date -u)"
    echo "bundle built from commit: $(cat "$BUNDLE/commit" 2>/dev/null || echo unknown)"
    echo "binaries in use: $BINARIES"
    echo "checkout here: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
    uname -a
    grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release 2>/dev/null
    echo "CPUs: $(nproc), memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "== GPUs ($GPUS)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,pci.bus_id,clocks.max.sm,clocks.max.mem --format=csv 2>&1 ||
      echo "nvidia-smi failed or is missing"
    echo "== tools"
    for tool in nvcc cmake ninja g++ gcc dpkg mpiexec python3; do
      printf '%-8s %s\n' "$tool" "$(command -v "$tool" || echo 'not found')"
    done
    nvcc --version 2>/dev/null | tail -1
    cmake --version 2>/dev/null | head -1
    g++ --version 2>/dev/null | head -1
    echo "bundled mpiexec: $(with_env "$MPIEXEC" --version 2>&1 | head -1)"
    echo "== python ($PY)"
    pyrun - <<'EOF'
import importlib
for name in ["numpy", "h5py", "torch", "transformers", "accelerate"]:
    try:
        module = importlib.import_module(name)
        print(f"{name:13s} {getattr(module, '__version__', '?')}")
    except Exception as e:  # say why, do not stop
        print(f"{name:13s} NOT importable: {e}")
try:
    import torch
    print("torch CUDA:", torch.version.cuda, "available:", torch.cuda.is_available(),
          "device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
except Exception as e:
    print("torch CUDA: -", e)
EOF
    echo "== libraries from the bundle (the machine lacks these sonames): $(ls "$LIBDIR" | wc -l)"
    ls "$LIBDIR" | tr '\n' ' '
    echo
    echo "== strata's libraries as resolved here"
    with_env ldd "$STRATA" | sed 's/ (0x[0-9a-f]*)//'
    if with_env ldd "$STRATA" | grep -q 'not found'; then echo "MISSING LIBRARIES above"; fi
    echo "== strata --version: $(with_env "$STRATA" --version 2>&1)"
    # NVML detection (topology/gpus) has only run without a driver before: compare with nvidia-smi's list above.
    echo "== strata topo (NVML), then without NVML (the CUDA peer-attribute fallback)"
    mpirun_n 1 "$STRATA" topo 2>&1 || echo "strata topo failed"
    mpirun_n 1 "$STRATA" topo --json 2>&1 | head -c 4000 || true
    echo
    mpirun_n 1 -x STRATA_NVML_LIBRARY=libstrata-no-nvml.so "$STRATA" topo 2>&1 || echo "strata topo (no NVML) failed"
  } 2>&1 | tee "$OUT/env.txt"
  with_env ldd "$STRATA" | grep -q 'not found' && fail "env: strata has unresolved libraries (env.txt)"
  return 0
}

phase_tests() {
  {
    say "GPU tests on $GPUS GPU(s)"
    say "binaries: $BINARIES"
    local ran=0
    for t in $GPU_TESTS; do
      name="$(basename "$t")"
      ran=$((ran + 1))
      # Multi-rank tests get one rank per GPU (2 at most: they are written for 2); gtest_main programs ignore
      # --expect-ranks.
      n=1
      [[ "$name" == nccl_* ]] && [ "$GPUS" -ge 2 ] && n=2
      say "$name on $n rank(s)"
      start=$(date +%s)
      if timeout -s KILL 600 env "${OMPI_ENV[@]}" "$MPIEXEC" -n "$n" --bind-to none "$t" --expect-ranks="$n"; then
        say "$name PASSED in $(($(date +%s) - start)) s"
      else
        fail "test $name (exit $?, $(($(date +%s) - start)) s)"
      fi
    done
    [ "$ran" -gt 0 ] || fail "test programs: none found ($BINARIES)"
  } 2>&1 | tee "$OUT/tests.log"
  grep -q 'FAILED: test' "$OUT/tests.log" && FAILED+=("tests (tests.log)")
  return 0
}

phase_build() {
  rm -f "$BUILD/.built"
  {
    local missing=""
    for tool in cmake g++ nvcc; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
    if [ -n "$missing" ]; then
      say "build: not possible here (no$missing); the later phases use the binaries built by gpu-bundle.sh"
      exit 0
    fi
    local generator=(-G "Unix Makefiles")
    command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
    # NCCL beside CUDA, else from the Python wheels (nvidia-nccl-cu13: include/nccl.h, lib/libnccl.so.2).
    local nccl_root=""
    if [ ! -f /usr/local/cuda/include/nccl.h ]; then
      for s in $PYSITE; do [ -f "$s/nvidia/nccl/include/nccl.h" ] && nccl_root="$s/nvidia/nccl"; done
      for s in $PYSITE; do [ -f "$s/nvidia/cu13/include/nccl.h" ] && nccl_root="$s/nvidia/cu13"; done
    fi
    # The test registration needs a Python with NumPy and h5py (the reference tests; not run here).
    local test_python="$PY"
    for candidate in "$PY" /usr/bin/python3; do
      if "$candidate" -c 'import numpy, h5py' 2>/dev/null; then test_python="$candidate"; break; fi
    done
    local ompi="$SYSROOT/usr/lib/$MULTIARCH/openmpi"
    # MPI from the unpacked packages, named directly (the wrapper's link line also names -dev libraries that are
    # not bundled); HDF5 (serial) by its Debian root; CLI11, nlohmann_json, GTest, OpenBLAS by CMAKE_PREFIX_PATH.
    local cmd=(cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSTRATA_CUDA=ON
      -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_PREFIX_PATH="$SYSROOT/usr" -DSTRATA_PYTHON="$test_python"
      -DMPI_SKIP_COMPILER_WRAPPER=TRUE -DMPI_SKIP_GUESSING=TRUE -DMPI_CXX_HEADER_DIR="$ompi/include"
      -DMPI_CXX_ADDITIONAL_INCLUDE_DIRS="$ompi/include/openmpi" -DMPI_CXX_LIB_NAMES="mpi_cxx;mpi"
      -DMPI_mpi_cxx_LIBRARY="$ompi/lib/libmpi_cxx.so" -DMPI_mpi_LIBRARY="$ompi/lib/libmpi.so"
      -DMPIEXEC_EXECUTABLE="$MPIEXEC"
      -DHDF5_ROOT="$SYSROOT/usr/lib/$MULTIARCH/hdf5/serial" -DHDF5_C_COMPILER_EXECUTABLE=/nonexistent/h5cc
      ${nccl_root:+-DNCCL_ROOT="$nccl_root"})
    say "configure: ${cmd[*]}"
    with_env "${cmd[@]}" || { say "FAILED: build: cmake configure"; exit 0; }
    mapfile -t targets < <(with_env cmake --build "$BUILD" --target help | sed -n 's/^\(\.\.\. \)\{0,1\}\(\(cuda\|nccl\|gpu\)_[A-Za-z0-9_]*\)\(: phony\)\{0,1\}$/\2/p' | sort -u)
    say "building strata ${targets[*]}"
    with_env cmake --build "$BUILD" -j "$(nproc)" --target strata "${targets[@]}" || { say "FAILED: build"; exit 0; }
    touch "$BUILD/.built"
    say "build: done; later phases use $BUILD"
  } 2>&1 | tee "$OUT/build.log"
  grep -q 'FAILED: build' "$OUT/build.log" && FAILED+=("build (build.log; later phases use the bundle's binaries)")
  use_binaries
  return 0
}

# generate on one device into a results file (1 rank, or $3 ranks with tensor parallelism)
generate() {
  local model="$1" device="$2" tp="$3" out="$4"
  mpirun_n "$tp" "$STRATA" generate --model "$model" --prompts "$WORK/prompts.txt" --output "$out" --overwrite \
    --device "$device" -tp "$tp" --max-tokens 24 --record-logits -q
}

phase_logits() {
  {
    printf '%s\n' "Hello world" "The quick brown fox jumps over" "A" "naïve café — ünïcödé ✓" \
      "Once upon a time, in a land far away," >"$WORK/prompts.txt"
    # (name, init flags): a tiny model and the 100M preset, both bf16 (what the CUDA backend computes in, so the
    # comparison sees the backend's arithmetic, not a dtype conversion of the weights).
    local -a names=(tiny-bf16 100m-bf16)
    local -a flags=("--preset tiny --dtype bf16 --seed 3" "--preset 100m --dtype bf16 --seed 5")
    if [ "${STRATA_GPU_LOGITS_MODELS:-all}" = tiny ]; then  # a quick re-check: the tiny model only
      names=(tiny-bf16)
      flags=("--preset tiny --dtype bf16 --seed 3")
    fi
    for i in "${!names[@]}"; do
      local name="${names[$i]}" model="$WORK/${names[$i]}"
      say "checkpoint $name: strata init ${flags[$i]}"
      # shellcheck disable=SC2086
      [ -f "$model/manifest.json" ] || with_env "$STRATA" init ${flags[$i]} --output "$model" ||
        { fail "init $name"; continue; }
      generate "$model" cpu 1 "$WORK/$name-cpu.jsonl" || { fail "generate $name on cpu"; continue; }
      # transformers on the same weights against the CPU backend: checks hf_generate.py's loading (the 7B
      # comparison relies on it) and adds a third implementation.
      pyrun "$ROOT/tests/gpu/hf_generate.py" --checkpoint "$model" --check-results "$WORK/$name-cpu.jsonl" ||
        fail "logits $name (transformers vs cpu)"
      generate "$model" cuda 1 "$WORK/$name-cuda.jsonl" || { fail "generate $name on cuda"; continue; }
      pyrun "$ROOT/tests/gpu/compare_logits.py" --checkpoint "$model" --reference "$WORK/$name-cpu.jsonl" \
        --candidate "$WORK/$name-cuda.jsonl" --label "$name cuda vs cpu" || fail "logits $name (cuda vs cpu)"
      if [ "$GPUS" -ge 2 ]; then
        generate "$model" cuda 2 "$WORK/$name-cuda-tp2.jsonl" || { fail "generate $name on cuda tp 2"; continue; }
        pyrun "$ROOT/tests/gpu/compare_logits.py" --checkpoint "$model" --reference "$WORK/$name-cpu.jsonl" \
          --candidate "$WORK/$name-cuda-tp2.jsonl" --label "$name cuda tp2 (NCCL) vs cpu" ||
          fail "logits $name (cuda tp 2 vs cpu)"
      else
        say "$name: tensor parallelism on CUDA (NCCL) not compared: $GPUS GPU(s)"
      fi
    done
  } 2>&1 | tee "$OUT/logits.txt"
  grep -q 'FAILED: ' "$OUT/logits.txt" && FAILED+=("logits (logits.txt)")
  return 0
}

BENCH_BATCHES="${STRATA_BENCH_BATCHES:-1,32,128}"
BENCH_PROMPT="${STRATA_BENCH_PROMPT:-128}"
BENCH_GEN="${STRATA_BENCH_GEN:-64}"

phase_bench() {
  # STRATA_BENCH_PRESET=100m: a quick run on the 100M preset (step overheads) instead of the 7B shape.
  local preset="${STRATA_BENCH_PRESET:-7b}"
  local model="$WORK/llama-$preset-bf16"
  local cmd=("$STRATA" bench --model "$model" --device cuda --batch-sizes "$BENCH_BATCHES"
    --prompt-len "$BENCH_PROMPT" --gen-len "$BENCH_GEN" --repeats 1 --memory-gib 2)
  {
    if [ ! -f "$model/manifest.json" ]; then
      say "strata init --preset $preset --dtype bf16 --seed 7 (7b: about 13.5 GB)"
      start=$(date +%s)
      with_env "$STRATA" init --preset "$preset" --dtype bf16 --seed 7 --output "$model" || fail "init $preset"
      say "init took $(($(date +%s) - start)) s"
    fi
    say "command: mpiexec -n 1 ${cmd[*]}"
    start=$(date +%s)
    mpirun_n 1 "${cmd[@]}" || fail "strata bench (exit $?)"
    say "strata bench took $(($(date +%s) - start)) s"
  } 2>&1 | tee "$OUT/bench.txt"
  {
    start=$(date +%s)
    pyrun "$ROOT/tests/gpu/hf_generate.py" --checkpoint "$model" --batch-sizes "$BENCH_BATCHES" \
      --prompt-len "$BENCH_PROMPT" --gen-len "$BENCH_GEN" --strata-bench "$OUT/bench.txt" ||
      fail "hf_generate.py (exit $?)"
    say "transformers took $(($(date +%s) - start)) s"
  } 2>&1 | tee "$OUT/hf.txt"
  grep -q 'FAILED: ' "$OUT/bench.txt" "$OUT/hf.txt" && FAILED+=("bench (bench.txt, hf.txt)")
  return 0
}

for phase in "${PHASES[@]}"; do
  start=$(date +%s)
  say "=== phase $phase"
  case "$phase" in
    env) phase_env ;;
    build) phase_build ;;
    tests) phase_tests ;;
    logits) phase_logits ;;
    bench) phase_bench ;;
    *) fail "unknown phase $phase (env, build, tests, logits, bench)" ;;
  esac
  say "=== phase $phase done in $(($(date +%s) - start)) s"
done

{
  echo "gpu-validate $(date -u): phases ${PHASES[*]} on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  if [ ${#FAILED[@]} -eq 0 ]; then echo "ALL PASSED"; else printf 'FAILED: %s\n' "${FAILED[@]}"; fi
} | tee "$OUT/summary.txt"
[ ${#FAILED[@]} -eq 0 ]
