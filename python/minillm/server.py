"""OpenAI-compatible HTTP server over minillm.LLM: `python -m minillm serve --model DIR`.

Endpoints: POST /v1/completions, POST /v1/chat/completions (server-sent events with "stream": true),
GET /v1/models, GET /health, GET /metrics (Prometheus text format).

Threads: the engine thread loops `llm.step()` (which releases the GIL while the C++ step runs) and
hands each step's outputs to the asyncio loop in one `call_soon_threadsafe`, which puts every
StepOutput on its request's queue. The request handlers (asyncio, uvicorn) validate, tokenize, add and
abort requests (the engine queues them for its next step), detokenize incrementally, apply stop
strings and format JSON; nothing else happens per token in Python.

Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for malformed JSON,
wrong types, out-of-range values, unknown models, prompts that do not fit the context; 401 without the
API key (when one is set); 413 for bodies over --max-body-bytes. A client that disconnects aborts its
request, and the engine frees its KV pages. SIGTERM stops accepting connections, lets running
requests finish, then exits.
"""
import argparse
import asyncio
import bisect
import hmac
import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

import minillm

from .chat_template import ChatTemplate, ChatTemplateError

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16


# ---------------------------------------------------------------------------------------------------
# Errors


class APIError(Exception):
    """An error answered as OpenAI does: HTTP status + {"error": {message, type, param, code}}."""

    def __init__(self, status, message, param=None, code=None, type=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             413: "invalid_request_error"}.get(status, "server_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message, param=None, code=None):
    return APIError(400, message, param, code)


def _validation_error(e: ValidationError):
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    # Union members appear in loc as their type names ("str", "list[int]"); keep the field path.
    path = [x for x in loc if not (x.startswith(("list[", "dict[")) or x in ("str", "int", "float", "bool"))]
    where = ".".join(path) or "body"
    return _bad(f"{where}: {err['msg']}", param=path[0] if path else None)


# ---------------------------------------------------------------------------------------------------
# Request bodies (strict types: "temperature": "hot" or "max_tokens": 1.5 is a 400)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingRequest(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool = False  # vLLM's extension: each choice also carries "token_ids"
    user: str | None = None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


class ChatRequest(_SamplingRequest):
    messages: list[dict[str, Any]]
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


def _in_range(value, name, lo, hi, lo_open=False):
    if value is None:
        return
    if value != value or (value <= lo if lo_open else value < lo) or value > hi:  # NaN fails too
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise _bad(f"{name} must be in {lo_s}, {hi}], got {value}", param=name)


# ---------------------------------------------------------------------------------------------------
# Metrics


class Histogram:
    def __init__(self, name, help, buckets):
        self.name, self.help, self.buckets = name, help, list(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v):
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self):
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for le, c in zip(self.buckets, self.counts):
            acc += c
            lines.append(f'{self.name}_bucket{{le="{le}"}} {acc}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.sum}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    def __init__(self):
        self.ttft = Histogram("minillm_time_to_first_token_seconds",
                              "Time from the request's arrival to its first generated token.",
                              [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                               7.5, 10.0, 20.0, 40.0, 80.0])
        self.itl = Histogram("minillm_inter_token_latency_seconds",
                             "Time between successive generated tokens of a request.",
                             [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                              0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5])
        self.e2e = Histogram("minillm_request_latency_seconds", "Time from the request's arrival to its end.",
                             [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0])
        self.finished = {}  # finish_reason -> count
        self.errors = {}  # HTTP status -> count

    def render(self, stats):
        def gauge(name, help, value, kind="gauge"):
            return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value}"]

        lines = []
        lines += gauge("minillm_requests_running", "Requests in the running batch.", stats.get("running", 0))
        lines += gauge("minillm_requests_waiting", "Requests waiting to be scheduled.", stats.get("waiting", 0))
        lines += gauge("minillm_kv_pages_used", "KV cache pages in use.", stats.get("kv_pages_used", 0))
        lines += gauge("minillm_kv_pages_total", "KV cache pages in all.", stats.get("kv_pages_total", 0))
        lines += gauge("minillm_prompt_tokens_total", "Prompt tokens processed.", stats.get("prompt_tokens", 0),
                       "counter")
        lines += gauge("minillm_generation_tokens_total", "Tokens generated.", stats.get("generation_tokens", 0),
                       "counter")
        if "preemptions" in stats:
            lines += gauge("minillm_preemptions_total", "Requests preempted (KV pages taken back, recomputed later).",
                           stats["preemptions"], "counter")
        if "steps" in stats:
            lines += gauge("minillm_engine_steps_total", "Engine steps run.", stats["steps"], "counter")
        lines += ["# HELP minillm_requests_finished_total Requests finished, by finish reason.",
                  "# TYPE minillm_requests_finished_total counter"]
        lines += [f'minillm_requests_finished_total{{finish_reason="{r}"}} {n}' for r, n in sorted(self.finished.items())]
        lines += ["# HELP minillm_http_errors_total Requests answered with an error, by HTTP status.",
                  "# TYPE minillm_http_errors_total counter"]
        lines += [f'minillm_http_errors_total{{status="{s}"}} {n}' for s, n in sorted(self.errors.items())]
        for h in (self.ttft, self.itl, self.e2e):
            lines += h.render()
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# The engine thread


