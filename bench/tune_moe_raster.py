"""Sweeps the grouped GEMM's raster group (MINILLM_MOE_GROUP_M: m-blocks per group of the tile
order) on the MoE headline shapes; one subprocess per value, since the value is read once.

    PYTHONPATH=python python3 bench/tune_moe_raster.py [16 8 4 ...]
"""
import os
import subprocess
import sys

SHAPES = [(32768, 4096, 32, 2, 14336), (32768, 4096, 8, 2, 14336), (32768, 2048, 64, 8, 1024),
          (16384, 1024, 8, 2, 4096)]


def child():
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from profile_kernels import moe_layer

    out = []
    for T, H, E, k, F in SHAPES:
        moe, w, x = moe_layer(T, H, E, k, F)
        for _ in range(3):
            moe(x)
        times = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            moe(x)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        ms = sorted(times)[len(times) // 2]
        out.append(f"T{T} H{H} E{E} k{k} F{F}: {ms:7.2f} ms {T * k * 6 * H * F / ms / 1e9:6.0f} TFLOP/s")
        del moe, w, x
        torch.cuda.empty_cache()
    print(" | ".join(out), flush=True)


def main():
    if os.environ.get("MINILLM_TUNE_CHILD"):
        return child()
    for g in sys.argv[1:] or ["16", "8", "4", "2", "32", "64"]:
        env = dict(os.environ, MINILLM_MOE_GROUP_M=g, MINILLM_TUNE_CHILD="1")
        print(f"group_m {g:>3}: ", end="", flush=True)
        subprocess.run([sys.executable, __file__], env=env, check=False)


if __name__ == "__main__":
    main()
