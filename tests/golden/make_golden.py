"""Golden logits from an independent plain-PyTorch (float64) implementation of the architecture.

For each config in tests/golden/*.json it reads the weights from the matching .safetensors file
(written by `minillm init --model <config> --seed 0 --out <file>`), runs fixed input ids through the
model in float64 on the CPU and writes <name>_golden.safetensors with I32 `ids.<case>` and F32
`logits.<case>` tensors. The C++ test tests/cpp/test_golden.cpp compares the CPU engine with them.

Regenerate (needs torch and safetensors; e.g. on the GPU machine):
    python3 tests/golden/make_golden.py
"""
import glob
import json
import math
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [(1, 1), (1, 7), (2, 16), (3, 33)]  # (batch, seq): length 1, odd lengths, batches


def norm(x, w, b, kind, eps):
    if kind == "layernorm":
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps) * w
        return y + b if b is not None else y
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):  # x: (B, N, heads, D), HF rotate_half convention
    B, N, Hh, D = x.shape
    half = D // 2
    inv = theta ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / D)
    ang = torch.arange(N, dtype=torch.float64)[:, None] * inv[None, :]  # (N, D/2)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :]
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def forward(cfg, W, ids):
    H, nh, nkv = cfg["hidden_size"], cfg["num_heads"], cfg["num_kv_heads"]
    D = cfg["head_dim"]
    ncfg, moe = cfg["norm"], cfg["moe"]
    kind, eps, pre = ncfg["type"], ncfg["eps"], ncfg["placement"] == "pre"
    B, N = ids.shape

    def nrm(x, prefix):
        return norm(x, W[prefix + ".weight"], W.get(prefix + ".bias"), kind, eps)

    x = W["model.embed_tokens.weight"][ids]  # (B, N, H)
    for l in range(cfg["num_layers"]):
        p = f"model.layers.{l}."
        h = nrm(x, p + "input_layernorm") if pre else x
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(B, N, nh, D)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(B, N, nkv, D)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(B, N, nkv, D)
        if cfg["position"]["type"] == "rope":
            q, k = rope(q, cfg["position"]["theta"]), rope(k, cfg["position"]["theta"])
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
        if cfg["causal"]:
            mask = torch.ones(N, N, dtype=torch.bool).tril()
            s = s.masked_fill(~mask, float("-inf"))
        a = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v).reshape(B, N, nh * D)
        o = a @ W[p + "self_attn.o_proj.weight"].T
        if pre:
            x = x + o
            h = nrm(x, p + "post_attention_layernorm")
        else:
            x = nrm(x + o, p + "input_layernorm")
            h = x
        # MoE: softmax -> top-k -> optional renormalisation -> weighted sum of experts.
        t = h.reshape(B * N, H)
        probs = torch.softmax(t @ W[p + "block_sparse_moe.gate.weight"].T, -1)
        topw, topi = torch.topk(probs, moe["top_k"], dim=-1)
        if moe["normalize_topk"]:
            topw = topw / topw.sum(-1, keepdim=True)
        y = torch.zeros_like(t)
        for e in range(moe["num_experts"]):
            pe = p + f"block_sparse_moe.experts.{e}."
            for j in range(moe["top_k"]):
                rows = (topi[:, j] == e).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                xe = t[rows]
                g = xe @ W[pe + "w1.weight"].T
                if moe["activation"] == "swiglu":
                    act = torch.nn.functional.silu(g) * (xe @ W[pe + "w3.weight"].T)
                else:
                    act = 0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0)))
                y[rows] += topw[rows, j : j + 1] * (act @ W[pe + "w2.weight"].T)
        y = y.view(B, N, H)
        x = x + y if pre else nrm(x + y, p + "post_attention_layernorm")
    if pre:
        x = nrm(x, "model.norm")
    head = W["model.embed_tokens.weight"] if cfg["tie_embeddings"] else W["lm_head.weight"]
    return x @ head.T


def main():
    for cfg_path in sorted(glob.glob(os.path.join(HERE, "*.json"))):
        name = os.path.splitext(os.path.basename(cfg_path))[0]
        cfg = json.load(open(cfg_path))
        W = {k: v.to(torch.float64) for k, v in load_file(os.path.join(HERE, name + ".safetensors")).items()}
        rng = np.random.default_rng(1234)
        out = {}
        for B, N in CASES:
            ids = torch.from_numpy(rng.integers(0, cfg["vocab_size"], size=(B, N)).astype(np.int64))
            with torch.no_grad():
                logits = forward(cfg, W, ids)
            out[f"ids.b{B}n{N}"] = ids.to(torch.int32).contiguous()
            out[f"logits.b{B}n{N}"] = logits.to(torch.float32).contiguous()
            print(f"{name} B={B} N={N}: logits norm {logits.norm():.6f}")
        save_file(out, os.path.join(HERE, name + "_golden.safetensors"))


if __name__ == "__main__":
    main()
