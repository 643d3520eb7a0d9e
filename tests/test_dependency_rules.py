"""The dependency rules of docs/architecture.md, checked on the sources: layers/, io/, the engine and the runtime's
interfaces include no MPI, CUDA or NCCL headers; HDF5 appears only in io/; OpenBLAS only in the CPU backend (and the
benchmark's roofline probe). A negative control plants a forbidden include in a copy and expects it to be found.
"""
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)

RULES = [  # (folders, forbidden header pattern, why)
    (["layers", "io", "runtime/engine", "runtime/base", "runtime/tensor", "runtime/backend/backend.h",
      "runtime/backend/sampling.h", "runtime/backend/host_candidates.h", "runtime/comm/communicator.h"],
     r"^(mpi\.h|cuda_runtime.*|cuda\.h|nccl\.h|cublas.*)$", "sees only the Backend/Communicator interfaces"),
    (["runtime/backend/cuda/cuda_backend.h", "runtime/backend/cuda/device_info.h"],
     r"^(cuda_runtime.*|cuda\.h|cuda_bf16\.h|cuda_fp16\.h|nccl\.h|cublas.*)$",
     "is the CUDA backend's CUDA-free face (launch/ and the NCCL communicator include it)"),
    (["layers", "io", "runtime/engine", "runtime/base", "runtime/tensor", "runtime/comm/communicator.h",
      "runtime/comm/mpi", "topology"],
     r"^runtime/backend/(cpu|cuda)/", "sees the Backend interface, never a concrete backend"),
    (["layers", "runtime", "launch", "topology"], r"^(hdf5\.h|H5.*)$", "HDF5 is private to io/"),
    (["layers", "io", "runtime/engine", "runtime/comm", "topology"], r"^(cblas\.h|openblas.*)$",
     "OpenBLAS is private to the CPU backend"),
]


def sources(path):
    full = os.path.join(ROOT, path)
    if os.path.isfile(full):
        yield full
        return
    for folder, _, files in os.walk(full):
        for name in files:
            if name.endswith((".h", ".cpp", ".cu", ".cuh")):
                yield os.path.join(folder, name)


def violations(root_override=None):
    found = []
    for folders, pattern, why in RULES:
        for folder in folders:
            for path in sources(folder):
                if root_override:
                    path = root_override.get(path, path)
                with open(path, encoding="utf-8") as f:
                    for header in INCLUDE.findall(f.read()):
                        if re.match(pattern, header):
                            found.append(f"{os.path.relpath(path, ROOT)} includes <{header}>: {folder} {why}")
    return found


found = violations()
for v in found:
    print("VIOLATION:", v)

# Negative control: the same check on a copy of layers/transformer.cpp with <mpi.h> planted must complain.
victim = os.path.join(ROOT, "layers", "transformer.cpp")
with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as planted:
    planted.write("#include <mpi.h>\n" + open(victim, encoding="utf-8").read())
control = violations({victim: planted.name})
os.unlink(planted.name)
control_ok = any("<mpi.h>" in v for v in control)
print("negative control:", "detected" if control_ok else "NOT detected")
checks = 2
failed = (1 if found else 0) + (0 if control_ok else 1)
print(f"{checks - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
