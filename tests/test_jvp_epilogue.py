"""The Triton layer epilogue of owf_kernels.jvp (jvp_epilogue_triton, in Triton's interpreter on CPU)
against its torch reference, epilogue_torch, in float64: every activation with a Triton rule, no
BatchNorm / train-mode (both modes) / eval-mode / non-affine BatchNorm, with and without a bias,
T = 1 and 3; the values, the running statistics and every gradient of a loss nonlinear in the
tangents. Then the dispatch inside jvp, bf16, and the layers it leaves to the torch epilogue."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn

from support import DEVICE, triton_usable

pytestmark = pytest.mark.skipif(not triton_usable(), reason="triton is not installed")

from owf_kernels import jvp  # noqa: E402
from owf_kernels.jvp_layers import ACTIVATION_RULES, epilogue_torch  # noqa: E402

TRITON_ACTS = [None, nn.ReLU(), nn.LeakyReLU(0.3), nn.Tanh(), nn.Sigmoid(), nn.Softplus(), nn.Softplus(2.0, 1.5),
               nn.SiLU(), nn.ELU(0.7)]


def _bn(kind, C):
    if kind is None:
        return None
    bn = nn.BatchNorm2d(C, affine=kind != "plain").double().to(DEVICE)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(C))
            bn.bias.copy_(torch.randn(C))
        bn.running_mean.copy_(torch.randn(C))
        bn.running_var.copy_(torch.rand(C) + 0.5)
    return bn.eval() if kind == "eval" else bn


def _loss(H, G):
    # linear in y, nonlinear in the tangents (a sum of log‖ẏ_t‖ per sample, as Eq. 9)
    return (H[0] * G[0]).sum() + H[1:].flatten(2).norm(dim=-1).log().sum()


@pytest.mark.parametrize("act", TRITON_ACTS, ids=lambda a: type(a).__name__)
def test_the_triton_epilogue_is_the_torch_epilogue(act):
    from owf_kernels.jvp_epilogue_triton import epilogue_triton
    # B·C = 21 rows and 4·5 = 20 columns: more than one tile of each in the interpreter (16 x 16)
    B, C, S = 7, 3, (4, 5)
    for kind, mode, with_bias, T in itertools.product([None, "train", "eval", "plain"], ["batch", "per_sample"],
                                                      [True, False], [1, 3]):
        case = (kind, mode, with_bias, T)
        A = torch.randn(1 + T, B, C, *S, dtype=torch.float64, device=DEVICE, requires_grad=True)
        bias = torch.randn(C, dtype=torch.float64, device=DEVICE, requires_grad=True) if with_bias else None
        bn = _bn(kind, C)
        bn2 = copy.deepcopy(bn)
        want = epilogue_torch(A, bias, bn, None if act is None else ACTIVATION_RULES[type(act)](act), mode, True)
        got = epilogue_triton(A, bias, bn2, act, mode, True)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=lambda m: f"{case}: {m}")
        G = torch.randn_like(want)
        params = [A] + [p for p in (bias,) if p is not None]
        w = torch.autograd.grad(_loss(want, G), params + (list(bn.parameters()) if bn is not None else []))
        g = torch.autograd.grad(_loss(got, G), params + (list(bn2.parameters()) if bn2 is not None else []))
        for a, b in zip(g, w):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9, msg=lambda m: f"{case}: {m}")
        if bn is not None:
            for a, b in zip(bn2.buffers(), bn.buffers()):
                torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def _net(act):
    return nn.Sequential(nn.ConvTranspose2d(4, 6, 4, 2, 1), nn.BatchNorm2d(6), act,
                         nn.Conv2d(6, 3, 3, 1, 1), copy.deepcopy(act), nn.Flatten(), nn.Linear(3 * 6 * 6, 20),
                         nn.BatchNorm1d(20), nn.Tanh()).double().to(DEVICE)


@pytest.fixture
def calls(monkeypatch):
    """A list that gains an entry at each call of epilogue_triton (which still runs)."""
    import owf_kernels.jvp_epilogue_triton as E
    made = []
    real = E.epilogue_triton
    monkeypatch.setattr(E, "epilogue_triton", lambda *a, **k: made.append(1) or real(*a, **k))
    return made


@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_jvp_on_the_triton_backend_runs_the_triton_epilogue(mode, monkeypatch, calls):
    """owf_kernels.jvp with OWF_KERNELS_BACKEND=triton: each layer's epilogue is the Triton one
    (counted), and the network's values, gradients and running statistics are the torch backend's."""
    torch.manual_seed(0)
    net = _net(nn.LeakyReLU(0.2))
    ref = copy.deepcopy(net)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64, device=DEVICE)
    V = torch.randn(2, *x.shape, dtype=torch.float64, device=DEVICE)
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    ry, ryd = jvp(ref, (x,), (V,), batch_norm=mode)
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    y, yd = jvp(net, (x,), (V,), batch_norm=mode)
    assert len(calls) == 3            # ConvT+BN+LeakyReLU, Conv+LeakyReLU, Linear+BN1d+Tanh (Flatten: a shape step)
    torch.testing.assert_close(y, ry, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(yd, ryd, atol=1e-12, rtol=1e-10)
    loss = lambda y, yd: y.square().sum() + yd.norm(dim=-1).log().sum()  # noqa: E731
    g = torch.autograd.grad(loss(y, yd), list(net.parameters()))
    w = torch.autograd.grad(loss(ry, ryd), list(ref.parameters()))
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    for a, b in zip(net.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b)


def test_gelu_layers_keep_the_torch_epilogue_on_the_triton_backend(monkeypatch, calls):
    """GELU has no Triton rule (erf): its layers take epilogue_torch, the others the kernel; and a
    bf16 network on the Triton epilogue is the float64 one to bf16 accuracy."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    torch.manual_seed(0)
    net = _net(nn.GELU())
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64, device=DEVICE)
    V = torch.randn(1, *x.shape, dtype=torch.float64, device=DEVICE)
    y, yd = jvp(net, (x,), (V,))
    assert len(calls) == 1            # the Linear + BatchNorm1d + Tanh layer alone
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    ry, ryd = jvp(copy.deepcopy(net), (x,), (V,))
    torch.testing.assert_close(yd, ryd, atol=1e-12, rtol=1e-10)
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    net16 = _net(nn.SiLU()).to(torch.bfloat16)
    ref = copy.deepcopy(net16).double()
    y16, yd16 = jvp(net16, (x.bfloat16(),), (V.bfloat16(),))
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    ry, ryd = jvp(ref, (x.bfloat16().double(),), (V.bfloat16().double(),))
    assert y16.dtype == yd16.dtype == torch.bfloat16
    assert float((yd16.double() - ryd).norm() / ryd.norm()) < 3e-2
    assert float((y16.double() - ry).norm() / ry.norm()) < 3e-2


