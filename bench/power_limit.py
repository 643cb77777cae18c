#!/usr/bin/env python3
"""Attention under the power limit: the engine's attention call (B8 H16 N2048 D64 causal, q/k/v as
views of one [B, N, 3 H D] buffer, as the engine lays them out) timed alone, after an L2 flush, and
right after a burst of GEMMs as in the forward; the SM clock and power are read from nvidia-smi at
the end of each phase. Prints one line per phase (no JSON: a diagnostic, cited in docs/REPORT.md).

Run: PYTHONPATH=python python3 bench/power_limit.py
"""
import statistics
import subprocess

import torch

import minillm


def clock_and_power():
    return subprocess.check_output(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader"],
                                   text=True).strip()


def main():
    B, H, N, D = 8, 16, 2048, 64
    torch.manual_seed(0)
    qkv = torch.randn(B, N, 3 * H * D, device="cuda", dtype=torch.bfloat16)  # [B, N, 3 H D]
    q, k, v = (qkv[..., i * H * D:(i + 1) * H * D].view(B, N, H, D) for i in range(3))
    a = torch.randn(32768, 1024, device="cuda", dtype=torch.bfloat16)  # a medium MoE gate/up GEMM
    w = torch.randn(1024, 8192, device="cuda", dtype=torch.bfloat16)
    junk = torch.empty(64 << 20, device="cuda", dtype=torch.uint8)  # > L2 (50 MB)

    def phase(mode, iters=200):
        events = []
        for _ in range(iters):
            if mode == "after GEMMs":
                for _ in range(3):
                    a @ w
            elif mode == "after L2 flush":
                junk.zero_()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            minillm.flash_attention(q, k, v, causal=True)
            e.record()
            events.append((s, e))
        torch.cuda.synchronize()
        state = clock_and_power()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events), state

    print(torch.cuda.get_device_name())
    for mode in ["alone", "after L2 flush", "after GEMMs", "alone", "after GEMMs"]:
        us, state = phase(mode)
        print(f"{mode:15} attention {us:7.1f} us   SM clock, power at the end: {state}", flush=True)


if __name__ == "__main__":
    main()
