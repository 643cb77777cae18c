"""A tiny random Mixtral-layout model directory with a real tokenizer, for the server tests.

tokenizer.json / tokenizer_config.json (ChatML template) come from tests/fixtures/chat_tokenizer (512
ids); config.json and model.safetensors (fp32, Hugging Face tensor names) are written here from a
seeded numpy generator, with vocab_size = the tokenizer's 512 so that every sampled id decodes. The
output embedding is scaled up so that greedy choices are not near-ties."""
import json
import os
import shutil

import numpy as np

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "chat_tokenizer")

CONFIG = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def write_safetensors(path, tensors):
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def random_weights(c, seed=0):
    rng = np.random.default_rng(seed)
    H, V, F, E = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_local_experts"]
    D, Hq, Hkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]

    def w(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, H, std=1.0)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(H, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(H, np.float32)
        t[p + "self_attn.q_proj.weight"] = w(Hq * D, H, std=0.2)
        t[p + "self_attn.k_proj.weight"] = w(Hkv * D, H, std=0.2)
        t[p + "self_attn.v_proj.weight"] = w(Hkv * D, H, std=0.2)
        t[p + "self_attn.o_proj.weight"] = w(H, Hq * D, std=0.2)
        t[p + "block_sparse_moe.gate.weight"] = w(E, H, std=0.5)
        for e in range(E):
            q = f"{p}block_sparse_moe.experts.{e}."
            t[q + "w1.weight"] = w(F, H, std=0.2)
            t[q + "w3.weight"] = w(F, H, std=0.2)
            t[q + "w2.weight"] = w(H, F, std=0.2)
    t["model.norm.weight"] = np.ones(H, np.float32)
    t["lm_head.weight"] = w(V, H, std=1.0)
    return t


def make_chat_model(out_dir, seed=0):
    """Writes the model into out_dir (created); returns out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURE, name), out_dir)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), random_weights(CONFIG, seed))
    return out_dir
