"""owf_kernels.jvp against torch.func.jvp in float64: every module type alone and in random stacks,
both BatchNorm modes, every gradient of a loss nonlinear in the tangents, the fallback, compile,
and bad input.

The oracle for a train-mode BatchNorm is torch.func.jvp of a twin of the network in which each
BatchNorm is written out in elementary ops: with the batch statistics computed inside (batch mode,
which forward-mode AD then differentiates), or taken from a first pass and closed over (per_sample:
constants for the tangents, still differentiable for the gradients). Not torch.func.jvp or
forward_ad of the BatchNorm module itself: their values agree with ours, but the gradients of
their tangents are wrong in torch 2.14.1 (test_pytorch_gradient_of_a_batch_norm_tangent, an xfail).
"""
import copy
import random
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn

from owf_kernels import jvp
from owf_kernels.jvp_layers import LinearOp, _is_projection
from owf_kernels.jvp_runner import _WARNED

def _leaves(module: nn.Module):
    """The modules of a nested nn.Sequential in call order (a non-Sequential module is a leaf)."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


ACTIVATION_MODULES = [nn.ReLU(), nn.LeakyReLU(0.1), nn.Tanh(), nn.Sigmoid(), nn.Softplus(), nn.Softplus(2.0, 3.0),
                      nn.SiLU(), nn.ELU(0.7), nn.GELU(), nn.GELU("tanh")]
DT = torch.float64


def twin(net: nn.Module, mode: str, x: torch.Tensor):
    """A function of x that computes what `net` does, with every BatchNorm in train mode written out
    in elementary ops (see the module docstring). Running statistics are left alone."""
    leaves = list(_leaves(net))
    stats = []
    if mode == "per_sample":                        # the statistics of the primal pass, with their graph
        h = x
        for m in leaves:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.training:
                dims = (0,) + tuple(range(2, h.dim()))
                stats.append(torch.var_mean(h, dims, correction=0, keepdim=True))
                h = _bn(m, h, *stats[-1][::-1])
            else:
                h = m(h)

    def f(h):
        it = iter(stats)
        for m in leaves:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.training:
                if mode == "per_sample":
                    var, mu = next(it)
                else:
                    dims = (0,) + tuple(range(2, h.dim()))
                    mu = h.mean(dims, keepdim=True)
                    var = ((h - mu) ** 2).mean(dims, keepdim=True)
                h = _bn(m, h, mu, var)
            else:
                h = m(h)
        return h
    return f


def _bn(m, h, mu, var):
    shape = (1, -1) + (1,) * (h.dim() - 2)
    out = (h - mu) / torch.sqrt(var + m.eps)
    if m.weight is not None:
        out = out * m.weight.view(shape) + m.bias.view(shape)
    return out


def reference(net, x, V, mode):
    """(y, ẏ [T, ...]) by torch.func.jvp of the twin, one tangent at a time."""
    f = twin(net, mode, x)
    outs = [torch.func.jvp(f, (x,), (v,)) for v in V]
    return outs[0][0], torch.stack([o[1] for o in outs])


def loss(y, yd):
    """Nonlinear in the tangents, as Eq. 9's log‖Jv‖, and with a weight on y that is not constant."""
    c = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)
    return (c * y).sum() + yd.flatten(2).norm(dim=-1).log().sum()


def check(net, x_shape, T=1, mode="batch", single=False, atol=1e-10, x=None):
    """Values and every gradient against the twin's."""
    x = torch.randn(*x_shape, dtype=DT) if x is None else x.clone()
    x.requires_grad_(True)
    V = torch.randn(T, *x_shape, dtype=DT)
    ref_net = copy.deepcopy(net)
    y, yd = jvp(net, (x,), ((V[0] if single else V),), batch_norm=mode)
    if single:
        assert yd.shape == y.shape
        yd = yd.unsqueeze(0)
    ry, ryd = reference(ref_net, x, V, mode)
    torch.testing.assert_close(y, ry, atol=atol, rtol=1e-9)
    torch.testing.assert_close(yd, ryd, atol=atol, rtol=1e-9)
    leaves = [x] + list(net.parameters())
    got = torch.autograd.grad(loss(y, yd), leaves, allow_unused=True)
    want = torch.autograd.grad(loss(ry, ryd), [x] + list(ref_net.parameters()), allow_unused=True)
    for g, w, name in zip(got, want, ["x"] + [n for n, _ in net.named_parameters()]):
        if w is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, w, atol=1e-8, rtol=1e-7, msg=name)
    return y, yd


