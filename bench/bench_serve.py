"""Serving benchmark (like vLLM's `bench serve`): streaming clients against `python -m minillm serve`.

Random requests (prompt lengths uniform in --input-len, output lengths uniform in --output-len, token
ids uniform over the vocabulary, ignore_eos so that each request produces exactly its output length)
are sent with Poisson arrivals at each rate of --rates (requests/s; "inf" sends them all at once, i.e.
saturation) to a server started on a free loopback port, streamed over SSE. Per rate: request and
output-token throughput, time to first token (TTFT), inter-token latency (ITL: the gaps between a
request's chunks, a chunk of k tokens counting k gaps of gap/k), time per output token (TPOT:
(last - first) / (tokens - 1) per request) and end-to-end latency, p50/p99. The same requests run
offline first (minillm.LLM in its own process: all added at once, stepped until done), and the
saturation rate's output throughput is given as a fraction of the offline one. Each request must get
exactly its output length back; one that fails is counted (`failed`, `errors`) and the others still
run. The client is aiohttp when installed (the GPU machine has it: less work per event than httpx, so
that the client does not limit what is measured), else httpx.

Warm-up, outside every timed region: the engine replays one CUDA graph per decode batch bucket (1, 2,
4, ..., max_num_seqs), captured on first use. Offline, one decode step runs at every bucket before the
clock starts; the server first gets min(max_num_seqs, num_prompts) short requests at once, with
output lengths 2, 3, 4, ..., so that its batch shrinks through every bucket it can reach. The JSON is
written after the offline run and after every rate.

Model (default): the OLMoE-1B-7B shape with seeded random bf16 weights, as bench_generate.py's, with
OLMoE's own tokenizer (.deps/tokenizers/olmoe after scripts/setup.sh) so that the server detokenizes
every token as it would for the real model. --model takes a model directory, a preset or a .json config.

    PYTHONPATH=python python3 bench/bench_serve.py [--quick] [--model DIR] [--rates 4,8,16,inf]

--quick: 64 requests, rates 8 and inf (about 1 to 1.5 minutes on an H100, half of it loading the
model twice); the full run takes about 4 (at 4 requests/s, sending 256 requests alone takes 64 s).

Writes $OUT/serve.json when $OUT is set, else bench/results/<gpu>/serve.json (--out overrides). The
server needs FastAPI and uvicorn: on the GPU machine, carry the wheels of scripts/wheels.sh (gpu_check.sh
installs a carried .whl/).
"""
import argparse
import asyncio
import importlib.util
import json
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.append(os.path.join(ROOT, "python"))  # after $PYTHONPATH

import common  # noqa: E402

# OLMoE-1B-7B-0924's shape (../shared/TEST_MATERIAL.md), as bench_generate.py's; weights are seeded random.
OLMOE = {"name": "olmoe-1b-7b-shape", "vocab_size": 50304, "hidden_size": 2048, "num_layers": 16, "num_heads": 16,
         "num_kv_heads": 16, "head_dim": 128, "max_seq_len": 16384,
         "norm": {"type": "rmsnorm", "eps": 1e-5, "placement": "pre"}, "position": {"type": "rope", "theta": 10000},
         "moe": {"num_experts": 64, "top_k": 8, "ffn_size": 1024, "normalize_topk": False}, "dtype": "bf16"}


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
    # One decode step at every graph bucket (its first use captures the graph): request i gets
    # 2 + #{buckets > i} tokens, so the decoding batch goes max_num_seqs, max_num_seqs, ..., 2, 1.
    n, buckets = a.max_num_seqs, common.graph_buckets(a.max_num_seqs)
    vocab = llm.vocab_size
    llm.generate([[(7 * i + j) % vocab for j in range(4)] for i in range(n)],
                 [minillm.SamplingParams(max_tokens=2 + sum(b > i for b in buckets), temperature=0.0, ignore_eos=True)
                  for i in range(n)])
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


async def _lines_aiohttp(session, url, body):
    async with session.post(url, json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:300]!r}")
        async for raw in r.content:
            yield raw.decode().rstrip("\r\n")


async def _lines_httpx(session, url, body):
    async with session.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            yield line


async def one_request(lines, session, url, model, prompt, out_len, rec):
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "return_token_ids": True}
    t0 = time.perf_counter()
    times, counts = [], []
    async for line in lines(session, url + "/v1/completions", body):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        now = time.perf_counter()
        event = json.loads(line[6:])
        if "error" in event:  # the server reports a failure inside the stream (HTTP 200 already sent)
            raise RuntimeError(f"stream error: {event['error'].get('message')}")
        choice = event["choices"][0]
        k = len(choice.get("token_ids") or [])
        if k:
            times.append(now)
            counts.append(k)
    if sum(counts) != out_len:
        raise RuntimeError(f"a request for {out_len} tokens got {sum(counts)}")
    rec.append({"send": t0, "times": times, "counts": counts})


