"""Each loss against a direct float64 computation of its equation."""
import math

import torch

from owf.losses import (discriminator_loss_eq16, effective_sample_size, generator_loss_eq17,
                        gradient_penalty, log_zeta_hat, wgan_discriminator_loss_eq4, wgan_generator_loss)


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