# ---------------------------------------------------------------------------------------------
# each module type alone
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("T", [1, 3])
def test_linear(B, T):
    check(nn.Linear(5, 19).double(), (B, 5), T)
    check(nn.Linear(3, 4, bias=False).double(), (B, 2, 3), T)      # more leading dims


@pytest.mark.parametrize("cin, cout, k, stride, padding, dilation", [
    (3, 19, 3, 1, 1, 1), (19, 3, 4, 2, 1, 1), (3, 3, 5, 2, 2, 1), (3, 19, 3, 1, 0, 2), (3, 4, 3, 1, "same", 1)])
@pytest.mark.parametrize("B", [1, 7])
def test_conv2d(cin, cout, k, stride, padding, dilation, B):
    check(nn.Conv2d(cin, cout, k, stride, padding, dilation).double(), (B, cin, 9, 8), 3)


@pytest.mark.parametrize("cin, cout, k, stride, padding, output_padding, dilation", [
    (3, 19, 3, 1, 1, 0, 1), (19, 3, 4, 2, 1, 0, 1), (3, 3, 5, 2, 2, 1, 1), (3, 4, 3, 2, 0, 1, 2),
    (19, 1, 4, 2, 1, 0, 1), (3, 1, 3, 2, 0, 1, 2), (3, 1, 5, 1, 2, 0, 1),      # to one channel: GEMM + col2im
    (3, 1, 3, 1, 0, 1, 2)])                      # output_padding >= stride (below the dilation): the native op
@pytest.mark.parametrize("B", [1, 7])
def test_conv_transpose2d(cin, cout, k, stride, padding, output_padding, dilation, B):
    check(nn.ConvTranspose2d(cin, cout, k, stride, padding, output_padding, dilation=dilation).double(),
          (B, cin, 5, 4), 3)


def test_a_transposed_convolution_to_one_channel_is_a_gemm_and_col2im(monkeypatch):
    """The CPU path's own form of that layer: taken (counted), the same numbers as conv_transpose2d,
    and gradients of every order (gradcheck and gradgradcheck in x and W)."""
    import owf_kernels.jvp_layers as L
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    calls = []
    apply = L._ConvTransposeToOneChannel.apply
    monkeypatch.setattr(L._ConvTransposeToOneChannel, "apply", lambda *a: calls.append(1) or apply(*a))
    check(nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.BatchNorm2d(5), nn.LeakyReLU(0.2),
                        nn.ConvTranspose2d(5, 1, (4, 3), 2, (1, 0), (0, 1)), nn.Tanh()).double(), (7, 3, 6, 6), 3, "per_sample")
    assert calls, "the one-channel transposed convolution did not take its GEMM + col2im form"
    torch.manual_seed(0)
    x = torch.randn(3, 4, 3, 5, dtype=DT).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 1, 3, 4, dtype=DT, requires_grad=True)
    f = lambda x, w: apply(x, w, (2, 1), (1, 2), (1, 0), (1, 2))           # noqa: E731
    torch.testing.assert_close(f(x, w), nn.functional.conv_transpose2d(x, w, None, (2, 1), (1, 2), (1, 0), 1, (1, 2)))
    assert torch.autograd.gradcheck(f, (x, w)) and torch.autograd.gradgradcheck(f, (x, w))
    # col2im returns a view of a buffer the size of its columns: the result is copied out of it
    y = apply(torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last), torch.randn(8, 1, 4, 4),
              (2, 2), (1, 1), (0, 0), (1, 1))
    assert y.untyped_storage().nbytes() == y.numel() * y.element_size()


