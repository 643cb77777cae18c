"""Attention over the paged KV cache: decode (one query token per sequence) and prefill over a cached
prefix, minillm.paged_attention vs the memory floor and torch SDPA.

Decode grid: batch 1..256 x context 512..32k x heads (Hq/Hkv) 32/8, 16/16, 32/4, head_dim 128, bf16,
pages shuffled. Keys per case (microseconds per call):
  minillm      minillm.paged_attention (check=False, bounds given: no host synchronisation)
  copy_floor   the bytes the kernel must read (K and V of every context, q) and write (out) divided by
               the device-to-device copy bandwidth measured in this run (bytes read + written per second)
  sdpa_flash, sdpa_cudnn   torch SDPA with the FLASH / CUDNN backend forced, on the same K/V laid out
               contiguously (B, Hq, ctx, D) with the kv heads expanded to Hq (so they read Hq/Hkv times
               more bytes); skipped when that copy would not fit in memory.
Every implementation is captured in a CUDA graph of `reps` calls (the engine replays decode steps as
graphs) and timed with CUDA events over replays; calls rotate over several input sets when one set
fits in L2, so the cache is read from HBM. Bar: the median over decode cases with >= 4 MB of KV of
copy_floor / minillm >= 0.8.
Prefill cases (batch x prefix + new chunk, 32/8 D128): minillm.paged_attention vs
minillm.flash_attention_varlen on the same K/V stored contiguously (`contiguous`), and SDPA.
  python bench/bench_decode_attention.py [--quick]
Writes bench/results/<gpu>/decode_attention.json (or $OUT/decode_attention.json when OUT is set).
"""
import argparse
import contextlib
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

L2_BYTES = 50 * 2**20
P = minillm.KV_PAGE_SIZE
D = 128
MAX_KV_BYTES = 8 * 2**30  # per case, minillm's cache (one set)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small subset")
    ap.add_argument("--out", default=None, help="JSON path (default: $OUT/decode_attention.json or bench/results/<gpu>/)")
    return ap.parse_args()


