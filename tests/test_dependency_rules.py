"""The dependency rules of docs/architecture.md, checked on the sources:
- the folder order: every #include of the project's own headers points down the stack (runtime/base < tensor <
  backend and comm interfaces < concrete backends and communicators < io < topology, layers < plan < engine <
  launch); an edge up the stack or sideways between folders of one level fails;
- layers/, io/, plan/, the engine and the runtime's interfaces include no MPI, CUDA or NCCL headers, and no concrete
  backend; HDF5 appears only in io/; OpenBLAS only in the CPU backend (and the benchmark's roofline probe).
Negative controls plant a forbidden include in a copy and expect it to be found.
"""
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)

RULES = [  # (folders, forbidden header pattern, why)
    (["layers", "io", "engine", "plan", "runtime/base", "runtime/tensor", "runtime/backend/backend.h",
      "runtime/backend/sampling.h", "runtime/backend/host_candidates.h", "runtime/comm/communicator.h"],
     r"^(mpi\.h|cuda_runtime.*|cuda\.h|nccl\.h|cublas.*)$", "sees only the Backend/Communicator interfaces"),
    (["runtime/backend/cuda/cuda_backend.h", "runtime/backend/cuda/device_info.h"],
     r"^(cuda_runtime.*|cuda\.h|cuda_bf16\.h|cuda_fp16\.h|nccl\.h|cublas.*)$",
     "is the CUDA backend's CUDA-free face (launch/ and the NCCL communicator include it)"),
    (["layers", "io", "engine", "plan", "runtime/base", "runtime/tensor", "runtime/comm/communicator.h",
      "runtime/comm/mpi", "topology"],
     r"^runtime/backend/(cpu|cuda)/", "sees the Backend interface, never a concrete backend"),
    (["layers", "runtime", "launch", "topology"], r"^(hdf5\.h|H5.*)$", "HDF5 is private to io/"),
    (["layers", "io", "engine", "plan", "runtime/comm", "topology"], r"^(cblas\.h|openblas.*)$",
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


# The folder order, bottom first. A file may include headers of its own folder and of folders of a lower level.
LEVELS = {
    "runtime/base": 0, "runtime/tensor": 1, "runtime/backend": 2, "runtime/comm": 2,
    "runtime/backend/cpu": 3, "runtime/backend/cuda": 3, "runtime/comm/mpi": 3, "runtime/comm/nccl": 4,
    "io": 5, "topology": 6, "layers": 6, "plan": 7, "engine": 8, "launch": 9,
}
TOPS = ["runtime", "io", "topology", "layers", "plan", "engine", "launch"]
OWN = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def folder_of(path):
    """The folder (a key of LEVELS) a project path belongs to, or None (tests, vendor headers)."""
    parts = path.split("/")
    if parts[0] == "runtime" and len(parts) > 2:
        three = "/".join(parts[:3])
        if three in LEVELS:
            return three
        return "/".join(parts[:2]) if "/".join(parts[:2]) in LEVELS else None
    return parts[0] if parts[0] in LEVELS else None


def order_violations(root_override=None):
    found = []
    for top in TOPS:
        for path in sources(top):
            source = root_override.get(path, path) if root_override else path
            rel = os.path.relpath(path, ROOT)
            here = folder_of(rel)
            with open(source, encoding="utf-8") as f:
                for header in OWN.findall(f.read()):
                    there = folder_of(header)
                    if here is None or there is None or there == here:
                        continue
                    if not os.path.exists(os.path.join(ROOT, header)):
                        continue  # a name in another search path, not one of ours
                    if LEVELS[there] >= LEVELS[here]:
                        found.append(f"{rel} includes \"{header}\": {here} (level {LEVELS[here]}) may not depend on "
                                     f"{there} (level {LEVELS[there]})")
    return found


found = violations() + order_violations()
for v in found:
    print("VIOLATION:", v)

def planted(check, relative, line, needle):
    """Negative control: `check` on a copy of `relative` with `line` planted at its top must report `needle`."""
    victim = os.path.join(ROOT, relative)
    with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as copy:
        copy.write(line + "\n" + open(victim, encoding="utf-8").read())
    found_there = check({victim: copy.name})
    os.unlink(copy.name)
    return any(needle in v for v in found_there)


control_ok = planted(violations, "layers/transformer.cpp", "#include <mpi.h>", "<mpi.h>")
print("negative control:", "detected" if control_ok else "NOT detected")
# io/results.cpp including the engine, a level above it.
order_ok = planted(order_violations, "io/results.cpp", '#include "engine/engine.h"', '"engine/engine.h"')
print("negative control (folder order):", "detected" if order_ok else "NOT detected")
checks = 3
failed = (1 if found else 0) + (0 if control_ok else 1) + (0 if order_ok else 1)
print(f"{checks - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
