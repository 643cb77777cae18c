"""minillm: a small, fast inference engine for Mixture-of-Experts transformers (C++/CUDA).

Arrays are exchanged through DLPack / the buffer protocol (numpy, torch, cupy, jax)."""
import json as _json
import os as _os

from ._minillm import *  # noqa: F401,F403
from ._minillm import _InferenceEngine, config_json as _config_json


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


class InferenceEngine(_InferenceEngine):
    """InferenceEngine(config, weights=None, device="auto", max_batch=1, max_seq=0, seed=0,
    logits_dtype="f32", cuda_graphs=True)

    config: preset name ("tiny", "small", "medium", "large"), path to a .json config, or a dict.
    weights: path to a .safetensors file, or None for seeded random weights (seed).
    device: "auto" (CUDA when available), "cpu" or "cuda".
    max_batch, max_seq: the largest (B, N) forward accepts; the workspace is planned for them once.
    logits_dtype: "f32" or the model dtype ("bf16"/"fp16"; CUDA only).
    cuda_graphs: replay one CUDA graph per (B, N) shape (captured on first use).

    forward(input_ids (B, N) int32/int64, copy=True) -> logits (B, N, vocab):
      - host ids (numpy, CPU torch, lists of lists via numpy): a numpy float32 array;
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
