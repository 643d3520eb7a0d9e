"""OpenAI Batch API files: detected by their first line (or --prompt-format openai); every request's body options
override the command line; the output is OpenAI's batch output, one line per custom_id in input order, the same at
every layout; a request that cannot be served (chat without a template, an unknown url, an unsupported or invalid
body field) becomes an error line for its custom_id and the job goes on; a malformed line, a missing or repeated
custom_id stop the job naming the line, before anything is written.
"""
import json
import os

from harness import Harness

h = Harness(__doc__)
model = h.init("model", "--preset", "tiny", "--seed", "21", "-tp", "2")


def request(cid, url="/v1/completions", **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


good = {
    "plain": dict(model="tiny", prompt="Once upon a time", max_tokens=6),
    "sampled": dict(prompt="The cat sat", max_tokens=5, temperature=0.8, top_p=0.9, seed=17, stop=["zz"]),
    "two": dict(prompt="Two ways", max_completion_tokens=4, temperature=1.0, seed=3, n=2),
    "scored": dict(prompt="Scored", max_tokens=3, logprobs=2, top_k=50),
}
lines = [request(cid, **body) for cid, body in good.items()]
bad = {
    "chat": ("/v1/chat/completions", dict(messages=[{"role": "user", "content": "hi"}]), "chat template"),
    "embed": ("/v1/embeddings", dict(input="x"), "url '/v1/embeddings' is not served"),
    "penalty": ("/v1/completions", dict(prompt="x", frequency_penalty=0.1), "'frequency_penalty' is not supported"),
    "zero": ("/v1/completions", dict(prompt="x", max_tokens=0), "max_tokens must be >= 1 (got 0)"),
    "noprompt": ("/v1/completions", dict(max_tokens=3), "no 'prompt'"),
}
for cid, (url, body, _) in bad.items():
    lines.insert(2, request(cid, url, **body))  # interleaved with the good ones
batch = h.write("batch.jsonl", "\n".join(lines) + "\n")
order = [json.loads(line)["custom_id"] for line in lines]

outs = {}
for name, (ranks, flags) in {"1": (1, []), "tp2": (2, ["-tp", 2]), "dp2": (2, ["-dp", 2])}.items():
    h.run_ok(["generate", "--model", model, "--prompts", batch, "--output", f"{name}.jsonl", "--overwrite",
              "--max-tokens", 50, "-q", *flags], ranks=ranks)
    outs[name] = h.results(f"{name}.jsonl")
    for r in outs[name]:
        if r["response"]:
            r["response"]["body"].pop("created")
def split_logprobs(records):
    """The records without their logprob values, and those values (equal across layouts within f32 rounding)."""
    values = []
    for r in records:
        for c in (r["response"]["body"]["choices"] if r["response"] else []):
            if c["logprobs"]:
                values += c["logprobs"].pop("token_logprobs")
                values += [v for t in c["logprobs"].pop("top_logprobs") for v in t.values()]
    return records, values


base, base_values = split_logprobs(json.loads(json.dumps(outs["1"])))
for name in ("tp2", "dp2"):
    other, values = split_logprobs(json.loads(json.dumps(outs[name])))
    h.check(other == base, f"{name}: the same batch output as 1 rank")
    h.check(len(values) == len(base_values) > 0 and max(abs(a - b) for a, b in zip(values, base_values)) < 1e-4,
            f"{name}: logprobs within 1e-4 of 1 rank")
out = outs["1"]
h.check([r["custom_id"] for r in out] == order, f"one line per custom_id, in input order: {[r['custom_id'] for r in out]}")
h.check(len({r["id"] for r in out}) == len(out), "every line has its own id")
for r in out:
    cid = r["custom_id"]
    if cid in bad:
        h.check(r["response"] is None and r["error"]["code"] == "invalid_request" and bad[cid][2] in r["error"]["message"]
                and "batch.jsonl:" in r["error"]["message"], f"{cid}: an error line naming the line and why: {r}")
        continue
    body = r["response"]["body"]
    h.check(r["error"] is None and r["response"]["status_code"] == 200 and body["object"] == "text_completion",
            f"{cid}: a completion: {r}")
    usage = body["usage"]
    h.check(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], f"{cid}: usage adds up")
    h.check(len(body["choices"]) == good[cid].get("n", 1), f"{cid}: n choices")
