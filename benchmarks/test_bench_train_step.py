"""One full training step, end to end (discriminator update + generator update), as `owf.train` runs it.

Providers: "owf" (the generator's tangents through owf_kernels.linear_jvp) and "func.jvp" (the same
step with the generator's tangents from torch.func.jvp, looped over tangents).
"""
import pytest
import torch

from bench_support import DEVICE, smoke
from owf.config import Config
from owf.train import build, train_step


def pytest_generate_tests(metafunc):
    if "data" in metafunc.fixturenames:
        metafunc.parametrize("data", ["ring"] if smoke(metafunc.config) else ["ring", "grid"])


@pytest.mark.parametrize("provider", ["owf", "func.jvp"])
def test_train_step(run, benchmark, request, provider, data):
    kw = dict(g_hidden="16,16", d_hidden="16,16", batch=32, samples=32) if smoke(request.config) else {}
    cfg = Config(data=data, device=DEVICE, **kw)
    dev = torch.device(DEVICE)
    data_, G, D, G_ema, opt_g, opt_d, gen = build(cfg, dev)
    if provider == "func.jvp":
        def g_n_jvp(u, u_dot):
            outs = [torch.func.jvp(G.g_n, (u,), (u_dot[i],)) for i in range(u_dot.shape[0])]
            return outs[0][0], torch.stack([o[1] for o in outs])
        G.g_n_jvp = g_n_jvp
    params = list(G.parameters())
    fn = lambda: train_step(cfg, data_, G, D, G_ema, opt_g, opt_d, gen, params, dev)  # noqa: E731
    benchmark.group = f"train step {data}"
    run(fn, dict(batch=cfg.batch, samples=cfg.samples), rounds=50)