def test_it_composes_as_the_plain_layers_do():
    """What the plain modules allow, the CPU path's channels_last layout and one-channel layer must
    not break: a custom module's x.view, an empty batch, CPU autocast, and torch.func.vmap,
    torch.func.grad and forward_ad around jvp."""
    class View(nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), View(), nn.Linear(100, 2)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # traced: no fallback, no warning
        check(net, (2, 3, 5, 5), 2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, 1, 1), nn.Tanh(), nn.ConvTranspose2d(3, 1, 4, 2, 1)).double()
    y, yd = jvp(net, (torch.zeros(0, 2, 4, 4, dtype=DT),), (torch.zeros(2, 0, 2, 4, 4, dtype=DT),))
    assert y.shape == (0, 1, 8, 8) and yd.shape == (2, 0, 1, 8, 8)
    x, v, t = (torch.randn(2, 2, 4, 4, dtype=DT) for _ in range(3))
    want = torch.func.jvp(net, (x,), (v,))[1]
    torch.testing.assert_close(torch.func.vmap(lambda xx, vv: jvp(net, (xx[None],), (vv[None],))[1][0])(x, v), want)
    g = torch.func.grad(lambda xx: jvp(net, (xx,), (v,))[1].square().sum())(x)
    torch.testing.assert_close(g, torch.func.grad(lambda xx: torch.func.jvp(net, (xx,), (v,))[1].square().sum())(x))
    with fwAD.dual_level():
        got = fwAD.unpack_dual(jvp(net, (fwAD.make_dual(x, t),), (v,))[1]).tangent
    torch.testing.assert_close(got, torch.func.jvp(lambda xx: torch.func.jvp(net, (xx,), (v,))[1], (x,), (t,))[1])
    xf = x.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yd = jvp(net.float(), (xf,), (v.float(),))
    (y.float().sum() + yd.float().square().sum()).backward()
    assert xf.grad is not None and xf.grad.isfinite().all()


def test_outputs_come_back_in_the_layout_of_torch_func_jvp():
    """The CPU path runs its convolutions channels_last; y and ẏ of a contiguous input are contiguous."""
    net = nn.Sequential(nn.Conv2d(3, 19, 3, 1, 1), nn.BatchNorm2d(19), nn.ReLU(), nn.ConvTranspose2d(19, 3, 4, 2, 1)).double()
    y, yd = check(net, (7, 3, 5, 4), 3)
    assert y.is_contiguous() and yd.is_contiguous()


def test_conv_transpose2d_on_a_1x1_input_takes_the_gemm_path():
    """A DCGAN generator's first layer: on a 1x1 input a transposed convolution is a GEMM."""
    m = nn.ConvTranspose2d(19, 3, 4).double()
    assert _is_projection(LinearOp("conv_transpose", m.weight, m.stride, m.padding, m.output_padding, m.dilation,
                                   m.groups), torch.zeros(2, 19, 1, 1))
    check(m, (7, 19, 1, 1), 3)
    check(nn.ConvTranspose2d(19, 3, 4, padding=1).double(), (7, 19, 1, 1), 2)     # padding: the conv path


@pytest.mark.parametrize("act", ACTIVATION_MODULES, ids=repr)
def test_activations(act):
    check(act, (7, 19), 3)
    check(nn.Sequential(nn.Conv2d(3, 3, 3), act).double(), (2, 3, 5, 5), 1, single=True)


@pytest.mark.parametrize("mode", ["batch", "per_sample"])
@pytest.mark.parametrize("bn, shape", [(nn.BatchNorm1d(19), (7, 19)), (nn.BatchNorm1d(3), (7, 3, 5)),
                                       (nn.BatchNorm2d(3), (7, 3, 4, 5)), (nn.BatchNorm2d(19, affine=False), (1, 19, 3, 3)),
                                       (nn.BatchNorm2d(3, momentum=None), (7, 3, 4, 5))])
def test_batch_norm_in_train_mode(bn, shape, mode):
    """Values and gradients, and the running statistics updated once, from the primal, as the module does."""
    net = copy.deepcopy(bn).double()
    with torch.no_grad():                            # non-trivial affine parameters and running statistics
        if net.affine:
            net.weight.uniform_(0.5, 2)
            net.bias.normal_()
        net.running_mean.normal_()
        net.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(net)
    x = torch.randn(*shape, dtype=DT)
    check(net, shape, 3, mode, x=x)
    before(x)                                        # the module's own update, once
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(net, name), getattr(before, name), msg=name)


