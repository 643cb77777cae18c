"""minillm.flash_attention / flash_attention_varlen against PyTorch (GPU machine only).

Reference: torch float32 math SDPA on the upcast bf16/fp16 inputs (bottom-right causal mask built
explicitly; rows that see no key expect 0). Criterion: the max abs error of minillm is at most twice
the max abs error of torch's own SDPA run in the same 16-bit dtype on the same inputs (+1e-5), and
the output is finite everywhere. Varlen is checked sequence by sequence against the padded torch
reference. Bad inputs must raise ValueError naming the problem.
"""
import math

import pytest

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the conftest skips every gpu test with a reason
    torch = None

import minillm

pytestmark = pytest.mark.gpu


def ref_attention(q, k, v, causal, scale):
    """fp32 reference. q: (B, Nq, H, D), k, v: (B, Nk, Hkv, D). Returns o (B, Nq, H, D), lse (B, H, Nq)."""
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, heads, N, D)
    if Hkv != H:
        kf = kf.repeat_interleave(H // Hkv, dim=1)
        vf = vf.repeat_interleave(H // Hkv, dim=1)
    visible = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device)
    if causal:
        i = torch.arange(Nq, device=q.device)[:, None]
        j = torch.arange(Nk, device=q.device)[None, :]
        visible = j <= i + (Nk - Nq)
    has_key = visible.any(dim=1)  # (Nq,)
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf where no key
    mask = visible if has_key.all() else visible | ~has_key[:, None]  # keep SDPA away from all-masked rows
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        o = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale)
    o = o.masked_fill(~has_key[None, None, :, None], 0.0)
    return o.transpose(1, 2), lse


