#!/usr/bin/env python3
"""Generation benchmark: minillm.LLM (continuous batching, paged KV cache, CUDA-graph decode,
device sampling) against transformers' generate in the same process and against the roofline.

Models: "olmoe" (OLMoE-1B-7B-shaped: hidden 2048, 16 layers, 16 heads of 128, 64 experts top-8,
ffn 1024, vocab 50304; random bf16 weights; qk-norm left out, it reads no weights worth counting)
and the "medium" preset (minillm only: transformers has no post-LayerNorm MoE of that shape).

Cases (keys: model, batch, context = prompt tokens; implementations: minillm, hf_transformers,
roofline):
  decode     batch 1 at context 128 / 2048 / 8192: `ms` = milliseconds per output token (the steps
             after the first token, 128 of them), `tok_s`. roofline = (active weight bytes + KV bytes
             read per token) / the copy bandwidth measured in this run (bytes read + written of a
             1 GiB device copy / time). hf_transformers (contexts 128 / 2048): (time of a generate
             of 33 tokens - time of one of 1 token) / 32 (16 + 1 and 16 with --quick).
  offline    512 requests submitted at once, prompts uniform in 128..1024, outputs uniform in
             128..512 (ignore_eos): wall seconds, output tok/s, TTFT and per-token latency (TPOT:
             (finish - first token) / (tokens - 1)) p50 / p99. hf_transformers: its best batched
             generate (batch 64, 512 in, 64 out) as output tok/s.
  concurrency  closed loop with 1 / 8 / 32 / 128 requests in flight (a new one when one finishes),
             1024 in / 256 out, 2 x concurrency requests (at least 8): output tok/s, TTFT, TPOT.
  moe_crossover  batch 32..128 decoding together (128 in, 64 out): the median time of the steps in
             which all of them decode (`step_ms`, timed around llm.step()) on both sides of the MoE
             layer's switch from its decode kernel (<= 64 tokens a step) to the grouped GEMM. A
             decode step replays the CUDA graph of the smallest bucket (1, 2, 4, ..., 128, 256) that
             holds the batch, padded with dummy rows that run through the MoE layer too:
             `graph_batch` is that bucket, and `moe_path` follows it (batch 65 runs 128 rows).
Before any case, one decode step runs at every graph bucket, so that no graph capture falls in a
timed region. Every case is written to the JSON as soon as it is measured; a failing case records
its error and the others still run.

--quick: contexts 128 / 2048, 64 offline requests, concurrency 1 / 8 / 32, crossover batches
48 / 64 / 65 / 96 (about 2 minutes on an H100, a third of it transformers; the full run about 4).

Run: PYTHONPATH=python python3 bench/bench_generate.py [--quick] [--models olmoe,medium] [--no-hf]
Writes $OUT/generate.json when $OUT is set, else bench/results/<gpu>/generate.json.
"""
import argparse
import gc
import os
import random
import statistics
import sys
import time
import traceback

import torch

import minillm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

OLMOE = {"name": "olmoe-1b-7b-shape", "vocab_size": 50304, "hidden_size": 2048, "num_layers": 16, "num_heads": 16,
         "num_kv_heads": 16, "head_dim": 128, "max_seq_len": 16384,
         "norm": {"type": "rmsnorm", "eps": 1e-5, "placement": "pre"}, "position": {"type": "rope", "theta": 10000},
         "moe": {"num_experts": 64, "top_k": 8, "ffn_size": 1024, "normalize_topk": False}, "dtype": "bf16"}


def copy_bandwidth():
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        s.record()
        dst.copy_(src)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    del src, dst
    torch.cuda.empty_cache()  # else torch's caching allocator keeps 2 GiB away from minillm's KV pool
    return 2 * (1 << 30) / (statistics.median(times) / 1e3)  # bytes read + written per second


MAX_NUM_SEQS = 256  # minillm.LLM's default, passed explicitly: the decode graph buckets follow from it


def graph_batch(batch, max_num_seqs=MAX_NUM_SEQS):
    """The bucket a decode step of `batch` sequences is padded to."""
    return next(b for b in common.graph_buckets(max_num_seqs) if b >= batch)


