"""strata's Q8_0 / Q4_0 quantizers against llama.cpp's own (ggml_quantize_chunk and dequantize_row_q8_0 /
dequantize_row_q4_0 in libggml-base.so, from the npm package @node-llama-cpp/linux-x64 at a pinned version, loaded
with ctypes): the same input rows must give the same block bytes, and the same blocks the same floats, bit for bit.
Inputs: normal rows, rows of exact halves (round-half-away-from-zero and Q4_0's truncation after +8.5 at their
boundaries), all-zero and constant blocks, values whose scale underflows or nears the f16 range, a block whose
largest weight is negative (Q4_0 keeps its sign), and a negative control (one byte changed must be seen).
"""
import argparse
import ctypes
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tokenizer"))
import npm_fixtures  # noqa: E402

GGML_TYPES = {"q4_0": 2, "q8_0": 8}  # enum ggml_type
BLOCK_BYTES = {"q4_0": 18, "q8_0": 34}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--strata")
parser.add_argument("--mpiexec")
parser.add_argument("--workdir", required=True)
parser.add_argument("--quant-tool", required=True)
args = parser.parse_args()
os.makedirs(args.workdir, exist_ok=True)
modules, _ = npm_fixtures.fetch(packages=npm_fixtures.LLAMA_CPP)
lib_path = os.path.join(npm_fixtures.llama_cpp_bins(modules), "libggml-base.so")
ggml = ctypes.CDLL(lib_path)
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p]
for name in ("dequantize_row_q8_0", "dequantize_row_q4_0"):
    getattr(ggml, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    getattr(ggml, name).restype = None

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"CHECK FAILED: {what}")


def ggml_quantize(fmt, rows):
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, n = rows.shape
    out = np.zeros(n_rows * n // 32 * BLOCK_BYTES[fmt], dtype=np.uint8)
    written = ggml.ggml_quantize_chunk(GGML_TYPES[fmt], rows.ctypes.data, out.ctypes.data, 0, n_rows, n, None)
    assert written == out.size, (written, out.size)
    return out.tobytes()


def ggml_dequantize(fmt, blocks, count):
    src = np.frombuffer(blocks, dtype=np.uint8).copy()
    out = np.zeros(count, dtype=np.float32)
    getattr(ggml, f"dequantize_row_{fmt}")(src.ctypes.data, out.ctypes.data, count)
    return out


def tool(mode, fmt, n, data):
    src, dst = os.path.join(args.workdir, "in.bin"), os.path.join(args.workdir, "out.bin")
    with open(src, "wb") as f:
        f.write(data)
    subprocess.run([args.quant_tool, mode, fmt, str(n), src, dst], check=True)
    with open(dst, "rb") as f:
        return f.read()


rng = np.random.default_rng(7)
halves_q8 = np.concatenate([[127.0], np.arange(-30, 31)[:31] + 0.5]).astype(np.float32)  # id = 1: x * id = k + 0.5
halves_q4 = np.concatenate([[-8.0], (np.arange(31) % 16 - 8) + 0.5 * (np.arange(31) % 2)]).astype(np.float32)
cases = {
    "normal": rng.normal(0, 1, (16, 512)),
    "wide": rng.normal(0, 1, (3, 4096)) * rng.uniform(1e-3, 1e3, (3, 1)),
    "halves": np.tile(np.concatenate([halves_q8, halves_q4]), (2, 1)),
    "zeros and constants": np.concatenate([np.zeros(32), np.full(32, 0.25), np.full(32, -3.0),
                                           np.full(32, 1e-3)])[None, :],
    "tiny": rng.normal(0, 1e-9, (2, 64)),
    "huge": rng.normal(0, 3e4, (2, 64)),
    "negative largest": np.array([[-5.0] + [1.0] * 31 + [4.0] + [-1.0] * 31]),
}
for fmt in ("q8_0", "q4_0"):
    for name, rows in cases.items():
        rows = np.asarray(rows, dtype=np.float32)
        n = rows.shape[1]
        theirs = ggml_quantize(fmt, rows)
        ours = tool("quantize", fmt, n, rows.tobytes())
        same = ours == theirs
        if not same and len(ours) == len(theirs):
            first = next(i for i in range(len(ours)) if ours[i] != theirs[i])
            print(f"  {fmt} {name}: first different byte {first} (block {first // BLOCK_BYTES[fmt]}): "
                  f"ours {ours[first]:#04x}, llama.cpp {theirs[first]:#04x}")
        check(same, f"{fmt} {name}: {len(ours)} block bytes equal llama.cpp's ({len(theirs)})")
        floats_theirs = ggml_dequantize(fmt, theirs, rows.size)
        floats_ours = np.frombuffer(tool("dequantize", fmt, n, theirs), dtype=np.float32)
        check(floats_ours.tobytes() == floats_theirs.tobytes(), f"{fmt} {name}: dequantized floats bit-identical")
    # Negative control: a block with one weight moved by one step must come out different.
    rows = rng.normal(0, 1, (1, 64)).astype(np.float32)
    moved = rows.copy()
    moved[0, 5] += np.abs(rows[0, :32]).max() / (127 if fmt == "q8_0" else 8) * 1.5
    check(tool("quantize", fmt, 64, moved.tobytes()) != ggml_quantize(fmt, rows),
          f"{fmt}: a changed input gives different blocks (negative control)")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
