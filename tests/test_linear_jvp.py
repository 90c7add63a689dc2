"""linear_jvp against torch.func.jvp (outputs, tangents) and autograd through it (every gradient)."""
import pytest
import torch
import torch.nn.functional as F

from support import DEVICE
from owf_kernels import ACTIVATIONS, linear_jvp

SLOPE = 0.2


def act_ref(a, activation):
    return {"identity": lambda a: a, "relu": torch.relu, "leaky_relu": lambda a: F.leaky_relu(a, SLOPE),
            "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": lambda a: F.softplus(a, threshold=1e9),
            "silu": F.silu}[activation](a)


def reference(x, x_dot, W, b, activation):
    """y and the T tangents by torch.func.jvp of the plain layer, one tangent at a time."""
    f = lambda x: act_ref(F.linear(x, W, b), activation)   # noqa: E731
    outs = [torch.func.jvp(f, (x,), (x_dot[t],)) for t in range(x_dot.shape[0])]
    return outs[0][0], torch.stack([o[1] for o in outs])


def make(M, K, N, T, dtype=torch.float32, device=DEVICE, bias=True, lead=None):
    shape = (M, K) if lead is None else (*lead, K)
    x = torch.randn(*shape, dtype=dtype, device=device)
    xd = torch.randn(T, *shape, dtype=dtype, device=device)
    W = torch.randn(N, K, dtype=dtype, device=device) / K ** 0.5
    b = torch.randn(N, dtype=dtype, device=device) if bias else None
    return x, xd, W, b


