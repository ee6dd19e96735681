#!/usr/bin/env python3
"""Writes pretokenizer_cases.json: texts split by the GPT-2, Llama 3 and Qwen2 pre-tokenizer
regexes with the third-party `regex` module (Debian: python3-regex), which implements the
same Unicode classes and lookahead as the engines Hugging Face uses. The C++ splitter is
checked against these cases."""
import json
import random
import sys

import regex

PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}

FIXED = [
    "Hello world!",
    "Hello  world!!!\n",
    "  leading spaces and trailing   ",
    "don't I'M we'LL they'Re it's SHE'D you've",
    "numbers 1234567 and 3.14159, 2024-01-01",
    "tabs\tand\r\nwindows\r\n\r\nnewlines\n\n\n",
    "mixed(punctuation)...; [brackets] {braces} <tags>",
    "Ünïcödé façade naïve – “quotes” ‘single’",
    "日本語のテキストと中文文本",
    "हिन्दी में लिखा गया पाठ",
    "العربية نص",
    "emoji 🙂🚀 and flags 🇩🇪 ok",
    "Roman numerals Ⅻ and superscripts ² ³ and fractions ½",
    "long s ſ: 'ſ and Kelvin K",
    "   \n   \n x",
    "a\u00a0b\u2003c\u3000d",
    "x = f(y) + 2*z // comment\n    return x;\n",
    "",
    " ",
    "\n",
    "'",
    "''s",
]

ALPHABET = list("aZ09 \t\n\r'.,!?-_()") + ["é", "ß", "日", "١", "²", "🙂", "\u00a0", "\u0301", "ſ", "Ⅻ"]


def main(path):
    rng = random.Random(1234)
    texts = list(FIXED)
    for _ in range(300):
        texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))))
    cases = []
    for name, pattern in PATTERNS.items():
        compiled = regex.compile(pattern)
        for text in texts:
            cases.append({"pattern": name, "text": text,
                          "pieces": [m.group(0) for m in compiled.finditer(text)]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"generator": "regex " + regex.__version__, "cases": cases}, f,
                  ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pretokenizer_cases.json")
