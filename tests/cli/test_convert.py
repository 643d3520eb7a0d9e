"""Hugging Face model folders in: small random Llama and Qwen2 models written here in Hugging Face format
(config.json, safetensors single-file and sharded with an index, F32 / BF16 / F16), converted at several layouts
(alone and under mpirun), then run; the logits must match the float64 reference forward pass run on the original
safetensors weights (read here with an independent parser), and every layout must give the same tokens.
Bad model folders give clear errors naming the file and the tensor.
"""
import json
import os
import struct
import sys

import numpy as np

from harness import Harness

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import llama_reference  # noqa: E402

h = Harness(__doc__)
rng = np.random.default_rng(123)


def to_bf16_bits(a):
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
    return rounded.astype(np.uint16)


def write_safetensors(path, tensors, dtype):
    """tensors: name -> float array; dtype: F32 | F16 | BF16."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        if dtype == "F32":
            raw = np.asarray(array, dtype="<f4").tobytes()
        elif dtype == "F16":
            raw = np.asarray(array, dtype="<f2").tobytes()
        else:
            raw = to_bf16_bits(array).astype("<u2").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    """An independent reader: name -> float64 array."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[8 + n + b:8 + n + end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2")
        else:
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float64).reshape(e["shape"])
    return out


def make_model(name, model_type, dtype, sharded, tied=False, bias=False, rope_scaling=None):
    cfg = {"model_type": model_type, "architectures": ["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
           "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 260, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "tie_word_embeddings": tied, "hidden_act": "silu", "bos_token_id": 256,
           "eos_token_id": [257, 258], "rope_scaling": rope_scaling, "torch_dtype": "bfloat16"}
    H, I, d, kv = 64, 96, 16, 2
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (260, H)), "model.norm.weight": 1 + rng.normal(0, 0.1, H)}
    if not tied:
        t["lm_head.weight"] = rng.normal(0, 1 / 8, (260, H))
    for i in range(3):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, H)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, H)
        for proj, rows in (("q", 4 * d), ("k", kv * d), ("v", kv * d)):
            t[p + f"self_attn.{proj}_proj.weight"] = rng.normal(0, 1 / 8, (rows, H))
            if bias:
                t[p + f"self_attn.{proj}_proj.bias"] = rng.normal(0, 0.1, rows)
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 1 / 8, (H, 4 * d))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 1 / 8, (I, H))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 1 / 8, (I, H))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 1 / np.sqrt(I), (H, I))
    folder = h.path(name)
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"temperature": 0.6, "top_p": 0.9}, f)
    names = sorted(t)
    if sharded:
        parts = [names[: len(names) // 2], names[len(names) // 2:]]
        weight_map = {}
        for k, part in enumerate(parts):
            file = f"model-0000{k + 1}-of-00002.safetensors"
            write_safetensors(os.path.join(folder, file), {n: t[n] for n in part}, dtype)
            weight_map.update({n: file for n in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    else:
        write_safetensors(os.path.join(folder, "model.safetensors"), t, dtype)
    return folder, cfg


def reference_weights(folder):
    weights = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith(".safetensors"):
            weights.update(read_safetensors(os.path.join(folder, file)))
    return weights


prompts = h.write("prompts.txt", "Hello world\nThe quick brown fox\nnaïve ✓\n")
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}  # small, so low, medium and high bands all occur
MODELS = [("llama-sharded-bf16", "llama", "BF16", True, False, False, None),
          ("qwen2-tied-f16", "qwen2", "F16", False, True, True, None),
          ("llama-f32", "llama", "F32", False, False, False, None),
          ("llama3-rope-scaling", "llama", "F32", False, False, False, LLAMA3_SCALING),
          ("linear-rope-scaling", "llama", "BF16", False, False, False, {"type": "linear", "factor": 2.0})]
LAYOUTS = [(1, 1, None), (2, 1, None), (1, 2, 2), (4, 1, 4)]  # tp, pp, ranks used to convert (None: alone)

prompts_long = h.write("long.txt", "x" * 150 + "\n")  # positions past original_max_position_embeddings
for name, model_type, dtype, sharded, tied, bias, scaling in MODELS:
    folder, cfg = make_model(name, model_type, dtype, sharded, tied, bias, scaling)
    ref_cfg = dict(cfg, attention_bias=bias)
    weights = reference_weights(folder)
    first_tokens = None
    for tp, pp, ranks in LAYOUTS:
        out = h.path(f"{name}-tp{tp}-pp{pp}")
        h.run_ok(["convert", "--hf", folder, "--output", out, "-tp", tp, "-pp", pp, "--dtype", "f32",
                  "--tokenizer", "byte"], ranks=ranks)
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        h.check(manifest["source"]["generation_config"]["top_p"] == 0.9, f"{name}: generation config carried")
        h.check(manifest["model"]["eos_token_id"] == 257, f"{name}: first eos id kept")
        results = f"{name}-tp{tp}-pp{pp}.jsonl"
        h.run_ok(["generate", "--model", out, "--prompts", prompts_long if scaling else prompts, "--output", results,
                  "-tp", tp, "-pp", pp,
                  "--max-tokens", 6, "--record-logits", "-q"], ranks=tp * pp)
        worst = 0.0
        for record in h.results(results):
            ids = llama_reference.tokenize(record["prompt"]) + record["token_ids"][:-1]
            ref = llama_reference.forward(weights, ref_cfg, ids)[len(ids) - len(record["token_ids"]):]
            got = np.array(record["logits"])
            worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
        h.check(worst <= 1e-4, f"{name} tp {tp} pp {pp}: logits vs float64 reference on the safetensors weights, "
                f"relative error {worst:.2e}")
        tokens = [r["token_ids"] for r in h.results(results)]
        first_tokens = first_tokens or tokens
        h.check(tokens == first_tokens, f"{name} tp {tp} pp {pp}: same tokens as tp 1 pp 1")
        print(f"{name} tp {tp} pp {pp}: max relative error {worst:.2e}")
    if dtype != "F32":  # 16-bit values copied as they are into a checkpoint of the same dtype (rows and columns)
        out = h.path(f"{name}-same-dtype")
        h.run_ok(["convert", "--hf", folder, "--output", out, "-tp", 2, "--dtype", dtype.lower(),
                  "--tokenizer", "byte"])
        stored, _, _ = llama_reference.load_checkpoint(out)
        h.check(sorted(stored) == sorted(weights) and all(np.array_equal(stored[k], weights[k]) for k in weights),
                f"{name}: a {dtype.lower()} checkpoint holds the safetensors' {dtype} values exactly")


# Bad model folders
def expect_failure(label, argv, *needles):
    code, out, _ = h.run(argv, timeout=60)
    h.check(code not in (None, 0), f"{label}: expected failure, got {code}\n{out}")
    for needle in needles:
        h.check(needle in out, f"{label}: message lacks {needle!r}\n{out}")


def convert_args(folder):
    return ["convert", "--hf", folder, "--output", h.path("bad-out"), "--tokenizer", "byte"]


bad, cfg = make_model("bad", "llama", "F32", False)
tensors = read_safetensors(os.path.join(bad, "model.safetensors"))
path = os.path.join(bad, "model.safetensors")
with open(path, "rb") as f:
    original = f.read()
with open(path, "wb") as f:
    f.write(struct.pack("<Q", 10 ** 9) + original[8:])
expect_failure("header length past the end", convert_args(bad), "model.safetensors", "runs past the end")
text = json.loads(original[8:8 + struct.unpack("<Q", original[:8])[0]])
text["model.norm.weight"]["data_offsets"] = [0, 256]  # overlaps the first tensor, and wrong size
body = json.dumps(text).encode()
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(body)) + body + original[8 + struct.unpack("<Q", original[:8])[0]:])
expect_failure("inconsistent offsets", convert_args(bad), "tensor model.norm.weight")
del tensors["model.layers.1.mlp.up_proj.weight"]
write_safetensors(path, tensors, "F32")
expect_failure("missing tensor", convert_args(bad), "model.layers.1.mlp.up_proj.weight")
write_safetensors(path, read_safetensors(os.path.join(h.path("llama-f32"), "model.safetensors")), "F32")
for key, value, needle in [("model_type", "gpt2", "model_type 'gpt2' is not supported"),
                           ("rope_scaling", {"rope_type": "yarn", "factor": 4}, "rope_scaling of type 'yarn'"),
                           ("num_attention_heads", None, "num_attention_heads")]:
    broken = dict(cfg)
    if value is None:
        del broken[key]
    else:
        broken[key] = value
    json.dump(broken, open(os.path.join(bad, "config.json"), "w"))
    expect_failure(f"config {key}", convert_args(bad), "config.json", needle)
json.dump(dict(cfg, hidden_size=80), open(os.path.join(bad, "config.json"), "w"))
expect_failure("shape contradicts config", convert_args(bad), "model.safetensors", "config.json implies")
json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
expect_failure("no tokenizer.json", ["convert", "--hf", bad, "--output", h.path("bad-out")], "tokenizer.json")
h.finish()
