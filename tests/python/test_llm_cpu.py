"""minillm.LLM on the CPU backend: greedy generation against a full recompute with the seed's
forward, streaming, seeded sampling, logprobs, stats and bad input."""
import threading

import numpy as np
import pytest

import minillm


@pytest.fixture(scope="module")
def llm():
    return minillm.LLM("tiny", device="cpu", num_kv_tokens=2048, max_step_tokens=24)


def test_greedy_matches_forward(llm):
    ref = minillm.InferenceEngine("tiny", device="cpu", max_batch=1, max_seq=128, seed=0)
    prompts = [[1, 2, 3], list(range(10, 60)), [7]]
    outs = llm.generate(prompts, minillm.SamplingParams(max_tokens=12, temperature=0.0, logprobs=1))
    for p, o in zip(prompts, outs):
        assert o.finish_reason == "length" and len(o.token_ids) == 12 and o.prompt_token_ids == p
        full = np.array([p + o.token_ids[:-1]], dtype=np.int32)
        logits = ref.forward(full)[0, len(p) - 1:]
        assert o.token_ids == logits.argmax(-1).tolist()
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        np.testing.assert_allclose(o.logprobs, logits.max(-1) - lse, atol=1e-4)
        assert [t[0][0] for t in o.top_logprobs] == o.token_ids


def test_stream_and_step(llm):
    params = minillm.SamplingParams(max_tokens=5, temperature=0.0)
    want = llm.generate([[4, 5, 6], [9]], params)
    got = {}
    for o in llm.stream([[4, 5, 6], [9]], params):
        assert isinstance(o, minillm.StepOutput)
        got.setdefault(o.request_id, []).extend(o.new_token_ids)
        assert o.logprobs is None and (o.finish_reason is None) == (not o.finished)
    assert sorted(got.values()) == sorted(w.token_ids for w in want)
    rid = llm.add_request([1, 2], params)
    n = 0
    while llm.has_unfinished():
        n += sum(len(o.new_token_ids) for o in llm.step() if o.request_id == rid)
    assert n == 5
    s = llm.stats()
    assert s["running"] == 0 and s["waiting"] == 0 and s["kv_pages_used"] == 0 and s["kv_pages_total"] == 32
    assert s["generation_tokens"] > 0 and s["prompt_tokens"] > 0
    assert llm.max_model_len == 512 and llm.vocab_size == 256 and llm.device == "cpu"
    assert llm.kv_cache_bytes > 0 and llm.eos_token_ids == []


def test_seeds_reproduce(llm):
    p = [3, 1, 4, 1, 5]
    sp = lambda seed: minillm.SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, top_k=40, seed=seed)
    a = llm.generate([p, p], sp(11))
    b = llm.generate([p], sp(11))
    c = llm.generate([p], sp(12))
    assert a[0].token_ids == a[1].token_ids == b[0].token_ids
    assert c[0].token_ids != a[0].token_ids


def test_step_from_another_thread(llm):
    """A server's shape: one thread steps (the GIL released inside), another adds requests."""
    params = minillm.SamplingParams(max_tokens=4, temperature=0.0)
    ids = []
    done = {}

    def loop():
        while len(done) < 3:
            for o in llm.step():
                if o.finished:
                    done[o.request_id] = o.finish_reason

    t = threading.Thread(target=loop)
    t.start()
    for p in ([1], [2, 3], [4, 5, 6]):
        ids.append(llm.add_request(p, params))
    t.join(timeout=60)
    assert not t.is_alive() and sorted(done) == sorted(ids)


def test_bad_input(llm):
    with pytest.raises(ValueError, match="top_p = 0"):
        minillm.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature = -1"):
        minillm.SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="max_tokens = 0"):
        minillm.SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]])
    with pytest.raises(ValueError, match=r"prompt_token_ids\[1\] = 999"):
        llm.generate([[1, 999]])
    with pytest.raises(ValueError, match="max_model_len"):
        llm.add_request(list(range(200)) * 3)
    with pytest.raises(ValueError, match="stop_token_ids entry 300"):
        llm.add_request([1], minillm.SamplingParams(stop_token_ids=[300]))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        llm.generate(["hello"])
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        minillm.LLM("tiny", device="cpu", num_kv_tokens=64, max_model_len=128)
    assert llm.generate([[1, 2]], minillm.SamplingParams(max_tokens=2))[0].finish_reason == "length"
    assert not llm.has_unfinished()


def test_model_directory_matches_transformers():
    """A Hugging Face fixture directory: transformers' greedy continuations (generation.json) and
    the EOS ids of its config.json."""
    import json
    import os

    d = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf", "olmoe")
    if not os.path.isfile(os.path.join(d, "config.json")):
        pytest.skip("the olmoe fixture checkpoint is not in this tree")
    llm = minillm.LLM(d, device="cpu")
    assert llm.eos_token_ids == [2]
    doc = json.load(open(os.path.join(d, "generation.json")))
    for case in doc["cases"]:
        out = llm.generate([case["prompt"]], minillm.SamplingParams(max_tokens=32, temperature=0.0))[0]
        assert out.token_ids == case["output"]
