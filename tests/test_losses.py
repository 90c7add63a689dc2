"""Each loss against a direct float64 computation of its equation."""
import math

import pytest
import torch

from owf.losses import (discriminator_loss_eq16, effective_sample_size, generator_loss_eq17,
                        gradient_penalty, log_zeta_hat, oriented_logdet, wgan_discriminator_loss_eq4, wgan_generator_loss)


def rand(*s):
    return torch.randn(*s, dtype=torch.float64)


def test_eq16_and_log_zeta():
    d_x, d_y, log_q, w = rand(64), rand(100) * 3, rand(100), 0.1
    direct_log_zeta = math.log(sum(math.exp(a / w - b) for a, b in zip(d_y.tolist(), log_q.tolist())) / 100)
    assert abs(log_zeta_hat(d_y, log_q, w).item() - direct_log_zeta) < 1e-9
    direct = -sum(d_x.tolist()) / 64 / w + direct_log_zeta
    assert abs(discriminator_loss_eq16(d_x, d_y, log_q, w).item() - direct) < 1e-9


def test_eq16_gradient_is_data_minus_importance_weighted_samples():
    d_x, d_y, log_q, w = rand(8).requires_grad_(), rand(5).requires_grad_(), rand(5), 0.5
    discriminator_loss_eq16(d_x, d_y, log_q, w).backward()
    torch.testing.assert_close(d_x.grad, torch.full((8,), -1 / 8 / w, dtype=torch.float64))
    torch.testing.assert_close(d_y.grad, torch.softmax(d_y.detach() / w - log_q, 0) / w)


def test_eq17():
    d_y, logdet, w = rand(30), rand(30), 0.1
    direct = sum(-w * l - d for d, l in zip(d_y.tolist(), logdet.tolist())) / 30
    assert abs(generator_loss_eq17(d_y, logdet, w).item() - direct) < 1e-12


def test_wgan_losses():
    d_x, d_y = rand(10), rand(12)
    assert abs(wgan_discriminator_loss_eq4(d_x, d_y).item() - (-d_x.mean() + d_y.mean()).item()) < 1e-12
    assert wgan_generator_loss(d_y).item() == -d_y.mean().item()


def test_eq16_with_one_sample_is_wgan_plus_a_constant():
    """Sec. 2.1: with S = 1, Eq. 16 is the WGAN loss (times 1/w) plus log q, which has no θ."""
    d_x, d_y, log_q, w = rand(16), rand(1), rand(1), 0.3
    lhs = discriminator_loss_eq16(d_x, d_y, log_q, w)
    torch.testing.assert_close(lhs, wgan_discriminator_loss_eq4(d_x, d_y) / w - log_q[0])


def test_gradient_penalty_of_a_linear_critic():
    a = torch.tensor([3.0, 4.0], dtype=torch.float64)                 # ‖∇D‖ = 5 everywhere
    gp = gradient_penalty(lambda x: x @ a, rand(7, 2), rand(7, 2))
    assert abs(gp.item() - 16.0) < 1e-12


def test_effective_sample_size():
    assert abs(effective_sample_size(torch.zeros(10), torch.zeros(10), 1.0) - 1.0) < 1e-12
    d = torch.tensor([0.0, -1e4, -1e4, -1e4])
    assert abs(effective_sample_size(d, torch.zeros(4), 1.0) - 0.25) < 1e-12


def test_oriented_logdet_is_the_piecewise_log_and_its_slope():
    """f(x), x = s·det J, s the majority sign, ε = e^-3 · median|det J|: log x above ε, the tangent
    line on |x| < ε, log reflected below -ε; values and d f / d log|det J| (= x·f'(x)) in float64."""
    g = torch.Generator().manual_seed(0)
    logdet = (3 * torch.randn(400, generator=g, dtype=torch.float64)).requires_grad_(True)
    sign = torch.where(torch.rand(400, generator=g) < 0.3, -1.0, 1.0).double()      # majority: +1
    f = oriented_logdet(logdet, sign)
    (grad,) = torch.autograd.grad(f.sum(), logdet)
    eps = math.exp(logdet.detach().median().item() - 3.0)
    for ld, sg, fi, gi in zip(logdet.tolist(), sign.tolist(), f.tolist(), grad.tolist()):
        x = sg * math.exp(ld)
        if x >= eps:
            want, slope = math.log(x), 1.0
        elif x > -eps:
            want, slope = math.log(eps) - 1 + x / eps, x / eps
        else:
            want, slope = 2 * math.log(eps) - 2 - math.log(-x), -1.0
        assert fi == pytest.approx(want, abs=1e-12) and gi == pytest.approx(slope, abs=1e-12)
    # the majority is taken per batch: flipping every sign flips nothing
    torch.testing.assert_close(oriented_logdet(logdet.detach(), -sign), f.detach())
