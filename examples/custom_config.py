"""A model from a config dict instead of a preset: pre-RMSNorm, grouped-query attention and a
smaller MoE, the architecture family of Mixtral/OLMoE. The same keys go into a JSON file for the
CLI (`minillm info --model my.json`); docs/CONFIG.md lists them all.

    PYTHONPATH=python python3 examples/custom_config.py
Expected output: custom_config.out next to this file.
"""
import json

import numpy as np

import minillm

for name in minillm.preset_names():
    print(f"preset {name:6s}: {minillm.num_parameters(name) / 1e6:10.2f} M parameters")

cfg = minillm.load_config("tiny")  # the validated config, every key filled in
cfg.update(num_layers=2, num_heads=4, num_kv_heads=2)  # GQA: 2 query heads share each K/V head
cfg["norm"].update(type="rmsnorm", placement="pre")
cfg["moe"].update(num_experts=8, top_k=2, ffn_size=96)
cfg = minillm.load_config(cfg)  # validates; a bad value raises ValueError naming the key
print("config:", {k: cfg[k] for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")})
print("  norm:", cfg["norm"]["type"], cfg["norm"]["placement"], "| moe:",
      {k: cfg["moe"][k] for k in ("num_experts", "top_k", "ffn_size", "activation")})
print(f"parameters: {minillm.num_parameters(json.dumps(cfg))}")  # a preset name, a path or JSON text

try:
    minillm.load_config(dict(cfg, num_kv_heads=3))
except ValueError as e:  # e.g. "config: num_kv_heads = 3 does not divide num_heads = 4"
    print("rejected with a ValueError that names the key:", "num_kv_heads = 3" in str(e))

eng = minillm.InferenceEngine(cfg, device="cpu", max_batch=1, max_seq=8, seed=7)
logits = eng.forward(np.array([[5, 17, 42, 99]], dtype=np.int32))
print("logits:", logits.shape, f"mean {logits.mean():.4f}, std {logits.std():.4f}")
