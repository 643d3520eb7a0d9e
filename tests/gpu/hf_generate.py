#!/usr/bin/env python3
r"""Hugging Face transformers' generate on the weights of a strata checkpoint, timed like `strata bench`.

Loads every tensor of the checkpoint (manifest.json + HDF5 shards, each slice placed at its global_offset) into a
LlamaForCausalLM built from the manifest's config, in bf16 on the GPU, then times greedy generate on the same
synthetic prompts strata bench uses (prompt i, token t = (131 i + 7 t) mod 256) with the same formula:
    prefill tok/s = batch * prompt_len / T(1 new token)
    decode  tok/s = batch * (gen_len - 1) / (T(gen_len new tokens) - T(1 new token))
and prints the figures beside strata's (parsed from the `strata bench` output given with --strata-bench).

With --check-results RESULTS.jsonl (a `strata generate --record-logits` file on the same checkpoint, byte
tokenizer) it instead runs transformers' forward pass over each record's prompt and generated tokens and compares
every recorded logit row, max|hf - strata| / max|strata| <= 2 sqrt(6 L) 2^-8 (the bf16 tolerance of
compare_logits.py: transformers computes in bf16 here): a check that the weights reached transformers intact, and
a third implementation beside strata's two backends.

Usage: hf_generate.py --checkpoint DIR [--batch-sizes 1,32,128] [--prompt-len 128] [--gen-len 64]
                      [--strata-bench bench.txt] [--attn sdpa]
       hf_generate.py --checkpoint DIR --check-results RESULTS.jsonl
Needs torch (CUDA), transformers, numpy and h5py: exits 1 saying which is missing.
"""
import argparse
import json
import os
import re
import sys
import time


def import_or_explain():
    missing = []
    modules = {}
    for name in ["numpy", "h5py", "torch", "transformers"]:
        try:
            modules[name] = __import__(name)
        except Exception as e:  # report every missing one, then stop
            missing.append(f"{name} ({e})")
    if missing:
        print("hf_generate.py: cannot compare with Hugging Face transformers: not importable: " + ", ".join(missing))
        sys.exit(1)
    return modules["numpy"], modules["h5py"], modules["torch"], modules["transformers"]


np, h5py, torch, transformers = import_or_explain()


def read_as_torch(dset, dtype_name):
    """One HDF5 dataset as a CPU bf16 tensor, 2-byte floats taken from their raw bits (no float64 detour)."""
    ftype = dset.id.get_type()
    if ftype.get_size() == 4:
        return torch.from_numpy(np.asarray(dset[...], dtype=np.float32)).to(torch.bfloat16)
    bits = np.empty(dset.shape, dtype=np.uint16)
    dset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=ftype)
    if ftype.get_order() == h5py.h5t.ORDER_BE:
        bits = bits.byteswap()
    raw = torch.from_numpy(bits.view(np.int16))
    if dtype_name == "bf16":
        return raw.view(torch.bfloat16)
    if dtype_name == "f16":
        return raw.view(torch.float16).to(torch.bfloat16)
    raise ValueError(f"{dset.name}: 2-byte dataset in a {dtype_name} checkpoint")


def build_model(checkpoint, attn):
    with open(os.path.join(checkpoint, "manifest.json")) as f:
        manifest = json.load(f)
    m = manifest["model"]
    settings = dict(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_key_value_heads"], head_dim=m["head_dim"],
        max_position_embeddings=m["max_position_embeddings"], rms_norm_eps=m["rms_norm_eps"],
        rope_theta=m["rope_theta"], attention_bias=m["attention_bias"], tie_word_embeddings=m["tie_word_embeddings"],
        bos_token_id=m["bos_token_id"], eos_token_id=m["eos_token_id"], pad_token_id=m["eos_token_id"],
        attn_implementation=attn)
    if m.get("rope_scaling"):
        settings["rope_scaling"] = m["rope_scaling"]
    config = transformers.LlamaConfig(**settings)
    # transformers 5 keeps RoPE settings in rope_parameters (and reads rope_theta from there only)
    if isinstance(getattr(config, "rope_parameters", None), dict) and not m.get("rope_scaling"):
        config.rope_parameters["rope_theta"] = m["rope_theta"]
    # Built in bf16 the way from_pretrained(torch_dtype=bfloat16) builds it (default dtype set during construction;
    # the rotary frequencies are computed in fp32 explicitly), then the default restored.
    start = time.time()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.eval()
    params = dict(model.named_parameters())
    filled = {name: 0 for name in params}
    for shard in manifest["shards"]:
        with h5py.File(os.path.join(checkpoint, shard["file"]), "r") as h5:
            for name, dset in h5.items():
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: the embedding table is the head
                if name not in params:
                    raise KeyError(f"{shard['file']}: tensor {name} has no parameter in LlamaForCausalLM")
                offset = [int(o) for o in dset.attrs["global_offset"]]
                shape = [int(s) for s in dset.attrs["global_shape"]]
                target = params[name]
                if list(target.shape) != shape:
                    raise ValueError(f"{name}: checkpoint shape {shape}, model {list(target.shape)}")
                data = read_as_torch(dset, manifest["dtype"])
                region = tuple(slice(o, o + n) for o, n in zip(offset, data.shape))
                with torch.no_grad():
                    target[region].copy_(data, non_blocking=False)
                filled[name] += data.numel()
    for name, count in filled.items():
        if count != params[name].numel() and not (name == "lm_head.weight" and config.tie_word_embeddings):
            raise ValueError(f"{name}: checkpoint covers {count} of {params[name].numel()} elements")
    n = sum(p.numel() for p in model.parameters())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: LlamaForCausalLM with {n / 1e6:.1f}M "
          f"parameters loaded from {checkpoint} in {time.time() - start:.1f} s (bf16, attention {attn}, "
          f"{torch.cuda.get_device_name(0)})")
    return model


