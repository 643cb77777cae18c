"""Runs each main kernel once on its headline shape, for Nsight Compute (scripts/gpu_check.sh, step ncu):

    ncu --clock-control none -k regex:'flash_fwd|grouped_gemm|decode_gemm' --section SpeedOfLight \
        --section Occupancy --section ComputeWorkloadAnalysis --csv --page details \
        python3 bench/profile_kernels.py

  attention  B16 H16 N2048 D64 bf16, full        (the seed's headline)
  moe        T=32768 hidden 4096 E32 top-2 ffn 14336 (prefill headline: the grouped GEMMs)
  moe decode T=64 hidden 4096 E8 top-2 ffn 14336  (the decode GEMV path)
"""
import torch

import minillm


def moe_layer(T, H, E, k, F):
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale):
        return (torch.rand(*shape, device="cuda", generator=g, dtype=torch.float32) * 2 - 1).mul_(scale).to(torch.bfloat16)

    def expert(rows, cols, scale):  # the layer's load layout: rows padded to weight_row_stride(cols)
        ld = minillm.MoELayer.weight_row_stride(cols)
        return rnd(E, rows, ld, scale=scale)[..., :cols]

    moe = minillm.MoELayer(H, E, k, F)
    w = (rnd(E, H, scale=H ** -0.5), expert(F, H, H ** -0.5), expert(F, H, H ** -0.5), expert(H, F, F ** -0.5))
    moe.set_weights(*w)
    x = rnd(T, H, scale=1.0)
    return moe, w, x


def main():
    torch.manual_seed(0)
    q, k, v = (torch.randn(16, 2048, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    minillm.flash_attention(q, k, v)
    torch.cuda.synchronize()
    del q, k, v
    for shape in ((32768, 4096, 32, 2, 14336), (64, 4096, 8, 2, 14336)):
        moe, w, x = moe_layer(*shape)
        moe(x)
        torch.cuda.synchronize()
        del moe, w, x
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