def warm_graphs(llm, vocab, max_num_seqs=MAX_NUM_SEQS):
    """Runs one decode step at every graph bucket (the first use of a bucket runs eagerly and
    captures its graph), so that no capture falls in a timed region. Request i gets
    max_tokens = 2 + #{buckets > i}: after the prefill step the number of decoding sequences goes
    max_num_seqs, max_num_seqs, ..., 4, 2, 1, one step each (~12 steps in all)."""
    buckets = common.graph_buckets(max_num_seqs)
    prompts = [[(7 * i + j) % vocab for j in range(4)] for i in range(max_num_seqs)]
    params = [minillm.SamplingParams(max_tokens=2 + sum(b > i for b in buckets), temperature=0.0, ignore_eos=True)
              for i in range(max_num_seqs)]
    llm.generate(prompts, params)


def decode_bytes(cfg, context):
    """Bytes one batch-1 decode step reads: the active weights (bf16) and the KV cache."""
    H, L, V = cfg["hidden_size"], cfg["num_layers"], cfg["vocab_size"]
    D = cfg.get("head_dim", H // cfg["num_heads"])
    q, kv = cfg["num_heads"] * D, cfg.get("num_kv_heads", cfg["num_heads"]) * D
    m = cfg["moe"]
    per_layer = H * (q + 2 * kv) + q * H + m["num_experts"] * H + m["top_k"] * 3 * H * m["ffn_size"]
    weights = 2 * (L * per_layer + V * H + H)  # + lm_head and one embedding row
    return weights + 2 * L * 2 * context * kv


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None


def run_requests(llm, prompts, max_tokens, concurrency=None, decode_steps=None):
    """Submits the requests (all at once, or `concurrency` in flight) and steps until all finish.
    Returns wall seconds, output tokens, TTFTs and TPOTs (ms). decode_steps (a list), when given,
    gets (ms, batch) of every step in which all live requests decode (no prefill in the step)."""
    params = [minillm.SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in max_tokens]
    t0 = time.perf_counter()
    start, first, count, tpot, ttft = {}, {}, {}, [], []
    pending = list(range(len(prompts)))
    live = 0
    started = 0  # live requests that have their first token

    def submit():
        nonlocal live
        i = pending.pop(0)
        rid = llm.add_request(prompts[i], params[i])
        start[rid] = time.perf_counter()
        count[rid] = 0
        live += 1

    total = 0
    try:
        while pending and (concurrency is None or live < concurrency):
            submit()
        while live:
            pure_decode = started == live
            batch = live
            ts = time.perf_counter()
            outs = llm.step()
            if decode_steps is not None and pure_decode:
                decode_steps.append(((time.perf_counter() - ts) * 1e3, batch))
            for o in outs:
                if o.request_id not in count:
                    continue  # not one of ours
                now = time.perf_counter()
                n = len(o.new_token_ids)
                if n and count[o.request_id] == 0:
                    first[o.request_id] = now
                    ttft.append((now - start[o.request_id]) * 1e3)
                    started += 1
                count[o.request_id] += n
                total += n
                if o.finished:
                    live -= 1
                    c = count[o.request_id]
                    if c > 0:
                        started -= 1
                    if c > 1:
                        tpot.append((now - first[o.request_id]) * 1e3 / (c - 1))
                    if pending and concurrency is not None:
                        submit()
    except BaseException:
        # Leave the engine empty for the next case: abort what was submitted and step the aborts through.
        try:
            for rid in count:
                llm.abort(rid)
            while llm.has_unfinished():
                llm.step()
        except Exception:  # noqa: BLE001 - the engine itself is broken: the original error says more
            pass
        raise
    return time.perf_counter() - t0, total, ttft, tpot


def lat(ttft, tpot):
    return {"ttft_ms_p50": pct(ttft, 50), "ttft_ms_p99": pct(ttft, 99), "tpot_ms_p50": pct(tpot, 50),
            "tpot_ms_p99": pct(tpot, 99)}


def hf_model(cfg):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    hc = OlmoeConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                     intermediate_size=cfg["moe"]["ffn_size"], num_hidden_layers=cfg["num_layers"],
                     num_attention_heads=cfg["num_heads"], num_key_value_heads=cfg["num_kv_heads"],
                     num_experts=cfg["moe"]["num_experts"], num_experts_per_tok=cfg["moe"]["top_k"],
                     max_position_embeddings=cfg["max_seq_len"], norm_topk_prob=False, pad_token_id=0,
                     eos_token_id=None, bos_token_id=None)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = OlmoeForCausalLM(hc)
    finally:
        torch.set_default_dtype(torch.float32)
    if next(model.parameters()).dtype != torch.bfloat16:  # built in bf16 above; make sure of it
        model.to(torch.bfloat16)
    return model.eval()