def torch_lowp(q, k, v, causal, scale):
    """torch's own SDPA in the input dtype (default backend choice), bottom-right causal."""
    Nq, Nk, H, Hkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if Hkv != H:
        kt = kt.repeat_interleave(H // Hkv, dim=1)
        vt = vt.repeat_interleave(H // Hkv, dim=1)
    if causal and Nq != Nk:
        i = torch.arange(Nq, device=q.device)[:, None]
        j = torch.arange(Nk, device=q.device)[None, :]
        visible = j <= i + (Nk - Nq)
        visible = visible | ~visible.any(dim=1, keepdim=True)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible, scale=scale)
    else:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
    return o.transpose(1, 2)


def make(shape, dtype, amp=1.0, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.rand(shape, generator=g, device="cuda", dtype=torch.float32) * 2 - 1).mul_(amp).to(dtype)


def check_against_torch(q, k, v, causal, scale=None, out=None):
    D = q.shape[-1]
    s = scale if scale is not None else 1.0 / math.sqrt(D)
    o = minillm.flash_attention(q, k, v, causal=causal, softmax_scale=scale, out=out)
    assert isinstance(o, torch.Tensor) and o.dtype == q.dtype and o.shape == q.shape and o.is_cuda
    torch.cuda.synchronize()
    assert torch.isfinite(o).all()
    ref, _ = ref_attention(q, k, v, causal, s)
    err = (o.float() - ref).abs().max().item()
    Nq, Nk = q.shape[1], k.shape[1]
    keyless = causal and Nq > Nk
    if keyless:  # torch's low-precision SDPA has no rows without keys: compare the rows that see keys
        rows = slice(Nq - Nk, None)
        ref_err = (torch_lowp(q, k, v, causal, s).float() - ref)[:, rows].abs().max().item()
        assert o[:, : Nq - Nk].abs().max().item() == 0.0
    else:
        ref_err = (torch_lowp(q, k, v, causal, s).float() - ref).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"minillm max err {err:.3e} vs torch {q.dtype} max err {ref_err:.3e}"
    return o


CASES = [  # (B, Nq, Nk, H, Hkv, D)
    (2, 1, 1, 2, 2, 64),
    (2, 17, 17, 4, 4, 64),
    (1, 127, 127, 4, 2, 128),
    (2, 1000, 1000, 4, 4, 64),
    (1, 2049, 2049, 2, 1, 128),
    (1, 300, 77, 4, 4, 64),
    (2, 77, 300, 8, 2, 128),
    (1, 200, 200, 2, 2, 32),
    (1, 200, 333, 2, 2, 96),
    (1, 129, 129, 2, 2, 256),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}_Nq{}_Nk{}_H{}_{}_D{}".format(*c))
def test_padded(case, causal, dtype):
    B, Nq, Nk, H, Hkv, D = case
    dt = getattr(torch, dtype)
    q = make((B, Nq, H, D), dt, seed=1)
    k = make((B, Nk, Hkv, D), dt, seed=2)
    v = make((B, Nk, Hkv, D), dt, seed=3)
    check_against_torch(q, k, v, causal)


def test_softmax_scale_and_lse():
    q = make((2, 333, 4, 64), torch.bfloat16, seed=4)
    k = make((2, 555, 2, 64), torch.bfloat16, seed=5)
    v = make((2, 555, 2, 64), torch.bfloat16, seed=6)
    for causal in (False, True):
        o, lse = minillm.flash_attention(q, k, v, causal=causal, softmax_scale=0.3, return_lse=True)
        assert lse.dtype == torch.float32 and lse.shape == (2, 4, 333)
        ref_o, ref_lse = ref_attention(q, k, v, causal, 0.3)
        assert torch.allclose(lse, ref_lse, atol=1e-3, rtol=1e-4)
        check_against_torch(q, k, v, causal, scale=0.3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("growth", [20.0, 300.0])
def test_growing_row_maximum(dtype, D, growth):
    # Scores rise linearly towards key 0, which the kernels visit last, so every key block raises each
    # row's maximum: by ~1.2 per 128 keys (growth 20: below the conditional-rescaling threshold, the
    # stale maximum stays in use) or by ~19 (growth 300: O is rescaled at every block). 2048 keys:
    # head dim 128 runs its two-P-buffer kernel.
    dt = getattr(torch, dtype)
    N = 2048
    u = make((1, 1, 2, D), torch.float32, seed=20)
    u = u / u.norm(dim=-1, keepdim=True)
    ramp = torch.linspace(growth, 0.0, N, device="cuda").view(1, N, 1, 1)
    k = (u * ramp + 0.05 * make((1, N, 2, D), torch.float32, seed=21)).to(dt)
    q = (u.expand(1, N, 2, D) + 0.05 * make((1, N, 2, D), torch.float32, seed=22)).to(dt)
    v = make((1, N, 2, D), dt, seed=23)
    for causal in (False, True):
        check_against_torch(q, k, v, causal, scale=1.0)
        _, lse = minillm.flash_attention(q, k, v, causal=causal, softmax_scale=1.0, return_lse=True)
        _, ref_lse = ref_attention(q, k, v, causal, 1.0)
        assert torch.allclose(lse, ref_lse, atol=1e-3, rtol=1e-4)


def test_keyless_rows_lse():
    q = make((1, 50, 2, 64), torch.float16, seed=7)
    k = make((1, 20, 2, 64), torch.float16, seed=8)
    o, lse = minillm.flash_attention(q, k, k, causal=True, return_lse=True)
    assert (o[:, :30] == 0).all() and torch.isinf(lse[:, :, :30]).all() and (lse[:, :, :30] < 0).all()
    assert torch.isfinite(lse[:, :, 30:]).all()


def test_strided_inputs_and_out():
    # q, k, v as views of one packed (B, N, 3, H, D) projection: token stride 3*H*D.
    qkv = make((2, 190, 3, 4, 64), torch.bfloat16, seed=9)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    check_against_torch(q, k, v, causal=True)
    out = torch.empty(2, 190, 4, 72, dtype=torch.bfloat16, device="cuda")[..., :64]  # padded output rows
    o = minillm.flash_attention(q, k, v, causal=True, out=out)
    assert o.data_ptr() == out.data_ptr()
    check_against_torch(q, k, v, causal=True, out=out)


def test_large_magnitude_scores():
    # scale 1 and |q|, |k| up to 60 at D = 64: scores around 1e4.
    for dt in (torch.bfloat16, torch.float16):
        q = make((1, 500, 2, 64), dt, amp=60.0, seed=10)
        k = make((1, 500, 2, 64), dt, amp=60.0, seed=11)
        v = make((1, 500, 2, 64), dt, seed=12)
        for causal in (False, True):
            o = minillm.flash_attention(q, k, v, causal=causal, softmax_scale=1.0)
            assert torch.isfinite(o).all()
            ref, _ = ref_attention(q, k, v, causal, 1.0)
            assert (o.float() - ref).abs().max().item() < 0.02


def test_empty_and_long():
    q = torch.empty(2, 0, 4, 64, dtype=torch.bfloat16, device="cuda")
    k = make((2, 10, 4, 64), torch.bfloat16)
    o = minillm.flash_attention(q, k, k)
    assert o.shape == (2, 0, 4, 64)
    for n in (16384, 32768):
        q = make((1, n, 2, 64), torch.bfloat16, seed=n)
        o = minillm.flash_attention(q, q, q, causal=True)
        ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, q, q)), is_causal=True).transpose(1, 2)
        assert torch.isfinite(o).all()
        assert (o.float() - ref.float()).abs().max().item() < 0.02


class DLPackOnly:
    """A non-torch producer: only the DLPack protocol (takes minillm's generic path)."""

    def __init__(self, t):
        self.t = t

    def __dlpack__(self, *args, **kwargs):
        return self.t.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.t.__dlpack_device__()


