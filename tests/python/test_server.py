"""The OpenAI-compatible server (python/minillm/server.py) driven by the official `openai` client.

A tiny random model on the CPU backend with a real byte-level BPE tokenizer and a ChatML template
(tests/fixtures/chat_tokenizer): `python -m minillm serve` runs in a subprocess on a free loopback
port; the expected outputs come from minillm.LLM in this process on the same model."""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client (scripts/setup.sh)")
httpx = pytest.importorskip("httpx", reason="the server tests need httpx (scripts/setup.sh)")
pytest.importorskip("fastapi", reason="the server needs fastapi (scripts/setup.sh)")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (scripts/setup.sh)")

import minillm  # noqa: E402

from server_model import make_chat_model  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.abspath(minillm.__file__)).rsplit(os.sep, 1)[0]
MAX_MODEL_LEN = 256
LONG = 2000  # tokens of a request that is still running when its client goes away (the `bare` server)
KEY = "sekret"
PROMPTS = ["Hello world", "The engine runs", "MoE layers route tokens to experts", "A"]


class ServerProcess:
    def __init__(self, model_dir, *args, max_model_len=MAX_MODEL_LEN):
        # One OpenMP thread: the model is tiny, and OpenMP teams of this process and the server
        # spinning against each other on a 2-core machine make every step tens of milliseconds.
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minillm", "serve", "--model", model_dir, "--port", "0", "--device", "cpu",
             "--max-model-len", str(max_model_len), "--num-kv-tokens", "4096", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
            if m:
                self.url = m.group(1)
                break
        else:
            line = ""
        if not hasattr(self, "url"):
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines) + self.proc.stdout.read())
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                             timeout=60, **kw)

    def metrics(self):
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(minillm_\w+) ([-\d.e+]+)$", text, re.M)}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_chat_model(os.path.join(str(tmp_path_factory.mktemp("server")), "chat_model"))