def test_batch_norm_modes_agree_in_eval_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh()).double().eval()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2)
    x, V = torch.randn(5, 3, 6, 6, dtype=DT), torch.randn(2, 5, 3, 6, 6, dtype=DT)
    a, b = jvp(net, (x,), (V,), batch_norm="batch"), jvp(net, (x,), (V,), batch_norm="per_sample")
    want = torch.stack([torch.func.jvp(net, (x,), (v,))[1] for v in V])      # eval mode: func.jvp runs
    torch.testing.assert_close(a[1], want)
    torch.testing.assert_close(b[1], want)
    assert net[1].num_batches_tracked == 0


@pytest.mark.parametrize("shape", [(7, 19), (7, 3, 5), (2, 3, 4, 5)])
def test_the_batch_statistics_and_their_gradients(shape):
    """jvp_layers._BatchStats (one fused pass forward, one addcmul backward) against var_mean: values,
    gradients of μ and σ² together and of each alone, second derivatives; bf16 within its rounding."""
    from owf_kernels.jvp_layers import _BatchStats
    a = torch.randn(*shape, dtype=DT) * 3 + 2
    dims = (0,) + tuple(range(2, a.dim()))
    var, mu = torch.var_mean(a, dims, correction=0)
    got_mu, got_var = _BatchStats.apply(a)
    torch.testing.assert_close(got_mu, mu)
    torch.testing.assert_close(got_var, var)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(_BatchStats.apply, (a,))
    assert torch.autograd.gradgradcheck(_BatchStats.apply, (a,))
    for i in (0, 1):                              # a loss that reads only μ, or only σ²
        assert torch.autograd.gradcheck(lambda t: _BatchStats.apply(t)[i], (a,))
    b = a.detach().bfloat16()
    bm, bv = _BatchStats.apply(b)
    assert bm.dtype == bv.dtype == torch.bfloat16
    torch.testing.assert_close(bm.double(), mu, atol=0.05, rtol=0.02)
    torch.testing.assert_close(bv.double(), var, atol=0.05, rtol=0.02)


def test_batch_statistics_come_back_in_the_inputs_dtype(monkeypatch):
    """On CUDA torch.batch_norm_update_stats returns a bf16 input's statistics in float32; simulated
    here, a bf16 Conv -> BatchNorm -> GELU -> Conv network still runs in bf16 on the torch epilogue."""
    real = torch.batch_norm_update_stats
    monkeypatch.setattr(torch, "batch_norm_update_stats", lambda a, *r: tuple(t.float() for t in real(a, *r)))
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.GELU(), nn.Conv2d(3, 2, 3)).bfloat16()
    x, v = torch.randn(4, 2, 7, 7, dtype=torch.bfloat16), torch.randn(4, 2, 7, 7, dtype=torch.bfloat16)
    y, yd = jvp(net, (x,), (v,), batch_norm="per_sample")
    assert y.dtype == yd.dtype == torch.bfloat16


def test_per_sample_is_each_samples_own_jacobian():
    """per_sample against the issue's reference: torch.func.jvp of an eval-mode copy whose running
    statistics are the primal batch's (biased variance); and the tangent of sample b does not
    depend on the other samples' tangents."""
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.LeakyReLU(0.2), nn.Linear(6, 3)).double()
    x, V = torch.randn(9, 4, dtype=DT), torch.randn(2, 9, 4, dtype=DT)
    _, yd = jvp(copy.deepcopy(net), (x,), (V,), batch_norm="per_sample")
    ev = copy.deepcopy(net).eval()
    with torch.no_grad():
        a = net[0](x)
        ev[1].running_mean.copy_(a.mean(0))
        ev[1].running_var.copy_(a.var(0, unbiased=False))
    want = torch.stack([torch.func.jvp(ev, (x,), (v,))[1] for v in V])
    torch.testing.assert_close(yd, want)
    V2 = V.clone()
    V2[:, 1:] = torch.randn_like(V2[:, 1:])
    _, yd2 = jvp(copy.deepcopy(net), (x,), (V2,), batch_norm="per_sample")
    torch.testing.assert_close(yd2[:, 0], yd[:, 0])