class Handle:
    """One request inside the engine: its output queue (on the asyncio loop) and its engine id."""

    __slots__ = ("queue", "rid", "done")

    def __init__(self):
        self.queue = asyncio.Queue()
        self.rid = None
        self.done = False  # finished, aborted or failed: nothing more to tell the engine


class EngineLoop:
    """Runs llm.step() on its own thread and hands each step's outputs to the asyncio loop, which
    routes them to their requests' queues. submit() and abort() are called on the loop (the engine
    queues requests and aborts given while a step runs, and takes them in at the next step); they wake
    the thread so that it runs that step (an abort's pages return at it). The engine thread does no
    per-request Python work: between two steps the GPU waits for it."""

    def __init__(self, llm, loop):
        self.llm = llm
        self.loop = loop
        self.stats = dict(llm.stats())
        self.error = None  # the exception that stopped the thread, if any
        self._handles = {}  # engine request id -> Handle (the loop's thread only)
        self._cv = threading.Condition()
        self._kick = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="minillm-engine", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()

    @property
    def alive(self):
        return self._thread.is_alive()

    def submit(self, prompt_ids, params):
        """Adds a request (ValueError for one the engine refuses); its outputs arrive on .queue."""
        h = Handle()
        h.rid = self.llm.add_request(prompt_ids, params)
        self._handles[h.rid] = h
        self._wake()
        return h

    def abort(self, h):
        if h.done:
            return
        h.done = True
        if self._handles.pop(h.rid, None) is not None:
            self.llm.abort(h.rid)
            self._wake()

    def _wake(self):
        with self._cv:
            self._kick = True
            self._cv.notify()

    def _route(self, outs):
        """On the loop: each StepOutput to its request's queue (those of aborted requests are dropped)."""
        handles = self._handles
        for out in outs:
            h = handles.get(out.request_id)
            if h is not None:
                if out.finished:
                    del handles[out.request_id]
                h.queue.put_nowait(out)

    def _fail(self, error):
        for h in self._handles.values():
            h.queue.put_nowait(error)
        self._handles.clear()

    def _post(self, fn, arg):
        try:
            self.loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _run(self):
        llm = self.llm
        try:
            while True:
                with self._cv:
                    while not self._kick and not self._stop and not llm.has_unfinished():
                        self._cv.wait()
                    if self._stop:
                        break
                    self._kick = False
                outs = llm.step()
                if outs:
                    self._post(self._route, outs)
                self.stats = dict(llm.stats())
        except BaseException as e:  # noqa: BLE001 - the engine is broken: fail every request
            self.error = e
            self._post(self._fail, RuntimeError(f"engine failed: {e}"))
            raise


# ---------------------------------------------------------------------------------------------------
# Streaming one request's output: detokenize, stop strings, logprobs


class Delta:
    __slots__ = ("text", "token_ids", "logprobs", "finish_reason")

    def __init__(self):
        self.text = ""
        self.token_ids = []
        self.logprobs = []  # [(token_id, logprob, [(id, logprob), ...] or None)]
        self.finish_reason = None