@pytest.fixture(scope="module")
def server(model_dir):
    s = ServerProcess(model_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bare(model_dir, tmp_path_factory):
    """The same model without a chat template, served with an API key and a long context."""
    path = os.path.join(str(tmp_path_factory.mktemp("server")), "bare")
    shutil.copytree(model_dir, path)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    del cfg["chat_template"]
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    s = ServerProcess(path, "--api-key", KEY, max_model_len=LONG + 64)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llm(model_dir):
    """The reference engine, in this process; with one OpenMP thread while this module runs (as the
    servers have), since the model is tiny."""
    import ctypes

    try:
        gomp = ctypes.CDLL("libgomp.so.1")
        threads = gomp.omp_get_max_threads()
        gomp.omp_set_num_threads(1)
    except OSError:
        gomp = None
    yield minillm.LLM(model_dir, device="cpu", max_model_len=MAX_MODEL_LEN, num_kv_tokens=4096)
    if gomp is not None:
        gomp.omp_set_num_threads(threads)


def _greedy(llm, prompt_ids, max_tokens):
    """LLM.generate's greedy output: (token ids, finish reason)."""
    out = llm.generate([prompt_ids], minillm.SamplingParams(max_tokens=max_tokens, temperature=0.0))[0]
    return list(out.token_ids), out.finish_reason


def _greedy_ids(llm, prompt_ids, max_tokens):
    return _greedy(llm, prompt_ids, max_tokens)[0]


def _text(llm, ids):
    """The text the server should send for these generated ids: special tokens (EOS) left out."""
    return llm.tokenizer.decode(ids, skip_special_tokens=True)


def _model(server):
    return server.client().models.list().data[0].id


# ---------------------------------------------------------------------------------------------------


def test_models_health_metrics(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["chat_model"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    m = server.metrics()
    for key in ("minillm_requests_running", "minillm_requests_waiting", "minillm_kv_pages_used",
                "minillm_kv_pages_total", "minillm_prompt_tokens_total", "minillm_generation_tokens_total",
                "minillm_time_to_first_token_seconds_count", "minillm_inter_token_latency_seconds_count"):
        assert key in m, key
    assert m["minillm_kv_pages_total"] > 0


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_greedy_equals_generate(server, llm, prompt):
    ids = llm.tokenizer.encode(prompt)
    want, reason = _greedy(llm, ids, 20)
    c = server.client().completions.create(model="chat_model", prompt=prompt, max_tokens=20, temperature=0,
                                           extra_body={"return_token_ids": True})
    assert c.choices[0].token_ids == want
    assert c.choices[0].text == _text(llm, want)
    assert c.usage.prompt_tokens == len(ids) and c.usage.completion_tokens == len(want)
    assert c.choices[0].finish_reason == reason
    # the same prompt as token ids, streamed: the same text, in pieces
    pieces, reasons = [], []
    for chunk in server.client().completions.create(model="chat_model", prompt=ids, max_tokens=20, temperature=0,
                                                    stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == c.choices[0].text
    assert reasons[-1] == c.choices[0].finish_reason and all(r is None for r in reasons[:-1])


def test_chat_greedy_equals_generate(server, llm, model_dir):
    from minillm.chat_template import ChatTemplate

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    prompt = ChatTemplate.from_dir(model_dir).render(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = llm.tokenizer.encode(prompt, add_special_tokens=False)
    want, reason = _greedy(llm, ids, 24)
    client = server.client()
    r = client.chat.completions.create(model="chat_model", messages=messages, max_tokens=24, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == _text(llm, want)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want)
    assert r.choices[0].finish_reason == reason
    chunks = list(client.chat.completions.create(model="chat_model", messages=messages, max_tokens=24,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want)


def test_stop_strings_cut_before_the_stop_across_tokens(server, llm):
    client = server.client()
    params = minillm.SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    ids = list(llm.generate([llm.tokenizer.encode(PROMPTS[2])], params)[0].token_ids)
    text = _text(llm, ids)
    full = client.completions.create(model="chat_model", prompt=PROMPTS[2], max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert full.choices[0].text == text
    # a stop string across a token boundary: the last character of one token's text and the first of
    # the next one's, at its first occurrence in the text
    stop = None
    for i in range(2, len(ids) - 1):
        b = len(_text(llm, ids[:i]))
        s = text[b - 1:b + 1]
        if text[:b] == _text(llm, ids[:i]) and len(s) == 2 and "\ufffd" not in s and text.index(s) == b - 1:
            stop = s
            break
    assert stop is not None, text
    cut = text.index(stop)
    for stream in (False, True):
        r = client.completions.create(model="chat_model", prompt=PROMPTS[2], max_tokens=40, temperature=0,
                                      stop=[stop, "\x00never"], stream=stream, extra_body={"ignore_eos": True})
        if stream:
            chunks = list(r)
            got, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            got, reason = r.choices[0].text, r.choices[0].finish_reason
        assert got == text[:cut] and reason == "stop", (stream, stop, text)
    # a stop string that never occurs: the whole text
    r = client.completions.create(model="chat_model", prompt=PROMPTS[2], max_tokens=40, temperature=0,
                                  stop="\x00never", extra_body={"ignore_eos": True})
    assert r.choices[0].text == text and r.choices[0].finish_reason == "length"


def test_seed_reproduces(server):
    client = server.client()
    kw = dict(model="chat_model", prompt=PROMPTS[0], max_tokens=16, temperature=1.0, top_p=0.9,
              extra_body={"ignore_eos": True})
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    c = client.completions.create(seed=4321, **kw).choices[0].text
    assert a == b
    assert a != c
    s = "".join(ch.choices[0].text for ch in client.completions.create(seed=1234, stream=True, **kw))
    assert s == a


def test_logprobs(server, llm):
    client = server.client()
    c = client.completions.create(model="chat_model", prompt=PROMPTS[1], max_tokens=8, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == c.usage.completion_tokens == 8
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert v <= 0 and 1 <= len(top) <= 3
        assert all(x <= v + 1e-4 for x in top.values())  # greedy: the chosen token is the top one
    r = client.chat.completions.create(model="chat_model", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token


BAD = [
    # (path, body (dict, or raw bytes), status, param)
    ("/v1/completions", b'{"prompt": "x",', 400, None),
    ("/v1/completions", b'[1, 2]', 400, None),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 1.5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 400, "model"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": [7] * MAX_MODEL_LEN, "max_tokens": 1}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 100000]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, -2]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": -5}, 400, "top_k"),
    ("/v1/completions", {"prompt": "x", "min_p": 1.5}, 400, "min_p"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": -2.5}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, 400, "seed"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "beep"}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
     "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400,
     "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 2000}]}, 400, "messages"),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_requests_get_openai_errors(server, path, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_bad_requests_through_the_client_and_the_server_keeps_serving(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat_model", prompt="x", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    big = {"prompt": "x" * (2 << 20)}
    r = httpx.post(server.url + "/v1/completions", json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert client.completions.create(model="chat_model", prompt="x", max_tokens=2).usage.completion_tokens >= 1
    assert httpx.get(server.url + "/health").status_code == 200


def test_concurrent_streaming_clients(server, llm):
    n = 32
    prompts = [f"Request {i}: {PROMPTS[i % len(PROMPTS)]}" for i in range(n)]
    max_tokens = [8 + (i * 5) % 24 for i in range(n)]
    outs = llm.generate([llm.tokenizer.encode(p) for p in prompts],
                        [minillm.SamplingParams(max_tokens=m, temperature=0.0) for m in max_tokens])
    want = [_text(llm, o.token_ids) for o in outs]

    def one(i):
        client = server.client()
        chunks = client.completions.create(model="chat_model", prompt=prompts[i], max_tokens=max_tokens[i],
                                           temperature=0, stream=True)
        return "".join(c.choices[0].text for c in chunks)

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        got = list(pool.map(one, range(n), timeout=120))
    assert got == want
    m = server.metrics()
    assert m["minillm_requests_running"] == 0 and m["minillm_kv_pages_used"] == 0


def _wait_idle(server, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = server.metrics()
        if m["minillm_requests_running"] == 0 and m["minillm_requests_waiting"] == 0 and m["minillm_kv_pages_used"] == 0:
            return m
        time.sleep(0.05)
    raise AssertionError(f"server not idle: {m}")


def _aborted(server):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    m = re.search(r'^minillm_requests_finished_total\{finish_reason="abort"\} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


LONG_BODY = {"model": "bare", "prompt": "Tell a long story", "max_tokens": LONG, "temperature": 0, "ignore_eos": True}
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_client_disconnect_aborts_and_frees_pages(bare):
    before, aborted = bare.metrics(), _aborted(bare)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", bare.url + "/v1/completions", json={**LONG_BODY, "stream": True},
                         headers=AUTH) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert all(line == "" or line.startswith("data: ") for line in got)
            mid = bare.metrics()
            assert mid["minillm_requests_running"] == 1 and mid["minillm_kv_pages_used"] > 0
        # the response is closed here before the stream finished: the server aborts the request
    after = _wait_idle(bare)
    assert _aborted(bare) == aborted + 1
    assert after["minillm_generation_tokens_total"] - before["minillm_generation_tokens_total"] < LONG


def test_client_disconnect_without_streaming_aborts(bare):
    import socket

    aborted = _aborted(bare)
    body = json.dumps(LONG_BODY).encode()
    host, port = bare.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.time() + 10
        while bare.metrics()["minillm_requests_running"] == 0 and time.time() < deadline:
            time.sleep(0.005)
        assert bare.metrics()["minillm_kv_pages_used"] > 0
    _wait_idle(bare)
    assert _aborted(bare) == aborted + 1


def test_curl_sse(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"model": "chat_model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                       "stream": True})
    out = subprocess.run([curl, "-sN", "-H", "Content-Type: application/json", "-d", body,
                          server.url + "/v1/chat/completions"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    events = [line[len("data: "):] for line in out.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in out.split("\n\n") if line)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[-1]["choices"][0]["finish_reason"]


def test_api_key_and_no_chat_template(bare):
    with pytest.raises(openai.AuthenticationError):
        bare.client().models.list()
    with pytest.raises(openai.AuthenticationError):
        bare.client(api_key="wrong").completions.create(model="bare", prompt="x", max_tokens=2)
    r = httpx.post(bare.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    client = bare.client(api_key=KEY)
    assert client.models.list().data[0].id == "bare"
    assert client.completions.create(model="bare", prompt="x", max_tokens=2).usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bare", messages=[{"role": "user", "content": "x"}])
    assert "chat template" in e.value.body["message"]
    assert httpx.get(bare.url + "/health").status_code == 200  # /health and /metrics need no key
    assert httpx.get(bare.url + "/metrics").status_code == 200


def test_sigterm_drains_running_requests(bare):
    """Last in this file: it stops the `bare` server. A stream that runs when SIGTERM comes runs to
    its end; then the server exits and refuses connections."""
    client = bare.client(api_key=KEY)
    stream = client.completions.create(model="bare", prompt="A long one", max_tokens=LONG, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True, "return_token_ids": True})
    chunks = [next(stream)]
    bare.proc.send_signal(signal.SIGTERM)
    chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(len(c.choices[0].token_ids) for c in chunks) == LONG
    assert bare.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert any("minillm serve: stopped" in line for line in bare.lines), bare.lines
    with pytest.raises(httpx.ConnectError):
        httpx.get(bare.url + "/health")