def test_shape_modules():
    net = nn.Sequential(nn.Linear(12, 24), nn.Unflatten(1, (2, 3, 4)), nn.Dropout(0.3).eval(), nn.Identity(),
                        nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(36, 5)).double()
    check(net, (7, 12), 3)


# ---------------------------------------------------------------------------------------------
# stacks
# ---------------------------------------------------------------------------------------------
def random_stack(rng: random.Random, c: int, size: int):
    """A random conv stack ending in Flatten, Linear, BatchNorm1d, activation; sizes stay >= 2."""
    layers = []
    for _ in range(rng.randint(2, 4)):
        cout = rng.choice([3, 19])
        k = rng.choice([3, 4, 5])
        if rng.random() < 0.5:
            stride = rng.choice([1, 2])
            pad = k // 2 if size < 8 else rng.choice([0, k // 2])
            layers.append(nn.Conv2d(c, cout, k, stride, pad, bias=rng.random() < 0.5))
            size = (size + 2 * pad - k) // stride + 1
        else:
            stride = rng.choice([1, 2])
            pad = rng.choice([0, 1])
            outp = rng.choice([0, 1]) if stride == 2 else 0
            layers.append(nn.ConvTranspose2d(c, cout, k, stride, pad, outp, bias=rng.random() < 0.5))
            size = (size - 1) * stride - 2 * pad + k + outp
        c = cout
        if size > 10:
            layers.append(nn.Conv2d(c, c, 4, 2, 1))
            size = size // 2
        if rng.random() < 0.7:
            layers.append(nn.BatchNorm2d(c))
        if rng.random() < 0.8:
            layers.append(copy.deepcopy(rng.choice(ACTIVATION_MODULES)))
    layers += [nn.Flatten(), nn.Linear(c * size * size, 7), nn.BatchNorm1d(7), copy.deepcopy(rng.choice(ACTIVATION_MODULES))]
    return nn.Sequential(*layers).double(), size


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_random_stacks(seed, mode):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    net, _ = random_stack(rng, 3, 5)
    nested = nn.Sequential(net[:2], nn.Sequential(net[2:]))         # nesting changes nothing
    T = [1, 3][seed % 2]
    check(nested, (7, 3, 5, 5), T, mode, atol=1e-9)


def test_all_n_tangents_give_the_full_jacobian():
    """T = n: the identity tangents give each sample's n x n Jacobian (per_sample), checked against
    torch.autograd.functional.jacobian of an eval-mode copy holding the batch's statistics."""
    net = nn.Sequential(nn.Linear(12, 12 * 4, bias=False), nn.Unflatten(1, (12, 2, 2)), nn.BatchNorm2d(12),
                        nn.LeakyReLU(0.2), nn.Conv2d(12, 3, 2), nn.Flatten()).double()
    x = torch.randn(5, 12, dtype=DT)
    eye = torch.eye(12, dtype=DT).unsqueeze(1).expand(12, 5, 12)
    _, yd = jvp(copy.deepcopy(net), (x,), (eye,), batch_norm="per_sample")          # [n, B, 3]
    ev = copy.deepcopy(net).eval()
    with torch.no_grad():
        a = net[1](net[0](x))
        ev[2].running_mean.copy_(a.mean((0, 2, 3)))
        ev[2].running_var.copy_(a.var((0, 2, 3), unbiased=False))
    for b in range(5):
        Jb = torch.autograd.functional.jacobian(lambda u: ev(u.unsqueeze(0)).squeeze(0), x[b])   # [3, 12]
        torch.testing.assert_close(yd[:, b].T, Jb)


# ---------------------------------------------------------------------------------------------
# the fallback, options, compile
# ---------------------------------------------------------------------------------------------
class Swish(nn.Module):                 # a module of its own: traced into its ATen ops
    def forward(self, x):
        return x * torch.sigmoid(2 * x)


class Gamma(nn.Module):                 # lgamma has no stacked rule: the per-op fallback
    def forward(self, x):
        return torch.lgamma(x.square() + 1) * x


