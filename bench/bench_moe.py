#!/usr/bin/env python3
"""Benchmark of minillm.MoELayer against PyTorch peers in the same process, on the same inputs.

Implementations (keys of the JSON):
  minillm           the whole layer: router GEMM, routing, permutation, grouped GEMMs, combine
  torch_grouped_mm  the whole layer in PyTorch: router, argsort, gather, torch._grouped_mm (gate|up
                    fused), silu*up, torch._grouped_mm (down), un-permute, weighted sum
  cublas_dense      only the two dense cuBLAS GEMMs of the same FLOPs (tokens*k rows, same N and K)
FLOPs (SwiGLU) = T*k*2*3*hidden*ffn. "routing" = the share of the layer's GPU time outside the expert
GEMM kernels (router GEMM + top-k + permutation + gather + combine), from torch.profiler kernel times
(each kernel's ms per layer call: key kernels_ms).
Skewed cases (a sixth value s > 0, e.g. --cases 32768,4096,32,2,14336,1): the router gets a bias
-s * ln(e + 1) for expert e (through a constant input feature), a Zipf-like load as a trained router
may produce; they report the measured load (pairs of the busiest expert / the mean, key expert_load).
Decode cases (T <= 64) also report the bandwidth on the expert weights read (distinct experts routed
to x 3*H*F*2 bytes per layer call) against a measured device-to-device copy (read + write bytes).

Default (--quick): the headline cases of the issue and a sample of the grid. --full: the whole grid
experts 8/16/32/64 x top-k 2/4/8 x hidden 2048/4096/8192 x batch 1/4/16/32 of 2048 tokens (ffn =
3.5 x hidden); cases that do not fit in GPU memory are listed as skipped.

Run: PYTHONPATH=python python3 bench/bench_moe.py [--quick|--full|--cases T,H,E,k,F;...] [--out FILE]
Writes $OUT/moe.json when $OUT is set, else bench/results/<gpu>/moe.json.
"""
import argparse
import os
import re
import statistics
import sys

import torch
import torch.nn.functional as Fn

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def time_ms(fn, reps=7, inner=None, target_ms=40.0):
    """Median over `reps` of the mean time of `inner` back-to-back calls (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    if inner is None:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        inner = max(1, min(50, int(target_ms / max(s.elapsed_time(e), 1e-3))))
    for _ in range(min(inner, 3)):
        fn()
    out = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        torch.cuda.synchronize()
        out.append(s.elapsed_time(e) / inner)
    return statistics.median(out)


def copy_bandwidth_gbps():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    src.random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps=9, inner=5)
    return 2 * n / ms / 1e6


def routing_share(fn):
    """Share of GPU kernel time outside the expert GEMM kernels, and each kernel's ms per call, from
    torch.profiler."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        total = gemm = 0.0
        kernels = {}
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None)
            if t is None:
                t = getattr(ev, "cuda_time_total", 0.0)
            if ev.key.startswith("cuda") or "Memcpy" in ev.key or "Memset" in ev.key or t <= 0:
                continue
            total += t
            name = re.sub(r"\([^()]*\)$", "", re.sub(r"(\w+::)+", "", ev.key)).replace("void ", "")
            kernels[name] = kernels.get(name, 0.0) + t / 3 / 1000  # us over 3 calls -> ms per call
            if "grouped_gemm_kernel" in ev.key or "decode_gemm_kernel" in ev.key:
                gemm += t
        return ((1.0 - gemm / total) if total > 0 else None), {n: round(v, 4) for n, v in kernels.items()}
    except Exception as exc:  # profiler unavailable: report no number rather than a guess
        print(f"  (routing share unavailable: {exc})", file=sys.stderr)
        return None, None


def fits(T, H, E, k, F, free_bytes):
    w = E * 3 * H * F * 2 * 1.07  # padded rows: at most 1/16 more (H, F >= 1024)
    w13 = E * 3 * F * H * 2  # torch_grouped_mm's fused gate|up copy and contiguous down copy
    rows = T * k + E * 127
    ours = rows * (H + F) * 2 + 2 * T * H * 2
    peer = T * k * (H + 2 * F + F + H) * 2 + T * k * H * 4
    need = w + w13 + max(ours, peer) + T * H * 2
    return need < 0.92 * free_bytes, need


