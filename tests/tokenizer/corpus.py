"""The tokenizer test corpus: hand-written lines across scripts, plus generated edge cases. Deterministic.

Each entry is one text to encode (it may contain newlines and tabs). Shared by the comparison test and the
throughput benchmark (which repeats it into a large mixed corpus)."""

import random

HAND_WRITTEN = [
    "",
    " ",
    "Hello world",
    "Hello, my dog is cute",
    " leading space and trailing space ",
    "It's they're we've I'm you'll he'd IT'S THEY'RE WE'VE I'M YOU'LL HE'D don't",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "Digits: 1 12 123 1234 12345 123456 3.14159 1,000,000 0x1F 1e-9 ٠١٢٣٤٥ ١٢٣ 一二三 ²³ ½",
    "Große Straße, Äpfel und Öl — „Anführungszeichen“ «guillemets» çà et là, naïve café, coöperate",
    "Le cœur a ses raisons que la raison ne connaît point. Ça va? Où êtes-vous?",
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "עברית: דג סקרן שט בים מאוכזב ולפתע מצא חברה",
    "العربية: نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر",
    "हिन्दी: ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले",
    "বাংলা ভাষা, தமிழ் மொழி, తెలుగు, ಕನ್ನಡ, മലയാളം, ગુજરાતી, ਪੰਜਾਬੀ",
    "ภาษาไทย: เป็นมนุษย์สุดประเสริฐเลิศคุณค่า",
    "中文：我能吞下玻璃而不伤身体。繁體中文：我能吞下玻璃而不傷身體。",
    "日本語：いろはにほへと ちりぬるを カタカナ ｶﾀｶﾅ 漢字かな交じり文",
    "한국어: 다람쥐 헌 쳇바퀴에 타고파",
    "Tiếng Việt: Tôi có thể ăn thủy tinh mà không hại gì.",
    "ქართული ენა, Հայերեն, አማርኛ, ᏣᎳᎩ, ᠮᠣᠩᠭᠣᠯ, ཀ་ཁ་ག",
    "Emoji: 😀 😃 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️ ✔︎ 🧑🏿‍💻 1️⃣ #️⃣",
    "Zero width: a\u200bb c\u200cd e\u200df \ufeffBOM soft\u00adhyphen",
    "Combining: e\u0301 a\u0308 n\u0303 \u1100\u1161\u11a8 A\u030a Å Å",
    "Spaces:  two   three    four     five\u00a0nbsp\u2003em\u3000ideographic",
    "Tabs:\tone\t\ttwo\t\t\tthree\t",
    "Newlines:\nsingle\n\ndouble\n\n\ntriple\r\nwindows\rcr",
    "   \n\n   \t\n  mixed whitespace runs  \n",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (let i = 0; i < arr.length; ++i) { sum += arr[i] ** 2; } // comment /* block */",
    "<html><body class=\"main\"><p>Hello &amp; welcome!</p></body></html>",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "Punctuation: !!! ??? ... --- ___ *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} ||| \\\\ /// ~~~ ``` '''",
    "Mixed123abc ABC123 a1b2c3 snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "URLs: https://example.com/path?query=1&b=2#frag mailto:someone@example.org C:\\Windows\\System32",
    "Math: ∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ = ∫₀¹ f(x) dx, √2 ≈ 1.414, π ≠ 3, α+β=γ",
    "Special-looking text: <s> </s> <unk> <|begin_of_text|> <|endoftext|> <|im_start|>user<|im_end|> <0x41>",
    "<s>[INST] What is the capital of France? [/INST]",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n",
    "\u2581already has metaspace \u2581\u2581 double",
    "Control chars: \u0001\u0002\u0007\u001b[31mred\u001b[0m \u007f \u0085 \u2028 \u2029",
    "Private use and rare planes: \ue000 \U000f0000 \U0001d54f \U0001f9ea 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 𐍈",
    "Antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis Donaudampfschifffahrtsgesellschaftskapitän",
    # Unicode after PCRE2's tables: emoji of Unicode 15 (symbols there, unassigned in 14), and U+180E (a format
    # character since 6.3, white space to PCRE2) between spaces.
    "new emoji \U0001FAE8 \U0001FAF7\U0001FAF8 face, \U0001FAE8\U0001FAE8abc",
    "a \u180e b  x\u180e y  \u180e\u180e z",
]


def generated(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = [
        "a" * 1000,  # a very long word
        "ab" * 400 + " " + "xyz" * 300,
        "9" * 200,  # a long digit run
        " " * 64 + "x",  # a long run of spaces before a word
        "\n" * 40,
        "\t" * 17 + "indented",
        "😀" * 50,
        "é" * 100,
        "".join(chr(0x4E00 + rng.randrange(0x5000)) for _ in range(300)),
    ]
    pools = [
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n",
        ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "äöüßéèêñçøåæœ",
        "абвгдежзийклмнопрстуфхцчшщъыьэюя",
        "αβγδεζηθικλμνξοπρστυφχψω",
        "的一是不了人我在有他这为之大来以个中上们",
        "ぁあぃいぅうぇえぉおかがきぎくぐ",
        "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍",
        "\u200d\u0301\ufe0f",
    ]
    for _ in range(60):  # random mixtures: many script and category boundaries
        n = rng.randrange(1, 120)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    return out


def corpus() -> list[str]:
    return HAND_WRITTEN + generated()
