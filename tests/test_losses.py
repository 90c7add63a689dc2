"""Each loss against a direct float64 computation of its equation."""
import math

import pytest
import torch

from owf.losses import (data_kernel_proposal, discriminator_loss_eq16, effective_sample_size,
                        exact_entropy_control_variate, generator_loss_eq17, generator_loss_renyi, gradient_penalty,
                        log_zeta_hat, oriented_logdet, wgan_discriminator_loss_eq4, wgan_generator_loss)
from owf.model import Energy


def rand(*s):
    return torch.randn(*s, dtype=torch.float64)


def rand_g(g, *s):
    return torch.randn(*s, generator=g, dtype=torch.float64)


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


def test_renyi_generator_loss_weights_samples_by_their_importance_weights():
    d_y, logdet, log_q, w = rand(50), rand(50), rand(50), 0.2
    torch.testing.assert_close(generator_loss_renyi(d_y, logdet, log_q, w, 1.0), generator_loss_eq17(d_y, logdet, w))
    for alpha in (0.0, 0.5):
        a, b = d_y.clone().requires_grad_(), logdet.clone().requires_grad_()
        loss = generator_loss_renyi(a, b, log_q, w, alpha)
        r = [math.exp((1 - alpha) * (dy / w - lq)) for dy, lq in zip(d_y.tolist(), log_q.tolist())]
        wbar = torch.tensor(r, dtype=torch.float64) / sum(r)
        torch.testing.assert_close(loss, (wbar * (-w * logdet - d_y)).sum())
        loss.backward()       # the weights are constants: dL/dD(y_i) = -w̄_i, dL/dlog|det J_i| = -w w̄_i
        torch.testing.assert_close(a.grad, -wbar)
        torch.testing.assert_close(b.grad, -w * wbar)


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


def test_data_kernel_proposal_density_is_the_batch_mixture():
    g = torch.Generator().manual_seed(0)
    x = rand(40, 3)
    y, log_k = data_kernel_proposal(x, 500, g, bandwidth=0.3)
    def mixture(h):          # (1/B) Σ_j N(x_j, h² I)
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.ones(40, dtype=torch.float64)),
            torch.distributions.Independent(torch.distributions.Normal(x, torch.full_like(x, h)), 1))
    torch.testing.assert_close(log_k, mixture(0.3).log_prob(y))
    # the samples are that mixture's: each lies near some x_j (within 6 h), their mean near x's
    assert torch.cdist(y, x).min(1).values.max() < 6 * 0.3
    assert (y.mean(0) - x.mean(0)).abs().max() < 4 * (x.var(0).max() + 0.09).sqrt() / math.sqrt(500)
    # bandwidth 0: the median distance from a point to its nearest neighbour in the batch
    d = torch.cdist(x, x) + torch.diag(torch.full((40,), math.inf, dtype=torch.float64))
    h = d.min(1).values.median()
    _, log_k0 = data_kernel_proposal(x, 7, torch.Generator().manual_seed(1))
    y0, _ = data_kernel_proposal(x, 7, torch.Generator().manual_seed(1), bandwidth=float(h))
    torch.testing.assert_close(log_k0, mixture(float(h)).log_prob(y0))


def test_data_kernel_weights_estimate_zeta_without_bias():
    """E_k[exp(D/w - log k)] = ζ: with D/w = log N(y; 0, I) + 2.5, ζ = e^2.5. 40 batches of 2,000
    samples: the mean of log ζ̂ within 4 standard errors of 2.5."""
    g = torch.Generator().manual_seed(0)
    est = []
    for _ in range(40):
        x = torch.randn(64, 2, generator=g, dtype=torch.float64)
        y, log_k = data_kernel_proposal(x, 2000, g)
        d_over_w = -0.5 * (y * y).sum(1) - math.log(2 * math.pi) + 2.5
        est.append(log_zeta_hat(d_over_w, log_k, 1.0))
    est = torch.stack(est)
    assert abs(est.mean() - 2.5) < 4 * est.std() / math.sqrt(40) + 1e-3, (est.mean(), est.std())


