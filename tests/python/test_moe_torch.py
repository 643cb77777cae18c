"""minillm.MoELayer vs plain PyTorch MoE implementations.

Criterion (bf16): on the same bf16 inputs, our error against a float64 reference is at most 2x the
error of PyTorch's own bf16 implementation (same math, bf16 matmuls). Errors are measured on the
tokens whose top-k choice is clear in float64 (a near-tie may legitimately pick another expert).
"""
import pytest

torch = pytest.importorskip("torch", reason="needs torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
import minillm  # noqa: E402

if not hasattr(minillm, "MoELayer"):
    pytest.skip("minillm was built without CUDA (no MoELayer)", allow_module_level=True)

pytestmark = pytest.mark.gpu


def make_weights(E, H, F, act, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    router = rnd(E, H, scale=H**-0.5)
    w_gate = rnd(E, F, H, scale=H**-0.5)
    w_up = rnd(E, F, H, scale=H**-0.5) if act == "swiglu" else None
    w_down = rnd(E, H, F, scale=F**-0.5)
    return router, w_gate, w_up, w_down


def torch_moe(x, router, w_gate, w_up, w_down, k, normalize, act):
    """Plain PyTorch MoE in the dtype of its inputs (float64 for the reference, bf16 for the peer)."""
    T, H = x.shape
    # The router in fp32 (float64 for the reference), as MoE implementations commonly do.
    logits = x.float() @ router.float().T if x.dtype != torch.float64 else x @ router.T
    probs = torch.softmax(logits, dim=-1)
    w, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    w = w.to(x.dtype)
    y = torch.zeros_like(x)
    for e in range(router.shape[0]):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        if act == "swiglu":
            h = torch.nn.functional.silu(xe @ w_gate[e].T) * (xe @ w_up[e].T)
        else:
            h = torch.nn.functional.gelu(xe @ w_gate[e].T)
        y.index_add_(0, tok, (h @ w_down[e].T) * w[tok, slot, None])
    return y


def clear_tokens(x64, router64, k, eps=1e-2):
    logits = x64 @ router64.T
    top = torch.topk(logits, min(k + 1, logits.shape[1]), dim=-1).values
    if top.shape[1] <= k:
        return torch.ones(x64.shape[0], dtype=torch.bool, device=x64.device)
    return (top[:, k - 1] - top[:, k]) > eps


CASES = [
    # T, H, E, k, F, act, normalize
    (1, 1024, 8, 2, 1024, "swiglu", True),
    (64, 2048, 8, 2, 2048, "swiglu", True),
    (40, 1024, 128, 8, 512, "swiglu", True),
    (300, 1024, 16, 4, 1024, "gelu", False),
    (2048, 2048, 64, 8, 1024, "swiglu", False),
    (4096, 1024, 8, 2, 2048, "swiglu", True),
]


@pytest.mark.parametrize("T,H,E,k,F,act,normalize", CASES)
def test_matches_torch(T, H, E, k, F, act, normalize):
    router, w_gate, w_up, w_down = make_weights(E, H, F, act, seed=T + E)
    x = torch.randn(T, H, device="cuda", generator=torch.Generator(device="cuda").manual_seed(7)).to(torch.bfloat16)
    moe = minillm.MoELayer(H, E, k, F, activation=act, normalize_topk=normalize)
    moe.set_weights(router, w_gate, w_up, w_down)
    y = moe(x)
    assert y.shape == (T, H) and y.dtype == torch.bfloat16 and y.device == x.device

    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = torch_moe(d(x), d(router), d(w_gate), d(w_up), d(w_down), k, normalize, act)
    peer = torch_moe(x, router, w_gate, w_up, w_down, k, normalize, act)
    mask = clear_tokens(d(x), d(router), k)
    assert mask.sum() >= T // 2, "too many near-ties"
    ours_err = (y.double() - ref)[mask]
    peer_err = (peer.double() - ref)[mask]
    ours_rms, peer_rms = ours_err.pow(2).mean().sqrt().item(), peer_err.pow(2).mean().sqrt().item()
    ours_max, peer_max = ours_err.abs().max().item(), peer_err.abs().max().item()
    assert ours_rms <= 2 * peer_rms, f"rms error {ours_rms:.3e} vs torch bf16 {peer_rms:.3e}"
    assert ours_max <= 2 * peer_max, f"max error {ours_max:.3e} vs torch bf16 {peer_max:.3e}"


def test_route_matches_torch():
    T, H, E, k = 1000, 2048, 64, 8
    router, w_gate, w_up, w_down = make_weights(E, H, 64, "swiglu", seed=3)
    x = torch.randn(T, H, device="cuda").to(torch.bfloat16)
    moe = minillm.MoELayer(H, E, k, 64, normalize_topk=False)
    moe.set_weights(router, w_gate, w_up, w_down)
    ids, w = moe.route(x)
    assert ids.shape == (T, k) and ids.dtype == torch.int32 and w.dtype == torch.float32
    logits = x.double() @ router.double().T
    ref_w, ref_ids = torch.topk(torch.softmax(logits, -1), k, dim=-1)
    top = torch.topk(logits, k + 1, dim=-1).values
    clear = ((top[:, :-1] - top[:, 1:]) > 1e-3).all(dim=-1)
    assert clear.sum() > T // 4
    assert torch.equal(ids[clear].long(), ref_ids[clear])
    torch.testing.assert_close(w[clear].double(), ref_w[clear], atol=1e-5, rtol=1e-4)


def test_deterministic_and_empty():
    H, E, k, F = 1024, 32, 4, 1024
    moe = minillm.MoELayer(H, E, k, F)
    moe.set_weights(*make_weights(E, H, F, "swiglu", seed=1))
    x = torch.randn(3000, H, device="cuda").to(torch.bfloat16)
    y1, y2 = moe(x), moe(x)
    assert torch.equal(y1.view(torch.int16), y2.view(torch.int16))
    out = torch.empty_like(x)
    moe(x, out=out)
    assert torch.equal(out.view(torch.int16), y1.view(torch.int16))
    y0 = moe(x[:0])
    assert y0.shape == (0, H)


@pytest.mark.parametrize("T", [48, 1500])
def test_padded_weight_rows(T):
    """Expert weights with padded rows (the layer's load layout) give bitwise the same output as
    contiguous ones, on the decode (T <= 64) and the grouped-GEMM path; bad strides are rejected."""
    H, E, k, F = 1024, 16, 2, 2048
    router, w_gate, w_up, w_down = make_weights(E, H, F, "swiglu", seed=5)

    def padded(w):
        ld = minillm.MoELayer.weight_row_stride(w.shape[2])
        assert ld > w.shape[2] and ld % 64 == 0 and (ld // 64) % 2 == 1
        p = torch.full((w.shape[0], w.shape[1], ld), float("nan"), device="cuda", dtype=w.dtype)
        p[..., : w.shape[2]] = w
        return p[..., : w.shape[2]]

    x = torch.randn(T, H, device="cuda").to(torch.bfloat16)
    moe = minillm.MoELayer(H, E, k, F)
    moe.set_weights(router, w_gate, w_up, w_down)
    y_dense = moe(x)
    moe.set_weights(router, padded(w_gate), padded(w_up), padded(w_down))
    y_pad = moe(x)
    assert torch.isfinite(y_pad.float()).all()
    assert torch.equal(y_dense.view(torch.int16), y_pad.view(torch.int16))
    with pytest.raises(ValueError, match="w_up's row stride"):
        moe.set_weights(router, padded(w_gate), w_up, w_down)
    with pytest.raises(ValueError, match="w_down must have contiguous rows"):
        moe.set_weights(router, w_gate, w_up, w_down.transpose(1, 2).contiguous().transpose(1, 2))


_ERRORS_SCRIPT = r"""
import re, torch, minillm

def expect(fn, pattern):
    try:
        fn()
    except ValueError as e:
        assert re.search(pattern, str(e)), f"{pattern!r} not in {e}"
        print("ok", pattern, flush=True)
        return
    raise AssertionError(f"no ValueError for {pattern!r}")

expect(lambda: minillm.MoELayer(1000, 8, 2, 512), "hidden")
expect(lambda: minillm.MoELayer(1024, 8, 9, 512), "top_k")
expect(lambda: minillm.MoELayer(1024, 8, 2, 512, activation="relu"), "activation")
H, E, k, F = 1024, 8, 2, 512
moe = minillm.MoELayer(H, E, k, F)
x = torch.randn(4, H, device="cuda").to(torch.bfloat16)
expect(lambda: moe(x), "set_weights")
w = [(torch.randn(*s, device="cuda") * 0.03).to(torch.bfloat16) for s in [(E, H), (E, F, H), (E, F, H), (E, H, F)]]
router, w_gate, w_up, w_down = w
expect(lambda: moe.set_weights(router, w_gate, w_up, w_gate), "w_down must have shape")
expect(lambda: moe.set_weights(router, w_gate.float(), w_up, w_down), "w_gate must be bfloat16")
expect(lambda: moe.set_weights(router.cpu(), w_gate, w_up, w_down), "router must be on a CUDA device")
moe.set_weights(router, w_gate, w_up, w_down)
expect(lambda: moe(x[:, :512]), "x must have shape")
expect(lambda: moe(x.half()), "x must be bfloat16")
expect(lambda: moe(torch.randn(H, 4, device="cuda").to(torch.bfloat16).T), "x must be contiguous")
print("all ok", flush=True)
"""


def test_errors():
    # In a child process: raising from the binding has crashed the interpreter on the GPU machine
    # (not reproduced elsewhere); isolated, a crash fails this test instead of the whole session.
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(minillm.__file__))] + sys.path)
    r = subprocess.run([sys.executable, "-c", _ERRORS_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "all ok" in r.stdout, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
