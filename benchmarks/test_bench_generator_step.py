"""A whole generator step: forward, log|det J| from tangents, loss, backward into the parameters.

- 2D MLP (n = 2, width 256, B = 512, T = 2 tangents: the exact log-det of the 2D experiments)
- 784-wide MLP (n = 784, B = 256, T = 1: the one-sample log‖Jv‖ of Eq. 9)
"gemm" is the same GEMMs alone, the floor every provider pays.
"""
import pytest

import providers as P
from bench_support import DEVICE, smoke

CASES = {"2d-exact": (2, 256, 512, "exact"), "784-jvp1": (784, 784, 256, "jvp1")}
SMOKE = {"2d-exact": (2, 16, 32, "exact"), "784-jvp1": (16, 16, 8, "jvp1")}
PROVIDERS = {"exact": ["owf", "func.jvp", "func.jvp+vmap", "forward_ad", "jacobian", "compile", "manual",
                       "compile-manual", "gemm"],
             "jvp1": ["owf", "func.jvp", "forward_ad", "compile", "manual", "compile-manual", "gemm"]}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        table = SMOKE if smoke(metafunc.config) else CASES
        params = [(name, prov) for name, (_, _, _, m) in table.items() for prov in PROVIDERS[m]]
        metafunc.parametrize("case,provider", [(table[n], p) for n, p in params],
                             ids=[f"{n}-{p}" for n, p in params])


def test_generator_step(run, benchmark, case, provider):
    n, width, B, method = case
    G = P.generator(n, width, device=DEVICE)
    fn = P.generator_gemm_fn(G, B, method) if provider == "gemm" else P.generator_step_fn(provider, G, B, method)
    benchmark.group = f"generator step n={n} width={width} B={B} {method}"
    T = n if method == "exact" else 1
    flops = sum(3 * 2 * (1 + T) * B * l.weight.numel() for l in G.layers)
    run(fn, dict(flops=flops, B=B, width=width, n=n, T=T), rounds=10)
