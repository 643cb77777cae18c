#!/usr/bin/env python3
"""Where a decode step's time goes: per-op milliseconds (InferenceEngine.profile, CUDA events around
each op) of a forward of B sequences x 1 token, next to the same forward replayed from a CUDA graph
(host wall time) and to minillm.LLM's batch-1 step time (host included, context 128 -> 328).
Models: the OLMoE-1B-7B shape of bench_generate.py and the medium preset, seeded random weights.
Writes decode_profile.json (bench/results/<gpu>/, or --out).

Run: PYTHONPATH=python python3 bench/profile_decode.py [--batches 1,8,64] [--models olmoe,medium]"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_generate import OLMOE  # noqa: E402


def forward_case(name, cfg, B):
    eng = minillm.InferenceEngine(cfg, device="cuda", max_batch=B, max_seq=1, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(B, 1)).astype(np.int32)
    for _ in range(3):
        eng.forward(ids)
    t = []
    for _ in range(20):
        t0 = time.perf_counter()
        eng.forward(ids)
        t.append((time.perf_counter() - t0) * 1e3)
    prof = [eng.profile(ids) for _ in range(5)]
    ops = {k: statistics.median(p[k] for p in prof) for k in prof[0]}
    total = sum(ops.values())
    print(f"{name} B{B} x 1 token: forward {statistics.median(t):.3f} ms (host wall, graph), "
          f"profiled ops sum {total:.3f} ms", flush=True)
    for k, v in sorted(ops.items(), key=lambda kv: -kv[1]):
        print(f"    {k:24s} {v:8.3f} ms  {100 * v / total:5.1f}%")
    return {"model": name, "batch": B, "forward_ms": statistics.median(t), "ops_ms": ops, "ops_sum_ms": total}


def llm_step(name, cfg):
    llm = minillm.LLM(cfg, device="cuda", max_model_len=512, gpu_memory_fraction=0.5, max_num_seqs=8)
    p = minillm.SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    llm.add_request(list(range(1, 129)), p)
    steps = []
    while llm.has_unfinished():
        t0 = time.perf_counter()
        llm.step()
        steps.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(steps[20:])
    print(f"{name} LLM batch-1 step: median {ms:.3f} ms over {len(steps) - 20} steps", flush=True)
    return {"model": name, "batch": 1, "llm_step_ms": ms, "steps": len(steps) - 20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--models", default="olmoe,medium")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.cuda.get_device_name()
    path = common.result_path(args.out, "decode_profile.json", device)
    doc = dict(common.metadata("decode_profile", device), results=[])
    for name in args.models.split(","):
        cfg = OLMOE if name == "olmoe" else minillm.load_config(name)
        for B in map(int, args.batches.split(",")):
            doc["results"].append(forward_case(name, cfg, B))
            common.write_json(path, doc)
        doc["results"].append(llm_step(name, cfg))
        common.write_json(path, doc)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
