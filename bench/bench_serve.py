"""Serving benchmark (like vLLM's `bench serve`): streaming clients against `python -m minillm serve`.

Random requests (prompt lengths uniform in --input-len, output lengths uniform in --output-len, token
ids uniform over the vocabulary, ignore_eos so that each request produces exactly its output length)
are sent with Poisson arrivals at each rate of --rates (requests/s; "inf" sends them all at once, i.e.
saturation) to a server started on a free loopback port, streamed over SSE. Per rate: request and
output-token throughput, time to first token (TTFT), inter-token latency (ITL: the gaps between a
request's tokens, a chunk of k tokens counting k gaps of gap/k) and time per output token (TPOT:
(last - first) / (tokens - 1) per request), p50/p99. The same requests run offline first (minillm.LLM in
its own process: add all, step until done) for the overhead of the server at saturation.

    python3 bench/bench_serve.py --model DIR                          # an existing HF model directory
    python3 bench/bench_serve.py --make-olmoe /tmp/olmoe --model /tmp/olmoe   # a random OLMoE-1B-7B-shaped
                                                                      # model made first with transformers

Writes bench/results/<gpu>/serve.json (or $OUT/serve.json; --out overrides). The server needs FastAPI
and uvicorn: on a machine without network, carry the wheels of scripts/wheels.sh.
"""
import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.append(os.path.join(ROOT, "python"))  # after $PYTHONPATH

import common  # noqa: E402

# OLMoE-1B-7B-0924's shape (../shared/TEST_MATERIAL.md); weights are random.
OLMOE = dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
             num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
             max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5, norm_topk_prob=False,
             tie_word_embeddings=False)


def make_olmoe(out_dir, tokenizer_dir):
    """A random OLMoE-1B-7B-shaped model written by transformers (bf16), unless out_dir has one, with
    the tokenizer files of tokenizer_dir (OLMoE's own GPT-NeoX BPE: .deps/tokenizers/olmoe after
    scripts/setup.sh) so that the server detokenizes as it would for the real model."""
    if tokenizer_dir and os.path.isdir(tokenizer_dir):
        os.makedirs(out_dir, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copy(os.path.join(tokenizer_dir, name), out_dir)
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return
    import torch
    import transformers

    cfg = transformers.OlmoeConfig(**OLMOE)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.OlmoeForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir, max_shard_size="4GB")
    print(f"made {out_dir}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters", flush=True)
    del model


def make_requests(n, vocab, input_len, output_len, seed):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        p = rng.randint(*input_len)
        reqs.append(([rng.randrange(vocab) for _ in range(p)], rng.randint(*output_len)))
    return reqs


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(q / 100 * len(xs))) - 1)]


def engine_args(a):
    return dict(device=a.device, max_model_len=a.max_model_len, gpu_memory_fraction=a.gpu_memory_fraction,
                max_num_seqs=a.max_num_seqs, max_step_tokens=a.max_step_tokens)


# ---------------------------------------------------------------------------------------------------
# Offline: the engine alone, all requests added at once (run in a child process: it owns the GPU).


def offline(a, reqs):
    import minillm

    llm = minillm.LLM(a.model, **engine_args(a))
    warm = minillm.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    llm.generate([reqs[0][0]], warm)
    t0 = time.perf_counter()
    for prompt, out_len in reqs:
        llm.add_request(prompt, minillm.SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True))
    tokens = 0
    while llm.has_unfinished():
        for o in llm.step():
            tokens += len(o.new_token_ids)
    dt = time.perf_counter() - t0
    return {"duration_s": dt, "output_tokens": tokens, "request_throughput": len(reqs) / dt,
            "output_throughput": tokens / dt}


# ---------------------------------------------------------------------------------------------------
# Online: streaming clients


async def one_request(http, url, model, prompt, out_len, t_send, rec):
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "return_token_ids": True}
    t0 = time.perf_counter()
    times, counts = [], []
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            choice = json.loads(line[6:])["choices"][0]
            k = len(choice.get("token_ids") or [])
            if k:
                times.append(now)
                counts.append(k)
    rec.append({"send": t0, "scheduled": t_send, "times": times, "counts": counts})


async def run_rate(url, model, reqs, rate, seed, max_concurrency):
    import httpx

    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=max_concurrency or len(reqs), max_keepalive_connections=64)
    sem = asyncio.Semaphore(max_concurrency or len(reqs))
    rec = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        async def go(prompt, out_len, t_send):
            async with sem:
                await one_request(http, url, model, prompt, out_len, t_send, rec)

        tasks = []
        t_start = time.perf_counter()
        t_next = t_start
        for prompt, out_len in reqs:
            if rate != math.inf:
                t_next += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            tasks.append(asyncio.create_task(go(prompt, out_len, time.perf_counter())))
        await asyncio.gather(*tasks)
        t_end = time.perf_counter()
    ttft, itl, tpot, e2e = [], [], [], []
    tokens = 0
    for r in rec:
        n = sum(r["counts"])
        tokens += n
        ttft.append(r["times"][0] - r["send"])
        e2e.append(r["times"][-1] - r["send"])
        prev = r["times"][0]
        for t, k in zip(r["times"][1:], r["counts"][1:]):
            itl += [(t - prev) / k] * k
            prev = t
        if n > 1:
            tpot.append((r["times"][-1] - r["times"][0]) / (n - 1))
    dt = t_end - t_start
    ms = lambda xs, q: None if not xs else round(1000 * pct(xs, q), 3)  # noqa: E731
    return {"rate": "inf" if rate == math.inf else rate, "requests": len(rec), "duration_s": round(dt, 3),
            "output_tokens": tokens, "request_throughput": len(rec) / dt, "output_throughput": tokens / dt,
            "ttft_ms_p50": ms(ttft, 50), "ttft_ms_p99": ms(ttft, 99), "itl_ms_p50": ms(itl, 50),
            "itl_ms_p99": ms(itl, 99), "tpot_ms_p50": ms(tpot, 50), "tpot_ms_p99": ms(tpot, 99),
            "e2e_ms_p50": ms(e2e, 50), "e2e_ms_p99": ms(e2e, 99)}


