"""mlp_jvp (a stack of linear_jvp layers as one autograd node) against the same MLP by
torch.func.jvp in float64 (outputs, tangents, every gradient), and against chained linear_jvp calls."""
import pytest
import torch
import torch.nn.functional as F

from support import DEVICE
from owf_kernels import linear_jvp, mlp_jvp
from test_linear_jvp import SLOPE, act_ref


def make_mlp(widths, bias=(True,), dtype=torch.float32):
    Ws = [torch.randn(b, a, dtype=dtype, device=DEVICE) / a ** 0.5 for a, b in zip(widths[:-1], widths[1:])]
    bias = list(bias) * len(Ws) if len(bias) == 1 else list(bias)
    bs = [torch.randn(W.shape[0], dtype=dtype, device=DEVICE) if has else None for W, has in zip(Ws, bias)]
    return Ws, bs


def reference(x, x_dot, Ws, bs, activation, last_activation):
    """y, y_dot by torch.func.jvp of the plain MLP, one tangent at a time."""
    def f(h):
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = act_ref(F.linear(h, W, b), activation if i < len(Ws) - 1 else last_activation)
        return h
    outs = [torch.func.jvp(f, (x,), (x_dot[t],)) for t in range(x_dot.shape[0])]
    return outs[0][0], torch.stack([o[1] for o in outs])


def check(x, xd, Ws, bs, activation, last_activation, x_grad=True, atol=2e-4, rtol=2e-4):
    """Values and the gradients of a loss that uses y, y_dot and y_dot² (so σ'' terms matter) in every
    leaf: x and x_dot when x_grad (else they are constants, as the latents of a generator), W, b."""
    ps = [t.detach().clone().requires_grad_(True) for t in Ws + [b for b in bs if b is not None]]
    xs = [x.detach().clone().requires_grad_(x_grad), xd if xd.stride(1) == 0 else xd.detach().clone().requires_grad_(x_grad)]
    it = iter(ps[len(Ws):])
    bl = [next(it) if b is not None else None for b in bs]
    y, yd = mlp_jvp(xs[0], xs[1], ps[:len(Ws)], bl, activation, last_activation, SLOPE)
    rps = [p.detach().double().requires_grad_(True) for p in ps]
    rxs = [t.detach().double().requires_grad_(t.requires_grad) for t in xs]
    it = iter(rps[len(Ws):])
    rbl = [next(it) if b is not None else None for b in bs]
    ry, ryd = reference(rxs[0], rxs[1], rps[:len(Ws)], rbl, activation, last_activation)
    torch.testing.assert_close(y.double(), ry, atol=atol, rtol=rtol)
    torch.testing.assert_close(yd.double(), ryd, atol=atol, rtol=rtol)
    gy, gyd = torch.randn_like(ry), torch.randn_like(ryd)
    leaves = [t for t in xs if t.requires_grad] + ps
    rleaves = [t for t in rxs if t.requires_grad] + rps
    grads = torch.autograd.grad((y.double() * gy).sum() + (yd.double() * gyd).sum() + (yd.double() ** 2).sum(), leaves)
    rgrads = torch.autograd.grad((ry * gy).sum() + (ryd * gyd).sum() + (ryd ** 2).sum(), rleaves)
    for i, (g, r) in enumerate(zip(grads, rgrads)):
        torch.testing.assert_close(g.double(), r, atol=atol * 10, rtol=rtol * 10, msg=lambda m: f"grad of leaf {i}: {m}")


