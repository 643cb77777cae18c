#!/usr/bin/env python3
"""Benchmark of the end-to-end minillm.InferenceEngine (CUDA) against PyTorch eager of the same
architecture and the same weights, in the same process, on the same token ids.

Implementations (keys of the JSON):
  minillm                  the engine: CUDA graph replay, bf16 weights/activations, bf16 logits
  torch_eager              the faster of the two plain-PyTorch bf16 forwards below
  torch_eager_grouped_mm   SDPA (causal) + MoE by argsort / gather / torch._grouped_mm / weighted sum
  torch_eager_grouped_mm_fused  the same with gate|up concatenated into one [E, H, 2F] grouped GEMM
  torch_eager_loop         SDPA (causal) + MoE by a per-expert loop of matmuls
  torch_compile            torch.compile of the fastest eager variant's layer (one graph, shared by
                           all layers; embedding gather and LM head stay eager), in each of --compile-modes
                           ("reduce-overhead", "max-autotune"), the faster kept; the weights are marked
                           static so the CUDA graphs do not copy them. Compile time (the first call:
                           tracing, Inductor, autotuning, CUDA graph capture; caches disabled) and
                           any failure are recorded under "torch_compile", never fatal
Accuracy ("accuracy_vs_fp32"): the same eager model in fp32 (bf16 weights upcast, fp32 activations,
per-expert loop, math SDPA, TF32 off) is the reference; the engine's logits and each bf16 PyTorch
variant's are compared with it over all B x N positions: relative L2 error ||x - ref|| / ||ref|| and
top-1 agreement (argmax equal). bf16 PyTorch's own error is the yardstick for the engine's.
PyTorch uses the engine's own device weights (views, nothing copied: eager's peak memory is
counted as the weight bytes plus what torch allocates during the forward). The engine's peak
memory is the drop in free device memory from before it is built to after its timed forwards
(weights, workspace, logits, graphs, library handles). Times: CUDA events around each forward,
median of --iters after warm-up. FLOPs: ModelConfig::flops_per_token (matmuls + causal attention).
Also measured once: the bf16 8192^3 matmul peak (torch.matmul) and a 1 GiB copy (bytes read + written).

Cases: --compare (default "small:8x2048,medium:8x2048,large:8x2048") runs both implementations;
--sweep (default small and medium, batch 1/4/16/32 x seq 128/512/2048/8192) the engine alone, one
engine per model planned for the largest shape. torch.compile runs on the --compile-models compare
cases (default medium; "" for none). --quick: small only (compare small B8 N2048 with torch.compile,
a 4-shape sweep). --no-sweep: compare cases only; --keep-from OLD.json keeps OLD's entries for the
cases not measured in this run (e.g. its sweeps), each marked with OLD's commit and date.

Run: PYTHONPATH=python python3 bench/bench_engine.py [--quick] [--sweep-models small,medium]
     [--compile-models small,medium] [--compile-modes reduce-overhead,max-autotune]
Writes $OUT/engine.json when $OUT is set, else bench/results/<gpu>/engine.json. The JSON is rewritten
after every stage (engine, fp32 reference, each eager variant, each torch.compile mode, each sweep), so a
run killed by a timeout keeps what it measured; the stage it was killed in says so ("error": did not
finish, with the seconds it had run when the kill was a SIGTERM).
"""
import argparse
import json
import math
import os
import signal
import statistics
import sys
import time

import torch
import torch.nn.functional as Fn

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# Stages in progress: (entry dict, start time). An entry carries a "did not finish" error while its
# stage runs (so a SIGKILL leaves it in the JSON); SIGTERM (timeout's first signal) adds the seconds.
_RUNNING = []
_UNFINISHED = "did not finish: the process ended during this stage (killed, e.g. by a timeout)"


def _start(entry):
    entry["error"] = _UNFINISHED
    _RUNNING.append((entry, time.time()))


def _done(entry):
    if entry.get("error") == _UNFINISHED:
        del entry["error"]
    _RUNNING[:] = [(e, t) for e, t in _RUNNING if e is not entry]


