"""Ablations of the Hopper attention kernel: minillm.flash_attention under each kernel variant.

The variants are chosen by environment variables that the library reads once per process
(src/cuda/attention/flash_fwd.cu), so each variant runs in a child process on the same cases. Timing
as in bench_attention.py: CUDA events around each call after warm-up, the median, inputs rotated when
one set fits in L2; each child also checks its output against torch SDPA (max abs difference).
The serial / nopingpong variants need a library built with -DMINILLM_ATTN_ABLATION
(e.g. cmake -DCMAKE_CUDA_FLAGS=-DMINILLM_ATTN_ABLATION); the others are always there.
  python bench/ablate_attention.py [--variants fa2,sm90,...]
Prints one table (TFLOP/s per case and variant) and writes $OUT/attention_ablation.json when OUT is set.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

VARIANTS = {
    "fa2": {"MINILLM_ATTENTION_KERNEL": "fa2"},
    "sm90": {},
    "m128": {"MINILLM_SM90_BLOCK_M": "128"},
    "m192": {"MINILLM_SM90_BLOCK_M": "192"},
    "serial": {"MINILLM_SM90_VARIANT": "serial"},
    "nopingpong": {"MINILLM_SM90_VARIANT": "nopingpong"},
    "serial_nopingpong": {"MINILLM_SM90_VARIANT": "serial_nopingpong"},
    "nonpersistent": {"MINILLM_SM90_PERSISTENT": "0"},
    "static": {"MINILLM_SM90_SCHEDULE": "static"},
    "onegroup": {"MINILLM_SM90_HEAD_GROUP": "1000000"},
    "group48": {"MINILLM_SM90_HEAD_GROUP": "48"},
    "exp2_quarter": {"MINILLM_SM90_VARIANT": "exp2_quarter"},
    "exp2_third": {"MINILLM_SM90_VARIANT": "exp2_third"},
    "exp2_half": {"MINILLM_SM90_VARIANT": "exp2_half"},
}

CASES = [(b, 16, n, d, c) for (b, n) in ((16, 2048), (1, 2048), (16, 512), (1, 8192))
         for d in (64, 128) for c in (False, True)]


def child(names):
    import torch
    import torch.nn.functional as F

    import minillm
    torch.manual_seed(0)
    out = []
    for (B, H, N, D, causal) in CASES:
        set_bytes = 4 * B * N * H * D * 2
        nsets = max(1, min(4, -(-2 * 50 * 2**20 // set_bytes)))
        sets = [[torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)] for _ in range(nsets)]
        q, k, v = sets[0]
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal).transpose(1, 2)
        diff = (minillm.flash_attention(q, k, v, causal=causal).float() - ref.float()).abs().max().item()
        for i in range(3):
            minillm.flash_attention(*sets[i % nsets], causal=causal)
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(30)]
        for r, (s, e) in enumerate(events):
            s.record()
            minillm.flash_attention(*sets[r % nsets], causal=causal)
            e.record()
        torch.cuda.synchronize()
        ms = statistics.median(s.elapsed_time(e) for s, e in events)
        flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
        out.append(dict(case=[B, H, N, D, causal], ms=ms, tflops=flops / ms / 1e9, max_abs_diff=diff))
        del sets
    print("JSON" + json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.variants)
    results = {}
    for name in args.variants.split(","):
        env = dict(os.environ, **VARIANTS[name])
        p = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("JSON")]
        if p.returncode != 0 or not line:
            print(f"{name}: failed\n{p.stderr[-2000:]}", flush=True)
            continue
        results[name] = json.loads(line[0][4:])
        print(f"{name}: " + " ".join(f"{r['tflops']:.0f}" for r in results[name]), flush=True)
    names = list(results)
    print(f"{'B':>3} {'H':>3} {'N':>5} {'D':>4} {'mask':>6} | " + " ".join(f"{n[:11]:>11}" for n in names) + "  TFLOP/s")
    for i, (B, H, N, D, causal) in enumerate(CASES):
        row = " ".join(f"{results[n][i]['tflops']:11.1f}" for n in names)
        bad = [n for n in names if results[n][i]["max_abs_diff"] > 0.05]
        print(f"{B:>3} {H:>3} {N:>5} {D:>4} {'causal' if causal else 'full':>6} | {row}" + (f"  DIFF {bad}" if bad else ""))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "attention_ablation.json"), "w") as f:
            json.dump(dict(cases=CASES, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
