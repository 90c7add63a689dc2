"""The generator's log-determinants against the full Jacobian, and its density (Eq. 10)."""
import math

import pytest
import torch

from owf.losses import oriented_logdet
from owf.model import Energy, OneWayFlow, log_normal


def full_jacobians(G, u):
    return torch.stack([torch.autograd.functional.jacobian(G.g_n, ui.unsqueeze(0)).squeeze(0).squeeze(1)
                        for ui in u])


@pytest.mark.parametrize("n,hidden,act", [(2, (16, 32), "tanh"), (2, (8,), "leaky_relu"),
                                          (3, (12, 12, 12), "softplus"), (5, (7, 9), "silu"), (4, (4, 6), "sigmoid")])
def test_exact_logdet_matches_autograd_jacobian(n, hidden, act):
    G = OneWayFlow(n, hidden=hidden, activation=act).double()
    u = torch.randn(6, n, dtype=torch.float64)
    y, ld = G.logdet(u, "exact")
    J = full_jacobians(G, u)
    torch.testing.assert_close(ld, torch.linalg.slogdet(J).logabsdet)
    torch.testing.assert_close(y, G.g_n(u))


def test_jvp1_is_log_norm_of_jv():
    G = OneWayFlow(4, hidden=(10, 10)).double()
    u = torch.randn(5, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    y, ld = G.logdet(u, "jvp1", generator=gen)
    v = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    J = full_jacobians(G, u)
    torch.testing.assert_close(ld, torch.log(torch.einsum("bij,bj->bi", J, v).norm(dim=1)))


def test_log_q_is_change_of_variables():
    """log q(y) = log N(u) - log|det J| (Eq. 10), checked against a linear map whose density is known."""
    G = OneWayFlow(2, hidden=(2,), activation="tanh").double()
    gen = torch.Generator().manual_seed(0)
    y, log_q, ld = G.sample_with_log_prob(7, "exact", generator=gen)
    u = G.noise(7, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(log_q, log_normal(u) - ld)
    torch.testing.assert_close(log_normal(torch.zeros(1, 3)), torch.tensor([-1.5 * math.log(2 * math.pi)]))


def test_generator_density_integrates_to_one():
    """For a bijective g_n (square invertible layers, LeakyReLU) q is a normalised density on the
    plane, so E_{y~q}[p_ref(y) / q(y)] = ∫ p_ref = 1 for any reference density p_ref."""
    torch.manual_seed(0)
    G = OneWayFlow(2, hidden=(2, 2), activation="leaky_relu").double()
    with torch.no_grad():
        for layer in G.layers:
            layer.weight.copy_(torch.eye(2, dtype=torch.float64) + 0.5 * torch.randn(2, 2, dtype=torch.float64))
    y, log_q, _ = G.sample_with_log_prob(200_000, "exact")
    y, log_q = y.detach(), log_q.detach()
    # a reference narrower than q, so the importance weights have finite variance
    ref = torch.distributions.MultivariateNormal(y.mean(0), 0.2 * torch.cov(y.T))
    w = (ref.log_prob(y) - log_q).exp()
    assert abs(w.mean().item() - 1) < 0.02


def test_bottleneck_and_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"must all be >= n=4"):
        OneWayFlow(4, hidden=(8, 3))
    with pytest.raises(ValueError, match="choose one of"):
        OneWayFlow(2, activation="relu")
    with pytest.raises(ValueError, match="logdet method 'hutch'"):
        OneWayFlow(2).logdet(torch.randn(3, 2), "hutch")


def test_latent_smaller_than_n():
    """u = [z; r] (Eq. 7): g_u joins a latent z [B, d] and noise r [B, n - d], e.g. to hold z and redraw r."""
    G = OneWayFlow(6, d=2, hidden=(8,))
    assert G.d == 2 and G.noise(4).shape == (4, 6)
    z, r = torch.randn(4, 2), torch.randn(4, 4)
    torch.testing.assert_close(G.g_u(z, r), torch.cat([z, r], 1))
    with pytest.raises(ValueError, match=r"z must be \[B, d=2\] and r \[B, n - d=4\], got z \(4, 3\)"):
        G.g_u(torch.randn(4, 3), r)
    with pytest.raises(ValueError, match="latent size d=7 must be in"):
        OneWayFlow(6, d=7, hidden=(8,))


def test_g_n_is_the_primal_of_g_n_jvp():
    """The plain forward (the nn.Sequential) and the forward with tangents (owf_kernels.jvp, whose
    tanh is 2 sigmoid(2a) - 1) agree to rounding, for every generator activation."""
    for act in ("tanh", "leaky_relu", "softplus", "silu", "sigmoid"):
        G = OneWayFlow(3, hidden=(8, 8), activation=act)
        u = torch.randn(11, 3)
        torch.testing.assert_close(G.g_n(u), G.logdet(u, "exact")[0], atol=1e-6, rtol=1e-6, msg=act)


def test_checkpoints_of_the_module_list_layout_load():
    """Before 2026-12-01 the MLP's Linear layers were a ModuleList `layers` (keys layers.{i}.*); the
    Sequential holds them at net.{2i}.*, and old state dicts load into it."""
    G = OneWayFlow(2, hidden=(8, 8))
    old = {f"layers.{i}.{k}": v for i, layer in enumerate(G.layers) for k, v in layer.state_dict().items()}
    H = OneWayFlow(2, hidden=(8, 8))
    H.load_state_dict(old)
    u = torch.randn(5, 2)
    assert torch.equal(H.g_n(u), G.g_n(u))


def test_energy_shapes():
    D = Energy(2, hidden=(16, 16))
    assert D(torch.randn(5, 2)).shape == (5,)


def test_quadratic_energy_is_minus_half_the_squared_features():
    """D = -½‖f(x)‖² with f the LeakyReLU net up to its m-wide last layer (which has a bias). On a
    linear region f(x) = A x + c, so D's Hessian there is -AᵀA (a Gaussian's shape), checked
    against autograd at a point, with A = ∂f/∂x from autograd too."""
    torch.manual_seed(0)
    D = Energy(2, hidden=(16, 16), quadratic=8).double()
    assert D.net[-1].bias is not None and D.net[-1].out_features == 8
    x = torch.randn(5, 2, dtype=torch.float64)
    f = D.net(x)
    torch.testing.assert_close(D(x), -0.5 * (f ** 2).sum(-1))
    assert (D(torch.randn(1000, 2, dtype=torch.float64)) <= 0).all()
    x0 = torch.randn(2, dtype=torch.float64)
    A = torch.autograd.functional.jacobian(D.net, x0)                  # [8, 2]
    H = torch.autograd.functional.hessian(D, x0)                        # [2, 2]
    torch.testing.assert_close(H, -A.T @ A)
    with pytest.raises(ValueError, match="quadratic=-1"):
        Energy(2, quadratic=-1)


def folded_flow(c):
    """y = (tanh u1, tanh(u2 + 1) + c·tanh(1 - u2)) as a OneWayFlow (hidden width 3)."""
    G = OneWayFlow(2, hidden=(3,), activation="tanh")
    with torch.no_grad():
        G.layers[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, -1]]))
        G.layers[0].bias.copy_(torch.tensor([0.0, 1, 1]))
        G.layers[1].bias.zero_()
        G.layers[1].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, c]]))
    return G


