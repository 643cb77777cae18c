"""Split-KV decode: time minillm.paged_attention at forced split counts next to the planned one (0),
for few sequences with long contexts, where the plan matters (src/cuda/attention/paged_decode.cu,
make_plan). Shuffled pages, bf16, D = 128, one query token per sequence; each count is a CUDA graph of
50 calls, median of 5 replays; the output is checked against the planned call.

    PYTHONPATH=python python3 dev/tools/decode_split_sweep.py OUT.json

Evidence for the plan's cost model (bench/results/h100/decode_split_sweep.json, docs/KV_CACHE.md).
"""
import math
import os
import sys

import torch

import minillm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench_decode_attention as bda  # noqa: E402
import common  # noqa: E402

SPLITS = (0, 8, 12, 15, 16, 24, 29, 32, 33, 48, 64)
SHAPES = [(B, ctx, hq, hkv) for B, ctx in ((1, 8192), (1, 32768), (4, 32768))
          for hq, hkv in ((32, 8), (16, 16), (32, 4))]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "decode_split_sweep.json"
    dev = torch.cuda.get_device_name()
    gen = torch.Generator(device="cuda").manual_seed(0)
    bw = bda.copy_bandwidth()
    rows = []
    for B, ctx, hq, hkv in SHAPES:
        kv = 2 * B * ctx * hkv * bda.D * 2
        nsets = max(1, min(4, math.ceil(2 * bda.L2_BYTES / kv)))
        sets = []
        for _ in range(nsets):
            kc, vc, bt = bda.make_cache(B, ctx, hkv, gen)
            q = torch.randn(B, hq, bda.D, device="cuda", dtype=torch.bfloat16, generator=gen)
            sets.append((q, kc, vc, bt, torch.full((B,), ctx, dtype=torch.int32, device="cuda")))
        floor = (kv + 4 * B * hq * bda.D) / bw * 1e6
        ref = minillm.paged_attention(*sets[0]).float()
        times = {}
        for sp in SPLITS:
            err = (minillm.paged_attention(*sets[0], num_splits=sp).float() - ref).abs().max().item()
            assert err < 2e-2, f"B{B} ctx{ctx} {hq}/{hkv} splits {sp}: max |diff| {err}"
            it = [0]

            def run(sp=sp, it=it):
                it[0] = (it[0] + 1) % nsets
                return minillm.paged_attention(*sets[it[0]], check=False, max_query_len=1, max_context_len=ctx,
                                               num_splits=sp)
            times[sp] = bda.graph_time_us(run, 50)
        best = min((t, sp) for sp, t in times.items() if sp)
        rows.append(dict(batch=B, context=ctx, heads=hq, kv_heads=hkv, copy_floor_us=floor, us=times,
                         best_forced=best[1], planned_vs_best=times[0] / best[0]))
        print(f"B{B} ctx{ctx} {hq}/{hkv} floor {floor:.1f} us | planned {times[0]:.1f} us | best forced "
              f"{best[1]}: {best[0]:.1f} us | " + " ".join(f"{sp}:{t:.1f}" for sp, t in times.items() if sp), flush=True)
    common.write_json(path, {**common.metadata("decode_split_sweep", dev), "copy_bandwidth_gbs": bw / 1e9,
                             "splits": list(SPLITS), "results": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