def test_the_kernels_compile_for_a_gpu():
    """Every activation's forward and backward kernel, fp32, bf16 and fp64, at the tiles a GPU
    launch uses, compiles for sm_90 (Triton's frontend, LLVM and ptxas; no GPU needed): a lent
    GPU's minutes are not lost to a compile error the interpreter cannot see."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, str(Path(__file__).parent / "aot_compile.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    from owf_kernels.jvp_epilogue_triton import ACT_CODES
    assert int(p.stdout.split()[-1]) == 2 * 2 * (len(ACT_CODES) + 2)    # (fwd, bwd) x has_k x (fp32 each, bf16, fp64)


def test_a_second_derivative_through_the_triton_epilogue_raises(monkeypatch, calls):
    """The epilogue's backward is a kernel (no graph): a gradient of a gradient through it raises, also
    for a loss linear in the outputs, where once_differentiable gave a wrong second derivative
    silently (the torch backend's is right: it is torch ops)."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, 1, 1), nn.BatchNorm2d(3), nn.Tanh()).double().to(DEVICE)
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y, yd = jvp(net, (x,), (torch.randn(1, *x.shape, dtype=torch.float64, device=DEVICE),))
    assert len(calls) == 1
    (g,) = torch.autograd.grad(y.sum() + yd.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative through a kernel"):
        torch.autograd.grad(g.square().sum() + x.square().sum(), x)
