#!/usr/bin/env python3
"""The power limit, measured: what sustained work runs at, and what it means for the engine.

1. Sustained phases of ~5 s each, with the SM clock and board power sampled by nvidia-smi every
   100 ms (the median over the phase, first second skipped):
     cublas_8192        torch.matmul bf16 8192^3 (the matmul ceiling, here under the power limit)
     cublas_gate_up     torch.matmul 32768 x 1024 @ 1024 x 8192 (the medium gate/up GEMM's shape)
     engine_medium      minillm.InferenceEngine("medium") B8 N2048 forward, back to back (graph replay)
   plus the same forward timed as bench_engine.py does (a short burst: median of 10 after warm-up).
   The forward's FLOPs over the sustained cuBLAS 8192^3 rate is the time the forward would take if
   all of it ran as fast as the best dense GEMM can under the same power limit. Power over rate is
   the energy each phase spends per TFLOP; under the cap, time is that energy over the power.
2. The engine's attention call (B8 H16 N2048 D64 causal, q/k/v views of one [B, N, 3 H D] buffer)
   alone and right after a burst of GEMMs as in the forward.

Run: PYTHONPATH=python python3 bench/power_limit.py
Writes $OUT/power_limit.json when $OUT is set, else bench/results/<gpu>/power_limit.json.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

import torch

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine  # noqa: E402
import common  # noqa: E402


class Sampler:
    """nvidia-smi sampling SM clock (MHz) and power (W) every 100 ms in the background."""

    def __init__(self):
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw",
                                      "--format=csv,noheader,nounits", "-lms", "100"], stdout=subprocess.PIPE, text=True)

    def stop(self):
        self.proc.terminate()
        rows = []
        for line in self.proc.stdout.read().strip().splitlines():
            try:
                t, c, p = (f.strip() for f in line.split(","))
                rows.append((datetime.datetime.strptime(t, "%Y/%m/%d %H:%M:%S.%f").timestamp(), float(c), float(p)))
            except ValueError:
                continue
        return rows


def fmt(v):
    """Three decimals, or "?" where nvidia-smi gave no sample."""
    return "?" if v is None else f"{v:.3f}"


def sustained(fn, secs):
    """Runs fn back to back for `secs` seconds: (ms per call from CUDA events, wall window)."""
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.time()
    n = 0
    s.record()
    while time.time() - t0 < secs:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        n += 5
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n, (t0 + 1.0, time.time())


def attention_after_gemms():
    B, H, N, D = 8, 16, 2048, 64
    qkv = torch.randn(B, N, 3 * H * D, device="cuda", dtype=torch.bfloat16)  # [B, N, 3 H D]
    q, k, v = (qkv[..., i * H * D:(i + 1) * H * D].view(B, N, H, D) for i in range(3))
    a = torch.randn(32768, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 8192, device="cuda", dtype=torch.bfloat16)
    out = {}
    for mode in ["alone", "after GEMMs"]:
        events = []
        for _ in range(200):
            if mode == "after GEMMs":
                for _ in range(3):
                    a @ w
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            minillm.flash_attention(q, k, v, causal=True)
            e.record()
            events.append((s, e))
        torch.cuda.synchronize()
        out[mode] = statistics.median(s.elapsed_time(e) * 1e3 for s, e in events)
        print(f"attention B8 H16 N2048 D64 causal, {mode:12}: {out[mode]:7.1f} us", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    print(device)
    sampler = Sampler()
    phases = {}

    a = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16) - 0.5
    b = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16) - 0.5
    ms, win = sustained(lambda: a @ b, args.secs)
    phases["cublas_8192"] = {"ms": ms, "tflops": 2 * 8192**3 / ms / 1e9, "window": win}
    del a, b
    a = torch.randn(32768, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 8192, device="cuda", dtype=torch.bfloat16)
    ms, win = sustained(lambda: a @ w, args.secs)
    phases["cublas_gate_up"] = {"ms": ms, "tflops": 2 * 32768 * 1024 * 8192 / ms / 1e9, "window": win}
    del a, w

    B, N = 8, 2048
    eng = minillm.InferenceEngine("medium", device="cuda", max_batch=B, max_seq=N, logits_dtype="bf16")
    ids = torch.randint(0, eng.config["vocab_size"], (B, N), device="cuda", dtype=torch.int32)
    flops = bench_engine.flops_per_token(eng.config, N) * B * N
    fwd = lambda: eng.forward(ids, copy=False)  # noqa: E731
    burst_ms = bench_engine.time_ms(fwd, 10, 3)
    ms, win = sustained(fwd, args.secs)
    phases["engine_medium"] = {"ms": ms, "tflops": flops / ms / 1e9, "window": win}
    del eng
    torch.cuda.empty_cache()
    samples = sampler.stop()

    for name, ph in phases.items():
        t0, t1 = ph.pop("window")
        sel = [(c, p) for t, c, p in samples if t0 <= t <= t1]
        ph["sm_clock_mhz"] = statistics.median(c for c, _ in sel) if sel else None
        ph["power_w"] = statistics.median(p for _, p in sel) if sel else None
        ph["samples"] = len(sel)
        ph["joules_per_tflop"] = ph["power_w"] / ph["tflops"] if sel else None  # W / (TFLOP/s)
        print(f"sustained {name:15} {ph['ms']:8.3f} ms  {ph['tflops']:6.1f} TFLOP/s  SM {ph['sm_clock_mhz']} MHz  "
              f"{ph['power_w']} W  {fmt(ph['joules_per_tflop'])} J/TFLOP  ({len(sel)} samples)", flush=True)
    floor_ms = flops / phases["cublas_8192"]["tflops"] / 1e9
    # Energy: at the power the forward draws, a forward of `target_ms` may spend this many joules per TFLOP.
    target_ms = 40.0
    power_w = phases["engine_medium"]["power_w"]
    target_j = power_w * target_ms / 1e3 / (flops / 1e12) if power_w else None
    print(f"engine medium B8 N2048: {flops / 1e12:.2f} TFLOP per forward; burst median {burst_ms:.2f} ms, sustained "
          f"{phases['engine_medium']['ms']:.2f} ms; all of it at the sustained cuBLAS 8192^3 rate: {floor_ms:.2f} ms; "
          f"{target_ms:.0f} ms at the forward's power allows {fmt(target_j)} J/TFLOP")
    attention = attention_after_gemms()

    doc = common.metadata("power_limit", device)
    doc.update({"phases": phases, "engine_medium": {"tflop_per_forward": flops / 1e12, "burst_ms": burst_ms,
                                                    "floor_at_sustained_cublas_ms": floor_ms,
                                                    "joules_per_tflop_for_40_ms": target_j},
                "attention_us": attention})
    common.write_json(common.result_path(args.out, "power_limit.json", device), doc)


if __name__ == "__main__":
    main()