def start_server(a):
    cmd = [sys.executable, "-m", "minillm", "serve", "--model", a.model, "--port", "0", "--device", a.device,
           "--gpu-memory-fraction", str(a.gpu_memory_fraction), "--max-num-seqs", str(a.max_num_seqs),
           "--max-step-tokens", str(a.max_step_tokens), "--served-model-name", "bench"]
    if a.max_model_len:
        cmd += ["--max-model-len", str(a.max_model_len)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                     os.path.join(ROOT, "python")])),
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"on (http://[\d.]+:\d+)/v1", line)
        if m:
            return proc, m.group(1)
    raise RuntimeError("the server did not start:\n" + "".join(lines))


def device_name(device):
    if device == "cpu":
        return "cpu"
    try:
        out = subprocess.check_output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], text=True)
        return out.strip().split("\n")[0]
    except (OSError, subprocess.CalledProcessError):
        return "cpu"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--make-olmoe", metavar="DIR", help="first write a random OLMoE-1B-7B-shaped model to DIR")
    p.add_argument("--tokenizer-dir", default=os.path.join(ROOT, ".deps", "tokenizers", "olmoe"),
                   help="tokenizer files for --make-olmoe (default: .deps/tokenizers/olmoe)")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", default="128:1024", help="uniform range of prompt lengths, MIN:MAX")
    p.add_argument("--output-len", default="128:512", help="uniform range of output lengths, MIN:MAX")
    p.add_argument("--rates", default="4,8,16,inf", help="request rates (requests/s); inf: all at once")
    p.add_argument("--max-concurrency", type=int, default=0, help="clients in flight at most (0: no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-step-tokens", type=int, default=8192)
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--offline-child", help=argparse.SUPPRESS)  # internal: run offline, write JSON here
    p.add_argument("--out", default=None)
    a = p.parse_args()
    input_len = tuple(int(x) for x in a.input_len.split(":"))
    output_len = tuple(int(x) for x in a.output_len.split(":"))
    rates = [math.inf if r.strip() == "inf" else float(r) for r in a.rates.split(",")]

    if a.make_olmoe:
        make_olmoe(a.make_olmoe, a.tokenizer_dir)
    with open(os.path.join(a.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    reqs = make_requests(a.num_prompts, vocab, input_len, output_len, a.seed)

    if a.offline_child:
        common.write_json(a.offline_child, offline(a, reqs))
        return

    off = None
    if not a.skip_offline:
        tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_serve_offline_{os.getpid()}.json")
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--offline-child", tmp], check=True)
        with open(tmp) as f:
            off = json.load(f)
        os.remove(tmp)
        print(f"offline: {off['output_throughput']:.0f} output tok/s, {off['request_throughput']:.2f} req/s "
              f"({off['duration_s']:.1f} s)", flush=True)

    proc, url = start_server(a)
    results = []
    try:
        asyncio.run(run_rate(url, "bench", reqs[:4], math.inf, a.seed, 0))  # warm-up
        for i, rate in enumerate(rates):
            r = asyncio.run(run_rate(url, "bench", reqs, rate, a.seed + i, a.max_concurrency))
            if off is not None and rate == math.inf:
                r["vs_offline_output_throughput"] = r["output_throughput"] / off["output_throughput"]
            results.append(r)
            print(f"rate {r['rate']}: {r['request_throughput']:.2f} req/s, {r['output_throughput']:.0f} tok/s, "
                  f"TTFT p50/p99 {r['ttft_ms_p50']}/{r['ttft_ms_p99']} ms, ITL p50/p99 {r['itl_ms_p50']}/"
                  f"{r['itl_ms_p99']} ms" + (f", {r['vs_offline_output_throughput']:.3f}x offline"
                                              if "vs_offline_output_throughput" in r else ""), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    dev = device_name(a.device)
    doc = common.metadata("serve", dev)
    doc.update({"model": os.path.basename(os.path.normpath(a.model)), "num_prompts": a.num_prompts,
                "input_len": list(input_len), "output_len": list(output_len), "max_num_seqs": a.max_num_seqs,
                "max_step_tokens": a.max_step_tokens, "offline": off, "online": results})
    path = common.result_path(a.out, "serve.json", dev)
    common.write_json(path, doc)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