def _on_sigterm(signum, frame):
    for entry, t0 in _RUNNING:
        entry["error"] = f"did not finish: killed by signal {signum} after {time.time() - t0:.0f} s (e.g. a timeout)"
    raise SystemExit(128 + signum)  # not an Exception: the stages' `except Exception` do not swallow it


def time_ms(fn, iters, warmup=2):
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev)


def peaks():
    a = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16) - 0.5
    b = torch.rand(8192, 8192, device="cuda", dtype=torch.bfloat16) - 0.5
    ms = time_ms(lambda: a @ b, 10, 3)
    tflops = 2 * 8192**3 / ms / 1e9
    del a, b
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), 10, 3)
    gbps = 2 * (1 << 30) / ms / 1e6
    del src, dst
    torch.cuda.empty_cache()
    return tflops, gbps


def flops_per_token(c, seq):
    """Same count as ModelConfig::flops_per_token."""
    H, F, q, kv = c["hidden_size"], c["moe"]["ffn_size"], c["num_heads"] * c["head_dim"], c["num_kv_heads"] * c["head_dim"]
    n_mats = 3 if c["moe"]["activation"] == "swiglu" else 2
    params = H * (q + 2 * kv) + q * H + H * c["moe"]["num_experts"] + c["moe"]["top_k"] * n_mats * H * F
    keys = (seq + 1) / 2 if c["causal"] else seq
    return c["num_layers"] * (2.0 * params + 4.0 * keys * q) + 2.0 * H * c["vocab_size"]


# ---- PyTorch eager, from the engine's weights (qkv rows fused, experts stacked [E, ...]) ----

