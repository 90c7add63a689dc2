"""log_zeta forward (+ backward) swept over S; bytes = 2·4·S read (d and log_q, fp32)."""
import pytest
import torch

from bench_support import DEVICE, smoke
from owf_kernels import log_zeta, log_zeta_torch


def pytest_generate_tests(metafunc):
    if "S" in metafunc.fixturenames:
        sizes = [1000] if smoke(metafunc.config) else [256, 10 ** 4, 10 ** 6, 10 ** 7]
        metafunc.parametrize("S", sizes)


@pytest.mark.parametrize("provider", ["owf", "torch.logsumexp"])
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_log_zeta(run, benchmark, provider, backward, S):
    d = torch.randn(S, device=DEVICE, requires_grad=backward)
    lq = torch.randn(S, device=DEVICE, requires_grad=backward)
    f = log_zeta if provider == "owf" else (lambda a, b, w: torch.logsumexp(a / w - b, 0) - torch.log(
        torch.tensor(float(a.numel()))))

    def fn():
        out = f(d, lq, 0.1)
        if backward:
            out.backward()
        return out
    benchmark.group = f"log_zeta {'fwd+bwd' if backward else 'fwd'} S={S}"
    run(fn, dict(bytes=8 * S, S=S), rounds=50)
    if provider == "owf":   # and it is right
        ref = log_zeta_torch(d.detach().double(), lq.detach().double(), 0.1)
        assert abs(fn().item() - ref.item()) < 1e-4
