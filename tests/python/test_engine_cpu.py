"""Python API on the CPU backend: config loading and validation, the engine vs the golden logits
of the independent PyTorch implementation, and bad input."""
import json
import os
import struct

import numpy as np
import pytest

import minillm

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden")


def read_safetensors(path):
    """A minimal independent safetensors reader (numpy), so the test does not trust our own."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    types = {"F32": np.float32, "I32": np.int32}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype=types[e["dtype"]]).reshape(e["shape"])
    return out


def test_presets_and_config_dict():
    assert minillm.preset_names() == ["tiny", "small", "medium", "large"]
    cfg = minillm.load_config("tiny")
    assert cfg["hidden_size"] == 64 and cfg["moe"]["top_k"] == 2
    cfg["num_layers"] = 1
    assert minillm.load_config(cfg)["num_layers"] == 1
    assert abs(minillm.num_parameters("medium") / 1e9 - 2.58) < 0.01


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"vocab_sise": 3}, "unknown key 'vocab_sise'"),
        ({"num_kv_heads": 3}, "num_kv_heads = 3"),
        ({"head_dim": 15}, "head_dim = 15"),
        ({"moe": {"num_experts": 4, "top_k": 9, "ffn_size": 8}}, "moe.top_k = 9"),
    ],
)
def test_bad_config_raises(change, fragment):
    cfg = minillm.load_config("tiny")
    cfg.update(change)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        minillm.load_config(cfg)


@pytest.mark.parametrize("name", ["tiny", "tiny_pre_gqa"])
def test_engine_matches_golden(name):
    eng = minillm.InferenceEngine(
        os.path.join(GOLDEN, name + ".json"),
        weights=os.path.join(GOLDEN, name + ".safetensors"),
        device="cpu",
        max_batch=4,
        max_seq=64,
    )
    assert eng.device == "cpu"
    golden = read_safetensors(os.path.join(GOLDEN, name + "_golden.safetensors"))
    cases = [k[4:] for k in golden if k.startswith("ids.")]
    assert len(cases) >= 4
    for case in cases:
        ids = golden["ids." + case]
        ref = golden["logits." + case]
        out = eng.forward(ids.astype(np.int64))  # int64 ids are accepted too
        assert out.shape == ref.shape and out.dtype == np.float32
        err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
        assert err <= 1e-4, (name, case, err)


def test_engine_bad_input():
    eng = minillm.InferenceEngine("tiny", device="cpu", max_batch=2, max_seq=16, seed=1)
    with pytest.raises(ValueError, match=r"token id 256 at position \[0, 2\] is out of range"):
        eng.forward(np.array([[1, 2, 256]], dtype=np.int32))
    with pytest.raises(ValueError, match="token id -3"):
        eng.forward(np.array([[-3]], dtype=np.int64))
    with pytest.raises(ValueError, match="batch = 3"):
        eng.forward(np.zeros((3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="seq_len = 17 exceeds"):
        eng.forward(np.zeros((1, 17), dtype=np.int32))
    with pytest.raises(ValueError, match="int32 or int64"):
        eng.forward(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        eng.forward(np.zeros((4,), dtype=np.int32))
    out = eng.forward(np.arange(8, dtype=np.int32).reshape(2, 4)[:, ::2])  # strided view
    assert out.shape == (2, 2, 256) and np.isfinite(out).all()
