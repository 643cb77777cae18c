"""Runs our Hopper attention kernel and SDPA's cuDNN kernel twice each on one shape, for Nsight Compute
to compare them launch for launch (docs/HOPPER_ATTENTION.md, "The softmax's dependency chains"):

    ncu -k regex:'flash|cudnn' --launch-skip 2 --launch-count 2 --section WarpStateStats \
        --section SourceCounters -o attn python3 bench/profile_attention.py [head_dim]
    ncu -i attn.ncu-rep --page source --print-source sass --csv > attn_sass.csv

  B16 H16 N2048 bf16, full; head_dim 128 (default) or 64. The second launch of each is the one profiled.
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import minillm


def main():
    d = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(16, 2048, 16, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for _ in range(2):
        minillm.flash_attention(q, k, v)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
