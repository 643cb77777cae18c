"""minillm: a small, fast inference engine for Mixture-of-Experts transformers (C++/CUDA).

Tensors are exchanged through DLPack (torch, cupy, jax, numpy)."""
from ._minillm import *  # noqa: F401,F403
from ._minillm import __doc__  # noqa: F401
