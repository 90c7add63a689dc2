"""linear_jvp forward and forward+backward, swept over the layer width and over M, across providers.

FLOPs: a forward with T tangents is 2·(1+T)·M·K·N (it cannot cost less than (1+T) plain forwards);
forward+backward is three times that. extra_info holds flops and the ideal ratio to a plain forward.
"""
import pytest

import providers as P
from bench_support import DEVICE, smoke

PROVIDERS = ["owf", "manual", "func.jvp", "func.jvp+vmap", "forward_ad", "compile", "compile-manual", "plain", "gemm"]


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        # widths at M = 4096, then rows at width 256, T = 1 (report.py plots both sweeps)
        sizes = [(64, 32, 2)] if smoke(metafunc.config) else \
            [(4096, W, T) for W in (64, 256, 1024) for T in (1, 2)] + [(M, 256, 1) for M in (256, 1024, 16384)]
        metafunc.parametrize("shape", sizes, ids=[f"M{M}-W{W}-T{T}" for M, W, T in sizes])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_linear_jvp(run, benchmark, provider, backward, shape):
    M, W, T = shape
    t = P.layer_inputs(M, W, W, T, device=DEVICE)
    if provider == "gemm":
        fn = P.gemm_fn(t, backward)
    else:
        fn = P.layer_fn(provider, t)
        if backward:
            fn = P.with_backward(fn, t)
    benchmark.group = f"linear_jvp {'fwd+bwd' if backward else 'fwd'} M={M} W={W} T={T}"
    run(fn, dict(flops=P.layer_flops(M, W, W, T, backward), M=M, K=W, N=W, T=T, ideal_ratio_to_plain=1 + T))