def test_generic_dlpack_path():
    q = make((2, 100, 4, 64), torch.bfloat16, seed=14)
    k = make((2, 120, 2, 64), torch.bfloat16, seed=15)
    expected, expected_lse = minillm.flash_attention(q, k, k, causal=True, return_lse=True)
    o, lse = minillm.flash_attention(DLPackOnly(q), DLPackOnly(k), DLPackOnly(k), causal=True, return_lse=True)
    assert not isinstance(o, torch.Tensor) and hasattr(o, "__dlpack__")
    torch.cuda.synchronize()
    assert torch.equal(torch.from_dlpack(o), expected)
    assert torch.equal(torch.from_dlpack(lse), expected_lse)


def test_stream_argument():
    q = make((2, 256, 4, 64), torch.float16, seed=13)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # picked up as torch's current stream
        o1 = minillm.flash_attention(q, q, q)
    o2 = minillm.flash_attention(q, q, q, stream=s.cuda_stream)
    s.synchronize()
    assert torch.equal(o1, o2)


def check_varlen(lq, lk, causal, dtype):
    """flash_attention_varlen over sequences of lq[b] queries and lk[b] keys (H 4, Hkv 2, D 128),
    each sequence against the padded torch reference."""
    dt = getattr(torch, dtype)
    H, Hkv, D = 4, 2, 128
    cu_q = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), dtype=torch.int32, device="cuda")
    q = make((sum(lq), H, D), dt, seed=20)
    k = make((sum(lk), Hkv, D), dt, seed=21)
    v = make((sum(lk), Hkv, D), dt, seed=22)
    o, lse = minillm.flash_attention_varlen(q, k, v, cu_q, cu_k, max(lq), max(lk), causal=causal, return_lse=True)
    torch.cuda.synchronize()
    assert o.shape == q.shape and lse.shape == (H, sum(lq))
    assert torch.isfinite(o).all()
    for b in range(len(lq)):
        if lq[b] == 0:
            continue
        qs, ks = slice(cu_q[b].item(), cu_q[b + 1].item()), slice(cu_k[b].item(), cu_k[b + 1].item())
        ob = o[qs][None]
        if lk[b] == 0:
            assert (ob == 0).all() and torch.isinf(lse[:, qs]).all()
            continue
        scale = 1.0 / math.sqrt(D)
        ref, ref_lse = ref_attention(q[qs][None], k[ks][None], v[ks][None], causal, scale)
        err = (ob.float() - ref).abs().max().item()
        keyless = causal and lq[b] > lk[b]
        rows = slice(lq[b] - lk[b], None) if keyless else slice(None)
        low = torch_lowp(q[qs][None], k[ks][None], v[ks][None], causal, scale).float()
        ref_err = (low - ref)[:, rows].abs().max().item()
        assert err <= 2 * ref_err + 1e-5, f"seq {b}: {err:.3e} vs torch {ref_err:.3e}"
        assert torch.allclose(lse[:, qs], ref_lse[0], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_varlen(causal, dtype):
    check_varlen([0, 1, 17, 300, 5, 128, 0, 777], [3, 1, 17, 300, 0, 200, 9, 777], causal, dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_varlen_long_keys(causal, dtype):
    # The longest sequence has >= 2048 keys: head dim 128 runs its two-P-buffer kernel for every sequence.
    check_varlen([5, 2100, 130, 0, 1300, 1], [300, 2100, 130, 7, 1000, 2049], causal, dtype)


def test_bad_inputs():
    q = make((1, 16, 4, 64), torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        minillm.flash_attention(q.float(), q.float(), q.float())
    with pytest.raises(ValueError, match="dtype must match"):
        minillm.flash_attention(q, q.half(), q.half())
    with pytest.raises(ValueError, match="CUDA"):
        minillm.flash_attention(q.cpu(), q.cpu(), q.cpu())
    with pytest.raises(ValueError, match="head_dim = 12"):
        x = make((1, 16, 4, 12), torch.bfloat16)
        minillm.flash_attention(x, x, x)
    with pytest.raises(ValueError, match="num_kv_heads = 3"):
        kv = make((1, 16, 3, 64), torch.bfloat16)
        minillm.flash_attention(q, kv, kv)
    with pytest.raises(ValueError, match="contiguous in the last dim"):
        t = make((1, 16, 64, 4), torch.bfloat16).transpose(2, 3)
        minillm.flash_attention(t, t, t)
    with pytest.raises(ValueError, match="4 dims"):
        minillm.flash_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="softmax_scale"):
        minillm.flash_attention(q, q, q, softmax_scale=-1.0)
    with pytest.raises(ValueError, match="DLPack"):
        minillm.flash_attention([1, 2], q, q)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        minillm.flash_attention(q, q, q[:, :8])
    cu = torch.tensor([0, 16], dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32"):
        minillm.flash_attention_varlen(q[0], q[0], q[0], cu, cu, 16, 16)
