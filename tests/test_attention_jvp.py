"""sdpa_jvp against torch.func.jvp of softmax(q kᵀ·scale + mask) v in float64: outputs, tangents and
every gradient of a loss of both, for the torch reference and for the Triton kernel (interpreter);
and the kernels compiled for an sm_90 GPU (no launch), which the interpreter cannot check."""
import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from support import DEVICE
from owf_kernels.attention_jvp import sdpa_jvp

# (dtype, atol, rtol) for the outputs; gradients get GRAD_FACTOR times these. The oracle is float64.
TOLS = {torch.float32: (5e-5, 5e-5), torch.bfloat16: (4e-2, 4e-2)}
GRAD_FACTOR = 10


# ---------------------------------------------------------------------------------------------
# The oracle: attention written as softmax(q kᵀ·scale + bias) v, differentiated by torch.func.jvp
# ---------------------------------------------------------------------------------------------
def bias_of(attn_mask, is_causal, L, S):
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=DEVICE).tril()
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=torch.float64, device=DEVICE).masked_fill(~attn_mask, -math.inf)
    return attn_mask.double()


def math_attention(q, k, v, bias, scale):
    s = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias
    return torch.softmax(s, -1) @ v


def oracle(q, k, v, q_dot, k_dot, v_dot, attn_mask=None, is_causal=False, scale=None):
    """(o, o_dot [T, ...]) by torch.func.jvp of the math attention, one tangent at a time; a None
    tangent is zero."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    bias = bias_of(attn_mask, is_causal, q.shape[-2], k.shape[-2])
    T = next(t.shape[0] for t in (q_dot, k_dot, v_dot) if t is not None)
    tan = lambda d, p, t: torch.zeros_like(p) if d is None else d[t]     # noqa: E731
    outs = [torch.func.jvp(lambda q, k, v: math_attention(q, k, v, bias, scale), (q, k, v),
                           (tan(q_dot, q, t), tan(k_dot, k, t), tan(v_dot, v, t))) for t in range(T)]
    return outs[0][0], torch.stack([o[1] for o in outs])


def make(batch, L, S, E, Ev, T, tangents="qkv", dtype=torch.float32):
    q = torch.randn(*batch, L, E, device=DEVICE).to(dtype)
    k = torch.randn(*batch, S, E, device=DEVICE).to(dtype)
    v = torch.randn(*batch, S, Ev, device=DEVICE).to(dtype)
    dots = [torch.randn(T, *x.shape, device=DEVICE).to(dtype) if name in tangents else None
            for name, x in zip("qkv", (q, k, v))]
    return [q, k, v, *dots]


def loss_of(o, o_dot, g_o, g_od):
    """Uses both outputs, o_dot non-linearly."""
    return (o.double() * g_o).sum() + (o_dot.double() * g_od).sum() + (o_dot.double() ** 2).sum()


def check(inputs, atol, rtol, **kw):
    present = [i for i, t in enumerate(inputs) if t is not None]
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    refl = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    o, o_dot = sdpa_jvp(*leaves, **kw)
    ro, rod = oracle(*refl, **kw)
    assert o.dtype == o_dot.dtype == inputs[0].dtype
    assert o.shape == ro.shape and o_dot.shape == rod.shape
    torch.testing.assert_close(o.double(), ro, atol=atol, rtol=rtol, msg=lambda m: f"o: {m}")
    torch.testing.assert_close(o_dot.double(), rod, atol=atol, rtol=rtol, msg=lambda m: f"o_dot: {m}")
    g_o, g_od = torch.randn_like(ro), torch.randn_like(rod)
    grads = torch.autograd.grad(loss_of(o, o_dot, g_o, g_od), [leaves[i] for i in present])
    rgrads = torch.autograd.grad(loss_of(ro, rod, g_o, g_od), [refl[i] for i in present])
    names = ["q", "k", "v", "q_dot", "k_dot", "v_dot"]
    for i, g, r in zip(present, grads, rgrads):
        torch.testing.assert_close(g.double(), r, atol=atol * GRAD_FACTOR, rtol=rtol * GRAD_FACTOR,
                                   msg=lambda m: f"grad {names[i]}: {m}")


def bool_mask(shape, p=0.3):
    """A random bool mask with every query row seeing key 0 (no row is fully masked)."""
    m = torch.rand(*shape, device=DEVICE) > p
    m[..., 0] = True
    return m


def float_mask(shape):
    """An additive mask with some -inf entries (never a whole row)."""
    m = torch.randn(*shape, device=DEVICE)
    m[torch.rand(*shape, device=DEVICE) < 0.2] = -math.inf
    m[..., 0] = 0.0
    return m


# ---------------------------------------------------------------------------------------------
# Against func.jvp: odd shapes (L ≠ S, E ≠ Ev, L not a multiple of the block), T = 1 and 3,
# None tangents, bool and float masks, causal
# ---------------------------------------------------------------------------------------------
#        id                batch    L   S   E  Ev  T  tangents mask
CASES = [("T1",            (2,),   19, 23, 12, 5, 1, "qkv",  None),
         ("T3-4d",         (1, 2), 20, 17, 8, 12, 3, "qkv",  None),
         ("q-only-bool",   (2,),   19, 23, 12, 5, 2, "q",    "bool"),
         ("k-only-float",  (2, 2), 17, 18, 6, 7, 1, "k",     "float-heads"),
         ("v-only-causal", (2,),   21, 13, 5, 9, 2, "v",     "causal"),
         ("kv-causal",     (1,),   13, 21, 9, 6, 3, "kv",    "causal"),
         ("qv-float",      (),     18, 19, 7, 7, 2, "qv",    "float")]


def mask_kw(kind, batch, L, S):
    if kind is None:
        return {}
    if kind == "causal":
        return dict(is_causal=True)
    if kind == "bool":
        return dict(attn_mask=bool_mask((L, S)))
    if kind == "float":
        return dict(attn_mask=float_mask((L, S)))
    return dict(attn_mask=float_mask((*batch[:-1], 1, L, S)))        # float-heads: one per batch, broadcast over heads


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_func_jvp(backend, case):
    _, batch, L, S, E, Ev, T, tangents, mask = case
    check(make(batch, L, S, E, Ev, T, tangents), *TOLS[torch.float32], **mask_kw(mask, batch, L, S))


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=[CASES[0][0], CASES[4][0]])
def test_bfloat16(backend, case):
    _, batch, L, S, E, Ev, T, tangents, mask = case
    check(make(batch, L, S, E, Ev, T, tangents, dtype=torch.bfloat16), *TOLS[torch.bfloat16],
          **mask_kw(mask, batch, L, S))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_path_in_chunks(monkeypatch, case):
    """Above WHOLE_BYTES the torch path runs query rows in chunks of CHUNK_BYTES with a hand-written
    backward; forced here, with 16-row chunks, so every case but L = 13 spans two."""
    import owf_kernels.attention_jvp as A
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    monkeypatch.setattr(A, "WHOLE_BYTES", 0)
    monkeypatch.setattr(A, "CHUNK_BYTES", 1)
    _, batch, L, S, E, Ev, T, tangents, mask = case
    assert len(A._chunks(torch.empty(*batch, L, E), S)) == -(-L // 16)
    check(make(batch, L, S, E, Ev, T, tangents), *TOLS[torch.float32], **mask_kw(mask, batch, L, S))


def test_row_broadcast_masks(backend, monkeypatch):
    """Masks of shape [S] and [*, 1, S] (one row for every query), in chunks on the torch path."""
    import owf_kernels.attention_jvp as A
    monkeypatch.setattr(A, "WHOLE_BYTES", 0)
    monkeypatch.setattr(A, "CHUNK_BYTES", 1)
    inputs = make((2, 1), 19, 18, 8, 8, 1)
    check(inputs, *TOLS[torch.float32], attn_mask=float_mask((18,)))
    check(inputs, *TOLS[torch.float32], attn_mask=bool_mask((2, 1, 1, 18)))


def test_scale_and_non_contiguous(backend):
    """A given scale; q, k, v as the [B, L, H, E] -> [B, H, L, E] transposes a projection gives."""
    B, H, L, S, E = 2, 2, 18, 17, 8
    q = torch.randn(B, L, H, E, device=DEVICE).transpose(1, 2)
    k = torch.randn(B, S, H, E, device=DEVICE).transpose(1, 2)
    v = torch.randn(B, S, H, E, device=DEVICE).transpose(1, 2)
    qd = torch.randn(2, B, L, H, E, device=DEVICE).transpose(2, 3)
    assert not q.is_contiguous() and not qd.is_contiguous()
    check([q, k, v, qd, None, torch.randn(2, *v.shape, device=DEVICE)], *TOLS[torch.float32], scale=0.3)


def test_matches_sdpa_forward(backend):
    """The primal is F.scaled_dot_product_attention's, conventions included: a bool mask's True
    attends, a causal mask with L ≠ S is top-left aligned."""
    q, k, v, qd, kd, vd = make((2,), 19, 13, 8, 8, 1)
    for kw in (dict(attn_mask=bool_mask((19, 13))), dict(is_causal=True), dict(attn_mask=float_mask((2, 19, 13)))):
        o, _ = sdpa_jvp(q, k, v, qd, kd, vd, **kw)
        torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, **kw), atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_give_zero(backend):
    """A query row that sees no key gives o = 0 and o_dot = 0, as SDPA does (not NaN), and passes
    no gradient; the other rows' values and gradients are those of the math attention."""
    q, k, v, qd, kd, vd = make((2,), 19, 13, 8, 6, 2)
    mask = bool_mask((19, 13))
    mask[[3, 17]] = False
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, qd, kd, vd)]
    o, o_dot = sdpa_jvp(*leaves, attn_mask=mask)
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    assert (o[:, [3, 17]] == 0).all() and (o_dot[:, :, [3, 17]] == 0).all()
    live = mask.any(-1)
    refl = [t.double().requires_grad_(True) for t in (q, k, v, qd, kd, vd)]
    ro, rod = oracle(*refl, attn_mask=mask | ~live[:, None])             # dead rows given keys, then ignored
    torch.testing.assert_close(o_dot[:, :, live].double(), rod[:, :, live], atol=5e-5, rtol=5e-5)
    g_o, g_od = torch.randn_like(ro) * live[:, None], torch.randn_like(rod) * live[:, None]
    grads = torch.autograd.grad(loss_of(o * live[:, None], o_dot * live[:, None], g_o, g_od), leaves)
    rgrads = torch.autograd.grad(loss_of(ro * live[:, None], rod * live[:, None], g_o, g_od), refl)
    for g, r in zip(grads, rgrads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), r, atol=5e-4, rtol=5e-4)


