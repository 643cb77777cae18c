"""Hugging Face model directories (tests/fixtures/hf/, made by tests/fixtures/make_hf_fixtures.py with
transformers' own classes): the CPU engine against transformers' fp32 golden logits, and bad
directories rejected with errors that name the file, field or tensor."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

import minillm

HF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf")
MODELS = ["mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "qwen3_moe_e128"]


def rel_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


@pytest.mark.parametrize("name", MODELS)
def test_cpu_matches_transformers_fp32(name):
    d = os.path.join(HF, name)
    g = np.load(os.path.join(d, "goldens.npz"))
    eng = minillm.InferenceEngine(d, device="cpu", max_batch=int(g["cases"][:, 0].max()),
                                  max_seq=int(g["cases"][:, 1].max()))
    for i, (b, n) in enumerate(g["cases"]):
        ref = g[f"logits_{i}"]
        out = eng.forward(g[f"ids_{i}"])
        assert out.shape == ref.shape == (b, n, eng.config["vocab_size"])
        err = rel_l2(out, ref)
        assert err <= 1e-5, f"{name} case B{b} N{n}: rel L2 {err:.3g}"


def test_config_flags_from_config_json():
    c = minillm.load_config(os.path.join(HF, "qwen2_moe"))
    assert (c["qkv_bias"], c["qk_norm"], c["moe"]["shared_expert_ffn"], c["moe"]["normalize_topk"]) == (True, "none", 128, False)
    c = minillm.load_config(os.path.join(HF, "qwen3_moe"))
    assert (c["qk_norm"], c["head_dim"], c["moe"]["normalize_topk"], c["position"]["theta"]) == ("per_head", 32, True, 1e6)
    c = minillm.load_config(os.path.join(HF, "olmoe"))
    assert (c["qk_norm"], c["moe"]["top_k"], c["norm"]["placement"], c["norm"]["type"]) == ("full", 4, "pre", "rmsnorm")
    c = minillm.load_config(os.path.join(HF, "qwen3_moe_e128"))
    assert (c["moe"]["num_experts"], c["moe"]["top_k"], c["tie_embeddings"]) == (128, 8, True)


# ---- bad directories -------------------------------------------------------------------------------


def copy_model(tmp_path, name):
    d = tmp_path / name
    shutil.copytree(os.path.join(HF, name), d)
    return d


def edit_config(d, **changes):
    p = d / "config.json"
    cfg = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None and k.startswith("-"):
            cfg.pop(k[1:], None)
        else:
            cfg[k] = v
    p.write_text(json.dumps(cfg))


def rewrite_safetensors(path, drop=None, dtype=None):
    """Rewrites a safetensors file, leaving out tensor `drop` or relabelling dtypes {name: dtype}."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out, blobs, off = {}, [], 0
    for k, v in header.items():
        if k == "__metadata__":
            out[k] = v
            continue
        if k == drop:
            continue
        b, e = v["data_offsets"]
        blob = data[b:e]
        out[k] = {"dtype": (dtype or {}).get(k, v["dtype"]), "shape": v["shape"], "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(out).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def expect_error(d, *fragments):
    with pytest.raises(ValueError) as e:
        minillm.InferenceEngine(str(d), device="cpu", max_seq=8)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_missing_config_json(tmp_path):
    d = copy_model(tmp_path, "olmoe")
    (d / "config.json").unlink()
    with pytest.raises(ValueError) as e:
        minillm.load_config(str(d))
    assert "missing config.json" in str(e.value)


def test_unknown_model_type_names_the_supported_ones(tmp_path):
    d = copy_model(tmp_path, "olmoe")
    edit_config(d, model_type="llama")
    expect_error(d, "model_type = 'llama'", "mixtral, olmoe, qwen2_moe, qwen3_moe")


@pytest.mark.parametrize("name,field,value,fragment", [
    ("qwen3_moe", "use_sliding_window", True, "use_sliding_window = true"),
    ("mixtral", "sliding_window", 4096, "sliding_window = 4096"),
    ("qwen3_moe", "rope_parameters", {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}, 'rope_parameters.rope_type = "yarn"'),
    ("olmoe", "rope_scaling", {"type": "linear", "factor": 2.0}, 'rope_scaling.type = "linear"'),
    ("qwen2_moe", "mlp_only_layers", [0], "mlp_only_layers = [0]"),
    ("qwen3_moe", "decoder_sparse_step", 2, "decoder_sparse_step = 2"),
    ("qwen3_moe", "attention_bias", True, "attention_bias = true"),
    ("olmoe", "clip_qkv", 8.0, "clip_qkv = 8.0"),
    ("mixtral", "hidden_act", "gelu", 'hidden_act = "gelu"'),
    ("qwen2_moe", "layer_types", ["full_attention", "sliding_attention"], 'layer_types[1] = "sliding_attention"'),
    ("olmoe", "num_experts_per_tok", 9, "moe.top_k = 9"),
])
def test_unsupported_field_is_an_error_naming_it(tmp_path, name, field, value, fragment):
    d = copy_model(tmp_path, name)
    edit_config(d, **{field: value})
    expect_error(d, "config.json", fragment)


def test_shard_named_in_index_but_missing(tmp_path):
    d = copy_model(tmp_path, "mixtral")
    (d / "model-00002-of-00003.safetensors").unlink()
    expect_error(d, "model-00002-of-00003.safetensors", "named in the index but missing")


def test_tensor_in_index_but_not_in_its_shard(tmp_path):
    d = copy_model(tmp_path, "mixtral")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    rewrite_safetensors(d / index["weight_map"][name], drop=name)
    expect_error(d, index["weight_map"][name], name, "missing from this shard")


def test_missing_and_unexpected_tensors(tmp_path):
    d = copy_model(tmp_path, "olmoe")
    rewrite_safetensors(d / "model.safetensors", drop="model.layers.0.self_attn.q_norm.weight")
    expect_error(d, "missing tensor 'model.layers.0.self_attn.q_norm.weight'")
    d = copy_model(tmp_path, "qwen3_moe")
    edit_config(d, num_hidden_layers=1)
    expect_error(d, "model.safetensors", "unexpected tensor 'model.layers.1.")


def test_dtype_the_config_does_not_allow(tmp_path):
    d = copy_model(tmp_path, "olmoe")  # bfloat16
    rewrite_safetensors(d / "model.safetensors", dtype={"model.layers.1.mlp.gate.weight": "F16"})
    expect_error(d, "model.layers.1.mlp.gate.weight", "dtype f16", "expected bf16")


def test_truncated_shard(tmp_path):
    d = copy_model(tmp_path, "mixtral")
    p = d / "model-00003-of-00003.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    expect_error(d, "model-00003-of-00003.safetensors")


def test_shape_mismatch_names_tensor(tmp_path):
    d = copy_model(tmp_path, "qwen2_moe")
    edit_config(d, shared_expert_intermediate_size=64)
    expect_error(d, "model.safetensors", "model.layers.0.mlp.shared_expert.down_proj.weight", "has shape [64, 128], expected [64, 64]")


def test_non_finite_weight_names_the_tensor(tmp_path):
    d = copy_model(tmp_path, "olmoe")  # bfloat16
    p = d / "model.safetensors"
    raw = bytearray(p.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    name = "model.layers.1.mlp.experts.3.down_proj.weight"
    b = json.loads(raw[8:8 + n])[name]["data_offsets"][0]
    raw[8 + n + b + 10:8 + n + b + 12] = b"\xc0\x7f"  # element 5: a bf16 NaN
    p.write_bytes(bytes(raw))
    expect_error(d, "model.safetensors", name, "NaN or Inf at element 5")