def hf_generate_s(model, ids, new):
    """Seconds of one greedy transformers generate of exactly `new` tokens after the prompt ids."""
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
              pad_token_id=0)
    with torch.no_grad():
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, **kw)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + new, f"generate gave {out.shape[1] - ids.shape[1]} tokens, not {new}"
    return dt


def hf_warm(model, batch):
    ids = torch.randint(1, 50000, (batch, 16), device="cuda")
    hf_generate_s(model, ids, 4)


def hf_decode_ms(model, context, new):
    """Batch-1 milliseconds per output token after the first, as minillm's `ms` (TPOT): a generate of
    new + 1 tokens minus one of 1 token (the prefill and the first token), over new."""
    ids = torch.randint(1, 50000, (1, context), device="cuda")
    hf_generate_s(model, ids, 1)  # the first prefill of this length pays one-time costs: not in t1
    t1 = hf_generate_s(model, ids, 1)
    tn = hf_generate_s(model, ids, new + 1)
    return (tn - t1) * 1e3 / new


def hf_batched_tok_s(model, batch, context, new):
    """Output tokens per second of one batched generate (prefill included, as minillm's offline)."""
    ids = torch.randint(1, 50000, (batch, context), device="cuda")
    return batch * new / hf_generate_s(model, ids, new)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="olmoe,medium")
    ap.add_argument("--quick", action="store_true", help="fewer requests, contexts and batch sizes")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.cuda.get_device_name()
    path = common.result_path(args.out, "generate.json", device)
    bw = copy_bandwidth()
    doc = dict(common.metadata("generate", device), copy_bandwidth_gb_s=bw / 1e9, quick=args.quick, results=[])
    common.write_json(path, doc)

    def record(case, **vals):
        doc["results"].append(dict(case=case, **vals))
        common.write_json(path, doc)
        print(case, {k: v for k, v in vals.items() if k != "trace"}, flush=True)
        if "trace" in vals:
            print(vals["trace"], flush=True)

    def failed(case, e):
        record(case, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])

    rng = random.Random(0)
    contexts = [128, 2048] if args.quick else [128, 2048, 8192]
    n_offline = 64 if args.quick else 512
    for name in args.models.split(","):
        llm = None
        try:
            cfg = OLMOE if name == "olmoe" else minillm.load_config(name)
            vocab = cfg["vocab_size"]
            t = time.perf_counter()
            max_len = min(8192 + 160, cfg["max_seq_len"])
            llm = minillm.LLM(cfg, device="cuda", max_model_len=max_len, gpu_memory_fraction=0.85,
                              max_num_seqs=MAX_NUM_SEQS)
            print(f"{name}: engine ready in {time.perf_counter() - t:.1f} s, stats {llm.stats()}", flush=True)
        except Exception as e:
            failed({"model": name, "kind": "setup"}, e)
            llm = None
            gc.collect()
            continue
        try:
            t = time.perf_counter()
            warm_graphs(llm, vocab)
            print(f"{name}: decode graphs of {common.graph_buckets(MAX_NUM_SEQS)} captured in {time.perf_counter() - t:.1f} s", flush=True)
        except Exception as e:  # the cases still run (capturing their graphs as they go)
            failed({"model": name, "kind": "warmup"}, e)
        for ctx in contexts:
            ctx = min(ctx, max_len - 130)  # medium's max_seq_len is 8192: its longest case is 8062
            case = {"model": name, "kind": "decode", "batch": 1, "context": ctx}
            try:
                prompt = [rng.randrange(vocab) for _ in range(ctx)]
                wall, total, ttft, tpot = run_requests(llm, [prompt], [129])
                ms = tpot[0]
                roof_ms = decode_bytes(cfg, ctx) / bw * 1e3
                record(case, ms={"minillm": ms, "roofline": roof_ms}, tok_s={"minillm": 1e3 / ms, "roofline": 1e3 / roof_ms},
                       ttft_ms=ttft[0], fraction_of_roofline=roof_ms / ms)
            except Exception as e:
                failed(case, e)
        case = {"model": name, "kind": "offline", "requests": n_offline, "context": "128..1024", "output": "128..512"}
        try:
            prompts = [[rng.randrange(vocab) for _ in range(rng.randint(128, 1024))] for _ in range(n_offline)]
            outs = [rng.randint(128, 512) for _ in range(n_offline)]
            before = llm.stats()
            wall, total, ttft, tpot = run_requests(llm, prompts, outs)
            after = llm.stats()
            record(case, wall_s=wall, output_tokens=total, tok_s={"minillm": total / wall}, **lat(ttft, tpot),
                   steps=after["steps"] - before["steps"], preemptions=after["preemptions"] - before["preemptions"],
                   kv_pages_total=after["kv_pages_total"])
        except Exception as e:
            failed(case, e)
        for conc in ([1, 8, 32] if args.quick else [1, 8, 32, 128]):
            case = {"model": name, "kind": "concurrency", "batch": conc, "context": 1024, "output": 256}
            try:
                n = max(8, 2 * conc)
                prompts = [[rng.randrange(vocab) for _ in range(1024)] for _ in range(n)]
                wall, total, ttft, tpot = run_requests(llm, prompts, [256] * n, concurrency=conc)
                record(case, requests=n, wall_s=wall, output_tokens=total, tok_s={"minillm": total / wall},
                       **lat(ttft, tpot))
            except Exception as e:
                failed(case, e)
        # MoE at decode: the layer streams the experts once (decode kernel) up to 64 tokens a step and
        # switches to the grouped GEMM above; the step time on both sides of the switch. The MoE layer
        # sees the graph bucket's rows (padding included), so the path follows graph_batch.
        for batch in ([48, 64, 65, 96] if args.quick else [32, 48, 64, 65, 80, 96, 128]):
            case = {"model": name, "kind": "moe_crossover", "batch": batch, "context": 128, "output": 64}
            try:
                prompts = [[rng.randrange(vocab) for _ in range(128)] for _ in range(batch)]
                steps = []
                run_requests(llm, prompts, [64] * batch, decode_steps=steps)
                full = [ms for ms, b in steps if b == batch]
                step = statistics.median(full)
                gb = graph_batch(batch)
                record(case, step_ms=step, decode_steps=len(full), tok_s={"minillm": batch * 1e3 / step},
                       graph_batch=gb, moe_path="decode" if gb <= 64 else "grouped")
            except Exception as e:
                failed(case, e)
        llm = None  # frees the engine's weights and KV cache before the next model
        gc.collect()
        torch.cuda.empty_cache()
        if name == "olmoe" and not args.no_hf:
            model = None
            try:
                model = hf_model(cfg)
                hf_warm(model, 1)
                for ctx in contexts[:2]:
                    ms = hf_decode_ms(model, ctx, 16 if args.quick else 32)
                    record({"model": name, "kind": "decode", "batch": 1, "context": ctx},
                           ms={"hf_transformers": ms}, tok_s={"hf_transformers": 1e3 / ms})
                hf_warm(model, 64)
                tok_s = hf_batched_tok_s(model, 64, 512, 64)
                record({"model": name, "kind": "offline_hf_batched", "batch": 64, "context": 512, "output": 64},
                       tok_s={"hf_transformers": tok_s})
            except Exception as e:
                failed({"model": name, "kind": "hf"}, e)
            finally:
                del model
                gc.collect()
                torch.cuda.empty_cache()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
