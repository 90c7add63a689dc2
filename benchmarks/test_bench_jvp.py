"""owf_kernels.jvp on DCGAN one-way-flow generators (owf.dcgan) for 28x28x1 (n = 784) and
32x32x3 (n = 3072), B = 64, T = 1, against torch.func.jvp (on a copy with
replace_all_batch_norm_modules_: its tangents flow through the batch statistics), forward_ad's dual
tensors, torch.compile(torch.func.jvp) and the plain forward.

- forward+JVP, no autograd (the ratio to (1+T) plain forwards is in the report)
- a generator step: forward+JVP, -w log‖Jv‖ - D(y) (Eq. 17 with Eq. 9), backward into G
"owf" is per-sample BatchNorm (what owf trains with), "owf-batch" the same math as func.jvp and forward_ad.
"""
import pytest
import torch

import providers as P
from bench_support import DEVICE, smoke

B = 64


def pytest_generate_tests(metafunc):
    if "dcgan_case" in metafunc.fixturenames:
        table = P.DCGAN_SMOKE if smoke(metafunc.config) else P.DCGAN_CASES
        params = [(name, prov) for name in table for prov in P.DCGAN_PROVIDERS]
        metafunc.parametrize("dcgan_case,provider", [(table[n], p) for n, p in params],
                             ids=[f"{n}-{p}" for n, p in params])


def known_compile_bug(provider, fn):
    """fn, or for "compile" fn wrapped so that torch 2.14.1's intermittent internal assert in
    torch.compile(torch.func.jvp) on these networks (AutogradComposite.cpp, "Expected this function to
    only be reached in inference mode"; it hit 1 of 3 runs of this directory) is an xfail that names
    it rather than a red CI. Any other error still fails."""
    if provider != "compile":
        return fn

    def guarded():
        try:
            return fn()
        except RuntimeError as e:
            if "AutogradComposite.cpp" in str(e) and "INTERNAL ASSERT FAILED" in str(e):
                pytest.xfail("torch.compile(torch.func.jvp): PyTorch internal assert in AutogradComposite.cpp")
            raise
    return guarded


@pytest.fixture
def nets(dcgan_case):
    shape, gw, dw = dcgan_case
    return P.dcgan(shape, gw, dw, device=DEVICE)


def test_dcgan_forward_jvp(run, benchmark, nets, provider, dcgan_case):
    G, _ = nets
    u, v = P.dcgan_inputs(G, B)
    fn = P.dcgan_jvp_fn(provider, G, u, v)

    def no_grad():
        with torch.no_grad():
            return fn()
    benchmark.group = f"dcgan forward+jvp {dcgan_case[0]} B={B}"
    run(known_compile_bug(provider, no_grad), dict(n=G.n, B=B, T=1))


def test_dcgan_generator_step(run, benchmark, nets, provider, dcgan_case):
    G, D = nets
    fn = P.dcgan_step_fn(provider, G, D, B)
    u, v = P.dcgan_inputs(G, B)
    saved = P.saved_bytes(P.dcgan_jvp_fn(provider, G, u, v)) if provider != "compile" else None
    benchmark.group = f"dcgan generator step {dcgan_case[0]} B={B}"
    run(known_compile_bug(provider, fn), dict(n=G.n, B=B, T=1, saved_bytes=saved))


@pytest.mark.parametrize("what", ["exact log-det", "n+1 plain forwards"])
def test_dcgan_exact_logdet(run, benchmark, what, request):
    """The exact log|det J| of the 28x28 generator, B = 4, all n = 784 tangents in chunks of 112,
    against n + 1 plain forwards (eval mode)."""
    shape, gw, dw = (P.DCGAN_SMOKE if smoke(request.config) else P.DCGAN_CASES)["28x28x1"]
    G, _ = P.dcgan(shape, gw, dw, device=DEVICE)
    G.eval()
    fn = P.dcgan_exact_logdet_fn(G) if what == "exact log-det" else P.dcgan_plain_forwards_fn(G)
    benchmark.group = f"dcgan exact log-det {shape} B=4"
    run(fn, dict(n=G.n, B=4, chunk=112), rounds=3)


def test_saved_bytes_counts_what_backward_keeps_beyond_the_parameters():
    """providers.saved_bytes: a Linear + tanh keeps its input and its output (the weight, saved by
    reference, costs nothing); through torch.func.jvp, whose saved tensors are functorch wrappers,
    at least as much."""
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    fn = lambda: torch.tanh(lin(x))          # noqa: E731
    fn.model = lin
    assert P.saved_bytes(fn) == (4 * 8 + 4 * 16) * 4
    fn.model = torch.nn.Linear(1, 1)          # the weight no longer known as a parameter: counted
    assert P.saved_bytes(fn) == (4 * 8 + 4 * 16 + 16 * 8) * 4
    v = torch.randn(4, 8)
    jv = lambda: torch.func.jvp(lambda h: torch.tanh(lin(h)), (x,), (v,))   # noqa: E731
    jv.model = lin
    assert P.saved_bytes(jv) >= (4 * 8 + 4 * 16) * 4
