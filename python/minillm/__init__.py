"""minillm: a small, fast inference engine for Mixture-of-Experts transformers (C++/CUDA).

Arrays are exchanged through DLPack / the buffer protocol (numpy, torch, cupy, jax)."""
import json as _json
import os as _os

from ._minillm import *  # noqa: F401,F403
from ._minillm import __version__, _LLM, _InferenceEngine, config_json as _config_json  # noqa: F401


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


class RequestOutput:
    """The result of one request of LLM.generate: prompt_token_ids, token_ids (the generated ids),
    text (decoded when the LLM has a tokenizer, else None), logprobs (the chosen tokens', or None),
    top_logprobs (per token a list of (id, logprob), or None), finish_reason ("stop", "length" or
    "abort"), ttft_ms and total_ms (from submission)."""

    __slots__ = ("request_id", "prompt_token_ids", "token_ids", "text", "logprobs", "top_logprobs", "finish_reason",
                 "ttft_ms", "total_ms")

    def __init__(self, request_id, prompt_token_ids):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.token_ids = []
        self.text = None
        self.logprobs = None
        self.top_logprobs = None
        self.finish_reason = None
        self.ttft_ms = None
        self.total_ms = None

    def __repr__(self):
        return (f"RequestOutput(request_id={self.request_id}, token_ids={self.token_ids}, "
                f"finish_reason={self.finish_reason!r})")


class LLM:
    """LLM(model, device="auto", max_model_len=None, gpu_memory_fraction=0.9, num_kv_tokens=None,
    max_num_seqs=256, max_step_tokens=8192, seed=0, *, weights=None, cuda_graphs=True)

    Generation with continuous batching (docs/GENERATION.md).
    model: a Hugging Face model directory (weights, EOS ids from config.json and
      generation_config.json, and its tokenizer when it has one: llm.tokenizer), or a preset name
      ("tiny", "small", "medium", "large"), a path to a .json config, or a dict (seeded random
      weights, or `weights`: a .safetensors file).
    max_model_len: tokens per sequence (prompt + output); None: the model's max_seq_len.
    gpu_memory_fraction: of the device memory free after weights and workspace, for the KV cache;
      num_kv_tokens: an exact KV cache size in tokens instead.
    max_num_seqs, max_step_tokens: sequences and new tokens per engine step.
    seed: seeds the requests that have no SamplingParams.seed.

    generate(prompts, params) -> [RequestOutput]; stream(prompts, params) yields StepOutput as
    tokens arrive; add_request / step / abort / has_unfinished / stats drive the engine by hand.
    step() releases the GIL while the engine runs. Bad input raises ValueError."""

    def __init__(self, model, device="auto", max_model_len=None, gpu_memory_fraction=0.9, num_kv_tokens=None,
                 max_num_seqs=256, max_step_tokens=8192, seed=0, *, weights=None, cuda_graphs=True):
        self.tokenizer = None
        eos = []
        if isinstance(model, (str, _os.PathLike)) and _os.path.isdir(model):
            model = _os.fspath(model)
            if any(_os.path.isfile(_os.path.join(model, f)) for f in ("tokenizer.json", "tokenizer.model")):
                self.tokenizer = Tokenizer(model)  # noqa: F405
        if weights is not None:
            weights = _os.fspath(weights)
        self._engine = _LLM(_config_arg(model), weights, 0, eos, device, max_model_len or 0, gpu_memory_fraction,
                            num_kv_tokens or 0, max_num_seqs, max_step_tokens, seed, cuda_graphs)

    @property
    def eos_token_ids(self):
        return list(self._engine.eos_token_ids)

    @property
    def device(self):
        return self._engine.device

    @property
    def max_model_len(self):
        return self._engine.max_model_len

    @property
    def vocab_size(self):
        return self._engine.vocab_size

    @property
    def kv_cache_bytes(self):
        return self._engine.kv_cache_bytes

    def _ids(self, prompt):
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("LLM: a text prompt needs a tokenizer (this model has none); pass token ids")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def add_request(self, prompt_token_ids, params=None):
        """Queues a request (token ids, or text with a tokenizer); returns its id."""
        return self._engine.add_request(self._ids(prompt_token_ids), params or SamplingParams())

    def step(self):
        """One engine step: a list of StepOutput (request_id, new_token_ids, logprobs, top_logprobs,
        finished, finish_reason)."""
        return self._engine.step()

    def abort(self, request_id):
        return self._engine.abort(request_id)

    def has_unfinished(self):
        return self._engine.has_unfinished()

    def stats(self):
        return self._engine.stats()

    def _params_list(self, prompts, params):
        if params is None:
            params = SamplingParams()
        if isinstance(params, SamplingParams):
            return [params] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise ValueError(f"LLM: {len(params)} SamplingParams for {len(prompts)} prompts")
        return params

    def stream(self, prompts, params=None):
        """Adds the prompts and yields StepOutput objects of these requests as tokens arrive, until
        all have finished. Closing the iterator early aborts the unfinished ones."""
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, self._params_list(prompts, params))]
        live = set(ids)
        try:
            while live:
                for o in self._engine.step():
                    if o.request_id in live:
                        if o.finished:
                            live.discard(o.request_id)
                        yield o
        finally:
            for i in live:
                self._engine.abort(i)

    def generate(self, prompts, params=None):
        """Generates for every prompt (token id lists, or strings with a tokenizer); returns one
        RequestOutput per prompt, in order. params: one SamplingParams or one per prompt."""
        import time

        prompts = [self._ids(p) for p in prompts]
        plist = self._params_list(prompts, params)
        outs, index = [], {}
        t0 = time.perf_counter()
        added = []
        try:
            for p, sp in zip(prompts, plist):
                rid = self._engine.add_request(p, sp)
                added.append(rid)
                index[rid] = len(outs)
                outs.append(RequestOutput(rid, p))
        except Exception:
            for rid in added:
                self._engine.abort(rid)
            while self._engine.has_unfinished():
                self._engine.step()
            raise
        left = len(outs)
        while left:
            for o in self._engine.step():
                k = index.get(o.request_id)
                if k is None:
                    continue
                r = outs[k]
                now = (time.perf_counter() - t0) * 1e3
                if not r.token_ids and o.new_token_ids:
                    r.ttft_ms = now
                r.token_ids.extend(o.new_token_ids)
                if o.logprobs is not None:
                    r.logprobs = (r.logprobs or []) + list(o.logprobs)
                if o.top_logprobs is not None:
                    r.top_logprobs = (r.top_logprobs or []) + [list(t) for t in o.top_logprobs]
                if o.finished:
                    r.finish_reason = o.finish_reason
                    r.total_ms = now
                    left -= 1
        if self.tokenizer is not None:
            for r in outs:
                r.text = self.tokenizer.decode(r.token_ids)
        return outs
