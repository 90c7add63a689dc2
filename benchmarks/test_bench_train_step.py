"""One full training step, end to end (discriminator update + generator update), as `owf.train` runs it.

Providers: "owf" (the generator's tangents through owf_kernels.jvp: mlp_jvp in 2D, the stacked
DCGAN path for images) and "func.jvp" (the same step with the generator's tangents from
torch.func.jvp, looped over tangents; for the DCGAN generator, whose train-mode BatchNorm
torch.func.jvp refuses, after torch.func.replace_all_batch_norm_modules_, so its tangents flow
through the batch statistics and it keeps no running ones).
"""
import pytest
import torch

from bench_support import DEVICE, smoke
from providers import IMAGE_DEFAULTS_UNTIL_1206
from owf.config import Config
from owf.train import build, train_step


def pytest_generate_tests(metafunc):
    if "data" in metafunc.fixturenames:
        metafunc.parametrize("data", ["ring", "fashion-mnist"] if smoke(metafunc.config) else
                             ["ring", "grid", "fashion-mnist"])


@pytest.mark.parametrize("provider", ["owf", "func.jvp"])
def test_train_step(run, benchmark, request, provider, data):
    image = data == "fashion-mnist"
    kw = dict(g_hidden="16,4" if image else "16,16", d_hidden="4,8" if image else "16,16", batch=32, samples=32) \
        if smoke(request.config) else {}
    if image:
        kw.update(IMAGE_DEFAULTS_UNTIL_1206)
    cfg = Config(data=data, device=DEVICE, **kw)
    dev = torch.device(DEVICE)
    data_, G, D, opt_g, opt_d, gen = build(cfg, dev)
    if provider == "func.jvp":
        if image:
            torch.func.replace_all_batch_norm_modules_(G.net)
        def g_n_jvp(u, u_dot):
            outs = [torch.func.jvp(G.g_n, (u,), (u_dot[i],)) for i in range(u_dot.shape[0])]
            return outs[0][0], torch.stack([o[1] for o in outs])
        G.g_n_jvp = g_n_jvp
    params = list(G.parameters())
    fn = lambda: train_step(cfg, data_, G, D, opt_g, opt_d, gen, params, dev)  # noqa: E731
    benchmark.group = f"train step {data}"
    run(fn, dict(batch=cfg.batch, samples=cfg.samples), rounds=10 if image else 50)