def copy_bandwidth():
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) per second, best of 5."""
    n = 2**30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3)
    del src, dst
    return 2 * n / best


def graph_time_us(fn, reps, ctx=contextlib.nullcontext):
    """Microseconds per call: `reps` calls captured in one CUDA graph, median over replays. Falls back
    to eager calls (events around `reps` calls) when the function cannot be captured."""
    with ctx():
        fn()
        fn()
        torch.cuda.synchronize()
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(reps):
                    fn()
            run = g.replay
        except RuntimeError:
            torch.cuda.synchronize()

            def run():
                for _ in range(reps):
                    fn()
        run()
        times = []
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) * 1e3 / reps)
    return statistics.median(times)


def make_cache(batch, ctx, hkv, gen):
    """A shuffled paged cache holding `batch` sequences of `ctx` tokens (and nothing else)."""
    pages = (ctx + P - 1) // P
    kc = torch.randn(batch * pages, P, hkv, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    vc = torch.randn_like(kc)
    bt = torch.randperm(batch * pages, device="cuda", generator=gen).int().view(batch, pages)
    return kc, vc, bt


def gather(cache, bt, ctx, hq):
    """(B, pages) block table -> contiguous (B, Hq, ctx, D) with the kv heads expanded."""
    B = bt.shape[0]
    x = cache[bt.long()].reshape(B, -1, cache.shape[2], D)[:, :ctx]  # (B, ctx, Hkv, D)
    return x.repeat_interleave(hq // cache.shape[2], dim=2).transpose(1, 2).contiguous()


def decode_grid(quick):
    if quick:
        batches, ctxs = [1, 32, 128], [1024, 8192, 32768]
    else:
        batches, ctxs = [1, 4, 16, 32, 64, 128, 256], [512, 1024, 2048, 4096, 8192, 16384, 32768]
    for hq, hkv in ((32, 8), (16, 16), (32, 4)):
        for b in batches:
            for c in ctxs:
                yield b, c, hq, hkv


def decode_case(B, ctx, hq, hkv, copy_bw, gen):
    kv_bytes = 2 * B * ctx * hkv * D * 2
    nsets = max(1, min(4, math.ceil(2 * L2_BYTES / kv_bytes)))
    sets = []
    for _ in range(nsets):
        kc, vc, bt = make_cache(B, ctx, hkv, gen)
        q = torch.randn(B, hq, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        lens = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
        sets.append((q, kc, vc, bt, lens))
    it = {"i": 0}

    def run_minillm():
        it["i"] = (it["i"] + 1) % nsets
        q, kc, vc, bt, lens = sets[it["i"]]
        return minillm.paged_attention(q, kc, vc, bt, lens, check=False, max_query_len=1, max_context_len=ctx)

    # Correctness: the checked call agrees with the unchecked one, and with SDPA on set 0.
    q, kc, vc, bt, lens = sets[0]
    ref = minillm.paged_attention(q, kc, vc, bt, lens)
    bytes_moved = kv_bytes + 2 * B * hq * D * 2  # K, V read; q read; out written
    row = dict(batch=B, context=ctx, heads=hq, kv_heads=hkv, head_dim=D, kv_bytes=kv_bytes,
               copy_floor=bytes_moved / copy_bw * 1e6)
    reps = max(2, min(50, int(1e4 / max(1.0, row["copy_floor"]))))  # about 10 ms of work per replay
    row["minillm"] = graph_time_us(run_minillm, reps)
    exp_bytes = 2 * B * ctx * hq * D * 2
    free, _ = torch.cuda.mem_get_info()
    if 2 * exp_bytes * min(nsets, 2) < 0.4 * free:  # gather's temporaries included
        psets = []
        for i in range(min(nsets, 2)):
            q_, kc_, vc_, bt_, _ = sets[i]
            psets.append((q_[:, :, None, :], gather(kc_, bt_, ctx, hq), gather(vc_, bt_, ctx, hq)))
        pit = {"i": 0}

        def run_sdpa():
            pit["i"] = (pit["i"] + 1) % len(psets)
            qq, kk, vv = psets[pit["i"]]
            return F.scaled_dot_product_attention(qq, kk, vv)

        o = F.scaled_dot_product_attention(*psets[0])[:, :, 0]
        row["max_abs_diff_vs_sdpa"] = (o.float() - ref.float()).abs().max().item()
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                row[name] = graph_time_us(run_sdpa, reps, lambda b=backend: sdpa_kernel(b))
            except RuntimeError as err:
                row[name + "_error"] = str(err).splitlines()[0][:200]
        del psets
    row["floor_ratio"] = row["copy_floor"] / row["minillm"]
    del sets
    return row


def prefill_case(B, prefix, chunk, hq, hkv, gen):
    """B sequences of prefix cached tokens + chunk new ones (causal within the chunk)."""
    ctx = prefix + chunk
    kc, vc, bt = make_cache(B, ctx, hkv, gen)
    lens = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
    cu = torch.arange(0, B + 1, dtype=torch.int32, device="cuda") * chunk
    q = torch.randn(B * chunk, hq, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = kc[bt.long()].reshape(B, -1, hkv, D)[:, :ctx].reshape(B * ctx, hkv, D).contiguous()
    v = vc[bt.long()].reshape(B, -1, hkv, D)[:, :ctx].reshape(B * ctx, hkv, D).contiguous()
    cu_k = torch.arange(0, B + 1, dtype=torch.int32, device="cuda") * ctx

    def run_minillm():
        return minillm.paged_attention(q, kc, vc, bt, lens, cu, check=False, max_query_len=chunk, max_context_len=ctx)

    def run_contiguous():
        return minillm.flash_attention_varlen(q, k, v, cu, cu_k, chunk, ctx, causal=True)

    qs = q.view(B, chunk, hq, D).transpose(1, 2)
    ks = k.view(B, ctx, hkv, D).repeat_interleave(hq // hkv, dim=2).transpose(1, 2)
    vs = v.view(B, ctx, hkv, D).repeat_interleave(hq // hkv, dim=2).transpose(1, 2)
    i = torch.arange(chunk, device="cuda")[:, None]
    j = torch.arange(ctx, device="cuda")[None, :]
    mask = j <= prefix + i

    def run_sdpa():
        return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)

    a, b = run_minillm(), run_contiguous()
    flops = 4 * B * hq * D * chunk * (prefix + (chunk + 1) / 2)
    row = dict(batch=B, prefix=prefix, chunk=chunk, heads=hq, kv_heads=hkv, head_dim=D,
               max_abs_diff_vs_contiguous=(a.float() - b.float()).abs().max().item())
    row["minillm"] = graph_time_us(run_minillm, 3)
    row["contiguous"] = graph_time_us(run_contiguous, 3)
    try:  # the mask rules out FLASH; the default choice (efficient / cuDNN / math) runs
        row["sdpa"] = graph_time_us(run_sdpa, 3)
    except RuntimeError as err:
        row["sdpa_error"] = str(err).splitlines()[0][:200]
    row["tflops"] = flops / row["minillm"] / 1e6
    row["vs_contiguous"] = row["contiguous"] / row["minillm"]
    return row


def main():
    args = parse_args()
    dev = torch.cuda.get_device_name()
    gen = torch.Generator(device="cuda").manual_seed(0)
    path = common.result_path(args.out, "decode_attention.json" if not args.quick else "decode_attention_quick.json", dev)
    meta = common.metadata("decode_attention", dev)
    t0 = time.time()
    copy_bw = copy_bandwidth()
    print(f"device: {dev}; copy bandwidth {copy_bw / 1e9:.0f} GB/s (read + write)", flush=True)
    decode, prefill, skipped = [], [], []

    def dump():
        common.write_json(path, dict(**meta, torch=torch.__version__, quick=args.quick, page_size=P,
                                     copy_bandwidth_gbs=copy_bw / 1e9, decode=decode, prefill=prefill,
                                     skipped=skipped, summary=summary()))

    def summary():
        big = [r["floor_ratio"] for r in decode if r["kv_bytes"] >= 4e6]
        s = dict(decode_cases=len(decode), decode_cases_ge_4mb=len(big))
        if big:
            s["median_floor_ratio_ge_4mb"] = statistics.median(big)
            s["min_floor_ratio_ge_4mb"] = min(big)
        for peer in ("sdpa_flash", "sdpa_cudnn"):
            sp = [r[peer] / r["minillm"] for r in decode if peer in r]
            if sp:
                s[f"median_speedup_vs_{peer}"] = statistics.median(sp)
        if prefill:
            s["median_prefill_vs_contiguous"] = statistics.median(r["vs_contiguous"] for r in prefill)
        return s

    hdr = (f"{'B':>4} {'ctx':>6} {'H':>6} {'KV MB':>8} | {'minillm':>8} {'floor':>8} {'flash':>8} {'cudnn':>8} us"
           f" | {'floor/minillm':>13} {'GB/s':>6}")
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    for B, ctx, hq, hkv in decode_grid(args.quick):
        kv = 2 * B * ctx * hkv * D * 2
        if kv > MAX_KV_BYTES:
            skipped.append(dict(batch=B, context=ctx, heads=hq, kv_heads=hkv, reason="KV > 8 GiB"))
            continue
        r = decode_case(B, ctx, hq, hkv, copy_bw, gen)
        decode.append(r)
        f = lambda k: f"{r[k]:8.1f}" if k in r else "       -"  # noqa: E731
        print(f"{B:>4} {ctx:>6} {hq:>3}/{hkv:<2} {kv / 1e6:>8.1f} | {f('minillm')} {f('copy_floor')} "
              f"{f('sdpa_flash')} {f('sdpa_cudnn')} | {r['floor_ratio']:>13.2f} {kv / r['minillm'] / 1e3:>6.0f}",
              flush=True)
        dump()  # after every case: a run cut short keeps what it measured
        torch.cuda.empty_cache()

    print("\nprefill over the cache (32/8 D128, causal within the chunk)")
    hdr = f"{'B':>3} {'prefix':>6} {'chunk':>6} | {'minillm':>9} {'contig':>9} {'sdpa':>9} us | {'TFLOP/s':>7} {'vs contig':>9}"
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    cases = [(1, 0, 2048), (1, 2048, 2048), (4, 2048, 2048), (1, 6144, 2048), (4, 0, 4096), (1, 4096, 4096),
             (2, 0, 8192), (8, 1024, 1024)]
    if args.quick:
        cases = cases[:3]
    for B, prefix, chunk in cases:
        r = prefill_case(B, prefix, chunk, 32, 8, gen)
        prefill.append(r)
        sd = f"{r['sdpa']:9.1f}" if "sdpa" in r else "        -"
        print(f"{B:>3} {prefix:>6} {chunk:>6} | {r['minillm']:9.1f} {r['contiguous']:9.1f} {sd} | "
              f"{r['tflops']:7.1f} {r['vs_contiguous']:9.2f}", flush=True)
        dump()
        torch.cuda.empty_cache()
    s = summary()
    print(f"\nsummary: {s}")
    ok = s.get("median_floor_ratio_ge_4mb", 0) >= 0.8
    print(f"bar (median copy_floor / minillm over decode cases with >= 4 MB KV >= 0.8): "
          f"{s.get('median_floor_ratio_ge_4mb', float('nan')):.3f} -> {'PASS' if ok else 'FAIL'}")
    print(f"wrote {path} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
