"""strata's tokenizer against Hugging Face's own `tokenizers` (Rust, via Node) on real tokenizer.json files: the ids
of every corpus text must be identical (with and without the BOS template), decoding must give the reference's
text, and decode(encode(text)) must give the text back (GPT-4o's file among them). Also: Split with invert: true
under every behavior, Metaspace variants of the SentencePiece file (the
newer Mistral / TinyLlama layout), invalid UTF-8 input, refused tokenizer files, and a negative control (a file
with two merges swapped must be caught by the same comparison).
"""
import copy
import json
import os
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cli"))
sys.path.insert(0, HERE)
from harness import Harness  # noqa: E402
import corpus  # noqa: E402
import npm_fixtures  # noqa: E402

h = Harness(__doc__)
modules, files = npm_fixtures.fetch()
texts = corpus.corpus()
prompts = h.path("corpus.jsonl")
with open(prompts, "w", encoding="utf-8") as f:
    for t in texts:
        f.write(json.dumps({"prompt": t}) + "\n")


def ours(tokenizer, path, *flags):
    out = h.run_ok(["tokenize", "--tokenizer", tokenizer, "--input", path, "--jsonl", "--decode", *flags])
    return [json.loads(line) for line in out.split("\n") if line.startswith("{")]


def mismatches(tokenizer, add_bos=False):
    ref = npm_fixtures.reference(modules, tokenizer, prompts, add_special=add_bos)
    got = ours(tokenizer, prompts, *(["--add-bos"] if add_bos else []))
    if len(ref) != len(texts) or len(got) != len(texts):
        return ref, got, list(range(len(texts)))
    return ref, got, [i for i in range(len(texts)) if ref[i]["ids"] != got[i]["ids"]]


def special_contents(tokenizer):
    with open(tokenizer, encoding="utf-8") as f:
        return [t["content"] for t in json.load(f)["added_tokens"] if t["special"]]


def derived(name, source, **changes):
    with open(source, encoding="utf-8") as f:
        d = json.load(f)
    d.update(copy.deepcopy(changes))
    return h.write(name, json.dumps(d))


METASPACE = "\u2581"
variants = {
    **files,
    # The newer SentencePiece layout (Mistral v0.3, TinyLlama re-exports): no normalizer, a Metaspace pre-tokenizer.
    "mistral-metaspace-first": derived(
        "metaspace-first.json", files["mistral"], normalizer=None,
        pre_tokenizer={"type": "Metaspace", "replacement": METASPACE, "prepend_scheme": "first", "split": False}),
    "mistral-metaspace-legacy": derived(
        "metaspace-legacy.json", files["mistral"], normalizer=None,
        pre_tokenizer={"type": "Metaspace", "replacement": METASPACE, "add_prefix_space": True},
        decoder={"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": METASPACE, "add_prefix_space": True}]}),
    # Split with invert: true (the pattern's matches are kept, the text between them is the delimiter), with a
    # pattern that leaves gaps, under every behavior.
    **{f"llama3-split-invert-{behavior}": derived(
        f"invert-{behavior}.json", files["llama3"],
        pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": behavior, "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]})
       for behavior in ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext")},
}
for name, tokenizer in variants.items():
    ref, got, bad = mismatches(tokenizer)
    for i in bad[:3]:
        print(f"{name}: {texts[i][:60]!r}\n  reference {ref[i]['ids'][:24] if i < len(ref) else None}\n"
              f"  strata    {got[i]['ids'][:24] if i < len(got) else None}")
    h.check(not bad, f"{name}: ids differ from the reference on {len(bad)} of {len(texts)} texts")
    tokens = sum(len(r["ids"]) for r in ref)
    bad_text = [i for i in range(min(len(ref), len(got))) if ref[i]["text"] != got[i]["text"]]
    h.check(not bad_text, f"{name}: decoded text differs from the reference's on {len(bad_text)} texts, e.g. "
            f"{[(ref[i]['text'][:40], got[i]['text'][:40]) for i in bad_text[:2]]}")
    # Round trip: exact, except where decoding cannot know (special tokens are skipped; a literal metaspace
    # character reads back as a space; a Metaspace pre-tokenizer does not mark a leading space it did not add, so
    # the decoder drops it; NFC-normalizing files give the NFC form).
    specials = special_contents(tokenizer)
    nfc = name == "qwen3"
    metaspace = name.startswith("mistral")
    trips = 0
    for i, t in enumerate(texts[: len(got)] if not name.endswith("-Removed") else []):  # Removed drops text
        if any(s in t for s in specials) or (metaspace and METASPACE in t) or \
                (name.startswith("mistral-metaspace") and t.startswith(" ")):
            continue
        expected = unicodedata.normalize("NFC", t) if nfc else t
        trips += 1
        h.check(got[i]["text"] == expected, f"{name}: decode(encode(x)) != x for {t[:50]!r}: {got[i]['text'][:50]!r}")
    print(f"{name}: {len(texts)} texts, {tokens} tokens identical to the reference; {trips} round trips")