def _session(n):
    """An HTTP client for n streams at once: aiohttp when installed (less work per event), else httpx."""
    try:
        import aiohttp

        return _lines_aiohttp, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n),
                                                     timeout=aiohttp.ClientTimeout(total=None, sock_read=300))
    except ImportError:
        import httpx

        return _lines_httpx, httpx.AsyncClient(timeout=httpx.Timeout(300.0),
                                               limits=httpx.Limits(max_connections=n, max_keepalive_connections=64))


async def run_rate(url, model, reqs, rate, seed, max_concurrency):
    rng = random.Random(seed)
    n = max_concurrency or len(reqs)
    sem = asyncio.Semaphore(n)
    rec, errors = [], []
    lines, session = _session(n)
    async with session:
        async def go(prompt, out_len):
            async with sem:
                try:
                    await one_request(lines, session, url, model, prompt, out_len, rec)
                except Exception as e:  # noqa: BLE001 - counted; the other requests go on
                    errors.append(f"{type(e).__name__}: {e}"[:300])

        tasks = []
        t_start = time.perf_counter()
        t_next = t_start
        for prompt, out_len in reqs:
            if rate != math.inf:
                t_next += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            tasks.append(asyncio.create_task(go(prompt, out_len)))
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
    return {"rate": "inf" if rate == math.inf else rate, "requests": len(rec), "failed": len(errors),
            "errors": sorted(set(errors))[:5], "duration_s": round(dt, 3),
            "output_tokens": tokens, "request_throughput": len(rec) / dt, "output_throughput": tokens / dt,
            "ttft_ms_p50": ms(ttft, 50), "ttft_ms_p99": ms(ttft, 99), "itl_ms_p50": ms(itl, 50),
            "itl_ms_p99": ms(itl, 99), "tpot_ms_p50": ms(tpot, 50), "tpot_ms_p99": ms(tpot, 99),
            "e2e_ms_p50": ms(e2e, 50), "e2e_ms_p99": ms(e2e, 99)}


