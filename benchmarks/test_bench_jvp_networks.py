"""owf_kernels.jvp on the networks of flow and consistency models (jvp_networks.py): a MeanFlow step on a
DiT (32x32x1, patch 2, width 128, depth 4, B = 32) and on a SongUNet (32x32x1, B = 32), the tangent
detached; T = 8 Hutchinson probes on a residual MLP (n = 784, B = 128) with the loss through the
tangents. Providers: owf, torch.func.jvp (a loop over the probes), vmap(torch.func.jvp), forward_ad,
each under torch.compile (the full runs only: compiling is the slow part of a smoke pass), and the
pieces of the "ideal" the ratios are read against (jvp_networks' docstring). The round robin of
interleaved.py gives the ratios on a shared machine; this suite gives pytest-benchmark's statistics.
"""
import jvp_networks as J
from bench_support import DEVICE, smoke


def pytest_generate_tests(metafunc):
    if "net_case" in metafunc.fixturenames:
        quick = smoke(metafunc.config)
        table = J.SMOKE if quick else J.CASES
        provs = J.PROVIDERS + ([] if quick else J.COMPILED) + ["ideal"]
        metafunc.parametrize("net_case,table,provider", [(c, table, p) for c in table for p in provs],
                             ids=[f"{c}-{p}" for c in table for p in provs])


def test_jvp_network_step(run, benchmark, net_case, table, provider):
    kind, B, T = table[net_case][0], table[net_case][2], table[net_case][3]
    if provider == "ideal":
        pieces = list(J.ideal_fns(net_case, table, DEVICE).values())

        def fn():
            for f in pieces:
                f()
        saved = None
    else:
        fn = J.step_fn(provider, net_case, table, DEVICE)
        saved = J.forward_saved_bytes(provider, net_case, table, DEVICE) if not provider.startswith("compile-") else None
    benchmark.group = f"jvp network step: {net_case}"
    run(fn, dict(kind=kind, B=B, T=T, saved_bytes=saved))


def test_every_provider_computes_the_same_step():
    """At smoke size in float64: each provider's forward (y, ẏ) is owf's, so the timings compare one
    computation."""
    import torch
    for case in J.SMOKE:
        kind, net, math_net, B, T = J.build(case, J.SMOKE)
        net, math_net = net.double(), math_net.double()
        d = {k: v.double() for k, v in J.inputs(kind, net, B, T).items()}
        want = J.jvp_fn("owf", kind, net, math_net, d)()
        for p in J.PROVIDERS[1:]:
            got = J.jvp_fn(p, kind, net, math_net, d)()
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, msg=f"{case}, {p}")
