"""Writes the tokenizer benchmark's large mixed corpus: SIZE_MB of lines in many scripts, code, numbers and
whitespace (words drawn Zipf-like from generated lexicons, so words repeat as in real text, plus the test corpus),
deterministically:  python3 tests/tokenizer/bench_corpus.py OUT.txt [SIZE_MB]"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

ALPHABETS = ["abcdefghijklmnopqrstuvwxyz" * 3 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "äöüßéèêàçñøåœ" + "abcdefghijklmnoprstu" * 2,
             "абвгдежзийклмнопрстуфхцчшщыьэюя", "αβγδεζηθικλμνξοπρστυφχψω", "的一是不了人我在有他这为之大来以个中上们到说",
             "あいうえおかきくけこさしすせそたちつてとなにぬねのアイウエオカキクケコ", "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
             "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशसह"]


def lexicon(rng, alphabet, n):
    return ["".join(rng.choice(alphabet) for _ in range(max(1, int(rng.expovariate(1 / 5))))) for _ in range(n)]


def main():
    out, size = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 16
    rng = random.Random(11)
    lexicons = [lexicon(rng, a, 4000) for a in ALPHABETS]
    weights = [1 / (k + 1) for k in range(4000)]  # Zipf: a few words are very common
    extras = corpus.corpus()
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        while written < size * 1e6:
            kind = rng.random()
            if kind < 0.1:
                line = rng.choice(extras).replace("\n", " ")
            elif kind < 0.2:  # code-like: indentation, tabs, identifiers, digits
                ident = "_".join(rng.choices(lexicons[0], weights, k=2))
                line = " " * (4 * rng.randrange(4)) + f"{ident}({rng.randrange(10**6)}, '{rng.choice(lexicons[0])}')" \
                    + ("\t# " + " ".join(rng.choices(lexicons[0], weights, k=5)) if rng.random() < 0.5 else "")
            else:
                lex = lexicons[0] if rng.random() < 0.5 else rng.choice(lexicons)
                words = rng.choices(lex, weights, k=rng.randrange(5, 60))
                line = " ".join(w + rng.choice(["", "", "", ",", ".", "!", "?", ";", " " + str(rng.randrange(2024))])
                                for w in words)
            f.write(line + "\n")
            written += len(line.encode()) + 1


if __name__ == "__main__":
    main()
