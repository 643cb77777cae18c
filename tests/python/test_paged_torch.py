"""minillm.paged_attention / kv_cache_write on the GPU against torch (GPU machine only).

Reference: float64 attention on each sequence's K/V gathered from the pages (GQA expanded), causal
for the sequence's last n positions. Criterion (as tests/python/test_attention_torch.py): the max abs
error of minillm is at most twice that of torch's own SDPA run in the same 16-bit dtype on the same
gathered, contiguous inputs (+1e-5), and every output is finite. Cache rows nobody owns hold NaN.
"""
import itertools
import math

import pytest

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the conftest skips every gpu test with a reason
    torch = None

import minillm

pytestmark = pytest.mark.gpu
P = minillm.KV_PAGE_SIZE


def make(ctx, nq, hq, hkv, d, dtype, seed=0, amp=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    S = len(ctx)
    pages = [(c + P - 1) // P for c in ctx]
    max_pages = max(1, max(pages))
    num_pages = sum(pages) + 2
    perm = torch.randperm(num_pages, device="cuda", generator=g).int()
    bt = torch.full((S, max_pages), -1, dtype=torch.int32, device="cuda")
    kc = torch.full((num_pages, P, hkv, d), float("nan"), dtype=dtype, device="cuda")
    vc = torch.full_like(kc, float("nan"))
    ks, vs, at = [], [], 0
    for s, c in enumerate(ctx):
        bt[s, : pages[s]] = perm[at : at + pages[s]]
        at += pages[s]
        k = ((torch.rand(c, hkv, d, device="cuda", generator=g) * 2 - 1) * amp).to(dtype)
        v = (torch.rand(c, hkv, d, device="cuda", generator=g) * 2 - 1).to(dtype)
        pos = torch.arange(c, device="cuda")
        slots = (bt[s, pos // P] * P + pos % P).int()
        minillm.kv_cache_write(k, v, kc, vc, slots)
        ks.append(k), vs.append(v)
    cu = torch.tensor([0] + list(itertools.accumulate(nq)), dtype=torch.int32, device="cuda")
    q = ((torch.rand(int(cu[-1]), hq, d, device="cuda", generator=g) * 2 - 1) * amp).to(dtype)
    return q, kc, vc, bt, torch.tensor(ctx, dtype=torch.int32, device="cuda"), cu, ks, vs


def seq_attention(q, k, v, causal, dtype=None):
    """q: (n, hq, d), k, v: (c, hkv, d) -> (n, hq, d). dtype None: float64 math; else torch SDPA in dtype."""
    n, hq, d = q.shape
    c, hkv = k.shape[0], k.shape[1]
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    mask = None
    if causal:
        i = torch.arange(n, device=q.device)[:, None]
        j = torch.arange(c, device=q.device)[None, :]
        mask = j <= c - n + i
    qt, kt, vt = (x.transpose(0, 1)[None] for x in (q, k, v))  # (1, hq, len, d)
    if dtype is None:
        qt, kt, vt = qt.double(), kt.double(), vt.double()
        s = (qt @ kt.transpose(-1, -2)) / math.sqrt(d)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        o = torch.softmax(s, dim=-1) @ vt
    else:
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    return o[0].transpose(0, 1)


def check(ctx, nq, hq, hkv, d, dtype=None, causal=True, seed=0, amp=1.0, **kw):
    dtype = dtype or torch.bfloat16
    q, kc, vc, bt, cl, cu, ks, vs = make(ctx, nq, hq, hkv, d, dtype, seed, amp)
    out = minillm.paged_attention(q, kc, vc, bt, cl, cu, causal=causal, **kw)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    err = ref_err = 0.0
    for s in range(len(ctx)):
        a, b = int(cu[s]), int(cu[s + 1])
        if a == b:
            continue
        ref = seq_attention(q[a:b], ks[s], vs[s], causal)
        lowp = seq_attention(q[a:b], ks[s], vs[s], causal, dtype)
        err = max(err, (out[a:b].double() - ref).abs().max().item())
        ref_err = max(ref_err, (lowp.double() - ref).abs().max().item())
    assert err <= 2 * ref_err + 1e-5, f"minillm {err:.3g} vs torch {dtype} {ref_err:.3g}"


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8, 16])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_decode_mixed_lengths(group, d, dtype):
    ctx = [1, 17, 64, 65, 1000, 4097, 300, 2]
    check(ctx, [1] * len(ctx), 2 * group, 2, d, getattr(torch, dtype), seed=group + d)


@pytest.mark.parametrize("group", [1, 4, 8, 16])
def test_multi_token_decode_and_empty_sequences(group):
    check([8, 70, 200, 5, 64], [8, 3, 0, 5, 0], 2 * group, 2, 128, seed=group)


@pytest.mark.parametrize("group", [1, 8])
@pytest.mark.parametrize("d", [64, 128])
def test_prefill_chunk_after_prefix(group, d):
    check([1500, 300, 129, 64], [700, 300, 1, 0], 4 * group, 4, d, seed=3)  # chunk, whole prompt, decode, none
    check([1500, 300], [700, 300], 4 * group, 4, d, causal=False, seed=4)


@pytest.mark.parametrize("ctx", [8192, 32768])
def test_long_context(ctx):
    check([ctx, 100], [1, 1], 32, 8, 128, seed=5)


def test_large_scores_stay_finite():
    check([400, 90], [1, 30], 8, 2, 128, amp=12.0, seed=6)


def test_unchecked_path_and_forced_splits_agree():
    q, kc, vc, bt, cl, cu, ks, vs = make([5000, 3, 700], [1, 1, 2], 32, 8, 128, torch.bfloat16)
    a = minillm.paged_attention(q, kc, vc, bt, cl, cu)
    b = minillm.paged_attention(q, kc, vc, bt, cl, cu, check=False, max_query_len=2, max_context_len=5000)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    for splits in (1, 5, 64):
        c = minillm.paged_attention(q, kc, vc, bt, cl, cu, num_splits=splits)
        torch.testing.assert_close(a.float(), c.float(), atol=2e-2, rtol=0)


def test_kv_cache_write_places_rows():
    kc = torch.zeros(3, P, 2, 64, dtype=torch.float16, device="cuda")
    vc = torch.zeros_like(kc)
    k = torch.randn(4, 2, 64, device="cuda").half()
    v = torch.randn(4, 2, 64, device="cuda").half()
    slots = torch.tensor([5, -1, 2 * P + 63, P], dtype=torch.int32, device="cuda")
    minillm.kv_cache_write(k, v, kc, vc, slots)
    flat_k, flat_v = kc.view(-1, 2, 64), vc.view(-1, 2, 64)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], k[t]) and torch.equal(flat_v[s], v[t])
    assert int((flat_k != 0).any(dim=(1, 2)).sum()) == 3