@pytest.mark.parametrize("seed", [0, 1])
def test_defensive_samples_stop_the_runaway_at_a_mode_g_misses(seed):
    """Two equal modes, A = (-2, 0) and B = (2, 0); the proposal N(A, 0.3² I) misses B. Eq. 16 with
    its samples alone pays D for lowering A's energy against B's, without bound (B - A grew to
    5e7-1e8 nats in 100 steps here); with a data kernel's samples pooled in (Config.defensive), D
    keeps the two modes within a few nats, as their equal weights ask."""
    def energy_gap(defensive):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        D = Energy(2, (32, 32), quadratic=4).double()
        opt = torch.optim.Adam(D.parameters(), lr=1e-2, betas=(0.5, 0.9))
        means, w = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64), 0.1
        for _ in range(100):
            x = means[torch.randint(2, (128,), generator=g)] + 0.1 * rand_g(g, 128, 2)
            y = means[0] + 0.3 * rand_g(g, 128, 2)
            log_q = -0.5 * ((y - means[0]) ** 2).sum(1) / 0.09 - 2 * math.log(0.3) - math.log(2 * math.pi)
            if defensive:
                y_k, log_k = data_kernel_proposal(x, 32, g)
                y, log_q = torch.cat([y, y_k]), torch.cat([log_q, log_k])
            loss = discriminator_loss_eq16(D(x), D(y), log_q, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            e = D(means) / w
        return float(e[1] - e[0])
    assert energy_gap(False) > 1e3
    assert abs(energy_gap(True)) < 3.0



def test_uniform_box_proposal_is_the_uniform_density_on_the_box():
    from owf.losses import uniform_box_proposal
    like = torch.zeros(2, 1, 3, 4, dtype=torch.float64)
    y, log_k = uniform_box_proposal(like, 20_000, torch.Generator().manual_seed(0))
    assert y.shape == (20_000, 1, 3, 4) and y.dtype == torch.float64
    assert y.min() >= -1 and y.max() < 1 and abs(float(y.mean())) < 0.01 and abs(float(y.var()) - 1 / 3) < 0.01
    assert torch.allclose(log_k, torch.full((20_000,), -12 * math.log(2.0), dtype=torch.float64))


def test_the_exact_entropy_control_variate_is_unbiased_and_keeps_a_shared_exact_term_on_every_sample():
    """--entropy-samples K: mean_S(estimate) + mean_K(exact - estimate[:K]). Over the S rotations of
    the batch (which K samples get the exact log-det) it averages to the exact mean, in value and in
    the gradient; K = S is the exact mean; a term both carry (G's exact Σ log σ'(a)) enters for all S."""
    g = torch.Generator().manual_seed(0)
    S, K = 7, 3
    theta = rand_g(g, S).requires_grad_()
    exact = 2 * theta.sin() + rand_g(g, S)                      # per-sample exact log|det J|
    est = theta.cos() + rand_g(g, S)                            # an estimate that misses it

    def grad(f):
        return torch.autograd.grad(f, theta, retain_graph=True)[0]

    rot = [exact_entropy_control_variate(est.roll(i), exact.roll(i)[:K]) for i in range(S)]
    avg = torch.stack(rot).mean()
    torch.testing.assert_close(avg, exact.mean())
    torch.testing.assert_close(grad(avg), grad(exact.mean()))
    assert not torch.allclose(rot[0], exact.mean())             # one draw alone is not the mean
    full = exact_entropy_control_variate(est, exact)
    torch.testing.assert_close(full, exact.mean())
    torch.testing.assert_close(grad(full), grad(exact.mean()))
    c = 100 * rand_g(g, S)                                      # e.g. Σ log σ'(a) of each sample
    torch.testing.assert_close(exact_entropy_control_variate(est + c, (exact + c)[:K]),
                               exact_entropy_control_variate(est, exact[:K]) + c.mean())
    for bad in (exact[:0], torch.cat([exact, exact])):
        with pytest.raises(ValueError, match=f"holds {len(bad)} samples.*len.logdet. = {S}"):
            exact_entropy_control_variate(est, bad)
