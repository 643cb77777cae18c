"""Hugging Face model directories on the GPU against transformers, in the same process.

The bf16 criterion: transformers' fp32 forward is the reference; minillm's bf16 logits and
transformers' own bf16 logits are both compared with it (relative L2 over all positions, top-1
agreement), and minillm must be about as close as transformers' bf16 is (random MoE models route
chaotically in bf16, so bf16 is judged against fp32, never against another bf16).

  - every tiny fixture of tests/fixtures/hf/ (all model_types; fp32, bf16 and fp16 checkpoints);
  - a full-size random OLMoE-1B-7B-shaped model (6.9 B parameters) built by transformers on the
    GPU, saved with save_pretrained (sharded), loaded by minillm: B2 N512. Its numbers are also
    written to $OUT/checkpoints_accuracy.json when OUT is set.
"""
import gc
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

import minillm

pytestmark = pytest.mark.gpu

HF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf")
MODELS = ["mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "qwen3_moe_e128"]

# OLMoE-1B-7B-0924's config.json values (TEST_MATERIAL.md).
OLMOE_1B_7B = dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16, intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
                   norm_topk_prob=False, tie_word_embeddings=False, max_position_embeddings=4096)


def compare(x, ref):
    """(relative L2, top-1 agreement) of logits x against ref, both [..., V] float32 numpy."""
    x, ref = x.reshape(-1, x.shape[-1]), ref.reshape(-1, ref.shape[-1])
    rel = float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
    top1 = float((x.argmax(-1) == ref.argmax(-1)).mean())
    return rel, top1


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        x = torch.as_tensor(ids, dtype=torch.long, device="cuda")
        return model(x, use_cache=False).logits.float().cpu().numpy()


@pytest.mark.parametrize("name", MODELS)
def test_tiny_models_within_the_bf16_criterion(name):
    import torch
    from transformers import AutoModelForCausalLM

    d = os.path.join(HF, name)
    g = np.load(os.path.join(d, "goldens.npz"))
    ref_model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).cuda().eval()
    bf_model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
    eng = minillm.InferenceEngine(d, device="cuda", max_batch=int(g["cases"][:, 0].max()),
                                  max_seq=int(g["cases"][:, 1].max()))
    for i, (b, n) in enumerate(g["cases"]):
        ids = g[f"ids_{i}"]
        ref = hf_logits(ref_model, ids)
        assert compare(ref, g[f"logits_{i}"])[0] < 1e-4  # transformers fp32 on the GPU = the CPU goldens
        ours = eng.forward(ids)
        rel_ours, top1_ours = compare(ours, ref)
        rel_hf, top1_hf = compare(hf_logits(bf_model, ids), ref)
        msg = f"{name} B{b} N{n}: minillm bf16 rel L2 {rel_ours:.4f} top-1 {top1_ours:.3f}; " \
              f"transformers bf16 {rel_hf:.4f} / {top1_hf:.3f}"
        print(msg)
        assert rel_ours <= max(2.0 * rel_hf, 0.03), msg
        assert top1_ours >= min(top1_hf, 0.9) - 0.1, msg


def test_olmoe_1b_7b_shape_against_transformers_bf16_and_fp32():
    import torch
    from transformers import OlmoeConfig, OlmoeForCausalLM

    # Peak: the bf16 model (13.8 GB) while model.float() makes its fp32 copy (27.7 GB), parameter by
    # parameter. Memory that earlier tests left in torch's cache counts as used in mem_get_info: free it.
    gc.collect()
    torch.cuda.empty_cache()
    if torch.cuda.mem_get_info()[0] < 45e9:
        pytest.skip(f"needs ~45 GB of free GPU memory, {torch.cuda.mem_get_info()[0] / 1e9:.1f} GB free")
    work = tempfile.mkdtemp(prefix="olmoe_1b_7b_")
    try:
        torch.manual_seed(0)
        cfg = OlmoeConfig(**OLMOE_1B_7B)
        torch.set_default_device("cuda")
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = OlmoeForCausalLM(cfg).eval()
        finally:
            torch.set_default_device(None)
            torch.set_default_dtype(torch.float32)
        nparams = sum(p.numel() for p in model.parameters())
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 512)).astype(np.int32)
        hf_bf16 = hf_logits(model, ids)
        t0 = time.perf_counter()
        model.save_pretrained(work, max_shard_size="4GB")
        save_s = time.perf_counter() - t0
        model.float()
        ref = hf_logits(model, ids)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        eng = minillm.InferenceEngine(work, device="cuda", max_batch=2, max_seq=512)
        load_s = time.perf_counter() - t0
        ours = eng.forward(ids)
        del eng
        rel_ours, top1_ours = compare(ours, ref)
        rel_hf, top1_hf = compare(hf_bf16, ref)
        files = [f for f in os.listdir(work) if f.endswith(".safetensors")]
        nbytes = sum(os.path.getsize(os.path.join(work, f)) for f in files)
        doc = {"model": "olmoe-1b-7b-shape", "parameters": nparams, "batch": 2, "seqlen": 512,
               "vs_transformers_fp32": {"minillm_bf16": {"rel_l2": rel_ours, "top1": top1_ours},
                                        "transformers_bf16": {"rel_l2": rel_hf, "top1": top1_hf}},
               "checkpoint": {"shards": len(files), "bytes": nbytes, "save_s": save_s, "minillm_load_s": load_s,
                              "minillm_load_gb_per_s": nbytes / 1e9 / load_s}}
        print(json.dumps(doc, indent=1))
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "checkpoints_accuracy.json"), "w") as f:
                json.dump(doc, f, indent=1)
        assert nparams > 6.8e9 and len(files) >= 3
        assert rel_ours <= 1.5 * rel_hf + 0.02, doc
        assert top1_ours >= top1_hf - 0.1, doc
    finally:
        shutil.rmtree(work, ignore_errors=True)
