"""Time the Hopper attention kernel of whichever minillm is on PYTHONPATH on a few fixed cases.

    PYTHONPATH=<tree>/python python3 dev/tools/attention_ab.py OUT.json

Each case: bf16 q, k, v [B, N, 16, D]; 1-4 input sets rotated so that >100 MB is touched between
reuses; a CUDA graph of up to 200 calls, replayed 15 times; the median microseconds per call.
Run it for two builds alternately (A, B, A, B, ...) in one session to compare their kernels without
host overhead or drift (bench/results/h100/attention_ab.json, docs/REPORT_APPENDIX.md A.1).
"""
import json
import math
import statistics
import sys

import torch

import minillm

CASES = [(1, 512, 128, False), (16, 2048, 128, True), (1, 8192, 64, True), (16, 512, 64, False),
         (16, 8192, 128, False), (1, 8192, 128, False), (16, 2048, 128, False), (16, 2048, 64, True),
         (16, 8192, 64, True)]  # (batch, seqlen, head_dim, causal)
HEADS = 16


def time_case(B, N, D, causal):
    nsets = max(1, min(4, math.ceil(100 * 2**20 / (4 * B * N * HEADS * D * 2))))
    sets = [tuple(torch.randn(B, N, HEADS, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            for _ in range(nsets)]
    it = [0]

    def fn():
        it[0] = (it[0] + 1) % nsets
        q, k, v = sets[it[0]]
        return minillm.flash_attention(q, k, v, causal=causal)

    fn(), fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(), fn(), e.record(), e.synchronize()
    reps = int(min(200, max(4, 20 / s.elapsed_time(e))))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(15):
        s.record(), g.replay(), e.record(), e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3 / reps)
    return statistics.median(ts)


def main():
    res = {f"B{B} N{N} D{D} {'causal' if c else 'full'}": time_case(B, N, D, c) for B, N, D, c in CASES}
    json.dump(res, open(sys.argv[1], "w"), indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