# The BOS template: the SentencePiece file's TemplateProcessing adds <s>, as the reference does.
ref, got, bad = mismatches(files["mistral"], add_bos=True)
h.check(not bad and all(g["ids"][:1] == [1] for g in got), f"mistral --add-bos: {len(bad)} texts differ")

# Invalid UTF-8: every maximal invalid subsequence reads as U+FFFD (Python's errors="replace" is the same rule),
# so the ids are the reference's ids for the repaired text.
raw = [b"caf\xc3 ok", b"\xff\xfe\xfd", b"trunc \xe2\x82", b"surrogate \xed\xa0\x80 end", b"overlong \xc0\xaf \xf8\x88",
       b"\xf4\x90\x80\x80 above max", b"fine \xf0\x9f\x98\x80 \xf0\x9f\x98 x", b"\x80\x80lead"]
with open(h.path("invalid.txt"), "wb") as f:
    f.write(b"\n".join(raw) + b"\n")
repaired = h.path("repaired.jsonl")
with open(repaired, "w", encoding="utf-8") as f:
    for r in raw:
        f.write(json.dumps({"prompt": r.decode("utf-8", errors="replace")}) + "\n")
for name in ("llama3", "mistral"):
    ref = npm_fixtures.reference(modules, files[name], repaired)
    out = h.run_ok(["tokenize", "--tokenizer", files[name], "--input", h.path("invalid.txt")])
    got = [json.loads(line)["ids"] for line in out.split("\n") if line.startswith("{")]
    h.check(got == [r["ids"] for r in ref], f"{name}: invalid UTF-8 is not encoded as its U+FFFD repair")

# Negative control: the same comparison must catch a tokenizer that applies merges in a different order (here the
# first 2,000 merges in reverse rank order).
with open(files["mistral"], encoding="utf-8") as f:
    d = json.load(f)
d["model"]["merges"][:2000] = d["model"]["merges"][:2000][::-1]
broken = h.write("reordered-merges.json", json.dumps(d))
got = ours(broken, prompts)
ref_mistral = npm_fixtures.reference(modules, files["mistral"], prompts)
caught = [i for i in range(len(texts)) if got[i]["ids"] != ref_mistral[i]["ids"]]
h.check(len(caught) > 0, "negative control: reordering merges changed no ids, so the comparison proves nothing")
print(f"negative control: reordered merges change the ids of {len(caught)} of {len(texts)} texts")


# Refused files: the message names the file and what is unsupported; never a crash.
def expect_refusal(label, path, *needles):
    code, out, _ = h.run(["tokenize", "--tokenizer", path, "--input", prompts, "--jsonl"], timeout=60)
    h.check(code == 1, f"{label}: expected exit 1, got {code}\n{out[-500:]}")
    for needle in (path, *needles):
        h.check(needle in out, f"{label}: message lacks {needle!r}\n{out[-500:]}")


small = {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
expect_refusal("WordPiece model", h.write("wordpiece.json", json.dumps(
    {"model": {"type": "WordPiece", "vocab": {"a": 0}}})), "model type 'WordPiece' is not supported")
expect_refusal("Unigram model", derived("unigram.json", files["qwen3"], model={"type": "Unigram", "vocab": []}),
               "model type 'Unigram'")
expect_refusal("BERT pre-tokenizer", h.write("bert.json", json.dumps(
    {"model": small, "pre_tokenizer": {"type": "BertPreTokenizer"}, "added_tokens": [{"id": 2, "content": "</s>",
                                                                                    "special": True}]})),
    "pre_tokenizer 'BertPreTokenizer' is not supported")
expect_refusal("NFKC normalizer", h.write("nfkc.json", json.dumps({"model": small, "normalizer": {"type": "NFKC"}})),
               "normalizer 'NFKC'")
expect_refusal("merge outside the vocabulary", h.write("badmerge.json", json.dumps(
    {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a q"]}})), "merge 0 'a q'")
expect_refusal("not JSON", h.write("truncated.json", open(files["mistral"], encoding="utf-8").read()[:5000]),
               "not valid JSON")
expect_refusal("bad regex", derived("badregex.json", files["llama3"], pre_tokenizer={
    "type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": False}), "does not compile")
h.finish()
