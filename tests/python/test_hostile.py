"""Hostile input through the Python API (issue 19): every case ends in a ValueError naming the
field, never a crash of the interpreter, a hang, or silently wrong numbers. Also the CLI's --out
logits checked against the Python engine, and forward() on lists of lists (issue 20)."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

import minillm

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TINY = {"vocab_size": 256, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_seq_len": 512,
        "moe": {"num_experts": 4, "top_k": 2, "ffn_size": 128}}


def cli():
    for d in ("build-cpu", "build"):
        p = os.path.join(ROOT, d, "minillm")
        if os.path.exists(p):
            return p
    pytest.skip("the minillm CLI is not built")


def test_heads_that_wrapped_q_dim_raise_instead_of_killing_the_interpreter():
    cfg = dict(TINY, num_heads=16777217, num_kv_heads=16777217, head_dim=256)
    with pytest.raises(ValueError, match="num_heads = 16777217 exceeds the supported maximum 1024"):
        minillm.InferenceEngine(cfg, device="cpu")
    with pytest.raises(ValueError, match="num_heads = 16777217"):
        minillm.InferenceEngine(dict(cfg, position={"type": "none"}), device="cpu")


def test_deep_nesting_and_huge_numbers_raise_short_value_errors():
    deep = "[" * 100000 + "]" * 100000
    text = json.dumps(TINY)[:-1] + ', "name": ' + deep + "}"
    with pytest.raises(ValueError, match="nested deeper than 64"):
        minillm.config_json(text)
    for value in ("1e400", "9" * 100000):
        with pytest.raises(ValueError, match="malformed JSON") as e:
            minillm.config_json(json.dumps(TINY).replace("256", value, 1))
        assert len(str(e.value)) < 600


def test_values_are_not_silently_changed(tmp_path):
    with pytest.raises(ValueError, match="vocab_size = 18446744073709551615 is out of range"):
        minillm.config_json(json.dumps(TINY).replace("256", "18446744073709551615", 1))
    with pytest.raises(ValueError, match=r"norm.eps = 1e-50 .* become 0"):
        minillm.load_config(dict(TINY, norm={"eps": 1e-50}))
    with pytest.raises(ValueError, match=r"position.theta = 1e\+300 .* become inf"):
        minillm.load_config(dict(TINY, position={"theta": 1e300}))
    with pytest.raises(ValueError, match="duplicate key 'vocab_size'"):
        minillm.config_json('{"vocab_size": 1, ' + json.dumps(TINY)[1:])
    with pytest.raises(ValueError, match="max_seq = -5 must be positive"):
        minillm.InferenceEngine("tiny", device="cpu", max_seq=-5)
    with pytest.raises(ValueError, match="logits_dtype = bf16 needs the CUDA backend"):
        minillm.InferenceEngine("tiny", device="cpu", logits_dtype="bf16")
    with pytest.raises(ValueError, match="is a directory"):
        minillm.InferenceEngine("tiny", weights=str(tmp_path), device="cpu")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a FIFO"):
        minillm.InferenceEngine("tiny", weights=str(fifo), device="cpu")
    with pytest.raises(ValueError, match="is a FIFO"):
        minillm.load_config(str(fifo))


def test_shapes_are_never_truncated():
    eng = minillm.InferenceEngine("tiny", device="cpu", max_batch=2, max_seq=16)
    # (1, 2^32 + 3) used to be read as (1, 3). A broadcast view holds no memory.
    ids = np.broadcast_to(np.int32(1), (1, 2**32 + 3))
    with pytest.raises(ValueError, match="seq_len = 4294967299 exceeds the engine's max_seq = 16"):
        eng.forward(ids)
    with pytest.raises(ValueError, match=r"batch = 4294967298 is outside \[1, 2\]"):
        eng.forward(np.broadcast_to(np.int32(1), (2**32 + 2, 3)))
    with pytest.raises(ValueError, match=r"shape \(0, 3\); batch and seq must be at least 1"):
        eng.forward(np.zeros((0, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="out of range"):
        eng.forward(np.array([[2**40]], dtype=np.int64))


def test_absurd_sizes_are_refused_up_front_with_the_numbers():
    with pytest.raises(ValueError, match=r"max_batch x max_seq = 2147483647 x 512 .* exceeds the supported 2\^30"):
        minillm.InferenceEngine("tiny", device="cpu", max_batch=2147483647)
    with pytest.raises(ValueError, match=r"memory: batch 2000000 x seq 512 needs .* more than the .* available"):
        minillm.InferenceEngine("tiny", device="cpu", max_batch=2000000)
    big = dict(TINY, vocab_size=4194304, hidden_size=65536, num_heads=256, head_dim=256, num_layers=1024)
    big["moe"] = {"num_experts": 8, "top_k": 2, "ffn_size": 262144}
    with pytest.raises(ValueError, match="needs .* more than the .* available"):
        minillm.InferenceEngine(big, device="cpu")


def _nan_weights(tmp_path):
    path = str(tmp_path / "w.safetensors")
    minillm.write_random_weights("tiny", path, seed=0, dtype="fp32")
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    begin = header["lm_head.weight"]["data_offsets"][0]
    raw[8 + n + begin + 4 * 7:8 + n + begin + 4 * 8] = struct.pack("<f", float("nan"))
    with open(path, "wb") as f:
        f.write(raw)
    return path


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    path = _nan_weights(tmp_path)
    with pytest.raises(ValueError, match=r"tensor 'lm_head.weight' holds NaN at \[0, 7\]"):
        minillm.InferenceEngine("tiny", weights=path, device="cpu")
    r = subprocess.run([cli(), "forward", "--model", "tiny", "--weights", path, "--ids", "1,2"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "holds NaN" in r.stderr, r.stderr


def test_forward_accepts_lists_of_lists():
    eng = minillm.InferenceEngine("tiny", device="cpu", max_batch=2, max_seq=16, seed=3)
    ids = [[1, 2, 3], [4, 5, 6]]
    out = eng.forward(ids)
    assert out.shape == (2, 3, 256)
    np.testing.assert_array_equal(out, eng.forward(np.array(ids, dtype=np.int32)))
    with pytest.raises(ValueError, match="row 1 has 2 ids, row 0 has 3"):
        eng.forward([[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match="is not an integer token id"):
        eng.forward([[1, 2.5]])
    with pytest.raises(ValueError, match="non-empty list of lists"):
        eng.forward([1, 2, 3])


def test_cli_out_npy_matches_the_python_engine(tmp_path):
    out = str(tmp_path / "logits.npy")
    r = subprocess.run([cli(), "forward", "--model", "tiny", "--ids", "5,6,7,8", "--device", "cpu", "--seed", "4",
                        "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    logits = np.load(out)
    assert logits.dtype == np.float32 and logits.shape == (1, 4, 256)
    eng = minillm.InferenceEngine("tiny", device="cpu", max_seq=4, seed=4)
    np.testing.assert_array_equal(logits, eng.forward([[5, 6, 7, 8]]))


def test_version():
    assert minillm.__version__.count(".") == 2
    r = subprocess.run([cli(), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("minillm " + minillm.__version__)