class Generation:
    """Consumes one request's StepOutputs; `async for delta in gen` yields what can be sent: the text
    decoded so far (special tokens skipped), minus a tail that may still turn into a stop string;
    the output ends before the first stop string."""

    def __init__(self, server, handle, prompt_len, stops, stop_ids, want_logprobs, emit_ids, arrival):
        self.server = server
        self.emit_ids = emit_ids  # send deltas that carry token ids but no text yet
        self.handle = handle
        self.prompt_len = prompt_len
        self.stop_ids = stop_ids  # EOS and stop_token_ids: their text is not part of the output
        self.want_logprobs = want_logprobs
        self.arrival = arrival
        self.decoder = server.tokenizer.decoder(skip_special_tokens=True) if server.tokenizer is not None else None
        # Holds back text that may begin a stop string; the released text ends before the first one.
        self.matcher = minillm.StopStringMatcher(stops) if stops else None
        self.num_tokens = 0
        self.finish_reason = None
        self._last = None

    def _push_text(self, delta, piece):
        """Appends decoded text; True when a stop string ended the output."""
        if self.matcher is None:
            delta.text += piece
            return False
        delta.text += self.matcher.feed(piece)
        return self.matcher.stopped

    def _take(self, delta, out):
        ids = out.new_token_ids
        n = len(ids)
        if out.finished:
            self.handle.done = True  # the engine is done with it
        eos_last = out.finished and out.finish_reason == "stop" and n > 0 and ids[-1] in self.stop_ids
        lps = out.logprobs if self.want_logprobs else None
        tops = out.top_logprobs if self.want_logprobs else None
        for i in range(n):
            t = ids[i]
            self.num_tokens += 1
            delta.token_ids.append(t)
            if lps is not None:
                delta.logprobs.append((t, lps[i], tops[i] if tops else None))
            if self.decoder is None or (eos_last and i == n - 1):
                continue
            piece = self.decoder.push(t)
            if piece and self._push_text(delta, piece):
                return "stop"
        if out.finished:
            if self.decoder is not None:
                tail = self.decoder.flush()
                if tail and self._push_text(delta, tail):
                    return "stop"
            if self.matcher is not None:
                delta.text += self.matcher.flush()
            return out.finish_reason or "stop"
        return None

    def __aiter__(self):
        return self._run()

    async def _run(self):
        q = self.handle.queue
        metrics = self.server.metrics
        try:
            while True:
                items = [await q.get()]
                while not q.empty():
                    items.append(q.get_nowait())
                now = time.perf_counter()
                delta = Delta()
                before = self.num_tokens
                for out in items:
                    if isinstance(out, BaseException):
                        self.handle.done = True
                        raise out
                    reason = self._take(delta, out)
                    if reason is not None:
                        delta.finish_reason = reason
                        break
                got = self.num_tokens - before
                if got:
                    if self._last is None:
                        metrics.ttft.observe(now - self.arrival)
                        got -= 1
                    if got:
                        dt = (now - (self._last or now)) / got
                        for _ in range(got):
                            metrics.itl.observe(dt)
                    self._last = now
                if delta.finish_reason is not None:
                    self.finish_reason = delta.finish_reason
                    self.server.engine.abort(self.handle)  # a stop string: the engine stops it here
                    metrics.finished[self.finish_reason] = metrics.finished.get(self.finish_reason, 0) + 1
                    metrics.e2e.observe(now - self.arrival)
                    yield delta
                    return
                if delta.text or delta.logprobs or (self.emit_ids and delta.token_ids):
                    yield delta
        finally:
            if self.finish_reason is None:  # the client went away (or the engine failed)
                self.finish_reason = "abort"
                metrics.finished["abort"] = metrics.finished.get("abort", 0) + 1
            self.server.engine.abort(self.handle)


# ---------------------------------------------------------------------------------------------------
# The server