def test_a_module_of_its_own_is_traced_and_an_op_without_a_rule_falls_back_alone():
    """Swish is traced (no warning); lgamma, which has no rule, goes through torch.func.jvp alone,
    with a warning naming the op once: the same numbers and gradients either way."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), Swish(), nn.Conv2d(4, 2, 3)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(net, (2, 3, 7, 7), 2)
    _WARNED.discard("aten.lgamma.default")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), Gamma(), nn.Conv2d(4, 2, 3)).double()
    x, V = torch.randn(2, 3, 7, 7, dtype=DT), torch.randn(3, 2, 3, 7, 7, dtype=DT)
    with pytest.warns(RuntimeWarning, match="aten.lgamma.default has no stacked rule"):
        y, yd = jvp(net, (x,), (V,))
    want = [torch.func.jvp(net, (x,), (v,)) for v in V]
    torch.testing.assert_close(y, want[0][0])
    torch.testing.assert_close(yd, torch.stack([w[1] for w in want]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jvp(net, (x + 1,), (V,))                                   # once per op
    check(net, (2, 3, 7, 7), 2)                                    # gradients through the fallback too


def test_a_plain_function_is_traced():
    f = lambda x: torch.sin(x) * x.sum(-1, keepdim=True)           # noqa: E731
    x, v = torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, yd = jvp(f, (x,), (v,))
    wy, wyd = torch.func.jvp(f, (x,), (v,))
    torch.testing.assert_close(y, wy)
    torch.testing.assert_close(yd, wyd)


@pytest.mark.parametrize("tangent_grad", [True, False])
def test_train_mode_dropout_shares_the_primals_mask(tangent_grad):
    """One mask for the primal and every tangent, drawn once (also without tangent_grad, where the
    primal runs once)."""
    net = nn.Dropout(0.5)
    x = (torch.randn(200, dtype=DT) + 3).requires_grad_()
    V = torch.randn(2, 200, dtype=DT)
    y, yd = jvp(net, (x,), (V,), tangent_grad=tangent_grad)
    kept = y != 0
    assert 50 < int(kept.sum()) < 150
    torch.testing.assert_close(yd, V * (y / x).detach())           # 2 where kept, 0 where dropped
    g, = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, (y / x).detach())                # the primal's own mask in backward


def test_tangent_grad_false_detaches_the_tangents_and_keeps_the_plain_backward():
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh()).double()
    plain = copy.deepcopy(net)
    x, v = torch.randn(6, 5, dtype=DT), torch.randn(6, 5, dtype=DT)
    y, yd = jvp(net, (x,), (v,), tangent_grad=False)
    assert not yd.requires_grad and y.requires_grad
    _, want = jvp(copy.deepcopy(plain), (x,), (v,))
    torch.testing.assert_close(yd, want.detach())
    yp = plain(x)
    torch.testing.assert_close(y, yp)
    g = torch.autograd.grad(y.sum(), list(net.parameters()))
    gp = torch.autograd.grad(yp.sum(), list(plain.parameters()))
    for a, b in zip(g, gp):
        torch.testing.assert_close(a, b)
    assert net[1].num_batches_tracked == plain[1].num_batches_tracked == 1
    torch.testing.assert_close(net[1].running_mean, plain[1].running_mean)


def test_torch_compile_of_a_function_that_calls_it():
    """It runs, jvp as a graph break (see jvp's comment: Inductor got a gradient of this layout
    wrong), with the eager numbers."""
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.SiLU(), nn.Flatten(), nn.Linear(27, 4))
    x, v = torch.randn(4, 2, 5, 5), torch.randn(4, 2, 5, 5)
    eager = copy.deepcopy(net)

    def f(net, x, v):
        y, yd = jvp(net, (x,), (v,), batch_norm="per_sample")
        return y.sum() + yd.norm(dim=-1).log().sum()
    got = torch.compile(f)(net, x, v)
    want = f(eager, x, v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.autograd.grad(got, list(net.parameters()))
    w = torch.autograd.grad(want, list(eager.parameters()))
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _batch_norm_tangent_losses():
    bn = nn.BatchNorm2d(3).double()
    x = torch.randn(4, 3, 3, 3, dtype=DT, requires_grad=True)
    v = torch.randn(4, 3, 3, 3, dtype=DT)

    def with_forward_ad(x):
        with fwAD.dual_level():
            return (fwAD.unpack_dual(bn(fwAD.make_dual(x, v)))[1] ** 2).sum()

    def with_owf(x):
        return (jvp(bn, (x,), (v,))[1] ** 2).sum()
    return x, with_owf, with_forward_ad


def test_the_gradient_of_a_batch_norm_tangent_passes_gradcheck():
    x, with_owf, _ = _batch_norm_tangent_losses()
    assert torch.autograd.gradcheck(with_owf, (x,))


@pytest.mark.xfail(strict=False, reason="torch 2.14.1: forward_ad gets the gradient of a train-mode BatchNorm "
                                        "tangent wrong; passes once PyTorch fixes it")
def test_pytorch_gradient_of_a_batch_norm_tangent():
    """Why the oracle is a twin: gradcheck of a loss on the tangent through a train-mode BatchNorm
    fails for forward_ad (and for torch.func.jvp after replace_all_batch_norm_modules_) in torch
    2.14.1 (an expected failure; an unexpected pass, a fixed PyTorch, keeps CI green)."""
    x, _, with_forward_ad = _batch_norm_tangent_losses()
    assert torch.autograd.gradcheck(with_forward_ad, (x,), raise_exception=False)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"tangent shape \(5, 4\) is neither the primal's \(5, 3\) nor \[T, \*\(5, 3\)\]"):
        jvp(net, (x,), (torch.randn(5, 4),))
    with pytest.raises(ValueError, match=r"batch_norm='frozen' is not one of \('batch', 'per_sample'\)"):
        jvp(net, (x,), (x,), batch_norm="frozen")
    with pytest.raises(ValueError, match="the tangent is torch.float64 on cpu, the primal torch.float32"):
        jvp(net, (x,), (x.double(),))
    with pytest.raises(ValueError, match="the tangent is torch.float32 on meta"):
        jvp(net, (x,), (x.to("meta"),))
    with pytest.raises(ValueError, match=r"Linear.weight is torch.float32 on cpu, but the primal is torch.float64"):
        jvp(net, (x.double(),), (x.double(),))
    with pytest.raises(ValueError, match="primals must be a tuple of tensors"):
        jvp(net, x, (x,))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        jvp(net, (x[:1],), (x[:1],), batch_norm="per_sample")           # nn.BatchNorm's own check, in the trace


def test_a_linear_on_more_than_two_dims_adds_its_bias_on_the_last():
    """Linear acts on the last dim: its bias too, also before an epilogue activation (GELU is not an
    mlp_jvp activation) and when the second dim happens to equal out_features."""
    check(nn.Sequential(nn.Linear(4, 4), nn.GELU()).double(), (3, 4, 4), 2)
    check(nn.Sequential(nn.Linear(5, 3), nn.ELU(), nn.Linear(3, 3)).double(), (2, 3, 5), 1)


def test_a_module_that_reshapes_the_batch():
    import warnings
    net = nn.Sequential(nn.Linear(3, 4), nn.Flatten(0)).double()
    x, v = torch.randn(2, 3, dtype=DT), torch.randn(2, 3, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y, yd = jvp(net, (x,), (v,))
    wy, wyd = torch.func.jvp(net, (x,), (v,))
    assert y.shape == (8,)
    torch.testing.assert_close(y, wy)
    torch.testing.assert_close(yd, wyd)


def test_both_backends_on_a_network_with_an_mlp_run(backend):
    """The Linear runs go to mlp_jvp, whose layers are Triton kernels on that backend (the
    interpreter on CPU): the same values and gradients as torch.func.jvp (float32: Triton's dot)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 16),
                        nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 2, 3, padding=1), nn.GELU())
    x, V = torch.randn(5, 16), torch.randn(2, 5, 16)
    y, yd = jvp(net, (x,), (V,))
    want = [torch.func.jvp(net, (x,), (v,)) for v in V]
    torch.testing.assert_close(y, want[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(yd, torch.stack([w[1] for w in want]), atol=1e-5, rtol=1e-4)
    g = torch.autograd.grad(loss(y, yd), list(net.parameters()))
    ref = nn.Sequential(*[copy.deepcopy(m) for m in net])
    ry, ryd = reference(ref, x, V, "batch")
    w = torch.autograd.grad(loss(ry, ryd), list(ref.parameters()))
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