def test_only_some_inputs_need_gradients(backend):
    """Detached tangents (MeanFlow, sCM) and a constant q: gradients for k and v only, still exact."""
    q, k, v, qd, kd, vd = make((2,), 18, 19, 8, 6, 2)
    kv = [t.clone().requires_grad_(True) for t in (k, v)]
    o, o_dot = sdpa_jvp(q, *kv, qd, kd, vd, is_causal=True)
    rkv = [t.double().requires_grad_(True) for t in (k, v)]
    ro, rod = oracle(q.double(), *rkv, qd.double(), kd.double(), vd.double(), is_causal=True)
    g_o, g_od = torch.randn_like(ro), torch.randn_like(rod)
    for g, r in zip(torch.autograd.grad(loss_of(o, o_dot, g_o, g_od), kv),
                    torch.autograd.grad(loss_of(ro, rod, g_o, g_od), rkv)):
        torch.testing.assert_close(g.double(), r, atol=5e-4, rtol=5e-4)


def test_triton_saves_no_score_matrix(monkeypatch):
    """Backward keeps the inputs, the outputs, the log-sum-exp and μ (rows): nothing [L, S]."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    B, L, S, E, T = 2, 40, 36, 8, 2
    q, k, v, qd, kd, vd = (t.requires_grad_(True) for t in make((B,), L, S, E, E, T))
    o, o_dot = sdpa_jvp(q, k, v, qd, kd, vd)
    saved = [t for t in o.grad_fn.saved_tensors if t is not None]
    assert max(t.numel() for t in saved) < B * L * S
    assert sum(t.numel() for t in saved) == sum(t.numel() for t in (q, k, v, qd, kd, vd, o, o_dot)) + (1 + T) * B * L


def test_triton_double_backward_raises(monkeypatch):
    """The Triton backward is kernels that build no graph: a create_graph=True backward through it
    raises instead of missing terms (the torch path is differentiable again, see gradgradcheck)."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    q, k, v, qd, kd, vd = make((1,), 16, 16, 8, 8, 1)
    q.requires_grad_(True)
    o, o_dot = sdpa_jvp(q, k, v, qd, kd, vd)
    (gq,) = torch.autograd.grad(o_dot.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative through a kernel"):
        gq.sum().backward()
    # a loss linear in the outputs too (once_differentiable returned a gradient without a graph there)
    (gq,) = torch.autograd.grad(o.sum() + o_dot.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative through a kernel"):
        torch.autograd.grad(gq.square().sum(), q)


@pytest.mark.parametrize("whole_bytes", [24 << 20, 0], ids=["whole", "chunks"])
def test_gradcheck_float64_torch_path(monkeypatch, whole_bytes):
    """Both forms of the torch path: gradients and second derivatives (a create_graph=True backward
    through the chunked form runs autograd on the math) check by finite differences."""
    import owf_kernels.attention_jvp as A
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    monkeypatch.setattr(A, "WHOLE_BYTES", whole_bytes)
    inputs = [t.double().requires_grad_(True) for t in make((1,), 3, 4, 2, 2, 1)]
    mask = bool_mask((3, 4))
    f = lambda *a: sdpa_jvp(*a, attn_mask=mask)      # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("bad,match", [
    (dict(dropout_p=0.1), "dropout_p=0.1"),
    (dict(enable_gqa=True), "enable_gqa=True"),
    (dict(k=torch.randn(2, 1, 6, 4), v=torch.randn(2, 1, 6, 3), k_dot=None, v_dot=None), "2 heads and k 1 .GQA."),
    (dict(k=torch.randn(2, 2, 6, 5)), r"does not end in E=4"),
    (dict(v=torch.randn(2, 2, 7, 3)), r"does not have S=6 keys"),
    (dict(q_dot=torch.randn(2, 2, 5, 4)), r"q_dot must be \[T, \*q.shape\]"),
    (dict(k_dot=torch.randn(3, 2, 2, 6, 4)), "k_dot has T=3, an earlier one T=2"),
    (dict(q_dot=None, k_dot=None, v_dot=None), "all None"),
    (dict(attn_mask=torch.ones(5, 6, dtype=torch.bool), is_causal=True), "attn_mask and is_causal"),
    (dict(attn_mask=torch.ones(5, 6, dtype=torch.int64)), "bool or floating point, got dtype torch.int64"),
    (dict(attn_mask=torch.ones(5, 7)), r"attn_mask shape \(5, 7\) does not broadcast"),
    (dict(v=torch.randn(2, 2, 6, 3).double()), "share one dtype"),
    (dict(scale=math.inf), "scale=inf"),
])
def test_bad_input_names_the_problem(bad, match):
    args = dict(q=torch.randn(2, 2, 5, 4), k=torch.randn(2, 2, 6, 4), v=torch.randn(2, 2, 6, 3),
                q_dot=torch.randn(2, 2, 2, 5, 4), k_dot=torch.randn(2, 2, 2, 6, 4), v_dot=torch.randn(2, 2, 2, 6, 3))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sdpa_jvp(**args)