def test_det_sign_fractions_find_a_fold():
    """y = (tanh u1, tanh(u2 + 1) + c·tanh(1 - u2)): with c = 1, y2 is even in u2, so u and its mirror
    give one y (not injective) and det J = tanh'(u1)·(sech²(u2 + 1) - sech²(1 - u2)) < 0 exactly
    where u2 > 0. With c = 0 the map is injective and det J > 0 everywhere."""
    u = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))
    for c, expected in ((1.0, ((u[:, 1] > 0).double().mean().item(), (u[:, 1] < 0).double().mean().item())),
                        (0.0, (0.0, 1.0))):
        assert folded_flow(c).det_sign_fractions(u) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("orient", [False, True])
def test_oriented_entropy_unfolds_a_folded_generator(orient):
    """Maximising the entropy term (with a quadratic pull standing in for D) from a folded g_n
    (c = 0.5: 41% of samples have det J < 0): with log|det J| the fold stays (-w log|det J| is a
    barrier at det J = 0 from both sides); with losses.oriented_logdet g_n ends with one sign."""
    G = folded_flow(0.5)
    opt = torch.optim.Adam(G.parameters(), 1e-2)
    u = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(1))
    assert min(G.det_sign_fractions(u)) > 0.4
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        y, _, ld, sign = G.sample_with_log_prob(512, "exact", g, signed=True)
        loss = -(oriented_logdet(ld, sign) if orient else ld).mean() + (y * y).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    minority = min(G.det_sign_fractions(u))
    assert (minority == 0.0) if orient else (minority > 0.2), minority


def test_signed_logdet_matches_the_full_jacobian():
    G = OneWayFlow(3, hidden=(12, 12), activation="softplus")
    u = torch.randn(9, 3, dtype=torch.float64)
    G = G.double()
    y, ld, sign = G.logdet(u, "exact", signed=True)
    want = torch.linalg.slogdet(full_jacobians(G, u))
    torch.testing.assert_close(sign, want.sign)
    torch.testing.assert_close(ld, want.logabsdet)
    with pytest.raises(ValueError, match="jvp1"):
        G.logdet(u, "jvp1", signed=True)


def test_slogdet_returns_with_two_threads():
    """owf.model.slogdet: MKL's threaded LU never returned on these 2-core CPUs for n >= 256 (a probe of
    a Fashion-MNIST run hung at step 100 with torch's default threads); it factorises on one thread, then
    gives the threads back. Run in a child process, so that a hang fails the test instead of CI."""
    import subprocess
    import sys
    code = ("import torch; from owf.model import slogdet; torch.set_num_threads(2); torch.manual_seed(0); "
            "m = torch.randn(3, 300, 300, dtype=torch.float64); s = slogdet(m); "
            "assert torch.get_num_threads() == 2; "
            "torch.set_num_threads(1); r = torch.linalg.slogdet(m); "
            "assert torch.equal(s.sign, r.sign) and torch.allclose(s.logabsdet, r.logabsdet, rtol=0, atol=1e-9); print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