h.check(all(len(c["logprobs"]["tokens"]) == len(c["logprobs"]["token_logprobs"]) and
            all(len(t) == 2 for t in c["logprobs"]["top_logprobs"])
            for c in next(r for r in out if r["custom_id"] == "scored")["response"]["body"]["choices"]),
        "logprobs: 2 in a completions body gives each token's logprob and 2 alternatives")

# The body's options are the ones used: the same requests as plain JSONL prompts give the same texts.
plain = []
for cid, body in good.items():
    fields = {k: v for k, v in body.items() if k not in ("model", "max_completion_tokens", "logprobs")}
    if "max_completion_tokens" in body:
        fields["max_tokens"] = body["max_completion_tokens"]
    plain.append(json.dumps(dict(fields, id=cid)))
plain_file = h.write("plain.jsonl", "\n".join(plain) + "\n")
h.run_ok(["generate", "--model", model, "--prompts", plain_file, "--output", "plain.out.jsonl", "--overwrite",
          "--max-tokens", 50, "-q"], ranks=1)
for p in h.results("plain.out.jsonl"):
    batch_choices = next(r for r in out if r["custom_id"] == p["id"])["response"]["body"]["choices"]
    texts = [c["text"] for c in p["choices"]] if "choices" in p else [p["text"]]
    h.check([c["text"] for c in batch_choices] == texts, f"{p['id']}: the batch text equals the plain run's")

# A cut-short batch output resumes to the same bytes ("created" is kept from the first run).
full = open(h.path("1.jsonl"), "rb").read()
with open(h.path("cut.jsonl"), "wb") as f:
    f.write(b"".join(full.splitlines(keepends=True)[:3]))
with open(h.path("cut.jsonl.meta.json"), "wb") as f:
    f.write(open(h.path("1.jsonl.meta.json"), "rb").read())
h.run_ok(["generate", "--model", model, "--prompts", batch, "--output", "cut.jsonl", "--resume", "--max-tokens", 50,
          "-q"], ranks=1)
resumed = open(h.path("cut.jsonl"), "rb").read()
# Byte for byte but for logprob values: the resumed requests are batched differently, and a CPU step's arithmetic
# depends on its batch size (f32 rounding), so those agree within 1e-4.
resumed_records, resumed_values = split_logprobs([json.loads(x) for x in resumed.splitlines()])
full_records, full_values = split_logprobs([json.loads(x) for x in full.splitlines()])
h.check(resumed_records == full_records and max(abs(a - b) for a, b in zip(resumed_values, full_values)) < 1e-4,
        "a resumed batch output equals the whole run (created kept; logprobs within 1e-4)")
h.check(resumed.splitlines()[:3] == full.splitlines()[:3], "the resume kept the records it found, byte for byte")

# Explicit format on any file name; refusals that stop the job before anything is written.
named = h.write("requests.txt", "\n".join(lines[:2]) + "\n")
h.run_ok(["generate", "--model", model, "--prompts", named, "--output", "named.jsonl", "--overwrite",
          "--prompt-format", "openai", "-q"], ranks=1)
h.check([r["custom_id"] for r in h.results("named.jsonl")] == order[:2], "--prompt-format openai reads any file name")
for name, text, needle in [
        ("malformed", lines[0] + "\n{not json\n", "malformed.jsonl:2: not valid JSON"),
        ("nocustom", lines[0] + "\n" + json.dumps({"method": "POST", "url": "/v1/completions", "body": {}}) + "\n",
         "nocustom.jsonl:2: an OpenAI batch request needs a string 'custom_id'"),
        ("repeated", lines[0] + "\n" + lines[0] + "\n", "repeated.jsonl:2: custom_id \"plain\" was already used at")]:
    path = h.write(f"{name}.jsonl", text)
    code, out_text, _ = h.run(["generate", "--model", model, "--prompts", path, "--output", f"{name}.out", "--overwrite"],
                              ranks=1)
    h.check(code not in (0, None) and needle in out_text and not os.path.exists(h.path(f"{name}.out")),
            f"{name}: refused naming the line, nothing written:\n{out_text}")
h.finish()
