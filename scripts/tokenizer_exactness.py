#!/usr/bin/env python3
"""Prints the tokenizer exactness table (vocabulary x corpus category: strings, mismatches) against
Hugging Face `tokenizers` / `sentencepiece`, on the vocabularies scripts/setup.sh builds.
Columns: ids / decode / stream mismatches; lossless = strings recovered by decode(encode(x)) out of
those the oracle recovers. Usage: PYTHONPATH=python scripts/tokenizer_exactness.py [--examples] [VOCAB ...]"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures", "tokenizer"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import exactness  # noqa: E402
import minillm  # noqa: E402
from corpus import CORPUS  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--examples" in sys.argv
    names = args or exactness.available()
    cats = list(CORPUS)
    print("| vocabulary | " + " | ".join(cats) + " | total | lossless |")
    print("|---|" + "---|" * (len(cats) + 2))
    total_bad = 0
    for name in names:
        res = exactness.compare(name, CORPUS, minillm)
        cells = []
        n = bad = lossless = lossless_ok = 0
        for c in cats:
            r = res[c]
            b = r["ids"] + r["decode"] + r["stream"] + (r["lossless"] - r["lossless_ok"])
            n += r["strings"]
            lossless += r["lossless"]
            lossless_ok += r["lossless_ok"]
            bad += b
            cells.append(f"{r['strings']}/{b}")
        rnd = exactness.random_id_streams(name, minillm)
        bad += len(rnd)
        total_bad += bad
        print(f"| {name} | " + " | ".join(cells) + f" | {n}/{bad} | {lossless_ok}/{lossless} |")
        if show:
            for c in cats:
                for e in res[c]["examples"][:3]:
                    print("   ", c, e[0], repr(e[1])[:80], "\n      got ", repr(e[2])[:300], "\n      want", repr(e[3])[:300])
            for ids, skip in rnd[:3]:
                print("    random stream mismatch", ids, skip)
    print("\ncells: strings/mismatches (ids + decode + stream + not recovered); the total also counts 30 random "
          "id sequences streamed per vocabulary; lossless: strings recovered by decode(encode(x)) / strings the "
          "oracle recovers")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