class Eager:
    """dtype None: the weights' own dtype (bf16), norms cast to it. dtype torch.float32: the fp32
    reference; every weight is upcast where it is used (one layer's at a time), so the engine's bf16
    weights are not copied whole."""

    def __init__(self, cfg, W, moe_impl, dtype=None):
        self.c, self.moe_impl = cfg, moe_impl
        dt = dtype or W["embed"].dtype
        self.dt = dt
        self.W = {k: (v.to(dt) if v.dtype == torch.float32 and dt != torch.float32 else v) for k, v in W.items()}
        D, theta = cfg["head_dim"], cfg["position"]["theta"]
        inv = theta ** (-torch.arange(0, D // 2, dtype=torch.float64, device="cuda") * 2.0 / D)
        ang = torch.arange(cfg["max_seq_len"], dtype=torch.float64, device="cuda")[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().float(), ang.sin().float()  # [max_seq, D/2]
        self.dup_bytes = 0  # bytes of weight copies that replace weights of the engine one for one
        if moe_impl == "grouped_mm_fused" and cfg["moe"]["activation"] == "swiglu":
            for l in range(cfg["num_layers"]):
                p = f"layers.{l}."
                w13 = torch.cat([self.W[p + "w1"], self.W[p + "w3"]], dim=1).transpose(1, 2)  # [E, H, 2F]
                self.W[p + "w13t"] = w13
                self.dup_bytes += w13.numel() * w13.element_size()
        self.layers = [self.layer_weights(l) for l in range(cfg["num_layers"])]

    def layer_weights(self, l):
        """Layer l's weights under names without the layer prefix, so that one compiled graph serves
        every layer."""
        p = f"layers.{l}."
        return {k[len(p):]: v for k, v in self.W.items() if k.startswith(p)}

    def norm(self, x, p, W):
        c, dt = self.c, self.dt
        if c["norm"]["type"] == "layernorm":
            return Fn.layer_norm(x, (x.shape[-1],), W[p + ".w"].to(dt), W[p + ".b"].to(dt), c["norm"]["eps"])
        return Fn.rms_norm(x, (x.shape[-1],), W[p + ".w"].to(dt), c["norm"]["eps"])

    def rope(self, x):  # x: [B, N, h, D]
        N, half = x.shape[1], x.shape[-1] // 2
        cos, sin = self.cos[:N, None, :], self.sin[:N, None, :]
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)

    def moe(self, t, W):
        c, dt = self.c, self.dt
        m = c["moe"]
        k, E = m["top_k"], m["num_experts"]
        probs = torch.softmax((t @ W["router"].to(dt).T).float(), -1)
        topw, topi = torch.topk(probs, k, -1)
        if m["normalize_topk"]:
            topw = topw / topw.sum(-1, keepdim=True)
        w1, w3, w2 = W["w1"], W.get("w3"), W["w2"]
        act = (lambda g, u: Fn.silu(g) * u) if m["activation"] == "swiglu" else (lambda g, u: Fn.gelu(g))
        if self.moe_impl.startswith("grouped_mm"):
            flat = topi.flatten()
            order = torch.argsort(flat, stable=True)
            # Rows per expert, [E], by scatter_add (a fixed output shape, unlike bincount, so that
            # torch.compile captures it without a graph break).
            counts = torch.zeros(E, dtype=torch.int64, device=t.device).scatter_add_(0, flat, torch.ones_like(flat))
            offs = torch.cumsum(counts, 0, dtype=torch.int32)
            xs = t[order // k]
            if "w13t" in W:
                gu = torch._grouped_mm(xs, W["w13t"], offs=offs)
                F = gu.shape[1] // 2
                g, u = gu[:, :F], gu[:, F:]
            else:
                g = torch._grouped_mm(xs, w1.transpose(1, 2), offs=offs)
                u = torch._grouped_mm(xs, w3.transpose(1, 2), offs=offs) if w3 is not None else None
            ys = torch._grouped_mm(act(g, u), w2.transpose(1, 2), offs=offs)
            out = torch.empty_like(ys)
            out[order] = ys
            return (out.view(-1, k, t.shape[1]).float() * topw[..., None]).sum(1).to(t.dtype)
        y = torch.zeros(t.shape, dtype=torch.float32, device=t.device)
        for e in range(E):
            rows, slot = (topi == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            xe = t[rows]
            h = act(xe @ w1[e].to(dt).T, xe @ w3[e].to(dt).T if w3 is not None else None)
            y.index_add_(0, rows, (h @ w2[e].to(dt).T).float() * topw[rows, slot, None])
        return y.to(t.dtype)

    def layer(self, x, W):
        """One transformer layer. x: [B, N, hidden]; W: layer_weights(l)."""
        c, dt = self.c, self.dt
        B, N = x.shape[0], x.shape[1]
        nh, nkv, D = c["num_heads"], c["num_kv_heads"], c["head_dim"]
        q_dim, kv_dim = nh * D, nkv * D
        pre = c["norm"]["placement"] == "pre"
        h = self.norm(x, "norm1", W) if pre else x
        qkv = h @ W["wqkv"].to(dt).T
        q = qkv[..., :q_dim].view(B, N, nh, D)
        k = qkv[..., q_dim:q_dim + kv_dim].view(B, N, nkv, D)
        v = qkv[..., q_dim + kv_dim:].view(B, N, nkv, D)
        if c["position"]["type"] == "rope":
            q, k = self.rope(q), self.rope(k)
        a = Fn.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            is_causal=c["causal"], enable_gqa=nkv != nh)
        o = a.transpose(1, 2).reshape(B, N, q_dim) @ W["wo"].to(dt).T
        if pre:
            x = x + o
            h = self.norm(x, "norm2", W)
        else:
            x = self.norm(x + o, "norm1", W)
            h = x
        y = self.moe(h.reshape(B * N, -1), W).view(B, N, -1)
        return x + y if pre else self.norm(x + y, "norm2", W)

    @torch.no_grad()
    def forward(self, ids, layer_fn=None):
        """layer_fn: self.layer (default) or a torch.compile of it."""
        c, W, dt = self.c, self.W, self.dt
        layer_fn = layer_fn or self.layer
        x = W["embed"][ids].to(dt)
        for l in range(c["num_layers"]):
            x = layer_fn(x, self.layers[l])
        if c["norm"]["placement"] == "pre":
            x = self.norm(x, "final_norm", W)
        return x @ W["lm_head"].to(dt).T


def engine_memory_run(model, B, N, ids, iters):
    """Builds an engine planned for exactly (B, N), times it, returns (engine, ms, peak bytes)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free0 = torch.cuda.mem_get_info()[0]
    t0 = time.time()
    eng = minillm.InferenceEngine(model, device="cuda", max_batch=B, max_seq=N, seed=0, logits_dtype="bf16")
    build_s = time.time() - t0
    ms = time_ms(lambda: eng.forward(ids, copy=False), iters)
    torch.cuda.synchronize()
    peak = free0 - torch.cuda.mem_get_info()[0]
    return eng, ms, peak, build_s


def accuracy(x, ref):
    """Logits x [B, N, V] (any dtype) against the fp32 reference ref: relative L2 error over all
    elements and top-1 agreement over all positions."""
    err = (torch.linalg.vector_norm(x.float() - ref) / torch.linalg.vector_norm(ref)).item()
    return {"rel_l2": err, "top1_agreement": (x.argmax(-1) == ref.argmax(-1)).float().mean().item()}


def fp32_reference(cfg, W, ids):
    """The eager model in fp32 on the engine's weights (upcast where used): per-expert loop (torch._grouped_mm
    takes bf16 only), the math SDPA backend, TF32 off. Returns (logits [B, N, V] fp32, seconds)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.cuda.synchronize()
        t0 = time.time()
        with sdpa_kernel(SDPBackend.MATH):
            ref = Eager(cfg, W, "loop", dtype=torch.float32).forward(ids)
        torch.cuda.synchronize()
        return ref, time.time() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def compile_peer(cfg, W, impl, ids, iters, modes, ref32, info, save=lambda: None):
    """torch.compile of Eager(impl).layer in each mode, filling `info` (already in the results, so that
    save() writes each mode as it ends): per mode the compile time (the first call, synchronised), the
    median ms per forward, the logits' accuracy vs ref32 (when there is one), or the error that stopped
    it. Never raises an Exception."""
    info.update({"impl": "torch_eager_" + impl, "scope": "each layer (one graph shared by all layers; embedding "
                 "gather and LM head eager); weights marked static", "caches": "Inductor caches disabled",
                 "modes": {}})
    try:
        import torch._dynamo
        import torch._inductor.config as inductor_config
        from torch._dynamo.utils import counters

        if hasattr(inductor_config, "force_disable_caches"):
            inductor_config.force_disable_caches = True  # compile time measured cold
        else:
            info["caches"] = "Inductor caches as configured (no force_disable_caches in this torch)"
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return info
    for mode in modes:
        entry = {}
        info["modes"][mode] = entry
        _start(entry)
        save()
        model_t = fn = None
        try:
            torch._dynamo.reset()
            model_t = Eager(cfg, W, impl)
            for t in [model_t.cos, model_t.sin, *model_t.W.values()]:
                try:  # static: CUDA graphs keep the weights' addresses instead of copying them in
                    torch._dynamo.mark_static_address(t, guard=False)
                except TypeError:
                    torch._dynamo.mark_static_address(t)
            fn = torch.compile(model_t.layer, mode=mode)

            def run():
                torch.compiler.cudagraph_mark_step_begin()
                return model_t.forward(ids, fn)

            counters.clear()
            torch.cuda.synchronize()
            t0 = time.time()
            run()
            torch.cuda.synchronize()
            entry["compile_s"] = time.time() - t0
            # 1 graph and no breaks expected: more graphs would mean a recompile per layer.
            entry["graphs"] = int(counters["stats"]["unique_graphs"])
            entry["graph_breaks"] = int(sum(counters["graph_break"].values()))
            save()
            entry["ms"] = time_ms(run, max(3, iters // 2), warmup=3)  # CUDA graph trees: warm-up, record, replay
            _done(entry)
            if ref32 is not None:
                y = run().clone()
                entry["accuracy_vs_fp32"] = accuracy(y, ref32)
                del y
        except Exception as exc:  # report, keep going
            msg = str(exc).strip().splitlines()
            entry["error"] = f"{type(exc).__name__}: {msg[0][:300] if msg else ''}"
        _done(entry)
        print(f"    torch.compile {mode}: " + (f"compile {entry['compile_s']:.1f} s ({entry['graphs']} graph(s), "
                                               f"{entry['graph_breaks']} break(s)), {entry['ms']:.3f} ms"
                                               if "ms" in entry else entry.get("error", "?")), flush=True)
        del model_t, fn
        try:
            torch._dynamo.reset()
        except Exception:
            pass
        torch.cuda.empty_cache()
        save()
    ok = {m: e for m, e in info["modes"].items() if "ms" in e}
    if ok:
        info["mode"] = min(ok, key=lambda m: ok[m]["ms"])
    return info


def derive(res, B, N, flops, peak_tf):
    """Throughput keys from res["ms"] (recomputed before every write, as implementations are added)."""
    res["tokens_per_s"] = {k: B * N / (v / 1e3) for k, v in res["ms"].items()}
    res["tflops"] = {k: flops / (v / 1e3) / 1e12 for k, v in res["ms"].items()}
    res["minillm_pct_of_matmul_peak"] = 100 * res["tflops"]["minillm"] / peak_tf
    eager = [k for k in ("torch_eager_grouped_mm", "torch_eager_grouped_mm_fused", "torch_eager_loop") if k in res["ms"]]
    if eager:
        best = min(eager, key=lambda k: res["ms"][k])
        res["ms"]["torch_eager"] = res["ms"][best]
        res["peak_memory_gb"]["torch_eager"] = res["peak_memory_gb"][best]
        res["torch_eager_impl"] = best
        res["speedup_vs_torch_eager"] = res["ms"]["torch_eager"] / res["ms"]["minillm"]
        if best in res.get("accuracy_vs_fp32", {}):
            res["accuracy_vs_fp32"]["torch_eager"] = res["accuracy_vs_fp32"][best]
        res["tokens_per_s"]["torch_eager"] = B * N / (res["ms"]["torch_eager"] / 1e3)
        res["tflops"]["torch_eager"] = flops / (res["ms"]["torch_eager"] / 1e3) / 1e12


def compare_case(model, B, N, iters, peak_tf, peak_bw, compile_modes=(), record=lambda res: None):
    """record(res) puts res (a dict updated in place) into the results and writes the JSON; it is
    called after each stage."""
    cfg = minillm.load_config(model)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    ids = torch.randint(0, cfg["vocab_size"], (B, N), device="cuda", generator=gen)
    eng, ms, peak, build_s = engine_memory_run(model, B, N, ids, iters)
    flops = flops_per_token(cfg, N) * B * N
    out = eng.forward(ids)  # a copy, for the comparison below
    prof = [eng.profile(ids) for _ in range(3)]
    ops = {k: statistics.median(p[k] for p in prof) for k in prof[0]}
    res = {"case": {"model": model, "batch": B, "seqlen": N, "dtype": "bf16", "logits": "bf16"},
           "ms": {"minillm": ms}, "peak_memory_gb": {"minillm": peak / 1e9}, "minillm_ops_ms": ops,
           "minillm_build_s": build_s, "weight_gb": eng.weight_bytes / 1e9}

    def save():
        derive(res, B, N, flops, peak_tf)
        record(res)

    save()
    # PyTorch eager on the engine's weights (views: nothing copied).
    weight_bytes = eng.weight_bytes
    W = eng.weights()
    ref32 = None
    try:
        ref32, ref_s = fp32_reference(cfg, W, ids)
        res["fp32_reference_s"] = ref_s
        res.setdefault("accuracy_vs_fp32", {})["minillm"] = accuracy(out, ref32)
    except Exception as exc:  # report, keep going
        res.setdefault("errors", {})["fp32_reference"] = str(exc).splitlines()[0][:200]
    torch.cuda.empty_cache()
    save()
    for impl in ("grouped_mm", "grouped_mm_fused", "loop"):
        key = "torch_eager_" + impl
        model_t = ref = None
        try:
            torch.cuda.synchronize()
            before_init = torch.cuda.memory_allocated()
            model_t = Eager(cfg, W, impl)
            init_bytes = torch.cuda.memory_allocated() - before_init
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ref = model_t.forward(ids)
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - base
            err = ((ref.float() - out.float()).norm() / ref.float().norm()).item()
            agree = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
            if ref32 is not None:
                try:  # an accuracy failure (e.g. out of memory) must not cost the timing
                    res.setdefault("accuracy_vs_fp32", {})[key] = accuracy(ref, ref32)
                except Exception as exc:
                    res.setdefault("errors", {})[key + "_accuracy"] = str(exc).splitlines()[0][:200]
            del ref
            ref = None
            res["ms"][key] = time_ms(lambda: model_t.forward(ids), max(3, iters // 2))
            # eager's own weights: the engine's bytes, plus what __init__ allocated (bf16 norm weights,
            # rope tables) except copies that replace engine weights one for one (fused gate|up).
            res["peak_memory_gb"][key] = (weight_bytes + init_bytes - model_t.dup_bytes + extra) / 1e9
            res.setdefault("logits_vs_minillm", {})[key] = {"rel_l2": err, "top1_agreement": agree}
        except Exception as exc:  # report, keep going
            res.setdefault("errors", {})[key] = str(exc).splitlines()[0][:200]
        del model_t, ref
        torch.cuda.empty_cache()
        save()
    if compile_modes and "torch_eager_impl" in res:
        tc = {}
        res["torch_compile"] = tc
        compile_peer(cfg, W, res["torch_eager_impl"][len("torch_eager_"):], ids, iters, compile_modes, ref32, tc,
                     save)
        if "mode" in tc:
            m = tc["modes"][tc["mode"]]
            res["ms"]["torch_compile"] = m["ms"]
            if "accuracy_vs_fp32" in m:
                res.setdefault("accuracy_vs_fp32", {})["torch_compile"] = m["accuracy_vs_fp32"]
            res["speedup_vs_torch_compile"] = m["ms"] / ms
        save()
    del W, eng, out, ref32
    torch.cuda.empty_cache()
    return res


def sweep(model, batches, seqs, iters):
    cfg = minillm.load_config(model)
    mb, ms_ = max(batches), max(seqs)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free0 = torch.cuda.mem_get_info()[0]
    eng = minillm.InferenceEngine(model, device="cuda", max_batch=mb, max_seq=ms_, seed=0, logits_dtype="bf16")
    out = []
    gen = torch.Generator(device="cuda").manual_seed(99)
    for B in batches:
        for N in seqs:
            ids = torch.randint(0, cfg["vocab_size"], (B, N), device="cuda", generator=gen)
            ms = time_ms(lambda: eng.forward(ids, copy=False), iters, warmup=1)
            fl = flops_per_token(cfg, N) * B * N
            out.append({"case": {"model": model, "batch": B, "seqlen": N, "dtype": "bf16", "logits": "bf16"},
                        "ms": {"minillm": ms}, "tokens_per_s": {"minillm": B * N / (ms / 1e3)},
                        "tflops": {"minillm": fl / (ms / 1e3) / 1e12}})
            print(f"  sweep {model:6s} B={B:2d} N={N:5d}: {ms:9.3f} ms  {B * N / (ms / 1e3):10.0f} tok/s  "
                  f"{fl / (ms / 1e3) / 1e12:6.1f} TFLOP/s", flush=True)
    torch.cuda.synchronize()
    plan_gb = (free0 - torch.cuda.mem_get_info()[0]) / 1e9
    for r in out:
        r["engine_memory_gb"] = {"minillm": plan_gb}  # one engine planned for the largest shape
    del eng
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small only")
    ap.add_argument("--compare", default="small:8x2048,medium:8x2048,large:8x2048")
    ap.add_argument("--sweep-models", default="small,medium")
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--seqs", default="128,512,2048,8192")
    ap.add_argument("--compile-models", default="medium", help="compare cases that also run torch.compile ('' for none)")
    ap.add_argument("--compile-modes", default="reduce-overhead,max-autotune",
                    help="in this order (the cheaper compile first, so a timeout keeps its result)")
    ap.add_argument("--no-sweep", action="store_true", help="compare cases only")
    ap.add_argument("--keep-from", default=None,
                    help="an earlier engine.json: its results for the cases this run does not measure are kept, "
                         "each marked with that file's commit and date")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.compare, args.sweep_models, args.batches, args.seqs = "small:8x2048", "small", "1,8", "128,2048"
        args.compile_models = "small"
    if args.no_sweep:
        args.sweep_models = ""
    old = None
    if args.keep_from:  # read first: a bad path fails before anything is measured
        with open(args.keep_from) as f:
            old = json.load(f)
    signal.signal(signal.SIGTERM, _on_sigterm)
    dev = torch.cuda.get_device_name()
    path = common.result_path(args.out, "engine.json", dev)
    results = []
    doc = {**common.metadata("engine", dev), "peaks": {}, "results": results}
    key = lambda r: (json.dumps(r["case"], sort_keys=True), "minillm_ops_ms" in r or "error" in r)  # noqa: E731

    def save():
        out = dict(doc)
        if old is not None:  # OLD's entries for the cases not measured (so far) in this run
            measured = {key(r) for r in results}
            out["results"] = results + [{**r, "commit": r.get("commit", old.get("commit")),
                                         "date": r.get("date", old.get("date"))}
                                        for r in old["results"] if key(r) not in measured]
        common.write_json(path, out)

    def record(res):
        if not any(r is res for r in results):
            results.append(res)
        save()

    try:
        peak_tf, peak_bw = peaks()
        doc["peaks"] = {"matmul_bf16_8192_tflops": peak_tf, "copy_1gib_gbps": peak_bw}
        save()
        print(f"device {dev}: bf16 matmul 8192^3 {peak_tf:.0f} TFLOP/s, copy 1 GiB {peak_bw:.0f} GB/s", flush=True)
        for item in filter(None, args.compare.split(",")):
            model, shape = item.split(":")
            B, N = (int(v) for v in shape.split("x"))
            n_before = len(results)
            try:
                modes = [m for m in args.compile_modes.split(",") if m] if model in args.compile_models.split(",") else []
                r = compare_case(model, B, N, args.iters, peak_tf, peak_bw, modes, record)
            except Exception as exc:
                print(f"  {model} B={B} N={N}: FAILED {exc}", flush=True)
                if len(results) > n_before:  # the partial result of this case is in: keep it, say why it stopped
                    results[-1]["error"] = str(exc)[:300]
                else:
                    results.append({"case": {"model": model, "batch": B, "seqlen": N}, "error": str(exc)[:300]})
                save()
                continue
            save()
            ms = r["ms"]
            print(f"  {model:6s} B={B} N={N}: minillm {ms['minillm']:.3f} ms, torch eager {ms.get('torch_eager', math.nan):.3f} ms "
                  f"({r.get('torch_eager_impl', '-')}), x{r.get('speedup_vs_torch_eager', math.nan):.2f}; peak memory "
                  f"{r['peak_memory_gb']['minillm']:.2f} GB vs {r['peak_memory_gb'].get('torch_eager', math.nan):.2f} GB; "
                  f"{r['tflops']['minillm']:.0f} TFLOP/s ({r['minillm_pct_of_matmul_peak']:.0f}% of peak)", flush=True)
            total = sum(r["minillm_ops_ms"].values())
            print("    per op: " + ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in r["minillm_ops_ms"].items()),
                  flush=True)
            if "logits_vs_minillm" in r:
                print(f"    logits vs eager: {r['logits_vs_minillm']}", flush=True)
            for k, v in r.get("accuracy_vs_fp32", {}).items():
                print(f"    logits vs fp32 reference, {k}: rel L2 {v['rel_l2']:.4f}, top-1 agreement {v['top1_agreement']:.4f}",
                      flush=True)
            if "torch_compile" in r["ms"]:
                print(f"    torch.compile ({r['torch_compile']['mode']}): {r['ms']['torch_compile']:.3f} ms, minillm "
                      f"x{r['speedup_vs_torch_compile']:.2f}", flush=True)
            if r.get("errors"):
                print(f"    errors: {r['errors']}", flush=True)
        batches = [int(v) for v in args.batches.split(",")]
        seqs = [int(v) for v in args.seqs.split(",")]
        for model in filter(None, args.sweep_models.split(",")):
            try:
                results.extend(sweep(model, batches, seqs, max(3, args.iters // 3)))
            except Exception as exc:
                print(f"  sweep {model}: FAILED {exc}", flush=True)
                results.append({"case": {"model": model, "sweep": True}, "error": str(exc)[:300]})
            save()
    finally:
        save()
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