def torch_grouped_moe(x, router, w13t, wdt, k, normalize, F):
    T, H = x.shape
    probs = torch.softmax((x @ router.T).float(), dim=-1)
    w, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=router.shape[0]), 0, dtype=torch.int32)
    xs = x[order // k]
    h13 = torch._grouped_mm(xs, w13t, offs=offs)
    h = Fn.silu(h13[:, :F]) * h13[:, F:]
    out = torch._grouped_mm(h, wdt, offs=offs)
    ys = torch.empty_like(out)
    ys[order] = out
    return (ys.view(T, k, H).float() * w[..., None]).sum(1).to(x.dtype)


def expert_weights(E, rows, cols, std):
    """[E, rows, cols] normal(0, std) bf16, a view of storage with MoELayer.weight_row_stride(cols) columns."""
    ld = minillm.MoELayer.weight_row_stride(cols)
    return torch.empty(E, rows, ld, device="cuda", dtype=torch.bfloat16)[..., :cols].normal_(0, std)


def run_case(T, H, E, k, F, copy_gbps, skew=0.0, normalize=True):
    case = {"tokens": T, "hidden": H, "experts": E, "top_k": k, "ffn": F, "activation": "swiglu",
            "normalize_topk": normalize, "dtype": "bf16"}
    if skew:
        case["router_skew"] = skew
    free, _ = torch.cuda.mem_get_info()
    ok, need = fits(T, H, E, k, F, free)
    if not ok:
        return {"case": case, "skipped": f"does not fit: needs ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"}
    flops = T * k * 2 * 3 * H * F
    torch.manual_seed(0)
    dt = torch.bfloat16
    router = (torch.randn(E, H, device="cuda") * H**-0.5).to(dt)
    # The expert matrices in the layer's load layout (rows padded to MoELayer.weight_row_stride); the
    # torch peers get their own contiguous copies.
    w_gate = expert_weights(E, F, H, H**-0.5)
    w_up = expert_weights(E, F, H, H**-0.5)
    w_down = expert_weights(E, H, F, F**-0.5)
    x = torch.randn(T, H, device="cuda", dtype=dt)
    if skew:  # feature 0 is constant, so router column 0 is a per-expert bias on the logits
        x[:, 0] = 1.0
        router[:, 0] = (-skew * torch.log(torch.arange(1, E + 1, device="cuda", dtype=torch.float32))).to(dt)

    moe = minillm.MoELayer(H, E, k, F, normalize_topk=normalize)
    moe.set_weights(router, w_gate, w_up, w_down)
    ms, res = {}, {"case": case}
    ms["minillm"] = time_ms(lambda: moe(x))
    res["routing_share"], res["kernels_ms"] = routing_share(lambda: moe(x))
    y = moe(x)

    # cuBLAS dense GEMMs of equal FLOPs: [T*k, H] x [H, 2F] and [T*k, F] x [F, H].
    a = torch.randn(T * k, H, device="cuda", dtype=dt)
    h = torch.randn(T * k, F, device="cuda", dtype=dt)
    w13_0 = torch.cat([w_gate[0], w_up[0]], dim=0)  # [2F, H]
    w_down_0 = w_down[0].contiguous()  # [H, F]
    o1 = torch.empty(T * k, 2 * F, device="cuda", dtype=dt)
    o2 = torch.empty(T * k, H, device="cuda", dtype=dt)

    def dense():
        torch.matmul(a, w13_0.T, out=o1)
        torch.matmul(h, w_down_0.T, out=o2)

    ms["cublas_dense"] = time_ms(dense)
    del a, h, o1, o2, w13_0, w_down_0

    # torch._grouped_mm layer with gate|up fused (the weights concatenated once, outside the timing).
    w13t = torch.cat([w_gate, w_up], dim=1).transpose(1, 2)  # [E, H, 2F], column-major per expert
    wdt = w_down.contiguous().transpose(1, 2)  # [E, F, H]
    try:
        y_ref = torch_grouped_moe(x, router, w13t, wdt, k, normalize, F)
        ms["torch_grouped_mm"] = time_ms(lambda: torch_grouped_moe(x, router, w13t, wdt, k, normalize, F))
        err = (y.float() - y_ref.float()).abs().max().item()
        scale = y_ref.float().abs().max().item()
        res["check_max_abs_diff_vs_torch"] = err
        res["check_max_abs_torch"] = scale
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        res["torch_grouped_mm_error"] = str(exc).splitlines()[0][:200]
    del w13t, wdt

    res["ms"] = {key: round(v, 4) for key, v in ms.items()}
    res["tflops"] = {key: round(flops / v / 1e9, 1) for key, v in ms.items()}
    if skew:
        ids, _ = moe.route(x)
        load = torch.bincount(ids.flatten().long(), minlength=E).float()
        res["expert_load"] = {"max_over_mean": round((load.max() / load.mean()).item(), 2),
                              "empty_experts": int((load == 0).sum().item())}
    if T <= 64:
        ids, _ = moe.route(x)
        active = torch.unique(ids).numel()
        wbytes = active * 3 * H * F * 2
        res["active_experts"] = active
        res["weights_gbps"] = round(wbytes / ms["minillm"] / 1e6, 1)
        res["copy_gbps"] = round(copy_gbps, 1)
        res["weights_bw_fraction_of_copy"] = round(wbytes / ms["minillm"] / 1e6 / copy_gbps, 3)
    del moe, router, w_gate, w_up, w_down, x, y
    torch.cuda.empty_cache()
    return res


HEADLINE = (32768, 4096, 32, 2, 14336)
OLMOE = (32768, 2048, 64, 8, 1024)
SKEWED = [HEADLINE + (1.0,), OLMOE + (1.0,)]  # Zipf-like routing (run_case's skew)


def quick_cases():
    cases = [HEADLINE, OLMOE] + SKEWED
    # decode: the issue's case at three T, and OLMoE's shape
    cases += [(T, 4096, 8, 2, 14336) for T in (1, 16, 64)]
    cases += [(T, 2048, 64, 8, 1024) for T in (1, 64)]
    # a sample of the grid (ffn = 3.5 x hidden), batch x 2048 tokens
    for b, H, E, k in [(4, 2048, 8, 2), (16, 2048, 16, 4), (32, 2048, 64, 8), (4, 4096, 8, 2), (16, 4096, 8, 2),
                       (16, 4096, 64, 8), (32, 4096, 16, 2), (4, 8192, 8, 2), (16, 8192, 8, 2), (1, 8192, 32, 4)]:
        cases.append((b * 2048, H, E, k, int(3.5 * H)))
    return cases


def full_cases():
    cases = [HEADLINE, OLMOE]
    for E in (8, 16, 32, 64):
        for k in (2, 4, 8):
            for H in (2048, 4096, 8192):
                for b in (1, 4, 16, 32):
                    c = (b * 2048, H, E, k, int(3.5 * H))
                    if c not in cases:
                        cases.append(c)
    cases += [(T, 4096, 8, 2, 14336) for T in (1, 16, 64)]
    cases += [(T, 2048, 64, 8, 1024) for T in (1, 16, 64)]
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="headline cases + a grid sample (default)")
    g.add_argument("--full", action="store_true", help="the whole grid")
    g.add_argument("--cases", help="these cases only: T,H,E,k,F;T,H,E,k,F;...")
    ap.add_argument("--out", help="result JSON path")
    ap.add_argument("--only", help="comma list of: headline, olmoe, skewed, decode, grid (default: all)")
    args = ap.parse_args()

    dev = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth_gbps()
    print(f"device: {dev}, device-to-device copy {copy_gbps:.0f} GB/s (read + write)")
    results = []
    hdr = (f"{'T':>6} {'H':>5} {'E':>3} {'k':>2} {'F':>6} | {'minillm':>9} {'dense':>9} {'grp_mm':>9} ms | "
           f"{'minillm':>7} {'dense':>7} {'grp_mm':>7} TF/s | {'x dense':>7} {'x grp':>6} | {'routing':>7} | note")
    print(hdr)
    print("-" * len(hdr))
    cases = full_cases() if args.full else quick_cases()
    if args.cases:
        cases = [tuple(int(v) for v in c.split(",")[:5]) + tuple(float(v) for v in c.split(",")[5:])
                 for c in args.cases.split(";")]
    path = common.result_path(args.out, "moe.json", dev)

    def save(complete):  # after every case, so that an interrupted grid keeps what it measured
        grid = "full" if args.full else "cases" if args.cases else "quick"
        doc = {**common.metadata("moe", dev), "copy_gbps": round(copy_gbps, 1), "grid": grid,
               "complete": complete, "results": results}
        common.write_json(path, doc)

    if args.only:
        want = set(args.only.split(","))
        cases = [c for c in cases if ("headline" in want and c == HEADLINE) or ("olmoe" in want and c == OLMOE)
                 or ("skewed" in want and len(c) > 5) or ("decode" in want and c[0] <= 64)
                 or ("grid" in want and c not in (HEADLINE, OLMOE) and len(c) == 5 and c[0] > 64)]
    for c in cases:
        T, H, E, k, F = c[:5]
        try:
            r = run_case(T, H, E, k, F, copy_gbps, skew=c[5] if len(c) > 5 else 0.0)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            r = {"case": {"tokens": T, "hidden": H, "experts": E, "top_k": k, "ffn": F}, "skipped": "out of memory"}
        results.append(r)
        save(False)
        if "skipped" in r:
            print(f"{T:>6} {H:>5} {E:>3} {k:>2} {F:>6} | skipped: {r['skipped']}", flush=True)
            continue
        ms, tf = r["ms"], r["tflops"]
        gm = ms.get("torch_grouped_mm")
        note = ""
        if "expert_load" in r:
            note = f"skew {c[5]:g}: busiest expert {r['expert_load']['max_over_mean']:.1f}x the mean"
        if "weights_gbps" in r:
            note = f"weights {r['weights_gbps']:.0f} GB/s = {100 * r['weights_bw_fraction_of_copy']:.0f}% of copy"
        if "check_max_abs_diff_vs_torch" in r:
            note += f" [max|diff| vs torch {r['check_max_abs_diff_vs_torch']:.2g} of {r['check_max_abs_torch']:.2g}]"
        share = r.get("routing_share")
        print(f"{T:>6} {H:>5} {E:>3} {k:>2} {F:>6} | {ms['minillm']:9.3f} {ms['cublas_dense']:9.3f} "
              f"{gm if gm is not None else float('nan'):9.3f} | {tf['minillm']:7.1f} {tf['cublas_dense']:7.1f} "
              f"{tf.get('torch_grouped_mm', float('nan')):7.1f} | {ms['cublas_dense'] / ms['minillm']:7.2f} "
              f"{(gm / ms['minillm']) if gm else float('nan'):6.2f} | "
              f"{'' if share is None else f'{100 * share:6.1f}%':>7} | {note}", flush=True)

    save(True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
