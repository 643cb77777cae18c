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
    """InferenceEngine(config, weights=None, device="auto", max_batch=1, max_seq=0, seed=0)

    config: preset name ("tiny", "small", "medium", "large"), path to a .json config, or a dict.
    weights: path to a .safetensors file, or None for seeded random weights (seed).
    forward(input_ids (B, N) int) -> logits (B, N, vocab) float32 numpy array."""

    def __init__(self, config, weights=None, device="auto", max_batch=1, max_seq=0, seed=0, logits_dtype="f32"):
        if weights is not None:
            weights = _os.fspath(weights)
        super().__init__(_config_arg(config), weights, device, max_batch, max_seq, seed, logits_dtype)

    @property
    def config(self):
        return _json.loads(self.config_json())