class Server:
    """`python -m minillm serve` on a free loopback port (--port 0: the server prints the one it got).
    A thread keeps reading its output (a full pipe would block the server) and keeps the last lines."""

    def __init__(self, a, timeout=600):
        cmd = [sys.executable, "-m", "minillm", "serve", "--model", a.model, "--port", "0", "--device", a.device,
               "--gpu-memory-fraction", str(a.gpu_memory_fraction), "--max-num-seqs", str(a.max_num_seqs),
               "--max-step-tokens", str(a.max_step_tokens), "--served-model-name", "bench"]
        if a.max_model_len:
            cmd += ["--max-model-len", str(a.max_model_len)]
        if a.tokenizer:
            cmd += ["--tokenizer", a.tokenizer]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                         os.path.join(ROOT, "python")])),
                   PYTHONUNBUFFERED="1")
        self.lines = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ready = queue.Queue()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        try:
            self.url = ready.get(timeout=timeout)
        except queue.Empty:
            self.url = None
        if self.url is None:
            self.stop()
            raise RuntimeError(f"the server did not start (exit code {self.proc.returncode}):\n" + self.log())

    def _read(self, ready):
        told = False
        for line in self.proc.stdout:
            self.lines = self.lines[-200:] + [line]
            m = None if told else re.search(r"on (http://[\d.]+:\d+)/v1", line)
            if m:
                told = True
                ready.put(m.group(1))
        if not told:
            ready.put(None)  # it exited before it was ready

    def log(self, n=40):
        return "".join(self.lines[-n:])

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM (running requests finish first), then SIGKILL if it has not exited within a minute."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
    p.add_argument("--model", default=None, help="model directory, preset or .json config (default: OLMoE-shaped)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory for the server (default: the model's; for the default model "
                        ".deps/tokenizers/olmoe when present)")
    p.add_argument("--quick", action="store_true", help="64 requests, rates 8 and inf")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per rate (default 256)")
    p.add_argument("--input-len", default="128:1024", help="uniform range of prompt lengths, MIN:MAX")
    p.add_argument("--output-len", default="128:512", help="uniform range of output lengths, MIN:MAX")
    p.add_argument("--rates", default=None, help="request rates (requests/s); inf: all at once (default 4,8,16,inf)")
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
    a.num_prompts = a.num_prompts or (64 if a.quick else 256)
    a.rates = a.rates or ("8,inf" if a.quick else "4,8,16,inf")
    input_len = tuple(int(x) for x in a.input_len.split(":"))
    output_len = tuple(int(x) for x in a.output_len.split(":"))
    rates = [math.inf if r.strip() == "inf" else float(r) for r in a.rates.split(",")]
    if a.model is None:
        a.model = os.path.join(os.environ.get("TMPDIR", "/tmp"), "olmoe-1b-7b-shape.json")
        with open(a.model, "w") as f:
            json.dump(OLMOE, f)
        olmoe_tok = os.path.join(ROOT, ".deps", "tokenizers", "olmoe")
        if a.tokenizer is None and os.path.isdir(olmoe_tok):
            a.tokenizer = olmoe_tok
        elif a.tokenizer is None and not a.offline_child:
            print(f"note: no {olmoe_tok}: the server runs without a tokenizer (no detokenization)", flush=True)

    import minillm

    if not a.offline_child:
        missing = [m for m in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(m) is None]
        if importlib.util.find_spec("aiohttp") is None and importlib.util.find_spec("httpx") is None:
            missing.append("aiohttp or httpx (the client)")
        if missing:
            sys.exit(f"error: the server bench needs {' and '.join(missing)} (scripts/setup.sh; on the GPU machine "
                     "carry the wheels of scripts/wheels.sh)")
    vocab = minillm.load_config(a.model)["vocab_size"]
    reqs = make_requests(a.num_prompts, vocab, input_len, output_len, a.seed)

    if a.offline_child:
        common.write_json(a.offline_child, offline(a, reqs))
        return

    dev = device_name(a.device)
    path = common.result_path(a.out, "serve.json", dev)
    doc = common.metadata("serve", dev)
    doc.update({"model": os.path.splitext(os.path.basename(os.path.normpath(a.model)))[0],
                "tokenizer": a.tokenizer and os.path.basename(os.path.normpath(a.tokenizer)), "num_prompts": a.num_prompts,
                "input_len": list(input_len), "output_len": list(output_len), "max_num_seqs": a.max_num_seqs,
                "max_step_tokens": a.max_step_tokens, "max_concurrency": a.max_concurrency, "offline": None,
                "online": []})

    def save():
        common.write_json(path, doc)

    save()
    off = None
    if not a.skip_offline:
        tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_serve_offline_{os.getpid()}.json")
        args = [*sys.argv[1:], "--model", a.model, "--num-prompts", str(a.num_prompts), "--offline-child", tmp]
        try:
            subprocess.run([sys.executable, __file__, *args], check=True)
            with open(tmp) as f:
                off = json.load(f)
            print(f"offline: {off['output_throughput']:.0f} output tok/s, {off['request_throughput']:.2f} req/s "
                  f"({off['duration_s']:.1f} s)", flush=True)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:  # the online part still runs
            print(f"offline failed: {e}", flush=True)
            doc["offline"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if off is not None:
            doc["offline"] = off
        save()

    try:
        server = Server(a)
    except RuntimeError as e:
        doc["server_error"] = str(e)[-4000:]
        save()
        raise
    try:
        # Warm-up: short requests, all at once, with output lengths 2, 3, 4, ...: the batch shrinks by
        # about one a step through every graph bucket up to the largest batch the rates can reach.
        n_warm = min(a.max_num_seqs, a.max_concurrency or a.num_prompts, a.num_prompts)
        warm = [([(7 * i + j) % vocab for j in range(4)], 2 + i) for i in range(n_warm)]
        t = time.perf_counter()
        try:
            w = asyncio.run(run_rate(server.url, "bench", warm, math.inf, a.seed, 0))
            print(f"warm-up: {n_warm} requests in {time.perf_counter() - t:.1f} s ({w['failed']} failed)", flush=True)
            if w["failed"]:
                doc["warmup_errors"] = w["errors"]
        except Exception as e:  # noqa: BLE001 - recorded; the rates still run
            doc["warmup_errors"] = [f"{type(e).__name__}: {e}"]
            print(f"warm-up failed: {e}", flush=True)
        for i, rate in enumerate(rates):
            try:
                r = asyncio.run(run_rate(server.url, "bench", reqs, rate, a.seed + i, a.max_concurrency))
            except Exception as e:  # noqa: BLE001 - recorded; the next rate still runs if the server lives
                r = {"rate": "inf" if rate == math.inf else rate, "error": f"{type(e).__name__}: {e}"}
            if off is not None and rate == math.inf and r.get("output_throughput"):
                r["vs_offline_output_throughput"] = r["output_throughput"] / off["output_throughput"]
            doc["online"].append(r)
            save()
            if "error" in r:
                print(f"rate {r['rate']}: {r['error']}", flush=True)
            else:
                print(f"rate {r['rate']}: {r['request_throughput']:.2f} req/s, {r['output_throughput']:.0f} tok/s, "
                      f"TTFT p50/p99 {r['ttft_ms_p50']}/{r['ttft_ms_p99']} ms, ITL p50/p99 {r['itl_ms_p50']}/"
                      f"{r['itl_ms_p99']} ms" + (f", {r['vs_offline_output_throughput']:.3f}x offline"
                                                  if "vs_offline_output_throughput" in r else "")
                      + (f", {r['failed']} FAILED: {r['errors'][:1]}" if r["failed"] else ""), flush=True)
            if not server.alive():
                doc["server_error"] = f"the server exited (code {server.proc.returncode}):\n" + server.log()
                save()
                print(doc["server_error"], flush=True)
                break
    finally:
        server.stop()
    if any(r.get("failed") or "error" in r for r in doc["online"]):
        doc["server_log_tail"] = server.log()
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
