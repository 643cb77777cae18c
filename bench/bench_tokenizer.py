#!/usr/bin/env python3
"""Encode speed of minillm.Tokenizer against Hugging Face `tokenizers`, in the same process, on
one core, on English text (the license texts of /usr/share/common-licenses, Debian's, repeated to
--mb megabytes and cut into ~4 KB documents). Both tokenizers load the same tokenizer.json
(.tokenizers/, from scripts/setup.sh); for tokenizer.model the peer is the `sentencepiece`
package. HF runs with RAYON_NUM_THREADS=1 and one encode call per document (its batch call would
use threads). Each measurement is the best of --repeat passes after one warm-up pass (the warm-up
fills both pre-token caches); the cold pass (a fresh tokenizer) is reported too. Times are the
process's CPU time (time.process_time: both encoders run on the calling thread), so that a machine
shared with other work still measures the encoders rather than the wait for a core.

Writes bench/results/cpu/tokenizer.json (device = this CPU's model name).
Usage: PYTHONPATH=python python3 bench/bench_tokenizer.py [--mb 4] [--repeat 3]"""
import argparse
import glob
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import minillm  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEPS = os.path.join(ROOT, ".tokenizers")
VOCABS = ["olmoe", "dolma2", "qwen2", "deepseek", "mixtral", "mixtral-sp"]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def english(mb):
    text = ""
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            text += open(p, encoding="utf-8", errors="replace").read() + "\n"
    base = text
    while len(text.encode()) < mb * 1e6:
        text += base
    docs, i = [], 0
    while i < len(text):
        j = text.find("\n", i + 4000)
        j = len(text) if j < 0 else j + 1
        docs.append(text[i:j])
        i = j
    return docs, len(base.encode())


def timed(fn, docs, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for d in docs:
            fn(d)
        best = min(best, time.process_time() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core for everything
    docs, unique = english(args.mb)
    nbytes = sum(len(d.encode()) for d in docs)
    device = cpu_name()
    rows = []
    for name in VOCABS:
        d = os.path.join(DEPS, name)
        if not os.path.isdir(d):
            print(f"skip {name}: not in {DEPS} (run scripts/setup.sh)")
            continue
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            from tokenizers import Tokenizer

            peer = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            peer_name = "tokenizers " + __import__("tokenizers").__version__
            peer_fn = lambda s, p=peer: p.encode(s).ids  # noqa: E731
        else:
            import sentencepiece as spm

            peer = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
            peer_name = "sentencepiece " + spm.__version__
            peer_fn = peer.encode
        ours = minillm.Tokenizer(d)
        t0 = time.process_time()
        for doc in docs:
            ours.encode(doc)
        cold = time.process_time() - t0
        t_ours = timed(ours.encode, docs, args.repeat)
        t_peer = timed(peer_fn, docs, args.repeat)
        same = all(ours.encode(x) == peer_fn(x) if peer_name.startswith("tokenizers") else True for x in docs[:50])
        row = {"vocab": name, "peer": peer_name, "minillm_mb_s": round(nbytes / t_ours / 1e6, 2),
               "minillm_cold_mb_s": round(nbytes / cold / 1e6, 2), "peer_mb_s": round(nbytes / t_peer / 1e6, 2),
               "speedup": round(t_peer / t_ours, 2), "tokens": sum(len(ours.encode(x)) for x in docs[:200]),
               "same_ids_first_50_docs": same}
        rows.append(row)
        print(f"{name:18s} minillm {row['minillm_mb_s']:7.2f} MB/s (cold {row['minillm_cold_mb_s']:6.2f})"
              f"   {peer_name} {row['peer_mb_s']:6.2f} MB/s   x{row['speedup']}")
    doc = common.metadata("tokenizer", device)
    doc.update({"text": f"/usr/share/common-licenses ({unique} bytes) repeated to {nbytes} bytes, {len(docs)} documents",
                "threads": 1, "clock": "process CPU time", "repeat": args.repeat, "results": rows})
    path = common.result_path(args.out, "tokenizer.json", "cpu")
    common.write_json(path, doc)
    print("wrote", path)


if __name__ == "__main__":
    main()
