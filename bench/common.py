"""What the benchmark scripts share: where results go, and the metadata every result JSON starts with.

Imported by bench/bench_*.py (run as scripts: each puts its own directory on sys.path first). No torch
here: the caller passes the device name (torch.cuda.get_device_name()).
"""
import datetime
import json
import os
import subprocess

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def gpu_dir(name):
    """Directory of a device's results under bench/results: h100, h200, ..., else the name itself."""
    n = name.lower()
    for key in ("h100", "h200", "a100", "b200", "l40"):
        if key in n:
            return key
    return n.replace(" ", "_")


def git_commit():
    """The commit measured: $MINILLM_COMMIT when set (a copy of the tree whose .git may not match it),
    else git's HEAD, with "-dirty" when tracked files differ from it."""
    if os.environ.get("MINILLM_COMMIT"):
        return os.environ["MINILLM_COMMIT"]
    try:
        git = lambda *a: subprocess.check_output(["git", *a], cwd=BENCH_DIR, text=True,  # noqa: E731
                                                 stderr=subprocess.DEVNULL).strip()
        head = git("rev-parse", "--short", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except Exception:
        return "unknown"


def metadata(bench, device):
    """The keys every result JSON starts with, in this order."""
    return {"bench": bench, "device": device, "commit": git_commit(), "date": datetime.date.today().isoformat()}


def result_path(out, filename, device):
    """`out` (--out) when given, else $OUT/<filename> when OUT is set, else bench/results/<gpu>/<filename>."""
    if out:
        return out
    return os.path.join(os.environ.get("OUT") or os.path.join(BENCH_DIR, "results", gpu_dir(device)), filename)


def write_json(path, doc):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def graph_buckets(max_num_seqs):
    """The engine's decode graph batch sizes (src/engine/llm_engine.cpp): 1, 2, 4, ... below
    max_num_seqs, then max_num_seqs."""
    b, out = 1, []
    while b < max_num_seqs:
        out.append(b)
        b *= 2
    return out + [max_num_seqs]
