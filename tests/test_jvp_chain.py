"""Elementwise chains of owf_kernels.jvp (jvp_chain; the Triton kernel jvp_chain_triton in Triton's
interpreter on CPU): which ops form one chain, and the generated kernel against torch.func.jvp and
against the chain's torch reference (the runner's rules one by one), in float64 and bf16, both
tangent_grad modes, with broadcast, constant, strided and batch-constant leaves; every gradient."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from support import DEVICE, triton_usable

# a kernel that fails falls back to the torch path with a RuntimeWarning: here that is an error
pytestmark = [pytest.mark.skipif(not triton_usable(), reason="triton is not installed"),
              pytest.mark.filterwarnings("error::RuntimeWarning")]

from owf_kernels import clear_cache, jvp  # noqa: E402

f64 = dict(dtype=torch.float64, device=DEVICE)


class AdaLN(nn.Module):
    """A DiT block's elementwise part: adaLN modulation from a time input, activations, a residual.
    Linear maps are matmuls (the Triton Linear refuses float64); returns the block's output and,
    with `two`, the modulated h too (read outside: it ends one chain and is a leaf of the next)."""

    def __init__(self, two=False):
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 6) / 3)
        self.A = nn.Parameter(torch.randn(3, 12) / 2)
        self.w = nn.Parameter(torch.randn(6))
        self.two = two

    def forward(self, x, t):
        scale, shift = (t @ self.A).unsqueeze(1).chunk(2, -1)
        h = (x @ self.W) * (1 + scale) + shift
        u = F.silu(h) * self.w - torch.tanh(h) / 3.0
        y = x + torch.sigmoid(u).exp() * 0.5
        out = torch.sin(y) - torch.relu(y).square()
        return (out, h) if self.two else out


class EveryOp(nn.Module):
    """The chain ops AdaLN leaves out: rsub, sub and add with alpha, LeakyReLU's slope, sqrt, rsqrt,
    cos, neg, a division by a value with a tangent, and a 0-dim constant."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 6) / 3)
        self.c = nn.Parameter(torch.tensor(0.7))

    def forward(self, x, t):
        a = x @ self.W
        b = torch.sub(torch.rsub(a, 2.0), a, alpha=0.5)
        e = F.leaky_relu(torch.add(b, x, alpha=1.5), 0.3)
        f = (e.square() + 1).sqrt() / (torch.cos(a) + 2)
        return -f * torch.rsqrt(a.square() + self.c) + t.mean(-1).view(-1, 1, 1)


