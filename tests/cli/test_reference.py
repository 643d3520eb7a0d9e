"""strata's logits against the independent float64 NumPy reference (tests/reference/llama_reference.py, which shares
no code with strata) on checkpoints that cover every model feature: f32 / bf16 / f16 storage, uneven pipeline
stages, grouped-query attention with KV heads replicated over TP ranks, q/k/v bias, tied embeddings, Qwen3's
per-head q/k RMSNorm. Tolerance 1e-4 relative per generated position (3e-4 for the 16-bit checkpoints' f16 KV cache,
below), greedy tokens checked wherever the margin allows. A perturbed reference must fail (negative control).

On a CPU with AVX512_BF16, strata multiplies bf16 weights with bf16 dot products, the activations rounded to bf16
(`strata --version` names the avx512bf16 kernel): the bf16 checkpoint is then checked twice, with that kernel against
the reference with bf16 inputs at a bf16 tolerance (1.5e-2: which way an activation rounds turns on its last f32
bits, so the reference cannot round exactly as strata does; ~5e-3 measured), with its own negative control, and with
the f32 kernels forced (STRATA_ROW_KERNEL=avx512) against the reference without bf16 inputs (at the f16 cache's
tolerance, below).

The 16-bit checkpoints run with the CPU's default KV cache for them, f16 (--kv-cache-dtype auto): the reference
rounds keys and values to f16 (--f16-kv), at 3e-4 (1.3e-4 measured: as for the bf16 inputs, which way a key
rounds turns on its last f32 bits), and must be off by more than that without the rounding (7-8e-4 measured: the
cache is f16, and a wrong rounding would be seen). The f32 checkpoints keep an f32 cache.
"""
import os
import subprocess
import sys

from harness import Harness

h = Harness(__doc__)
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference", "llama_reference.py")
prompts = h.write("prompts.txt", "Hello world\nThe quick brown fox\nA\nnaïve café — ünïcödé ✓\n")

VARIANTS = [  # name, init flags, tp, pp
    ("f32-tp2-pp2", ["--preset", "tiny", "-tp", "2", "-pp", "2"], 2, 2),
    ("bf16-pp2-uneven", ["--preset", "tiny", "--dtype", "bf16", "--num-hidden-layers", "5", "-pp", "2"], 1, 2),
    ("f16-gqa-bias-tied-tp4", ["--preset", "tiny", "--dtype", "f16", "--num-key-value-heads", "2",
                               "--attention-bias", "1", "--tie-word-embeddings", "1", "-tp", "4"], 4, 1),
    ("mqa-tp2", ["--preset", "tiny", "--num-key-value-heads", "1", "--hidden-size", "96",
                 "--num-attention-heads", "4", "-tp", "2"], 2, 1),
    ("qk-norm-tp2-pp2", ["--preset", "tiny", "--qk-norm", "1", "-tp", "2", "-pp", "2"], 2, 2),  # Qwen3's q/k norms
]


def compare(model, results, *extra):
    p = subprocess.run([sys.executable, REFERENCE, "compare", "--checkpoint", model, "--results", results, *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "(no output)")
    return p.returncode, p.stdout


BF16_DOTS = h.rounds_bf16_activations()
BF16_TOLERANCE = "1.5e-2"
F16_KV_TOLERANCE = "3e-4"


def generate(model, results, tp, pp):
    h.run_ok(["generate", "--model", model, "--prompts", prompts, "--output", results, "-tp", tp, "-pp", pp,
              "--max-tokens", 12, "--record-logits", "-q"], ranks=tp * pp)
    return h.path(results)


for name, flags, tp, pp in VARIANTS:
    model = h.init(name, *flags, "--seed", "9")
    results = generate(model, f"{name}.jsonl", tp, pp)
    f16_kv = ["--f16-kv", "--tolerance", F16_KV_TOLERANCE] if name.startswith(("bf16", "f16")) else []
    if name.startswith("bf16") and BF16_DOTS:
        bf16 = ["--f16-kv", "--bf16-inputs", "--tolerance", BF16_TOLERANCE]
        code, out = compare(model, results, "--check-greedy", *bf16)
        h.check(code == 0, f"{name}: strata's bf16 dot products agree with the reference with bf16 inputs\n{out}")
        code, out = compare(model, results, "--perturb", *bf16)
        h.check(code == 1, f"{name}: negative control at the bf16 tolerance must fail\n{out}")
        os.environ["STRATA_ROW_KERNEL"] = "avx512"  # the f32 kernels, inherited by the ranks
        results = generate(model, f"{name}-f32-kernels.jsonl", tp, pp)
        del os.environ["STRATA_ROW_KERNEL"]
    code, out = compare(model, results, "--check-greedy", *f16_kv)
    h.check(code == 0, f"{name}: strata agrees with the float64 reference\n{out}")
    if f16_kv:
        code, out = compare(model, results, "--tolerance", F16_KV_TOLERANCE)
        h.check(code == 1, f"{name}: the reference without the f16 cache's rounding must be off (negative "
                f"control)\n{out}")
    if name.startswith("f32"):
        code, out = compare(model, results, "--perturb")
        h.check(code == 1, f"{name}: negative control (perturbed reference weight) must fail\n{out}")

h.finish()