def check(x, xd, W, b, activation, atol, rtol):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, xd, W) + ((b,) if b is not None else ())]
    refl = [t.detach().double().requires_grad_(True) for t in leaves]
    y, yd = linear_jvp(*leaves[:3], leaves[3] if b is not None else None, activation, SLOPE)
    ry, ryd = reference(*refl[:3], refl[3] if b is not None else None, activation)
    torch.testing.assert_close(y.double(), ry, atol=atol, rtol=rtol)
    torch.testing.assert_close(yd.double(), ryd, atol=atol, rtol=rtol)
    # a loss that uses both outputs non-linearly, so the σ'' terms matter
    gy, gyd = torch.randn_like(ry), torch.randn_like(ryd)
    loss = (y.double() * gy).sum() + (yd.double() * gyd).sum() + (yd.double() ** 2).sum()
    rloss = (ry * gy).sum() + (ryd * gyd).sum() + (ryd ** 2).sum()
    grads = torch.autograd.grad(loss, leaves)
    rgrads = torch.autograd.grad(rloss, refl)
    for name, g, r in zip(("x", "x_dot", "weight", "bias"), grads, rgrads):
        torch.testing.assert_close(g.double(), r, atol=atol * 10, rtol=rtol * 10, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("M,K,N,T", [(1, 5, 3, 1), (7, 17, 33, 2), (129, 20, 18, 5)])
def test_matches_func_jvp(backend, activation, M, K, N, T):
    check(*make(M, K, N, T), activation, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
def test_no_bias_and_leading_dims(backend, activation):
    x, xd, W, b = make(0, 12, 20, 2, bias=False, lead=(3, 5))
    check(x, xd, W, None, activation, atol=2e-4, rtol=2e-4)
    y, yd = linear_jvp(x, xd, W, None, activation)
    assert y.shape == (3, 5, 20) and yd.shape == (2, 3, 5, 20)


@pytest.mark.parametrize("activation", ["tanh", "silu", "relu"])
def test_non_contiguous(backend, activation):
    x, xd, W, b = make(40, 24, 20, 3)
    x_nc = torch.randn(24, 40, device=DEVICE).t()                       # transposed view
    xd_nc = torch.randn(40, 3, 24, device=DEVICE).permute(1, 0, 2)      # permuted view
    W_nc = torch.randn(24, 20, device=DEVICE).t() / 5
    b_nc = torch.randn(40, device=DEVICE)[::2]                          # strided
    for t in (x_nc, xd_nc, W_nc, b_nc):
        assert not t.is_contiguous()
    check(x_nc, xd_nc, W_nc, b_nc, activation, atol=2e-4, rtol=2e-4)


def test_chained_layers_share_a_buffer(backend):
    """Layer outputs feed the next layer without a copy; the chain still matches func.jvp."""
    x, xd, W1, b1 = make(33, 6, 24, 2)
    W2, b2 = torch.randn(24, 24, device=DEVICE) / 5, torch.randn(24, device=DEVICE)
    params = [t.requires_grad_(True) for t in (W1, b1, W2, b2)]
    h, hd = linear_jvp(x, xd, W1, b1, "tanh")
    y, yd = linear_jvp(h, hd, W2, b2, "softplus")
    f = lambda x: F.softplus(F.linear(torch.tanh(F.linear(x, W1, b1)), W2, b2), threshold=1e9)  # noqa: E731
    ryd = torch.stack([torch.func.jvp(f, (x,), (xd[t],))[1] for t in range(2)])
    torch.testing.assert_close(yd, ryd, atol=2e-4, rtol=2e-4)
    g = torch.autograd.grad(yd.square().sum() + y.sum(), params)
    rg = torch.autograd.grad(ryd.square().sum() + f(x).sum(), params)
    for a, r in zip(g, rg):
        torch.testing.assert_close(a, r, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_inputs_stacked_in_one_buffer(monkeypatch, activation, bias):
    """x, x_dot as views of one [1+T, M, K] buffer (the torch path then takes one GEMM over all rows
    and adds s·b in one pass) give what separate copies of them give (two GEMMs), gradients too."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    x, xd, W, b = make(37, 24, 20, 2, device="cpu", bias=bias)
    buf = torch.cat([x[None], xd]).requires_grad_(True)
    W, b = W.requires_grad_(True), (b.requires_grad_(True) if bias else None)
    y, yd = linear_jvp(buf[0], buf[1:], W, b, activation, SLOPE)
    loss = (y * y).sum() + (yd * yd).sum()
    g = torch.autograd.grad(loss, [buf, W] + ([b] if bias else []))
    x2, xd2 = x.clone().requires_grad_(True), xd.clone().requires_grad_(True)
    y2, yd2 = linear_jvp(x2, xd2, W, b, activation, SLOPE)
    g2 = torch.autograd.grad((y2 * y2).sum() + (yd2 * yd2).sum(), [x2, xd2, W] + ([b] if bias else []))
    torch.testing.assert_close(y, y2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(yd, yd2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g[0], torch.cat([g2[0][None], g2[1]]), atol=1e-5, rtol=1e-5)
    for a, r in zip(g[1:], g2[2:]):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64_torch_path(monkeypatch):
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    for activation in ACTIVATIONS:
        if activation in ("relu", "leaky_relu"):
            continue   # kinks: finite differences straddle them
        x, xd, W, b = (t.double().requires_grad_(True) for t in make(4, 3, 5, 2, device="cpu"))
        assert torch.autograd.gradcheck(lambda *a: linear_jvp(*a, activation=activation), (x, xd, W, b))


@pytest.mark.parametrize("bad,match", [
    (dict(activation="gelu"), "not supported; choose one of"),
    (dict(x=torch.randn(4, 6)), r"does not end in K=5"),
    (dict(x_dot=torch.randn(4, 5)), r"x_dot must be \[T, \*x.shape\]"),
    (dict(weight=torch.randn(3, 5).double()), "share one dtype"),
    (dict(bias=torch.randn(4)), r"bias must be \[N=3\]"),
    (dict(activation="leaky_relu", negative_slope=-0.1), "negative_slope=-0.1"),
])
def test_bad_input_names_the_problem(bad, match):
    args = dict(x=torch.randn(4, 5), x_dot=torch.randn(2, 4, 5), weight=torch.randn(3, 5), bias=torch.randn(3),
                activation="tanh", negative_slope=0.2)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        linear_jvp(**args)


@pytest.mark.parametrize("activation", ["tanh", "silu", "leaky_relu"])
def test_bfloat16_inputs_accumulate_in_fp32(backend, activation):
    x, xd, W, b = make(33, 40, 24, 2, dtype=torch.bfloat16)
    y, yd = linear_jvp(x, xd, W, b, activation)
    assert y.dtype == yd.dtype == torch.bfloat16
    check(x, xd, W, b, activation, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("activation", ["tanh", "silu", "leaky_relu"])
def test_tangents_constant_over_the_batch(backend, activation):
    """Identity tangents expanded over the batch (stride 0), as in the exact log-det: passed as they
    are (no copy), with gradients for x, W and b."""
    x, _, W, b = make(40, 3, 24, 3)
    xd = torch.eye(3, device=DEVICE).unsqueeze(1).expand(3, 40, 3)
    assert xd.stride(1) == 0
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, W, b)]
    y, yd = linear_jvp(leaves[0], xd, leaves[1], leaves[2], activation, SLOPE)
    ref = [t.detach().double().requires_grad_(True) for t in (x, W, b)]
    ry, ryd = reference(ref[0], xd.double(), ref[1], ref[2], activation)
    torch.testing.assert_close(y.double(), ry, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(yd.double(), ryd, atol=2e-4, rtol=2e-4)
    g = torch.autograd.grad((yd.double() ** 2).sum() + y.double().sum(), leaves)
    rg = torch.autograd.grad((ryd ** 2).sum() + ry.sum(), ref)
    for a, r in zip(g, rg):
        torch.testing.assert_close(a.double(), r, atol=2e-3, rtol=2e-3)


def test_keep_freed_memory_is_accepted_by_glibc():
    """mallopt refuses values beyond its limits (e.g. an mmap threshold above 32 MiB) by returning
    0: on Linux with glibc all three settings must be accepted; elsewhere it changes nothing."""
    import platform
    import sys

    from owf_kernels import keep_freed_memory
    ok = keep_freed_memory()
    assert ok is keep_freed_memory()                     # applied once, then remembered
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert ok == glibc
    x = torch.ones(3, 512, 256)                          # still allocates and computes as before
    assert float(x.sum()) == 3 * 512 * 256


@pytest.mark.parametrize("loss_kind", ["nonlinear", "linear"])
@pytest.mark.parametrize("op", ["linear_jvp", "mlp_jvp"])
def test_double_backward_raises_instead_of_missing_terms(backend, op, loss_kind):
    """The backward is hand-written (on Triton a kernel that builds no graph), so a create_graph=True
    backward (a gradient penalty through G, say) would silently miss terms: it raises instead, by
    .backward() and by torch.autograd.grad to x, also for a loss linear in the outputs (whose incoming
    gradient needs no grad: torch's once_differentiable returned a gradient with no graph there, and a
    second derivative came out wrong). The first-order gradient it returns is still the right one."""
    from owf_kernels import mlp_jvp
    x = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    xd = torch.randn(2, 5, 16, device=DEVICE)
    W = torch.randn(16, 16, device=DEVICE, requires_grad=True)
    if op == "linear_jvp":
        y, yd = linear_jvp(x, xd, W, None, "tanh")
    else:
        y, yd = mlp_jvp(x, xd, [W, W], None, "tanh")
    loss = y.square().sum() + yd.norm(dim=-1).log().sum() if loss_kind == "nonlinear" else y.sum() + yd.sum()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (want,) = torch.autograd.grad(loss, x, retain_graph=True)
    torch.testing.assert_close(gx, want)
    with pytest.raises(RuntimeError, match="second derivative through a kernel"):
        torch.autograd.grad(gx.square().sum() + x.square().sum(), x, retain_graph=True)
    with pytest.raises(RuntimeError, match="second derivative through a kernel"):
        gx.square().sum().backward()


def _float64_case(op):
    """(public op, its torch reference, float64 arguments) of each kernel built on tl.dot."""
    from owf_kernels import mlp_jvp, sdpa_jvp
    from owf_kernels.attention_jvp import sdpa_jvp_torch
    from owf_kernels.linear_jvp import linear_jvp_torch
    from owf_kernels.mlp_jvp import mlp_jvp_torch
    x, xd, W, b = make(5, 16, 8, 2, dtype=torch.float64)
    if op == "linear_jvp":
        return linear_jvp, linear_jvp_torch, (x, xd, W, b, "tanh")
    if op == "mlp_jvp":
        return mlp_jvp, mlp_jvp_torch, (x, xd, [W], [b], "tanh")
    q, k, v = (torch.randn(2, 6, 4, dtype=torch.float64, device=DEVICE) for _ in range(3))
    return sdpa_jvp, sdpa_jvp_torch, (q, k, v, torch.randn(1, 2, 6, 4, dtype=torch.float64, device=DEVICE), None, None)


@pytest.mark.parametrize("op", ["linear_jvp", "mlp_jvp", "sdpa_jvp"])
def test_float64_takes_the_reference_under_auto_and_is_refused_by_triton(monkeypatch, op):
    """Triton's dot has no float64 on NVIDIA GPUs (a compile error on sm_90, found on an H200): under
    auto a float64 CUDA tensor runs the torch reference, and an explicit triton backend names the dtype."""
    import owf_kernels.backend as B
    fn, ref, args = _float64_case(op)
    monkeypatch.setattr(B, "use_triton", lambda t: True)         # as for a CUDA tensor under auto
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "auto")
    assert B.use_triton_dot(torch.zeros(1)) and B.use_triton_dot(torch.zeros(1, dtype=torch.bfloat16))
    assert not B.use_triton_dot(torch.zeros(1, dtype=torch.float64))
    y, yd = fn(*args)                                             # the reference, in float64
    ry, ryd = ref(*args)
    assert y.dtype == torch.float64 and torch.equal(y, ry) and torch.equal(yd, ryd)
    monkeypatch.undo()
    pytest.importorskip("triton")
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    with pytest.raises(ValueError, match="dtype torch.float64 is not supported by the Triton kernel"):
        fn(*args)