def timed_generate(model, batch, prompt_len, new_tokens):
    ids = torch.tensor([[(i * 131 + t * 7) % 256 for t in range(prompt_len)] for i in range(batch)],
                       dtype=torch.long, device="cuda")
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape == (batch, prompt_len + new_tokens), out.shape
    return elapsed


def parse_strata_bench(path):
    """{batch: (prefill tok/s, decode tok/s, decode roofline, % of roofline)} from strata bench's table."""
    rows = {}
    if not path or not os.path.exists(path):
        return rows
    pattern = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%\s+([\d.]+)\s+([\d.]+)\s+(\d+)%\s*$")
    with open(path) as f:
        for line in f:
            match = pattern.match(line)
            if match:
                g = match.groups()
                rows[int(g[0])] = (float(g[2]), float(g[5]), float(g[6]), int(g[7]))
    return rows


def check_results(model, checkpoint, path):
    """Compares transformers' logits with a strata --record-logits results file; returns the exit status."""
    with open(os.path.join(checkpoint, "manifest.json")) as f:
        manifest = json.load(f)
    tokenizer = manifest.get("tokenizer", {})
    if tokenizer.get("type") != "byte":
        print(f"FAIL transformers vs {path}: tokenizer {tokenizer.get('type')} is not the byte tokenizer this check "
              "re-implements")
        return 1
    layers = int(manifest["model"]["num_hidden_layers"])
    tol = 2 * (6 * layers) ** 0.5 * 2.0 ** -8
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    failures = rows = 0
    max_err = 0.0
    for rec in records:
        prompt = [tokenizer["bos_token_id"]] + list(rec["prompt"].encode("utf-8"))
        generated, recorded = rec["token_ids"], rec.get("logits", [])
        if len(prompt) != rec["prompt_tokens"] or len(recorded) != len(generated) or not generated:
            print(f"FAIL record {rec['id']}: {len(prompt)} prompt tokens here, {rec['prompt_tokens']} in strata; "
                  f"{len(recorded)} logit rows for {len(generated)} tokens")
            failures += 1
            continue
        ids = torch.tensor([prompt + generated[:-1]], dtype=torch.long, device="cuda")
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:].float().cpu().numpy()
        for k, row in enumerate(recorded):
            ref = np.asarray(row, dtype=np.float64)
            err = float(np.max(np.abs(logits[k] - ref)) / np.max(np.abs(ref)))
            rows += 1
            max_err = max(max_err, err)
            if not err <= tol:
                failures += 1
                print(f"FAIL record {rec['id']} row {k}: relative error {err:.4f} > {tol:.4f}")
    print(f"{'FAIL' if failures else 'PASS'} transformers vs {os.path.basename(path)}: {len(records)} records, {rows} "
          f"logit rows, relative error max {max_err:.4f} (tolerance {tol:.4f} = 2 sqrt(6 x {layers} layers) 2^-8)")
    return 1 if failures or rows == 0 else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--strata-bench", help="strata bench output to print beside")
    parser.add_argument("--attn", default="sdpa", help="transformers attention implementation (sdpa, eager)")
    parser.add_argument("--check-results", help="compare with this strata --record-logits results file instead")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("hf_generate.py: torch sees no CUDA device")
        return 1
    model = build_model(args.checkpoint, args.attn)
    if args.check_results:
        return check_results(model, args.checkpoint, args.check_results)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    ours = parse_strata_bench(args.strata_bench)
    timed_generate(model, 1, args.prompt_len, 2)  # warm-up (kernels, allocator)
    print(f"prompt {args.prompt_len} tokens, {args.gen_len} generated, greedy; decode tok/s = batch x "
          f"{args.gen_len - 1} / (T(generate {args.gen_len}) - T(generate 1)), as strata bench computes it")
    header = (f"{'batch':>6} {'strata prefill':>15} {'HF prefill':>12} {'strata decode':>14} {'HF decode':>11} "
              f"{'strata/HF':>10} {'roofline':>10} {'strata %roof':>13}")
    print(header)
    for batch in batches:
        prefill = timed_generate(model, batch, args.prompt_len, 1)
        full = timed_generate(model, batch, args.prompt_len, args.gen_len)
        hf_prefill = batch * args.prompt_len / prefill
        hf_decode = batch * (args.gen_len - 1) / max(full - prefill, 1e-9)
        s = ours.get(batch)
        if s:
            print(f"{batch:>6} {s[0]:>15.1f} {hf_prefill:>12.1f} {s[1]:>14.1f} {hf_decode:>11.1f} "
                  f"{s[1] / hf_decode:>9.2f}x {s[2]:>10.1f} {s[3]:>12d}%")
        else:
            print(f"{batch:>6} {'-':>15} {hf_prefill:>12.1f} {'-':>14} {hf_decode:>11.1f} {'-':>10} {'-':>10} "
                  f"{'-':>13}")
        sys.stdout.flush()
    if not ours:
        print(f"(no strata bench table found in {args.strata_bench}: HF figures only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
