"""One forward pass of the tiny preset on the CPU backend, with seeded random weights.

Run from the repository root after a build (scripts/build.sh or scripts/test.sh):
    PYTHONPATH=python python3 examples/forward_cpu.py
The expected output is in forward_cpu.out next to this file.
"""
import numpy as np

import minillm

# A preset name, a path to a JSON config, or a dict (see custom_config.py). The workspace is planned
# once for max_batch x max_seq; forward() accepts any (B, N) up to that.
eng = minillm.InferenceEngine("tiny", device="cpu", max_batch=2, max_seq=16, seed=0)
print("device:", eng.device)

ids = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], dtype=np.int32)  # (B=2, N=6)
logits = eng.forward(ids)  # (B, N, vocab) float32: one row of logits per position
print("logits:", logits.shape, logits.dtype)

# The logits at the last position score the next token. (Sampling and generation loops are not in
# this example: forward() is one prefill pass.)
for b in range(ids.shape[0]):
    last = logits[b, -1]
    top = np.argsort(-last, kind="stable")[:3]
    print(f"sequence {b}: top-3 next tokens", ", ".join(f"{t} ({last[t]:.3f})" for t in top))

# Causal: the logits of a prefix do not depend on the tokens after it.
prefix = eng.forward(ids[:, :3])
print("prefix logits equal the first 3 positions:", bool(np.allclose(prefix, logits[:, :3], atol=1e-5)))