# ---------------------------------------------------------------------------------------------
# Compiled for an H100/H200 (sm_90): Triton's frontend, LLVM and ptxas, no launch
# ---------------------------------------------------------------------------------------------
def aot_compile_sm90():
    """Compile the forward and both backward kernels as the JIT would specialise them (unit inner
    strides, 16-aligned pointers and sizes) with the smallest autotune tile: bf16 with every
    tangent and a bool mask, fp32 (tf32x3 dots) with q_dot only, causal. Needs TRITON_INTERPRET unset."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import owf_kernels.attention_jvp_triton as K
    unit = ("stride_qk", "stride_kk", "stride_vk", "stride_qdk", "stride_kdk", "stride_vdk", "stride_mn")
    for dtype, precision, tangents, mask, causal in (("bf16", None, (True, True, True), 1, False),
                                                     ("fp32", "tf32x3", (True, False, False), 0, True)):
        for kernel, cfg in ((K._fwd_kernel, K._fwd_configs()[-1]), (K._bwd_q_kernel, K._bwd_configs()[-1]),
                            (K._bwd_kv_kernel, K._bwd_configs()[-1])):
            consts = dict({n: 1 for n in unit}, HAS_QD=tangents[0], HAS_KD=tangents[1], HAS_VD=tangents[2], MASK=mask,
                          IS_CAUSAL=causal, PRECISION=precision, CAST_F32=False, BLOCK_E=64, BLOCK_EV=32, **cfg.kwargs)
            sig = {}
            for n in kernel.arg_names:
                if n in consts:
                    sig[n] = "constexpr"
                elif n.endswith("_ptr"):
                    sig[n] = "*u8" if n == "mask_ptr" else "*fp32" if n in ("lse_ptr", "mu_ptr", "nu_ptr", "delta_ptr") \
                        else f"*{dtype}"
                else:
                    sig[n] = "fp32" if n == "sm_scale" else "i32"
            attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
                     if sig[n] != "constexpr" and n not in ("H", "T", "sm_scale")}
            triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", "import test_attention_jvp as t; t.aot_compile_sm90()"],
                       cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def test_triton_refuses_float64(monkeypatch):
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    with pytest.raises(ValueError, match="dtype torch.float64 is not supported by the Triton kernel"):
        sdpa_jvp(*make((1,), 4, 4, 4, 4, 1, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Without a tangent graph: SDPA's own o and the tangents from CPU flash attention's log-sum-exp
# ---------------------------------------------------------------------------------------------
#         batch    L   S  E  T  tangents causal
DETACHED = [((2, 3), 19, 23, 8, 1, "qkv", False),
            ((1, 2), 20, 17, 6, 3, "qkv", False),
            ((2, 1), 21, 13, 5, 2, "q", True),
            ((1, 3), 13, 21, 9, 3, "k", True),
            ((2, 2), 18, 19, 7, 2, "v", False),
            ((3, 1), 17, 17, 4, 1, "kv", True)]


@pytest.mark.parametrize("case", DETACHED, ids=["T1", "T3", "q-causal", "k-causal-L<S", "v", "kv-causal"])
@pytest.mark.parametrize("chunk_bytes", [2 << 20, 1], ids=["whole", "chunks"])
def test_detached_tangent_from_flash_lse(monkeypatch, case, chunk_bytes):
    """sdpa_with_detached_tangent in float64 on the CPU: it takes the flash path; o is
    F.scaled_dot_product_attention's own (bitwise, and the same gradients), o_dot the oracle's,
    with no graph; in one chunk and in chunks of one (batch, head)."""
    from owf_kernels import attention_jvp as A
    monkeypatch.setattr(A, "TANGENT_CHUNK_BYTES", chunk_bytes)
    batch, L, S, E, T, tangents, causal = case
    q, k, v, *dots = make(batch, L, S, E, E, T, tangents, dtype=torch.float64)
    q, k, v = (x.cpu().requires_grad_(True) for x in (q, k, v))
    dots = [None if d is None else d.cpu() for d in dots]
    assert A.flash_cpu_takes(q, k, v, None, 0.0, False)
    o, o_dot = A.sdpa_with_detached_tangent(q, k, v, *dots, is_causal=causal, scale=0.7)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.7)
    assert torch.equal(o, want) and not o_dot.requires_grad
    with torch.no_grad():
        _, rod = oracle(q, k, v, *dots, is_causal=causal, scale=0.7)
    torch.testing.assert_close(o_dot, rod, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(o)
    torch.testing.assert_close(torch.autograd.grad((o * g).sum(), (q, k, v)),
                               torch.autograd.grad((want * g).sum(), (q, k, v)), atol=1e-13, rtol=1e-12)


@pytest.mark.parametrize("why", ["mask", "strided", "Ev", "3-d", "no heads", "flash off"])
def test_detached_tangent_elsewhere_takes_sdpa_and_sdpa_jvp(why):
    """Where CPU flash attention does not take the call (or is switched off), o is SDPA's and o_dot
    sdpa_jvp's: the same values as the oracle either way."""
    from owf_kernels import attention_jvp as A
    E = 5 if why == "Ev" else 6
    q, k, v, *dots = make((2, 0 if why == "no heads" else 2), 7, 9, 6, E, 2, "qkv", dtype=torch.float64)
    q, k, v, dots = q.cpu(), k.cpu(), v.cpu(), [d.cpu() for d in dots]
    kw = {"attn_mask": bool_mask((7, 9)).cpu()} if why == "mask" else {}
    if why == "strided":
        q = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    if why == "3-d":
        q, k, v, dots = q[0], k[0], v[0], [d[:, 0] for d in dots]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH) if why == "flash off" else contextlib.nullcontext():
        assert not A.flash_cpu_takes(q, k, v, kw.get("attn_mask"), 0.0, False)
        o, o_dot = A.sdpa_with_detached_tangent(q, k, v, *dots, **kw)
    ro, rod = oracle(q, k, v, *dots, **kw)
    torch.testing.assert_close(o, ro, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(o_dot, rod, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("tangents,T", [("qkv", 1), ("qkv", 3), ("q", 2), ("k", 1), ("v", 2), ("qv", 1)])
def test_chunked_torch_path_from_flash_lse(monkeypatch, tangents, T):
    """Above WHOLE_BYTES, where CPU flash attention takes the call (4-D, one head dim, no mask), the
    torch path's forward is flash's o with the tangents and μ from its log-sum-exp, and backward
    recomputes p = exp(s − ℓ): values and all six gradients against the oracle in float64, in
    chunks, and a second derivative by finite differences."""
    import owf_kernels.attention_jvp as A
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    for name, value in (("WHOLE_BYTES", 0), ("CHUNK_BYTES", 1), ("TANGENT_CHUNK_BYTES", 1)):
        monkeypatch.setattr(A, name, value)
    monkeypatch.setattr(A, "forward_torch", None)                 # the flash branch, or a TypeError
    inputs = [t.cpu() if t is not None else None for t in make((2, 3), 19, 23, 6, 6, T, tangents, dtype=torch.float64)]
    present = [i for i, t in enumerate(inputs) if t is not None]
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in inputs]
    o, o_dot = sdpa_jvp(*leaves, scale=0.6)
    assert o.grad_fn.saved_tensors[-1].shape == (2, 3, 19)         # ℓ is kept: p is not softmaxed again
    ro, rod = oracle(*[t.clone().requires_grad_(True) if t is not None else None for t in inputs], scale=0.6)
    torch.testing.assert_close(o, ro.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(o_dot, rod.detach(), atol=1e-12, rtol=1e-10)
    g_o, g_od = torch.randn_like(o), torch.randn_like(o_dot)
    grads = torch.autograd.grad(loss_of(o, o_dot, g_o, g_od), [leaves[i] for i in present])
    refl = [t.clone().requires_grad_(True) if t is not None else None for t in inputs]
    rgrads = torch.autograd.grad(loss_of(*oracle(*refl, scale=0.6), g_o, g_od), [refl[i] for i in present])
    for g, r in zip(grads, rgrads):
        torch.testing.assert_close(g, r, atol=1e-11, rtol=1e-9)
    small = [t[:1, :1, :3, :2].clone().requires_grad_(True) if t is not None and t.dim() == 4 else
             t[:, :1, :1, :3, :2].clone().requires_grad_(True) if t is not None else None for t in inputs]
    f = lambda *a: sdpa_jvp(*a)      # noqa: E731
    assert torch.autograd.gradcheck(f, small) and torch.autograd.gradgradcheck(f, small)
