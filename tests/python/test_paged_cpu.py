"""minillm.paged_attention / kv_cache_write on the CPU backend (float32 numpy arrays; runs in CI).

The cache is filled through kv_cache_write with shuffled pages; paged_attention is compared with a
float64 numpy reference on each sequence's gathered, contiguous K/V (bottom-right causal mask for the
sequence's last n positions). Bad input must raise ValueError naming the argument.
"""
import numpy as np
import pytest

import minillm

P = minillm.KV_PAGE_SIZE


def make(ctx, nq, hq, hkv, d, seed=0):
    rng = np.random.default_rng(seed)
    S = len(ctx)
    pages = [(c + P - 1) // P for c in ctx]
    max_pages = max(1, max(pages))
    num_pages = sum(pages) + 2
    perm = rng.permutation(num_pages).astype(np.int32)
    bt = np.full((S, max_pages), -1, np.int32)
    kc = np.full((num_pages, P, hkv, d), np.nan, np.float32)
    vc = np.full_like(kc, np.nan)
    ks, vs, at = [], [], 0
    for s, c in enumerate(ctx):
        bt[s, : pages[s]] = perm[at : at + pages[s]]
        at += pages[s]
        k = rng.uniform(-1, 1, (c, hkv, d)).astype(np.float32)
        v = rng.uniform(-1, 1, (c, hkv, d)).astype(np.float32)
        pos = np.arange(c)
        slots = (bt[s, pos // P] * P + pos % P).astype(np.int32)
        minillm.kv_cache_write(k, v, kc, vc, slots)
        ks.append(k), vs.append(v)
    cu = np.concatenate([[0], np.cumsum(nq)]).astype(np.int32)
    q = rng.uniform(-1, 1, (int(cu[-1]), hq, d)).astype(np.float32)
    return q, kc, vc, bt, np.array(ctx, np.int32), cu, ks, vs


def reference(q, ks, vs, ctx, cu, causal):
    out = np.zeros(q.shape, np.float64)
    hq, d = q.shape[1], q.shape[2]
    for s, c in enumerate(ctx):
        n = cu[s + 1] - cu[s]
        if n == 0:
            continue
        g = hq // ks[s].shape[1]
        k = np.repeat(ks[s].astype(np.float64), g, axis=1)  # (c, hq, d)
        v = np.repeat(vs[s].astype(np.float64), g, axis=1)
        qs = q[cu[s] : cu[s + 1]].astype(np.float64)  # (n, hq, d)
        sc = np.einsum("nhd,chd->hnc", qs, k) / np.sqrt(d)
        if causal:
            i = np.arange(n)[:, None]
            j = np.arange(c)[None, :]
            sc = np.where(j <= c - n + i, sc, -np.inf)
        sc -= sc.max(axis=-1, keepdims=True)
        p = np.exp(sc)
        p /= p.sum(axis=-1, keepdims=True)
        out[cu[s] : cu[s + 1]] = np.einsum("hnc,chd->nhd", p, v)
    return out


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_dense_reference(group, causal):
    ctx, nq = [1, 65, 200, 64, 30], [1, 3, 70, 0, 30]  # decode, multi-token, chunk after prefix, none, prompt
    q, kc, vc, bt, cl, cu, ks, vs = make(ctx, nq, 2 * group, 2, 32, seed=group)
    out, lse = minillm.paged_attention(q, kc, vc, bt, cl, cu, causal=causal, return_lse=True)
    assert out.shape == q.shape and lse.shape == q.shape[:2]
    np.testing.assert_allclose(out, reference(q, ks, vs, ctx, cu, causal), atol=2e-6)
    assert np.isfinite(lse).all()


def test_one_query_per_sequence_by_default():
    q, kc, vc, bt, cl, cu, ks, vs = make([10, 100], [1, 1], 4, 2, 16)
    a = minillm.paged_attention(q, kc, vc, bt, cl)
    np.testing.assert_array_equal(a, minillm.paged_attention(q, kc, vc, bt, cl, cu))


def test_bad_input_names_the_argument():
    q, kc, vc, bt, cl, cu, ks, vs = make([10, 100], [1, 2], 4, 2, 16)
    bad_bt = bt.copy()
    bad_bt[1, 1] = kc.shape[0]
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]"):
        minillm.paged_attention(q, kc, vc, bad_bt, cl, cu)
    with pytest.raises(ValueError, match=r"context_lens\[0\]"):
        minillm.paged_attention(q, kc, vc, bt, np.array([0, 100], np.int32), cu)
    with pytest.raises(ValueError, match="q must"):
        minillm.paged_attention(q.astype(np.float64), kc, vc, bt, cl, cu)
    with pytest.raises(ValueError, match="page size"):
        minillm.paged_attention(q, kc[:, :32].copy(), vc[:, :32].copy(), bt, cl, cu)
    with pytest.raises(ValueError, match="num_kv_heads"):
        minillm.paged_attention(q[:, :3].copy(), kc, vc, bt, cl, cu)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        minillm.paged_attention(q, kc, vc, bt, cl, np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="block_table"):
        minillm.paged_attention(q, kc, vc, bt.astype(np.int64), cl, cu)
    with pytest.raises(ValueError, match=r"slot_mapping\[0\]"):
        k = np.zeros((1, 2, 16), np.float32)
        minillm.kv_cache_write(k, k, kc, vc, np.array([kc.shape[0] * P], np.int32))
