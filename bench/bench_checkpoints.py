#!/usr/bin/env python3
"""Benchmark of Hugging Face model directories: minillm against transformers (sdpa), same process,
same weights, same token ids.

Models (random weights, built by transformers' own classes on the GPU in bf16, saved with
save_pretrained as sharded safetensors, then loaded by minillm from that directory):
  olmoe-1b-7b          OLMoE-1B-7B-0924's shape: hidden 2048, 16 layers, 16 heads, 64 experts top-8,
                       ffn 1024, vocab 50304, qk-norm over the projection (6.9 B parameters, 13.8 GB)
  qwen3-30b-a3b-12l    Qwen3-30B-A3B's shape with 12 of its 48 layers: hidden 2048, 32 heads (kv 4,
                       head_dim 128), 128 experts top-8, ffn 768, vocab 151936, per-head qk-norm
  qwen1.5-moe-a2.7b-8l Qwen1.5-MoE-A2.7B's shape with 8 of its 24 layers: hidden 2048, 16 heads, q/k/v
                       bias, 60 experts top-4, ffn 1408, a gated shared expert of 5632, vocab 151936

Cases: prefill at batch 1 and 8, seq 2048 (--batches, --seqlen). Keys: minillm (InferenceEngine,
CUDA graphs, bf16 logits), hf_transformers (model(ids, use_cache=False).logits under torch.no_grad,
attn sdpa, transformers' default experts implementation: both recorded under "hf_implementation").
Times: CUDA events around each forward, median of --iters after --warmup. Load: the wall time of
InferenceEngine(dir) (validation, shard by shard upload, engine set-up) with the files in the page
cache (they were just written), and the checkpoint's bytes over it. A sanity check, recorded, never
asserted: at the smallest batch, minillm's bf16 logits against transformers' bf16 logits
("logits_vs_hf_transformers_bf16": relative L2, top-1 agreement; two bf16 forwards of a random MoE
disagree on some routes, so these are not zero: tests/python/test_checkpoints_gpu.py judges accuracy).

The JSON is rewritten after every measurement (transformers' times are in before minillm loads), and a
failure (out of memory, an error in either implementation) is recorded under "errors" without losing
the other results.

Run: PYTHONPATH=python python3 bench/bench_checkpoints.py [--models olmoe-1b-7b,qwen3-30b-a3b-12l]
     [--batches 1,8] [--seqlen 2048] [--workdir /tmp] [--tiny (a small config of each, for a dry run)]
Writes $OUT/checkpoints.json when $OUT is set, else bench/results/<gpu>/checkpoints.json.
"""
import argparse
import gc
import os
import shutil
import statistics
import sys
import time
import traceback

import numpy as np
import torch

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = {
    "olmoe-1b-7b": ("OlmoeConfig", "OlmoeForCausalLM",
                    dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
                         num_key_value_heads=16, intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
                         norm_topk_prob=False, tie_word_embeddings=False, max_position_embeddings=4096)),
    "qwen3-30b-a3b-12l": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                          dict(vocab_size=151936, hidden_size=2048, num_hidden_layers=12, num_attention_heads=32,
                               num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, num_experts=128,
                               num_experts_per_tok=8, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                               rms_norm_eps=1e-6, norm_topk_prob=True, tie_word_embeddings=False,
                               max_position_embeddings=40960)),
    "qwen1.5-moe-a2.7b-8l": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                             dict(vocab_size=151936, hidden_size=2048, num_hidden_layers=8, num_attention_heads=16,
                                  num_key_value_heads=16, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                                  num_experts=60, num_experts_per_tok=4, intermediate_size=5632,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                                  norm_topk_prob=False, tie_word_embeddings=False, max_position_embeddings=8192,
                                  use_sliding_window=False, qkv_bias=True)),
}
TINY = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)  # head_dim: hidden / heads = 32 (set for Qwen3 only: OlmoeConfig has none)


def time_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e))
    return statistics.median(ms)


