"""Loads a config and a safetensors weight file (HF/Mixtral tensor names) and checks the CPU engine's
logits against the golden logits of the independent float64 PyTorch model in tests/golden/
(made by tests/golden/make_golden.py). The golden file is read here with a few lines of numpy, not
with minillm's own reader.

    PYTHONPATH=python python3 examples/check_golden.py
Expected output: check_golden.out next to this file.
"""
import json
import os
import struct

import numpy as np

import minillm

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    types = {"F32": np.float32, "I32": np.int32}
    return {k: np.frombuffer(data[e["data_offsets"][0]:e["data_offsets"][1]], dtype=types[e["dtype"]]).reshape(e["shape"])
            for k, e in header.items() if k != "__metadata__"}


for name in ("tiny", "tiny_pre_gqa"):
    eng = minillm.InferenceEngine(os.path.join(GOLDEN, name + ".json"),
                                  weights=os.path.join(GOLDEN, name + ".safetensors"),
                                  device="cpu", max_batch=4, max_seq=64)
    golden = read_safetensors(os.path.join(GOLDEN, name + "_golden.safetensors"))
    for case in sorted(k[4:] for k in golden if k.startswith("ids.")):
        ids, ref = golden["ids." + case], golden["logits." + case]
        out = eng.forward(ids)
        err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
        top1 = np.mean(out.argmax(-1) == ref.argmax(-1))
        print(f"{name:13s} {case:10s} ids {str(ids.shape):8s} relative L2 error {'< 1e-6' if err < 1e-6 else f'{err:.1e}'}, "
              f"top-1 agreement {top1:.3f}")