class _SSE(StreamingResponse):
    """A text/event-stream response that aborts its request however the response ends (client gone
    mid-stream included)."""

    def __init__(self, chunks, on_close):
        super().__init__(chunks, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            await self.body_iterator.aclose()


# One encoder for every chunk (json.dumps with non-default options builds a new one per call).
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Server:
    """Server(llm, model_name, api_key=None, chat_template=None, max_body_bytes=1 MiB, max_model_len=None,
    tokenizer=None (llm.tokenizer)).
    `.app` is the FastAPI application; the engine thread starts with the app's lifespan."""

    def __init__(self, llm, model_name, api_key=None, chat_template=None, max_body_bytes=1 << 20,
                 max_model_len=None, tokenizer=None, ready_message=None):
        self.llm = llm
        self.model_name = model_name
        self.api_key = api_key
        self.chat_template = chat_template
        self.max_body_bytes = max_body_bytes
        self.max_model_len = int(getattr(llm, "max_model_len", None) or max_model_len)
        self.tokenizer = tokenizer or llm.tokenizer
        self.eos_token_ids = set(getattr(llm, "eos_token_ids", None) or [])
        self.vocab_size = getattr(llm, "vocab_size", None) or (self.tokenizer.vocab_size if self.tokenizer else None)
        self.metrics = Metrics()
        self.engine = None
        self.created = int(time.time())
        self._token_text = {}
        self._ready_message = ready_message
        self.app = self._build_app()

    # -- plumbing ------------------------------------------------------------------------------------

    def _build_app(self):
        @asynccontextmanager
        async def lifespan(app):
            self.engine = EngineLoop(self.llm, asyncio.get_running_loop())
            self.engine.start()
            if self._ready_message:
                print(self._ready_message, flush=True)
            try:
                yield
            finally:
                self.engine.stop()
                if self._ready_message:
                    print("minillm serve: stopped", flush=True)

        app = FastAPI(title="minillm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(APIError)
        async def _api_error(request, e: APIError):
            self.metrics.errors[e.status] = self.metrics.errors.get(e.status, 0) + 1
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            return JSONResponse(e.body(), status_code=e.status, headers=headers)

        @app.exception_handler(Exception)
        async def _internal(request, e: Exception):
            self.metrics.errors[500] = self.metrics.errors.get(500, 0) + 1
            return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

        @app.get("/health")
        async def health():
            if self.engine is None or not self.engine.alive:
                return JSONResponse({"status": "engine stopped"}, status_code=503)
            return {"status": "ok"}

        @app.get("/metrics")
        async def metrics():
            return PlainTextResponse(self.metrics.render(self.engine.stats),
                                     media_type="text/plain; version=0.0.4")

        @app.get("/v1/models")
        async def models(request: Request):
            self._auth(request)
            return {"object": "list", "data": [self._model_card()]}

        @app.get("/v1/models/{name:path}")
        async def model(name: str, request: Request):
            self._auth(request)
            if name != self.model_name:
                raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
            return self._model_card()

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self._completions(request)

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self._chat(request)

        return app

    def _model_card(self):
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "minillm",
                "max_model_len": self.max_model_len}

    def _auth(self, request):
        if self.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, key = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    async def _body(self, request, model_cls):
        self._auth(request)
        limit = self.max_body_bytes
        length = request.headers.get("content-length")
        too_big = APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"malformed JSON body: {e}") from None
        if not isinstance(data, dict):
            raise _bad(f"the body must be a JSON object, got {type(data).__name__}")
        try:
            req = model_cls.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from None
        if req.model is not None and req.model != self.model_name:
            raise _bad(f"The model `{req.model}` does not exist (this server has `{self.model_name}`).",
                       param="model", code="model_not_found")
        return req

    # -- requests ------------------------------------------------------------------------------------

    def _params(self, req, prompt_len, max_tokens, logprobs, prompt_param, default_max_tokens=None):
        """Validates the sampling fields; returns (SamplingParams, stop strings, stop token ids)."""
        if prompt_len >= self.max_model_len:
            raise _bad(f"This model's maximum context length is {self.max_model_len} tokens. However, the prompt "
                       f"has {prompt_len} tokens, which leaves no room for the completion.", param=prompt_param,
                       code="context_length_exceeded")

        if (req.n or 1) != 1:
            raise _bad(f"n must be 1, got {req.n}", param="n")
        if (req.best_of or 1) != 1:
            raise _bad(f"best_of must be 1, got {req.best_of}", param="best_of")
        if req.logit_bias:
            raise _bad("logit_bias is not supported", param="logit_bias")
        _in_range(req.temperature, "temperature", 0.0, 2.0)
        _in_range(req.top_p, "top_p", 0.0, 1.0, lo_open=True)
        _in_range(req.min_p, "min_p", 0.0, 1.0)
        _in_range(req.presence_penalty, "presence_penalty", -2.0, 2.0)
        _in_range(req.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        _in_range(req.repetition_penalty, "repetition_penalty", 0.0, float("inf"), lo_open=True)
        _in_range(req.seed, "seed", 0, 2**63 - 1)
        top_k = req.top_k
        if top_k is not None and top_k < -1:
            raise _bad(f"top_k must be -1 or 0 (off) or a positive count, got {top_k}", param="top_k")
        if max_tokens is None:  # OpenAI's default: 16 for completions, the rest of the context for chat
            max_tokens = min(default_max_tokens or self.max_model_len, self.max_model_len - prompt_len)
        elif max_tokens < 1:
            raise _bad(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        if prompt_len + max_tokens > self.max_model_len:
            raise _bad(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                       f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in "
                       f"the completion). Please reduce the prompt or max_tokens.", param="max_tokens",
                       code="context_length_exceeded")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise _bad(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise _bad("stop strings must not be empty", param="stop")
        stop_token_ids = list(req.stop_token_ids or [])
        self._check_ids(stop_token_ids, "stop_token_ids")
        try:
            params = minillm.SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=0 if top_k in (None, -1) else top_k,
                min_p=req.min_p or 0.0,
                repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                seed=req.seed,
                stop_token_ids=stop_token_ids,
                ignore_eos=req.ignore_eos,
                logprobs=logprobs)
        except ValueError as e:
            raise _bad(str(e)) from None
        stop_ids = set(stop_token_ids) | (set() if req.ignore_eos else self.eos_token_ids)
        return params, stops, stop_ids

    def _check_ids(self, ids, param):
        v = self.vocab_size
        for t in ids:
            if t < 0 or (v is not None and t >= v):
                raise _bad(f"{param}: token id {t} is out of range [0, {v})", param=param)

    def _prompt_ids(self, prompt):
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise _bad(f"prompt: one prompt per request, got a list of {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise _bad("this model has no tokenizer: send the prompt as token ids", param="prompt")
            ids = list(self.tokenizer.encode(prompt))
        else:
            ids = list(prompt)
            self._check_ids(ids, "prompt")
        if not ids:
            raise _bad("prompt is empty", param="prompt")
        return ids

    def _chat_prompt(self, req):
        if self.chat_template is None:
            raise _bad(f"the model `{self.model_name}` has no chat template (tokenizer_config.json chat_template "
                       "or chat_template.jinja); use /v1/completions", param="messages",
                       code="chat_template_missing")
        if self.tokenizer is None:
            raise _bad("this model has no tokenizer", param="messages")
        if not req.messages:
            raise _bad("messages must not be empty", param="messages")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise _bad("response_format: only {\"type\": \"text\"} is supported", param="response_format")
        messages = []
        for i, m in enumerate(req.messages):
            role = m.get("role")
            if not isinstance(role, str):
                raise _bad(f"messages[{i}].role must be a string", param="messages")
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only, joined
                texts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise _bad(f"messages[{i}].content: only text parts are supported", param="messages")
                    texts.append(part["text"])
                content = "".join(texts)
            elif content is not None and not isinstance(content, str):
                raise _bad(f"messages[{i}].content must be a string, a list of text parts or null",
                           param="messages")
            messages.append({**m, "content": content})
        try:
            text = self.chat_template.render(messages, add_generation_prompt=req.add_generation_prompt
                                             and not req.continue_final_message, tools=req.tools,
                                             documents=req.documents,
                                             continue_final_message=req.continue_final_message,
                                             **(req.chat_template_kwargs or {}))
        except ChatTemplateError as e:
            raise _bad(str(e), param="messages") from None
        # As transformers' apply_chat_template(tokenize=True): the template writes the special tokens.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _start(self, prompt_ids, params, stops, stop_ids, want_logprobs, emit_ids, arrival):
        if self.engine is None or not self.engine.alive:
            raise APIError(503, "the engine is not running", type="server_error")
        try:
            h = self.engine.submit(prompt_ids, params)
        except ValueError as e:
            raise _bad(str(e)) from None
        return Generation(self, h, len(prompt_ids), stops, stop_ids, want_logprobs, emit_ids, arrival)

    def _token_str(self, t):
        s = self._token_text.get(t)
        if s is None:
            s = self.tokenizer.decode([t]) if self.tokenizer is not None else ""
            self._token_text[t] = s
        return s

    def _usage(self, gen):
        return {"prompt_tokens": gen.prompt_len, "completion_tokens": gen.num_tokens,
                "total_tokens": gen.prompt_len + gen.num_tokens}

    async def _collect(self, request, gen):
        """All of a non-streaming request's output; a client that goes away aborts it."""
        async def consume():
            whole = Delta()
            async for d in gen:
                whole.text += d.text
                whole.token_ids += d.token_ids
                whole.logprobs += d.logprobs
                whole.finish_reason = d.finish_reason
            return whole

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work = asyncio.ensure_future(consume())
        watch = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
            watch.cancel()
        if not work.done() or work.cancelled():
            self.engine.abort(gen.handle)
            return Response(status_code=499)
        return work.result()

    # -- /v1/completions -----------------------------------------------------------------------------

    def _completion_logprobs(self, entries, offset):
        tokens, token_lps, tops, offsets = [], [], [], []
        for t, lp, top in entries:
            s = self._token_str(t)
            tokens.append(s)
            token_lps.append(lp)
            tops.append({self._token_str(i): v for i, v in top} if top is not None else None)
            offsets.append(offset)
            offset += len(s)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}, offset

    async def _completions(self, request):
        arrival = time.perf_counter()
        req = await self._body(request, CompletionRequest)
        if req.echo:
            raise _bad("echo is not supported", param="echo")
        if req.suffix:
            raise _bad("suffix is not supported", param="suffix")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_LOGPROBS:
            raise _bad(f"logprobs must be in [0, {MAX_LOGPROBS}], got {req.logprobs}", param="logprobs")
        prompt_ids = self._prompt_ids(req.prompt)
        params, stops, stop_ids = self._params(req, len(prompt_ids), req.max_tokens, req.logprobs, "prompt", 16)
        gen = self._start(prompt_ids, params, stops, stop_ids, req.logprobs is not None, req.return_token_ids, arrival)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        want_lp = req.logprobs is not None

        if not req.stream:
            d = await self._collect(request, gen)
            if isinstance(d, Response):
                return d
            lp = self._completion_logprobs(d.logprobs, 0)[0] if want_lp else None
            choice = {"index": 0, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}
            if req.return_token_ids:
                choice["token_ids"] = d.token_ids
            return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                                 "choices": [choice], "usage": self._usage(gen)})

        include_usage = req.stream_options is not None and req.stream_options.include_usage
        head = f'data: {{"id":"{rid}","object":"text_completion","created":{created},"model":{_dumps(self.model_name)},"choices":[{{"index":0,"text":'

        async def chunks():
            offset = 0
            async for d in gen:
                if want_lp:
                    lp, offset = self._completion_logprobs(d.logprobs, offset)
                    lp = _dumps(lp)
                else:
                    lp = "null"
                reason = "null" if d.finish_reason is None else f'"{d.finish_reason}"'
                ids = f',"token_ids":{_dumps(d.token_ids)}' if req.return_token_ids else ""
                yield f'{head}{_dumps(d.text)},"logprobs":{lp},"finish_reason":{reason}{ids}}}]}}\n\n'

        return self._sse(chunks(), gen, rid, created, "text_completion", include_usage)

    def _sse(self, chunks, gen, rid, created, obj, include_usage):
        """The SSE response around a request's chunks: then the usage chunk when asked, an error chunk
        if the stream fails, and [DONE]. A client that goes away aborts the request."""
        async def stream():
            try:
                async for c in chunks:
                    yield c
                if include_usage:
                    yield "data: " + _dumps({"id": rid, "object": obj, "created": created, "model": self.model_name,
                                             "choices": [], "usage": self._usage(gen)}) + "\n\n"
            except Exception as e:  # noqa: BLE001 - reported in the stream
                yield "data: " + _dumps(APIError(500, str(e)).body()) + "\n\n"
            finally:
                await chunks.aclose()
            yield "data: [DONE]\n\n"

        return _SSE(stream(), lambda: self.engine.abort(gen.handle))

    # -- /v1/chat/completions ------------------------------------------------------------------------

    def _chat_logprobs(self, entries):
        content = []
        for t, lp, top in entries:
            s = self._token_str(t)
            content.append({"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")),
                            "top_logprobs": [{"token": (x := self._token_str(i)), "logprob": v,
                                              "bytes": list(x.encode("utf-8"))} for i, v in (top or [])]})
        return {"content": content, "refusal": None}

    async def _chat(self, request):
        arrival = time.perf_counter()
        req = await self._body(request, ChatRequest)
        if req.top_logprobs is not None:
            if not 0 <= req.top_logprobs <= MAX_LOGPROBS:
                raise _bad(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {req.top_logprobs}",
                           param="top_logprobs")
            if not req.logprobs:
                raise _bad("top_logprobs needs logprobs: true", param="top_logprobs")
        prompt_ids = self._chat_prompt(req)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params, stops, stop_ids = self._params(req, len(prompt_ids), max_tokens, logprobs, "messages")
        gen = self._start(prompt_ids, params, stops, stop_ids, req.logprobs, req.return_token_ids, arrival)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if not req.stream:
            d = await self._collect(request, gen)
            if isinstance(d, Response):
                return d
            choice = {"index": 0, "message": {"role": "assistant", "content": d.text},
                      "logprobs": self._chat_logprobs(d.logprobs) if req.logprobs else None,
                      "finish_reason": d.finish_reason}
            if req.return_token_ids:
                choice["token_ids"] = d.token_ids
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": self.model_name,
                                 "choices": [choice], "usage": self._usage(gen)})

        include_usage = req.stream_options is not None and req.stream_options.include_usage
        head = f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},"model":{_dumps(self.model_name)},"choices":[{{"index":0,"delta":'

        async def chunks():
            yield f'{head}{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}\n\n'
            async for d in gen:
                lp = _dumps(self._chat_logprobs(d.logprobs)) if req.logprobs else "null"
                reason = "null" if d.finish_reason is None else f'"{d.finish_reason}"'
                delta = f'{{"content":{_dumps(d.text)}}}' if d.text else "{}"
                ids = f',"token_ids":{_dumps(d.token_ids)}' if req.return_token_ids else ""
                yield f'{head}{delta},"logprobs":{lp},"finish_reason":{reason}{ids}}}]}}\n\n'

        return self._sse(chunks(), gen, rid, created, "chat.completion.chunk", include_usage)


# ---------------------------------------------------------------------------------------------------
# python -m minillm serve


def parse_args(argv):
    p = argparse.ArgumentParser(prog="minillm serve", description="OpenAI-compatible HTTP server over minillm.LLM.")
    p.add_argument("--model", required=True,
                   help="model directory (HF layout: config.json, safetensors, tokenizer), or what minillm.LLM "
                        "also takes: a preset name or a .json config (seeded random weights, no tokenizer)")
    p.add_argument("--tokenizer", default=None,
                   help="a directory whose tokenizer (and chat template) to use instead of the model's")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed when ready)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the directory's name)")
    p.add_argument("--chat-template", default=None, help="a Jinja chat template file replacing the model's own")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    p.add_argument("--num-kv-tokens", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-step-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--shutdown-timeout", type=float, default=None,
                   help="on SIGTERM, seconds to let running requests finish (default: as long as they take)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    args = p.parse_args(argv)
    for name in ("max_model_len", "num_kv_tokens", "max_num_seqs", "max_step_tokens", "max_body_bytes"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in [0, 65535], got {args.port}")
    return args


def serve(argv=None):
    args = parse_args(argv)
    import uvicorn

    text_dir = args.tokenizer or (args.model if os.path.isdir(args.model) else None)
    try:
        tokenizer = minillm.Tokenizer(args.tokenizer) if args.tokenizer else None
        stock = ChatTemplate.from_dir(text_dir) if text_dir else None
        template = stock
        if args.chat_template is not None:
            with open(args.chat_template, encoding="utf-8") as f:
                template = ChatTemplate(f.read(), stock.special_tokens if stock is not None else {})
        llm = minillm.LLM(args.model, device=args.device, max_model_len=args.max_model_len,
                          gpu_memory_fraction=args.gpu_memory_fraction, num_kv_tokens=args.num_kv_tokens,
                          max_num_seqs=args.max_num_seqs, max_step_tokens=args.max_step_tokens, seed=args.seed)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    name = args.served_model_name or os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0]
    sock = socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    # The engine thread needs the GIL back as soon as a step returns; a short switch interval bounds
    # how long the HTTP thread can keep it.
    sys.setswitchinterval(0.0005)
    server = Server(llm, name, api_key=args.api_key, chat_template=template, max_body_bytes=args.max_body_bytes,
                    max_model_len=args.max_model_len, tokenizer=tokenizer,
                    ready_message=f"minillm serve: {name} on http://{host}:{port}/v1 "
                                  f"(chat template: {'yes' if template else 'none'})")
    config = uvicorn.Config(server.app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout,
                            access_log=args.log_level in ("info", "debug"))
    uvicorn.Server(config).run(sockets=[sock])
