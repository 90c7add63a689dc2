"""log_zeta against float64 torch.logsumexp, its gradients, edge cases and the chunked partial form."""
import math

import pytest
import torch

from support import DEVICE
from owf_kernels import (LogZetaAccumulator, combine_partials, log_zeta, log_zeta_partials,
                         log_zeta_torch, partials_to_estimate)


def ref(d, lq, w):
    l = d.double() / w - lq.double()
    return torch.logsumexp(l, 0) - math.log(l.numel())


@pytest.mark.parametrize("S", [1, 3, 1000, 100003])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_matches_logsumexp(backend, S, scale):
    w = 0.1
    d = torch.randn(S, device=DEVICE) * scale * w         # |d/w| up to ~4e3 (scale 1e3)
    lq = torch.randn(S, device=DEVICE) * scale
    out = log_zeta(d, lq, w)
    assert out.shape == () and out.dtype == torch.float32
    r = ref(d, lq, w)
    assert abs(out.double().item() - r.item()) <= 1e-6 * max(1.0, abs(r.item()))


def test_extreme_values(backend):
    d = torch.tensor([1e4, -1e4, 1e4 - 1.0, 0.0], device=DEVICE)
    lq = torch.zeros(4, device=DEVICE)
    r = ref(d, lq, 1.0)
    assert abs(log_zeta(d, lq, 1.0).item() - r.item()) < 1e-3          # fp32 at 1e4: ulp 1e-3
    assert torch.isfinite(log_zeta(d, lq, 1.0))


def test_neg_inf_terms_get_zero_weight(backend):
    d = torch.tensor([0.0, float("-inf"), 1.0], device=DEVICE, requires_grad=True)
    lq = torch.zeros(3, device=DEVICE, requires_grad=True)
    out = log_zeta(d, lq, 1.0)
    assert abs(out.item() - (math.log(1 + math.e) - math.log(3))) < 1e-6
    out.backward()
    assert d.grad[1].item() == 0.0 and torch.isfinite(d.grad).all() and torch.isfinite(lq.grad).all()


def test_all_neg_inf_is_neg_inf_not_nan(backend):
    d = torch.full((5,), float("-inf"), device=DEVICE, requires_grad=True)
    out = log_zeta(d, torch.zeros(5, device=DEVICE), 1.0)
    assert out.item() == float("-inf")
    out.backward()
    assert (d.grad == 0).all()


def test_empty_and_bad_inputs():
    with pytest.raises(ValueError, match="S >= 1 samples, got S = 0"):
        log_zeta(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match=r"d \(4,\), log_q \(3,\)"):
        log_zeta(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="w must be a positive finite number, got 0"):
        log_zeta(torch.zeros(4), torch.zeros(4), 0)


@pytest.mark.parametrize("S", [1, 7, 3000])
def test_gradients_are_softmax_weights(backend, S):
    w = 0.3
    d = (torch.randn(S, device=DEVICE) * 3).requires_grad_(True)
    lq = torch.randn(S, device=DEVICE).requires_grad_(True)
    g = torch.autograd.grad(log_zeta(d, lq, w) * 2.0, (d, lq))
    p = torch.softmax(d.detach().double() / w - lq.detach().double(), 0)
    torch.testing.assert_close(g[0].double(), 2.0 * p / w, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(g[1].double(), -2.0 * p, atol=1e-7, rtol=1e-5)


def test_gradcheck_float64_torch_path():
    d = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lq = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: log_zeta_torch(a, b, 0.7), (d, lq))


def test_partials_combine_exactly_in_chunks(backend):
    S, w = 50_000, 0.2
    d = torch.randn(S, device=DEVICE) * 2
    lq = torch.randn(S, device=DEVICE)
    acc = LogZetaAccumulator(w)
    for a, b in zip(d.split(7777), lq.split(7777)):
        acc.update(a, b)
    est, se, ess = acc.estimate()
    assert acc.count == S
    r = ref(d, lq, w).item()
    assert abs(est - r) < 1e-6 * abs(r)                 # l = d/w - log_q is formed in fp32
    # standard error and ESS from the same numbers, computed directly
    wts = torch.exp(d.double() / w - lq.double() - ref(d, lq, w) - math.log(S))   # w_i / mean w
    ess_direct = (wts.sum() ** 2 / (wts ** 2).sum()).item()
    assert abs(ess - ess_direct) / ess_direct < 1e-6
    assert abs(se - math.sqrt(1 / ess_direct - 1 / S)) < 1e-6
    # two "processes" merged, and order does not matter
    a1, a2 = LogZetaAccumulator(w).update(d[:100], lq[:100]), LogZetaAccumulator(w).update(d[100:], lq[100:])
    assert abs(a2.merge(a1).estimate()[0] - est) < 1e-6 * abs(r)


def test_partials_with_neg_inf_chunks():
    p_inf = log_zeta_partials(torch.full((3,), float("-inf")), torch.zeros(3))
    p = log_zeta_partials(torch.tensor([0.0, 1.0]), torch.zeros(2))
    m = combine_partials([p_inf, p])
    assert m[3] == 5 and abs(partials_to_estimate(m)[0] - (math.log(1 + math.e) - math.log(5))) < 1e-12
    assert partials_to_estimate(combine_partials([p_inf]))[0] == -math.inf


def test_double_backward_matches_logsumexp(backend):
    """A create_graph=True backward gives a differentiable gradient (the softmax recomputed out of
    place), so a penalty on it has the reference's second derivatives."""
    d = torch.randn(50, dtype=torch.float64, device=DEVICE, requires_grad=True)
    lq = torch.randn(50, dtype=torch.float64, device=DEVICE, requires_grad=True)
    grads = []
    for f in (log_zeta, ref):
        gd, glq = torch.autograd.grad(f(d, lq, 0.5), (d, lq), create_graph=True)
        penalty = (gd.square().sum() + (glq * torch.arange(50, device=DEVICE)).sum())
        grads.append(torch.autograd.grad(penalty, (d, lq)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