class SongSkip(nn.Module):
    """A SongUNet block's elementwise part, written as EDM writes it: in-place adds (a bias, the skip)
    and silu(addcmul(shift, h, scale + 1)), here with addcmul's value."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 6) / 3)
        self.A = nn.Parameter(torch.randn(3, 12) / 2)
        self.b = nn.Parameter(torch.randn(6))

    def forward(self, x, t):
        h = (x @ self.W).add_(self.b)
        scale, shift = (t @ self.A).unsqueeze(1).chunk(2, -1)
        h = F.silu(torch.addcmul(shift, h, scale + 1, value=0.5))
        return h.add_(x) * 2 ** -0.5


CHAINS = {AdaLN: "add+mul+add+silu+mul+tanh+div+sub+sigmoid+exp+mul+add+sin+relu+square+sub",
          EveryOp: "rsub+sub+add+leaky_relu+square+add+sqrt+cos+add+div+neg+square+add+rsqrt+mul+add",
          SongSkip: "add+add+addcmul+silu+add+mul"}


@pytest.fixture
def launches(monkeypatch):
    """The chains (their ops, '+'-joined) that ran on the Triton kernel, in order."""
    import owf_kernels.jvp_chain_triton as C
    made = []
    real = C._launch
    monkeypatch.setattr(C, "_launch", lambda chain, *a: made.append(chain.names) or real(chain, *a))
    return made


def _inputs(dtype=torch.float64, T=2):
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dtype)   # noqa: E731
    return mk(4, 5, 6), mk(4, 3), mk(T, 4, 5, 6), mk(T, 4, 3)


def _loss(y, yd, tangent_grad):
    return y.square().sum() + (yd.flatten(1).norm(dim=1).log().sum() if tangent_grad else 0)


@pytest.mark.parametrize("tangent_grad", [True, False])
@pytest.mark.parametrize("Net", [AdaLN, EveryOp, SongSkip])
def test_a_chain_runs_as_one_triton_kernel_with_torch_func_jvps_numbers(Net, tangent_grad, monkeypatch, launches):
    torch.manual_seed(0)
    net = Net().double().to(DEVICE)
    ref = copy.deepcopy(net)
    x, t, vx, vt = _inputs()
    x.requires_grad_()
    if tangent_grad:
        vx.requires_grad_()
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    y, yd = jvp(net, (x, t), (vx, vt), tangent_grad=tangent_grad)
    # every elementwise op after the matmuls is in one chain (the chunk's halves, x, parameters: leaves)
    assert launches == [CHAINS[Net]]
    for k in range(vx.shape[0]):
        fy, fyd = torch.func.jvp(ref, (x.detach(), t), (vx[k].detach(), vt[k]))
        torch.testing.assert_close(y, fy, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(yd[k], fyd, atol=1e-12, rtol=1e-10)
    # every gradient against the chain's torch reference (the runner's rules one by one)
    wrt = list(net.parameters()) + [x] + ([vx] if tangent_grad else [])
    g = torch.autograd.grad(_loss(y, yd, tangent_grad), wrt)
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    ry, ryd = jvp(ref, (x, t), (vx, vt), tangent_grad=tangent_grad)
    assert len(launches) == 1
    w = torch.autograd.grad(_loss(ry, ryd, tangent_grad), list(ref.parameters()) + wrt[len(list(net.parameters())):])
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    assert yd.requires_grad == tangent_grad


def test_a_value_read_outside_ends_a_chain_and_feeds_the_next(monkeypatch, launches):
    """AdaLN returning h too: h = x W (1 + scale) + shift is one chain's root (an output), and a leaf of
    the chain after it; both outputs and their tangents are torch.func.jvp's."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    torch.manual_seed(0)
    net = AdaLN(two=True).double().to(DEVICE)
    x, t, vx, vt = _inputs(T=1)
    (y, h), (yd, hd) = jvp(net, (x, t), (vx, vt))
    assert launches == ["add+mul+add", "silu+mul+tanh+div+sub+sigmoid+exp+mul+add+sin+relu+square+sub"]
    (fy, fh), (fyd, fhd) = torch.func.jvp(net, (x, t), (vx[0], vt[0]))
    for a, b in ((y, fy), (h, fh), (yd[0], fyd), (hd[0], fhd)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_strided_and_batch_constant_leaves(monkeypatch, launches):
    """A transposed (non-contiguous) leaf, a tangent that is one row broadcast over the batch (an
    exact log-det's identity columns), and T = 3."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")

    def f(x, s):
        return torch.tanh(x.transpose(1, 2) * s + 1.0) * s

    x = torch.randn(3, 4, 5, **f64)
    s = torch.randn(3, 5, 4, **f64)
    vx = torch.randn(3, 1, 4, 5, **f64).expand(3, 3, 4, 5)
    vs = torch.randn(3, 3, 5, 4, **f64)
    clear_cache()
    y, yd = jvp(f, (x, s), (vx, vs))
    assert launches == ["mul+add+tanh+mul"]
    for k in range(3):
        fy, fyd = torch.func.jvp(f, (x, s), (vx[k], vs[k]))
        torch.testing.assert_close(y, fy, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(yd[k], fyd, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_chain_in_low_precision_is_the_float64_one_to_its_accuracy(dtype, monkeypatch, launches):
    """The kernel computes bf16 in float32 and rounds once; the torch reference rounds after each op.
    Both are the float64 network's to the dtype's accuracy, and in bf16 the kernel's y is the closer."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    torch.manual_seed(0)
    net = AdaLN()
    x, t, vx, vt = _inputs()
    y, yd = jvp(net.to(DEVICE, dtype), (x.to(dtype), t.to(dtype)), (vx.to(dtype), vt.to(dtype)))
    assert len(launches) == 1 and y.dtype == yd.dtype == dtype
    exact = copy.deepcopy(net).double()
    ry, ryd = jvp(exact, (x.to(dtype).double(), t.to(dtype).double()), (vx.to(dtype).double(), vt.to(dtype).double()))
    tol = dict(atol=5e-2, rtol=5e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.double(), ry, **tol)
    torch.testing.assert_close(yd.double(), ryd, **tol)
    if dtype != torch.bfloat16:
        return
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "torch")
    ty, _ = jvp(copy.deepcopy(net), (x.to(dtype), t.to(dtype)), (vx.to(dtype), vt.to(dtype)))
    assert (y.double() - ry).abs().mean() <= (ty.double() - ry).abs().mean()


def test_the_cpu_default_runs_the_reference(monkeypatch, launches):
    """Under OWF_KERNELS_BACKEND=auto a CPU tensor never reaches the kernel: the chain runs its ops'
    rules, torch.func.jvp's numbers."""
    if DEVICE != "cpu":
        pytest.skip("CPU dispatch")
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "auto")
    torch.manual_seed(0)
    net = AdaLN().double()
    x, t, vx, vt = _inputs(T=1)
    y, yd = jvp(net, (x, t), (vx, vt))
    assert launches == []
    fy, fyd = torch.func.jvp(net, (x, t), (vx[0], vt[0]))
    torch.testing.assert_close(yd[0], fyd, atol=1e-12, rtol=1e-10)