@pytest.mark.parametrize("activation", ["tanh", "silu", "softplus", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("widths,T", [([3, 17, 3], 3), ([5, 20, 24, 6], 2), ([4, 9], 1)])
def test_matches_func_jvp(backend, activation, widths, T):
    Ws, bs = make_mlp(widths)
    x = torch.randn(13, widths[0], device=DEVICE)
    xd = torch.randn(T, 13, widths[0], device=DEVICE)
    check(x, xd, Ws, bs, activation, "identity")


@pytest.mark.parametrize("activation", ["tanh", "silu", "softplus", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("x_grad", [False, True])
def test_identity_tangents_as_in_an_exact_logdet(backend, activation, x_grad):
    """The exact log-det's tangents: the columns of I_n, expanded over the batch (stride 0). Without
    a gradient for x (a generator's latents) the first layer's backward takes its own path
    (linear_jvp._grads_const_tangents); with one, the generic path."""
    n = 3
    Ws, bs = make_mlp([n, 24, 24, n], bias=(True, False, True))
    x = torch.randn(40, n, device=DEVICE)
    xd = torch.eye(n, device=DEVICE).unsqueeze(1).expand(n, 40, n)
    check(x, xd, Ws, bs, activation, "tanh" if activation == "identity" else "identity", x_grad=x_grad)


def test_same_as_chained_linear_jvp(backend):
    """One node or a chain of nodes: the same numbers, values and gradients."""
    Ws, bs = make_mlp([2, 32, 32, 2])
    ps = [t.requires_grad_(True) for t in Ws + bs]
    x = torch.randn(64, 2, device=DEVICE)
    xd = torch.eye(2, device=DEVICE).unsqueeze(1).expand(2, 64, 2)
    y, yd = mlp_jvp(x, xd, Ws, bs, "tanh")
    h, hd = x, xd
    for i, (W, b) in enumerate(zip(Ws, bs)):
        h, hd = linear_jvp(h, hd, W, b, "tanh" if i < 2 else "identity")
    torch.testing.assert_close(y, h, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(yd, hd, atol=1e-6, rtol=1e-6)
    g = torch.autograd.grad(y.square().sum() + yd.sin().sum(), ps)
    rg = torch.autograd.grad(h.square().sum() + hd.sin().sum(), ps)
    for a, r in zip(g, rg):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_leading_dims_and_no_biases(backend):
    Ws, _ = make_mlp([6, 16, 5])
    x = torch.randn(2, 3, 6, device=DEVICE)
    xd = torch.randn(2, 2, 3, 6, device=DEVICE)
    y, yd = mlp_jvp(x, xd, Ws, None, "softplus", "tanh")
    assert y.shape == (2, 3, 5) and yd.shape == (2, 2, 3, 5)
    ry, ryd = reference(x.double(), xd.double(), [W.double() for W in Ws], [None, None], "softplus", "tanh")
    torch.testing.assert_close(y.double(), ry, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(yd.double(), ryd, atol=2e-4, rtol=2e-4)


def test_gradcheck_float64_torch_path(monkeypatch):
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    Ws, bs = make_mlp([3, 5, 4, 2], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    xd = torch.randn(2, 4, 3, dtype=torch.float64)
    leaves = [t.to("cpu").requires_grad_(True) for t in [x, xd] + Ws + bs]

    def f(x, xd, *p):
        return mlp_jvp(x, xd, list(p[:3]), list(p[3:]), "tanh", "softplus")
    assert torch.autograd.gradcheck(f, tuple(leaves))
    xc = torch.eye(3, dtype=torch.float64).unsqueeze(1).expand(3, 4, 3)       # constant tangents, x without grad
    assert torch.autograd.gradcheck(lambda *p: f(x, xc, *p), tuple(leaves[2:]))


@pytest.mark.parametrize("bad,match", [
    (dict(weights=[]), "at least one layer"),
    (dict(weights=[torch.randn(8, 3), torch.randn(2, 7)]), r"weights\[1\] must be \[N, K=8\]"),
    (dict(biases=[torch.randn(8)]), "2 weights but 1 biases"),
    (dict(biases=[torch.randn(8), torch.randn(3)]), r"biases\[1\] must be \[N=2\]"),
    (dict(weights=[torch.randn(8, 3), torch.randn(2, 8).double()]), r"weights\[1\] is torch.float64"),
    (dict(last_activation="gelu"), "last_activation='gelu' is not supported"),
    (dict(activation="gelu"), "activation='gelu' is not supported"),
])
def test_bad_input_names_the_problem(bad, match):
    args = dict(x=torch.randn(4, 3), x_dot=torch.randn(2, 4, 3), weights=[torch.randn(8, 3), torch.randn(2, 8)],
                biases=None, activation="tanh", last_activation="identity")
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        mlp_jvp(**args)
