"""FlashAttention forward benchmark: minillm vs torch SDPA (FLASH_ATTENTION and CUDNN_ATTENTION forced).

Same process, same inputs (B, N, H, D) bf16 (torch gets the (B, H, N, D) transposed views, which its
kernels read without a copy). CUDA events around each call after warm-up; the median of the
repetitions, taken in 3 rounds that alternate the implementations (fewer repetitions for the big
cases, at least 6). Input sets are rotated when one set fits in L2. Small cases are bound by the
host-side cost of one call (Python, argument checks, launch): that is part of what is measured.
FLOPs = 4 * B * H * N^2 * D, half when causal. Memory: the peak extra device memory of one call
(torch.cuda.max_memory_allocated delta; minillm allocates its output with torch and no workspace).

Grid: seq 128..8192 x batch 1, 4, 16, 32 x heads 8, 16, 32, head_dim 64 and 128, full and causal.
Cases whose q, k, v, o do not fit in 70% of free memory are skipped (and listed).
  python bench/bench_attention.py            # the whole grid
  python bench/bench_attention.py --quick    # a small subset
Writes bench/results/<gpu>/attention.json, or $OUT/attention.json when OUT is set.
"""
import argparse
import contextlib
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

L2_BYTES = 50 * 2**20


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small subset of the grid")
    ap.add_argument("--budget-ms", type=float, default=60.0, help="timed milliseconds per (case, implementation)")
    ap.add_argument("--out", default=None, help="JSON path (default: $OUT/attention.json or bench/results/<gpu>/)")
    return ap.parse_args()


def grid(quick):
    if quick:
        seqs, batches, heads = [512, 2048, 8192], [1, 16], [16]
    else:
        seqs, batches, heads = [128, 512, 1024, 2048, 4096, 8192], [1, 4, 16, 32], [8, 16, 32]
    for d in (64, 128):
        for causal in (False, True):
            for n in seqs:
                for b in batches:
                    for h in heads:
                        yield dict(batch=b, heads=h, seqlen=n, head_dim=d, causal=causal, dtype="bf16")


def measure(impls, budget_ms, rounds=3):
    """Median milliseconds per call of each implementation. Warm-up and a timed estimate first; then
    `rounds` rounds that visit every implementation in turn (so that a transient slowdown of the
    machine does not land on one of them), each call timed with its own pair of CUDA events."""
    est, failed = {}, {}
    for name, (fn, ctx) in impls.items():
        try:
            with ctx():
                fn(), fn()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
            est[name] = max(s.elapsed_time(e), 1e-3)
        except RuntimeError as err:  # a backend that refuses the case
            failed[name] = str(err).splitlines()[0]
    times = {name: [] for name in est}
    for _ in range(rounds):
        for name in est:
            fn, ctx = impls[name]
            reps = int(min(20, max(2, budget_ms / rounds / est[name])))
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            with ctx():
                for s, e in events:
                    s.record()
                    fn()
                    e.record()
            torch.cuda.synchronize()
            times[name] += [s.elapsed_time(e) for s, e in events]
    return {name: statistics.median(t) for name, t in times.items()}, failed