def test_a_gradient_of_the_gradient_goes_through_the_chain(monkeypatch, launches):
    """create_graph: the kernel's backward recomputes the chain from the leaves themselves, so a second
    derivative (a gradient penalty) is the torch path's, in both tangent_grad modes."""
    x = torch.randn(3, 4, **f64, requires_grad=True)
    v = torch.randn(1, 3, 4, **f64)
    f = lambda x: torch.tanh(x * 2.0 + 1.0) * x                           # noqa: E731
    out = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("OWF_KERNELS_BACKEND", backend)
        for tangent_grad in (True, False):
            y, yd = jvp(f, (x,), (v,), tangent_grad=tangent_grad)
            g, = torch.autograd.grad((y.sin().sum() + (yd.square().sum() if tangent_grad else 0)), x, create_graph=True)
            out[backend, tangent_grad] = (g, torch.autograd.grad(g.square().sum(), x)[0])
    assert launches == ["mul+add+tanh+mul"] * 2
    for tangent_grad in (True, False):
        for a, b in zip(out["triton", tangent_grad], out["torch", tangent_grad]):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


EVERY_OP = (("add", (("L", 0), 1.0), 1), ("mul", (("L", 1), ("M", 0)), None), ("sub", (("M", 1), ("L", 2)), 0.5),
            ("rsub", (("M", 2), 2.0), 1), ("div", (("M", 3), ("M", 0)), None),
            ("addcmul", (("M", 4), ("L", 0), ("L", 1)), 0.5), ("neg", (("M", 5),), None),
            *[(name, (("M", k),), None) for k, name in enumerate(
                ("exp", "sin", "cos", "sqrt", "rsqrt", "square", "tanh", "sigmoid", "silu", "relu"), start=6)],
            ("leaky_relu", (("M", 16),), 0.2))
COMPILE = r"""
import importlib.util, os, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from owf_kernels.jvp_chain_triton import _source
spec, out = eval(sys.argv[1]), sys.argv[2]
for cdt, ptr in (("float32", "fp32"), ("float32", "bf16"), ("float64", "fp64")):
    src, _ = _source(spec, (True, False, True), 3, cdt)
    path = os.path.join(out, f"k_{ptr}.py")
    open(path, "w").write(src)
    m = importlib.util.spec_from_file_location(f"k_{ptr}", path)
    mod = importlib.util.module_from_spec(m)
    m.loader.exec_module(mod)
    fn = mod.chain_kernel
    sig = {a: "constexpr" if a in ("CDT", "BLOCK") else "*" + ptr if re.fullmatch(r"Y[PT]|D?X\d+", a)
           else "fp64" if re.fullmatch(r"c\d+", a) else "i64" for a in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, constexprs={"CDT": getattr(tl, cdt), "BLOCK": 1024}),
                       target=GPUTarget("cuda", 90, 32))
    print(ptr, len(k.asm["cubin"]))
"""


def test_a_generated_kernel_compiles_for_an_h100_without_one(tmp_path):
    """The interpreter runs the generated source as Python; a GPU compiles it. A chain of every op in
    the table, with dual and constant leaves, compiled to a cubin for sm_90 (Triton's own ptxas, no
    GPU needed) in float32, bf16 and float64: what the interpreter cannot tell (types, the float64
    arguments, sqrt_rn) is checked before a GPU is lent."""
    import os
    import subprocess
    import sys
    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-c", COMPILE, repr(EVERY_OP), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sizes = dict(line.split() for line in r.stdout.split("\n") if line)
    assert set(sizes) == {"fp32", "bf16", "fp64"} and all(int(v) > 1000 for v in sizes.values())


def test_a_kernel_that_fails_warns_once_and_the_chain_takes_the_torch_path(monkeypatch, launches):
    """No chain kernel has run on a GPU yet: one that fails to compile or launch names the chain and the
    error in a warning, and that chain runs on the torch path from then on, with its numbers."""
    import owf_kernels.jvp_chain_triton as C
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")

    def broken(chain, *a):
        launches.append(chain.names)
        raise RuntimeError("no kernel image is available")
    monkeypatch.setattr(C, "_launch", broken)
    x = torch.randn(3, 4, **f64)
    v = torch.randn(1, 3, 4, **f64)
    f = lambda x: torch.tanh(x * 2.0 + 1.0)                                  # noqa: E731
    with pytest.warns(RuntimeWarning, match=r"mul\+add\+tanh failed \(RuntimeError: no kernel image"):
        y, yd = jvp(f, (x,), (v,))
    y2, yd2 = jvp(f, (x,), (v,))                                             # no second try, no warning
    assert launches == ["mul+add+tanh"]
    fy, fyd = torch.func.jvp(f, (x,), (v[0],))
    for a, b in ((y, fy), (yd[0], fyd), (y2, fy), (yd2[0], fyd)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
