"""minillm: a small, fast inference engine for Mixture-of-Experts transformers (C++/CUDA).

Arrays are exchanged through DLPack / the buffer protocol (numpy, torch, cupy, jax)."""
import json as _json
import os as _os

from ._minillm import *  # noqa: F401,F403
from ._minillm import __version__, _InferenceEngine, config_json as _config_json  # noqa: F401


def _config_arg(config):
    """A preset name, a path to a .json config, or a dict -> the string the extension takes."""
    if isinstance(config, dict):
        return _json.dumps(config)
    if isinstance(config, (str, _os.PathLike)):
        return _os.fspath(config)
    raise TypeError(f"config must be a preset name, a path or a dict, got {type(config).__name__}")


def load_config(config):
    """The validated config as a dict (unknown keys and bad values raise ValueError)."""
    return _json.loads(_config_json(_config_arg(config)))


def _ids_from_lists(rows):
    """[[1, 2, 3], [4, 5, 6]] -> an int64 numpy array (B, N); ragged or non-integer rows raise ValueError."""
    import numpy as np

    if not rows or not all(isinstance(r, (list, tuple)) for r in rows):
        raise ValueError("forward: input_ids as lists must be a non-empty list of lists of token ids (batch, seq)")
    n = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != n:
            raise ValueError(f"forward: input_ids row {i} has {len(r)} ids, row 0 has {n} (rows must be equally long)")
        for j, v in enumerate(r):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"forward: input_ids[{i}][{j}] = {str(v)[:40]!r} is not an integer token id")
            if not -(2**63) <= v < 2**63:
                raise ValueError(f"forward: token id {v} at position [{i}, {j}] is out of range")
    return np.array(rows, dtype=np.int64).reshape(len(rows), n)


class InferenceEngine(_InferenceEngine):
    """InferenceEngine(config, weights=None, device="auto", max_batch=1, max_seq=0, seed=0,
    logits_dtype="f32", cuda_graphs=True)

    config: preset name ("tiny", "small", "medium", "large"), path to a .json config, a dict, or a
      Hugging Face model directory (config.json + model.safetensors or sharded; model_type mixtral,
      olmoe, qwen2_moe, qwen3_moe), loaded in its own dtype (docs/WEIGHTS.md).
    weights: path to a .safetensors file, or None for seeded random weights (seed); None for a
      model directory.
    device: "auto" (CUDA when available), "cpu" or "cuda".
    max_batch, max_seq: the largest (B, N) forward accepts; the workspace is planned for them once.
    logits_dtype: "f32" or the model dtype ("bf16"/"fp16"; CUDA only).
    cuda_graphs: replay one CUDA graph per (B, N) shape (captured on first use).

    forward(input_ids (B, N) int32/int64, copy=True) -> logits (B, N, vocab):
      - host ids (numpy, CPU torch, or lists of lists of ints): a numpy float32 array;
      - CUDA ids (a torch CUDA tensor): a torch CUDA tensor of dtype logits_dtype, ordered on the
        current torch stream (no host synchronisation beyond reading the ids for the range check).
        copy=False returns a view of the engine's own logits buffer instead of a new tensor: no
        extra memory, but it is overwritten by the next forward (and keeps the engine alive).
    Bad input raises ValueError and leaves the engine usable."""

    def __init__(self, config, weights=None, device="auto", max_batch=1, max_seq=0, seed=0, logits_dtype="f32",
                 cuda_graphs=True):
        if weights is not None:
            weights = _os.fspath(weights)
        super().__init__(_config_arg(config), weights, device, max_batch, max_seq, seed, logits_dtype, cuda_graphs)

    def forward(self, input_ids, copy=True):
        if isinstance(input_ids, (list, tuple)):
            input_ids = _ids_from_lists(input_ids)
        dev = getattr(input_ids, "__dlpack_device__", None)
        if dev is not None and dev()[0] in (2, 13) and self.device == "cuda":  # kDLCUDA, kDLCUDAManaged
            import torch

            out = self._forward_cuda(input_ids, torch.cuda.current_stream().cuda_stream)
            return out.clone() if copy else out
        return super().forward(input_ids)

    def weights(self):
        """The uploaded weights, as views: {name: tensor} (torch CUDA tensors on the GPU, numpy on
        the CPU). Names: embed, lm_head, final_norm.w/.b, layers.{l}.wqkv/wo/norm1.w/norm1.b/
        norm2.w/norm2.b/router/w1/w3/w2 (qkv rows fused, experts stacked [E, ...])."""
        return self._weights()

    @property
    def config(self):
        return _json.loads(self.config_json())