def peak_extra_mb(fn, ctx):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with ctx():
        out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def main():
    args = parse_args()
    dev = torch.cuda.get_device_name()
    torch.manual_seed(0)
    results, skipped = [], []
    path = common.result_path(args.out, "attention.json" if not args.quick else "attention_quick.json", dev)
    meta = common.metadata("attention", dev)

    def dump():  # after every case, so that an interrupted run keeps what it measured
        common.write_json(path, dict(**meta, torch=torch.__version__, quick=args.quick, skipped=skipped,
                                     results=results))

    hdr = (f"{'B':>3} {'H':>3} {'N':>5} {'D':>4} {'mask':>6} | {'minillm':>8} {'flash':>8} {'cudnn':>8} ms | "
           f"{'minillm':>7} {'flash':>7} {'cudnn':>7} TFLOP/s | {'vs flash':>8} {'vs cudnn':>8} | mem MB m/f/c")
    print(f"device: {dev}\n{hdr}\n" + "-" * len(hdr), flush=True)
    for case in grid(args.quick):
        B, H, N, D, causal = case["batch"], case["heads"], case["seqlen"], case["head_dim"], case["causal"]
        set_bytes = 4 * B * N * H * D * 2  # q, k, v, o
        free, _ = torch.cuda.mem_get_info()
        if set_bytes > 0.7 * free:
            skipped.append(case)
            print(f"skip (memory): {case}", flush=True)
            continue
        nsets = max(1, min(4, math.ceil(2 * L2_BYTES / set_bytes)))
        sets = [tuple(torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                for _ in range(nsets)]
        it = {"i": 0}

        def nxt():
            it["i"] = (it["i"] + 1) % nsets
            return sets[it["i"]]

        def run_minillm():
            q, k, v = nxt()
            return minillm.flash_attention(q, k, v, causal=causal)

        def run_sdpa():
            q, k, v = nxt()
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=causal)

        # name -> (function, context it runs in): the backend is forced once around the timing loop.
        impls = {"minillm": (run_minillm, contextlib.nullcontext),
                 "torch_sdpa_flash": (run_sdpa, lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)),
                 "torch_sdpa_cudnn": (run_sdpa, lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION))}
        # Sanity: same answer as torch's default SDPA on the first input set.
        q, k, v = sets[0]
        o_ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=causal).transpose(1, 2)
        diff = (minillm.flash_attention(q, k, v, causal=causal).float() - o_ref.float()).abs().max().item()
        del o_ref
        flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)
        ms, failed = measure(impls, args.budget_ms)
        for name, why in failed.items():
            print(f"  {name} failed: {why}", flush=True)
        tflops = {name: flops / t / 1e9 for name, t in ms.items()}
        mem = {name: peak_extra_mb(*impls[name]) for name in ms}
        del sets
        r = dict(case=case, ms=ms, tflops=tflops, mem_mb=mem, max_abs_diff_vs_torch=diff)
        vs_f = ms.get("torch_sdpa_flash", float("nan")) / ms["minillm"]
        vs_c = ms.get("torch_sdpa_cudnn", float("nan")) / ms["minillm"]
        r["speedup"] = {"vs_flash": vs_f, "vs_cudnn": vs_c}
        results.append(r)
        dump()
        g = lambda d, kk, f: f.format(d[kk]) if kk in d else "    -"  # noqa: E731
        print(f"{B:>3} {H:>3} {N:>5} {D:>4} {'causal' if causal else 'full':>6} | "
              f"{g(ms, 'minillm', '{:8.3f}')} {g(ms, 'torch_sdpa_flash', '{:8.3f}')} "
              f"{g(ms, 'torch_sdpa_cudnn', '{:8.3f}')} ms | {g(tflops, 'minillm', '{:7.1f}')} "
              f"{g(tflops, 'torch_sdpa_flash', '{:7.1f}')} {g(tflops, 'torch_sdpa_cudnn', '{:7.1f}')} TFLOP/s | "
              f"{vs_f:8.2f} {vs_c:8.2f} | {g(mem, 'minillm', '{:.0f}')}/{g(mem, 'torch_sdpa_flash', '{:.0f}')}/"
              f"{g(mem, 'torch_sdpa_cudnn', '{:.0f}')}" + (f"  DIFF {diff:.3f}" if diff > 0.05 else ""), flush=True)

    # Summary: headline cases and medians of the speedups over the grid.
    print("\nsummary (speedup = torch time / minillm time; > 1 means minillm is faster)")
    for d in (64, 128):
        for causal in (False, True):
            sel = [r for r in results if r["case"]["head_dim"] == d and r["case"]["causal"] == causal]
            f = [r["speedup"]["vs_flash"] for r in sel if not math.isnan(r["speedup"]["vs_flash"])]
            c = [r["speedup"]["vs_cudnn"] for r in sel if not math.isnan(r["speedup"]["vs_cudnn"])]
            if f:
                print(f"  D{d} {'causal' if causal else 'full  '}: median vs flash {statistics.median(f):.3f} "
                      f"(min {min(f):.3f}), vs cudnn {statistics.median(c):.3f} over {len(f)} cases")
    allf = [r["speedup"]["vs_flash"] for r in results if not math.isnan(r["speedup"]["vs_flash"])]
    allc = [r["speedup"]["vs_cudnn"] for r in results if not math.isnan(r["speedup"]["vs_cudnn"])]
    if allf:
        print(f"  all: median vs flash {statistics.median(allf):.3f}, vs cudnn {statistics.median(allc):.3f}")
    for r in results:
        c = r["case"]
        if c["batch"] == 16 and c["heads"] == 16 and c["seqlen"] == 2048:
            print(f"  headline B16 H16 N2048 D{c['head_dim']} {'causal' if c['causal'] else 'full'}: "
                  + ", ".join(f"{k} {r['ms'][k]:.3f} ms {r['tflops'][k]:.0f} TFLOP/s" for k in r["ms"]))
    if skipped:
        print(f"  skipped for memory: {len(skipped)} cases")
    dump()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