def test_bad_input_raises_value_error():
    q, kc, vc, bt, cl, cu, ks, vs = make([10, 100], [1, 2], 8, 2, 128, torch.bfloat16)
    bad = bt.clone()
    bad[1, 1] = kc.shape[0]
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]"):
        minillm.paged_attention(q, kc, vc, bad, cl, cu)
    with pytest.raises(ValueError, match=r"context_lens\[0\]"):
        minillm.paged_attention(q, kc, vc, bt, torch.zeros_like(cl), cu)
    with pytest.raises(ValueError, match="k_cache dtype"):
        minillm.paged_attention(q, kc.half(), vc.half(), bt, cl, cu)
    with pytest.raises(ValueError, match="head_dim"):
        minillm.paged_attention(q[..., :96].contiguous(), kc[..., :96].contiguous(), vc[..., :96].contiguous(), bt, cl, cu)
    with pytest.raises(ValueError, match="block_table must be int32"):
        minillm.paged_attention(q, kc, vc, bt.long(), cl, cu)
    with pytest.raises(ValueError, match="page size"):
        minillm.paged_attention(q, kc[:, :32].contiguous(), vc[:, :32].contiguous(), bt, cl, cu)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        minillm.paged_attention(q, kc, vc, bt, cl, cu[:2])
    k = torch.zeros(1, 2, 128, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match=r"slot_mapping\[0\]"):
        minillm.kv_cache_write(k, k, kc, vc, torch.tensor([kc.shape[0] * P], dtype=torch.int32, device="cuda"))
