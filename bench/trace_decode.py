#!/usr/bin/env python3
"""A batch-1 decode step on the GPU's own clock: the kernel timeline of minillm.LLM steps (OLMoE-1B-7B
shape, context 128) recorded by torch.profiler (CUPTI sees every kernel of the process, graph replays
included). For each step: host wall time, the time the GPU was busy (union of kernel and copy
intervals), the idle time inside the step (gaps between kernels: launch latency, PDL waits not
covered) and the time from the step's last GPU work to the next step's first (host work between
steps), with the largest idle intervals and the GPU work on either side. Per kernel: calls and
microseconds per step. Kernel intervals overlap where programmatic dependent launch started a kernel
early and it sat in its PDL wait: a kernel's time here includes that wait. The profiler slows the host
side of a step: compare these figures with each other, not with untraced step times. Writes
decode_trace.json (bench/results/<gpu>/, or --out) and, with --chrome FILE, the raw trace for
chrome://tracing or Perfetto.

Run: PYTHONPATH=python python3 bench/trace_decode.py [--steps 20] [--batch 1]"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_generate import OLMOE  # noqa: E402


def short(name):
    """A kernel's name without namespaces and parameter list: 'decode_gemm_kernel<__nv_bfloat16, (Epilogue)0>'."""
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list: the first '(' outside template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            cut = i
            break
    return re.sub(r"\b(\w+::)+", "", name[:cut])


def union(intervals):
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="steps recorded (after 30 warm-up steps)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chrome", default=None, help="also keep the raw Chrome trace here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    llm = minillm.LLM(OLMOE, device="cuda", max_model_len=512, gpu_memory_fraction=0.5, max_num_seqs=max(8, args.batch))
    p = minillm.SamplingParams(max_tokens=30 + args.steps + 5, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        llm.add_request([1 + (i + j) % 1000 for j in range(128)], p)
    for _ in range(30):  # prefill, graph capture, warm-up
        llm.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            with record_function("llm_step"):
                llm.step()
        torch.cuda.synchronize()
    path = args.chrome or tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    trace = json.load(open(path))
    if not args.chrome:
        os.remove(path)
    ev = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("name") == "llm_step")
    gpu = sorted((e["ts"], e["ts"] + e["dur"], e["name"], e.get("cat", ""))
                 for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if len(steps) < 2 or not gpu:
        print(f"error: the trace has {len(steps)} steps and {len(gpu)} GPU events (CUPTI unavailable?)")
        return 1
    # A step's GPU work: what starts after the step's host range began and before the next one began.
    rows, per_kernel = [], {}
    for i, (s0, s1) in enumerate(steps):
        nxt = steps[i + 1][0] if i + 1 < len(steps) else float("inf")
        work = [g for g in gpu if s0 <= g[0] < nxt]
        if not work:
            continue
        busy = union([(g[0], g[1]) for g in work])
        first, last = work[0][0], max(g[1] for g in work)
        kernels = [g for g in work if g[3] == "kernel"]
        gaps = [b[0] - a[1] for a, b in zip(kernels, kernels[1:])]
        # where the GPU sat idle: each interval of no GPU work inside the span, with what ends and starts around it
        idle, end, end_name = [], work[0][1], work[0][2]
        for b in work[1:]:
            if b[0] > end + 1.0:
                idle.append(dict(us=b[0] - end, after=short(end_name), before=short(b[2])))
            if b[1] > end:
                end, end_name = b[1], b[2]
        rows.append(dict(host_us=s1 - s0, gpu_span_us=last - first, gpu_busy_us=busy, idle_in_span_us=last - first - busy,
                         launch_to_first_gpu_us=first - s0, kernels=len(kernels), copies=len(work) - len(kernels),
                         median_gap_us=statistics.median(gaps) if gaps else 0.0,
                         gaps_over_2us=sum(g > 2 for g in gaps), end_to_next_step_us=nxt - last if nxt != float("inf") else None,
                         idle_intervals=sorted(idle, key=lambda r: -r["us"])[:5]))
        if i + 1 < len(steps):  # full steps only
            for g in kernels:
                k = per_kernel.setdefault(short(g[2]), [0, 0.0])
                k[0] += 1
                k[1] += g[1] - g[0]
    full = [r for r in rows if r["end_to_next_step_us"] is not None]
    n = len(full)
    med = {k: statistics.median(r[k] for r in full) for k in full[0] if isinstance(full[0][k], (int, float))}
    print(f"{dev}: batch {args.batch}, {n} steps (medians)")
    for k, v in med.items():
        print(f"  {k:24s} {v:10.1f}")
    print("  largest idle intervals of the median step (us, after -> before):")
    mid = sorted(full, key=lambda r: r["host_us"])[n // 2]
    for g in mid["idle_intervals"]:
        print(f"    {g['us']:8.1f}  {g['after'][:40]} -> {g['before'][:40]}")
    table = sorted(((name, c / n, t / n, t / c) for name, (c, t) in per_kernel.items()), key=lambda r: -r[2])
    print(f"\n{'kernel':48s} {'calls/step':>10} {'us/step':>9} {'us/call':>8}")
    for name, c, t, each in table:
        print(f"{name[:48]:48s} {c:10.1f} {t:9.1f} {each:8.2f}")
    out = common.result_path(args.out, "decode_trace.json", dev)
    common.write_json(out, dict(**common.metadata("decode_trace", dev), model="olmoe", batch=args.batch,
                                context=128, steps=n, median=med, per_step=rows,
                                kernels=[dict(name=a, calls_per_step=b, us_per_step=c, us_per_call=d)
                                         for a, b, c, d in table]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