def build_hf(name, tiny):
    import transformers

    cfg_cls, model_cls, kw = MODELS[name]
    kw = dict(kw)
    if tiny:
        kw.update(TINY)
        if "head_dim" in kw:
            kw["head_dim"] = TINY["hidden_size"] // TINY["num_attention_heads"]
        for k in ("intermediate_size", "moe_intermediate_size"):
            if k in kw:
                kw[k] = 64
    cfg = getattr(transformers, cfg_cls)(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_device("cuda")
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = getattr(transformers, model_cls)(cfg).eval()
    finally:
        torch.set_default_device(None)
        torch.set_default_dtype(torch.float32)
    return model, cfg


def logits_agreement(x, ref):
    """Relative L2 and top-1 agreement of logits x against ref (same shape, any float dtype, on the GPU)."""
    x, ref = x.float(), ref.float()
    rel = (torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref)).item()
    return {"rel_l2": rel, "top1_agreement": (x.argmax(-1) == ref.argmax(-1)).float().mean().item()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the checkpoints are written (default: a temp dir)")
    ap.add_argument("--tiny", action="store_true", help="small configs of the same architectures (dry run)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = torch.cuda.get_device_name()
    path = common.result_path(a.out, "checkpoints.json", device)
    doc = {**common.metadata("checkpoints", device), "torch": torch.__version__, "results": [], "loads": [],
           "errors": []}
    try:
        import transformers

        doc["transformers"] = transformers.__version__
    except ImportError as e:
        doc["errors"].append({"stage": "import transformers", "error": str(e)})
    save = lambda: common.write_json(path, doc)  # noqa: E731
    save()
    batches = [int(b) for b in a.batches.split(",")]
    N = a.seqlen
    for name in a.models.split(","):
        work = os.path.join(a.workdir or "/tmp", f"minillm_ckpt_{name}")
        model = eng = hf_ref = None
        entries = {}  # B -> its entry in doc["results"], filled by transformers, then minillm
        try:
            model, cfg = build_hf(name, a.tiny)
            nparams = sum(p.numel() for p in model.parameters())
            impl = {k: str(getattr(model.config, f"_{k}_implementation", None)) for k in ("attn", "experts")}
            shutil.rmtree(work, ignore_errors=True)
            t0 = time.perf_counter()
            model.save_pretrained(work, max_shard_size="4GB")
            save_s = time.perf_counter() - t0
            files = sorted(f for f in os.listdir(work) if f.endswith(".safetensors"))
            nbytes = sum(os.path.getsize(os.path.join(work, f)) for f in files)
            load = {"model": name, "parameters": nparams, "shards": len(files), "bytes": nbytes, "save_s": save_s}
            doc["loads"].append(load)
            save()
            print(f"{name}: {nparams / 1e9:.2f} B parameters, {len(files)} shards, {nbytes / 1e9:.2f} GB, "
                  f"saved in {save_s:.1f} s; transformers {impl}", flush=True)
            rng = np.random.default_rng(0)
            ids = {B: rng.integers(0, cfg.vocab_size, size=(B, N)).astype(np.int32) for B in batches}
            b_ref = min(batches)
            for B in batches:  # transformers first, then it leaves the GPU to minillm
                entry = {"case": {"model": name, "batch": B, "seqlen": N}, "ms": {}, "hf_implementation": impl}
                entries[B] = entry
                doc["results"].append(entry)
                try:
                    x = torch.as_tensor(ids[B], dtype=torch.long, device="cuda")

                    def hf_forward():
                        with torch.no_grad():
                            return model(x, use_cache=False).logits

                    entry["ms"]["hf_transformers"] = time_ms(hf_forward, a.iters, a.warmup)
                    print(f"  hf_transformers B{B} N{N}: {entry['ms']['hf_transformers']:.2f} ms", flush=True)
                    if B == b_ref:
                        hf_ref = hf_forward().cpu()  # bf16, host: the GPU goes to minillm
                except Exception as e:  # noqa: BLE001
                    doc["errors"].append({"model": name, "impl": "hf_transformers", "batch": B, "error": repr(e)[:500]})
                save()
                torch.cuda.empty_cache()
            del model
            model = None
            gc.collect()
            torch.cuda.empty_cache()
            t0 = time.perf_counter()
            eng = minillm.InferenceEngine(work, device="cuda", max_batch=max(batches), max_seq=N, logits_dtype="bf16")
            load_s = time.perf_counter() - t0
            load.update(load_s=load_s, gb_per_s=nbytes / 1e9 / load_s)
            print(f"  minillm load: {load_s:.2f} s, {nbytes / 1e9 / load_s:.2f} GB/s", flush=True)
            save()
            for B in batches:
                entry = entries[B]
                try:
                    x = torch.as_tensor(ids[B], device="cuda")
                    entry["ms"]["minillm"] = time_ms(lambda: eng.forward(x, copy=False), a.iters, a.warmup)
                    if B == b_ref and hf_ref is not None:
                        entry["logits_vs_hf_transformers_bf16"] = logits_agreement(eng.forward(x, copy=False),
                                                                                   hf_ref.to("cuda"))
                        hf_ref = None
                except Exception as e:  # noqa: BLE001
                    doc["errors"].append({"model": name, "impl": "minillm", "batch": B, "error": repr(e)[:500]})
                if len(entry["ms"]) == 2:
                    entry["speedup_vs_hf_transformers"] = entry["ms"]["hf_transformers"] / entry["ms"]["minillm"]
                print(f"  {entry}", flush=True)
                save()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            doc["errors"].append({"model": name, "stage": "build/save/load", "error": repr(e)[:500]})
            save()
        finally:
            del model, eng, hf_ref
            gc.collect()
            torch.cuda.empty_cache()
            shutil.rmtree(work, ignore_errors=True)
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
