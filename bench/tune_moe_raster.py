"""Sweeps the grouped GEMM's raster group (MINILLM_MOE_GROUP_M: m-blocks per group of the tile
order) on the MoE headline shapes; one subprocess per value, since the value is read once. Prints
the gate/up and the down GEMM kernel's time per layer call (torch.profiler).

    PYTHONPATH=python python3 bench/tune_moe_raster.py [16 8 4 ...]
"""
import os
import subprocess
import sys

# The seed's headline, OLMoE, a grid case, and the MoE layers of the small / medium / large engine presets
# at batch 8 x 2048 tokens.
SHAPES = [(32768, 4096, 32, 2, 14336), (32768, 2048, 64, 8, 1024), (32768, 2048, 16, 4, 7168),
          (16384, 768, 8, 2, 3072), (16384, 1024, 8, 2, 4096), (16384, 4096, 8, 2, 3584)]


def child():
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, os.path.dirname(__file__))
    from profile_kernels import moe_layer

    out = []
    for T, H, E, k, F in SHAPES:
        moe, w, x = moe_layer(T, H, E, k, F)
        for _ in range(3):
            moe(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                moe(x)
            torch.cuda.synchronize()
        gemm = {}  # epilogue id -> ms per call: 0 swiglu (gate/up), 2 none (down)
        for ev in prof.key_averages():
            if "grouped_gemm_kernel" in ev.key:
                epi = "gate_up" if "Epilogue)0" in ev.key else "down"
                gemm[epi] = gemm.get(epi, 0.0) + ev.device_time_total / 10 / 1000
        out.append(f"T{T} H{H} E{E} k{k} F{F}: gate/up {gemm.get('gate_up', 0):6.3f} down {gemm.get('down', 0):6.3f} ms")
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
