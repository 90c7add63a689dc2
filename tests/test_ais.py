"""AIS and RAISE (owf.ais) against normalisers known exactly, and the bases and baselines they start from."""
import math
import shutil

import pytest
import torch

import owf
from owf.ais import (Box, Path, StepSizes, ais, adaptive_schedule, box_log_f, estimate, log_mean_exp, raise_chains,
                     sigmoid_schedule, slice_ais, tune)
from owf.baselines import (AtanhGaussian, CopulaMixture, GaussianBase, GaussianMixtureBase, MixtureBase, PixelHistogram, UniformBox, baseline_table,
                           code_lengths, dequantised_u, log1m_tanh2)
from owf.density import quadrature_log_zeta

# ---- an energy on [-1, 1]^n with a known normaliser: a product of 1D bimodal energies, each a
# mixture of two Gaussians, e_i(t) = log(π_i N(t; m1_i, s1_i) + (1 - π_i) N(t; m2_i, s2_i)) on [-1, 1],
# whose integral over [-1, 1] is closed-form (erf), so log ζ = Σ_i log ∫ exp(e_i).


class ProductEnergy:
    def __init__(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        r = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
        self.n, self.pi, c, sep = n, r(0.35, 0.65), r(-0.1, 0.1), r(0.32, 0.36)
        self.m1, self.m2, self.s1, self.s2 = c - sep / 2, c + sep / 2, r(0.1, 0.12), r(0.1, 0.12)
        Phi = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        z1 = Phi((1 - self.m1) / self.s1) - Phi((-1 - self.m1) / self.s1)
        z2 = Phi((1 - self.m2) / self.s2) - Phi((-1 - self.m2) / self.s2)
        self.log_zeta = float(torch.log(self.pi * z1 + (1 - self.pi) * z2).sum())

    def per_pixel(self, x):
        a = torch.log(self.pi) - 0.5 * ((x - self.m1) / self.s1) ** 2 - torch.log(self.s1) - 0.5 * math.log(2 * math.pi)
        b = torch.log(1 - self.pi) - 0.5 * ((x - self.m2) / self.s2) ** 2 - torch.log(self.s2) - 0.5 * math.log(2 * math.pi)
        return torch.logaddexp(a, b)

    def __call__(self, x):
        return self.per_pixel(x.double().flatten(1)).sum(1)

    def sample(self, N, gen):
        pick = torch.rand(N, self.n, generator=gen, dtype=torch.float64) < self.pi
        m, s = torch.where(pick, self.m1, self.m2), torch.where(pick, self.s1, self.s2)
        x = m + s * torch.randn(N, self.n, generator=gen, dtype=torch.float64)
        while (bad := x.abs() >= 1).any():        # truncated to the box
            x = torch.where(bad, m + s * torch.randn(N, self.n, generator=gen, dtype=torch.float64), x)
        return x


class DiagonalGaussian:
    """A diagonal Gaussian base in u (the product energy's own shape, and cheap)."""

    def __init__(self, u):
        self.mu, self.sd, self.n = u.mean(0), u.std(0), u.shape[1]
        self.scale = self.sd.float()

    def log_prob(self, u):
        z = (u.double() - self.mu) / self.sd
        return (-0.5 * z * z - torch.log(self.sd) - 0.5 * math.log(2 * math.pi)).sum(1)

    def sample(self, num, generator=None):
        return (self.mu + self.sd * torch.randn(num, self.n, generator=generator, dtype=torch.float64)).float()


def product_path(n=784, leapfrog=1):
    energy = ProductEnergy(n)
    box = Box(-1.0, 1.0)
    base = DiagonalGaussian(box.to_u(energy.sample(5000, torch.Generator().manual_seed(2))))
    return energy, box, Path(box_log_f(energy, box, (n,)), base, leapfrog)


def test_the_product_energy_is_bimodal_in_every_pixel():
    energy = ProductEnergy(784)
    t = torch.linspace(-1, 1, 2001, dtype=torch.float64)[:, None]
    e = energy.per_pixel(t)                                     # [2001, 784]
    peaks = ((e[1:-1] > e[:-2]) & (e[1:-1] > e[2:])).sum(0)
    assert (peaks == 2).all()
    # the closed form against a Riemann sum
    quad = float((torch.logsumexp(e, 0) + math.log(2 / 2000)).sum())
    assert abs(quad - energy.log_zeta) < 0.05


def test_ais_and_raise_recover_a_known_normaliser_in_784_dimensions():
    energy, box, path = product_path(784)
    steps = tune(path, 32, 100, torch.Generator().manual_seed(3))
    betas = steps.schedule(2000)
    run = ais(path, 32, betas, steps, torch.Generator().manual_seed(4))
    log_zeta, se, _ = estimate(run.log_w)
    assert abs(log_zeta - energy.log_zeta) < 1.0, (log_zeta, energy.log_zeta, se)
    assert run.nonfinite_chains == run.nonfinite_proposals == 0
    assert 0.5 < run.accept < 0.8
    # RAISE, 4 chains for each of 8 exact samples: each within 1 nat of its exact log-density, and
    # not above it on average (a stochastic lower bound of the annealing model's log-density)
    x = energy.sample(8, torch.Generator().manual_seed(5))
    u = box.to_u(x)
    rev = raise_chains(path, u.repeat_interleave(4, 0), betas, steps, torch.Generator().manual_seed(6))
    log_p = log_mean_exp(rev.log_w.view(8, 4), 1) - box.log_jac(u)
    err = log_p - (energy(x) - energy.log_zeta)
    assert err.abs().max() < 1.0, err
    assert err.mean() < 0.25, err


def test_one_step_is_importance_sampling_from_the_base():
    energy, box, path = product_path(50)
    steps = StepSizes(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), torch.ones(1), 0.0)
    run = ais(path, 16, torch.tensor([0.0, 1.0], dtype=torch.float64), steps, torch.Generator().manual_seed(7))
    u = path.base.sample(16, torch.Generator().manual_seed(7))
    expected = energy(box.to_x(u)) + box.log_jac(u.double()) - path.base.log_prob(u)
    torch.testing.assert_close(run.log_w, expected, rtol=0, atol=1e-9)


def test_the_weights_telescope_on_an_energy_equal_to_the_base():
    """f = p_0: every increment is 0, whatever the chains do, so log ζ̂ = 0 exactly and RAISE gives
    log p_0 of each point exactly, at any K."""
    base = GaussianBase(torch.randn(500, 6, dtype=torch.float64))
    path = Path(base.log_prob, base)
    steps = tune(path, 16, 20, torch.Generator().manual_seed(8))
    run = ais(path, 16, steps.schedule(30), steps, torch.Generator().manual_seed(9))
    assert run.log_w.abs().max() < 1e-9
    u = base.sample(5, torch.Generator().manual_seed(10))
    rev = raise_chains(path, u, steps.schedule(30), steps, torch.Generator().manual_seed(11))
    torch.testing.assert_close(rev.log_w, base.log_prob(u), rtol=0, atol=1e-9)


@pytest.mark.parametrize("K, leapfrog", [(1, 1), (3, 1), (3, 3)])
def test_the_weights_are_unbiased_at_any_k(K, leapfrog):
    """E[w] = ζ for AIS and E_{x ~ p_0}[ŵ(x) / p_0(x)] = ∫ p_ann = 1 for RAISE, whatever K and however
    poorly the chains mix: checked in 3D with 200,000 chains, to 4 standard errors. (The base is fitted
    to the target: from a far one, such as the uniform box, RAISE's ratio has so heavy a tail that its
    sample mean and standard error mislead at any affordable number of chains.)"""
    energy = ProductEnergy(3, seed=4)
    box = Box(-1.0, 1.0)
    base = DiagonalGaussian(box.to_u(energy.sample(5000, torch.Generator().manual_seed(2))))
    path = Path(box_log_f(energy, box, (3,)), base, leapfrog)
    steps = StepSizes(torch.zeros(1, dtype=torch.float64), torch.full((1,), 0.8, dtype=torch.float64), torch.ones(1), 0.0)
    betas = torch.linspace(0, 1, K + 1, dtype=torch.float64)
    w = torch.exp(ais(path, 200_000, betas, steps, torch.Generator().manual_seed(14)).log_w - energy.log_zeta)
    assert abs(float(w.mean()) - 1) < 4 * float(w.std()) / len(w) ** 0.5, (float(w.mean()), float(w.std()))
    u = base.sample(200_000, torch.Generator().manual_seed(15))
    r = torch.exp(raise_chains(path, u, betas, steps, torch.Generator().manual_seed(16)).log_w - base.log_prob(u))
    assert abs(float(r.mean()) - 1) < 4 * float(r.std()) / len(r) ** 0.5, (float(r.mean()), float(r.std()))


def test_the_leapfrog_integrator_retraces_its_steps():
    """From (u, p), L steps forward, the momentum flipped, L steps back: the start again (to float32
    rounding), which the Metropolis test's correctness rests on; at L = 3 the inner full steps count."""
    energy, box, path = product_path(20, leapfrog=3)
    st = path.evaluate(path.base.sample(16, torch.Generator().manual_seed(17)))
    p = torch.randn(16, 20, generator=torch.Generator().manual_seed(18))
    end, p_end = path.integrate(st, p, 0.6, 0.3)
    assert (end.u - st.u).abs().max() > 0.1                    # it moved
    back, p_back = path.integrate(end, -p_end, 0.6, 0.3)
    torch.testing.assert_close(back.u, st.u, atol=2e-5, rtol=0)
    torch.testing.assert_close(-p_back, p, atol=2e-5, rtol=0)


# ---- AIS with elliptical slice transitions over a Gaussian mixture, against a Gaussian tilt of known ζ


def gaussian_tilt(n=12, m=6, s=0.15, seed=0):
    """A base of two Gaussians in R^n and the tilt g(z) = -½‖Pz - b‖² / s² (P [m, n]), a Gaussian in m
    directions, so that ζ_k = ∫ N(z; μ_k, Σ_k) e^g dz = (2π s²)^{m/2} N(b; P μ_k, P Σ_k Pᵀ + s² I)
    exactly. -> (base, tilt, log ζ = log Σ_k π_k ζ_k)."""
    g0 = torch.Generator().manual_seed(seed)
    mu = torch.randn(2, n, generator=g0, dtype=torch.float64)
    A = torch.randn(2, n, n, generator=g0, dtype=torch.float64) / math.sqrt(n)
    L = torch.linalg.cholesky(A @ A.transpose(1, 2) + 0.1 * torch.eye(n, dtype=torch.float64))
    base = GaussianMixtureBase(torch.tensor([0.3, 0.7], dtype=torch.float64).log(), mu, L)
    P = torch.randn(m, n, generator=g0, dtype=torch.float64) / math.sqrt(n)
    b = torch.randn(m, generator=g0, dtype=torch.float64)
    parts = [base.log_pi[k] + 0.5 * m * math.log(2 * math.pi * s ** 2)
             + torch.distributions.MultivariateNormal(P @ mu[k], P @ L[k] @ L[k].T @ P.T
                                                      + s ** 2 * torch.eye(m, dtype=torch.float64)).log_prob(b)
             for k in range(2)]
    return base, lambda z: -0.5 * ((z @ P.T - b) ** 2).sum(1) / s ** 2, float(torch.logsumexp(torch.stack(parts), 0))


def test_slice_ais_recovers_a_sharp_gaussian_tilt_where_importance_sampling_fails():
    base, tilt, exact = gaussian_tilt()
    g = torch.Generator().manual_seed(3)
    lz, se, ess = slice_ais(tilt, base, 64, sigmoid_schedule(1000), g).estimate()
    assert abs(lz - exact) < 0.5 and abs(lz - exact) < 3 * se + 0.1, (lz, se, exact)
    assert ess > 10
    lz_is, _, ess_is = slice_ais(tilt, base, 64, sigmoid_schedule(1), torch.Generator().manual_seed(3)).estimate()
    assert lz_is < exact - 5 and ess_is < 2               # the same chains without the annealing: far off


def test_one_slice_step_is_importance_sampling_from_each_component():
    base, tilt, _ = gaussian_tilt()
    run = slice_ais(tilt, base, 8, torch.tensor([0.0, 1.0], dtype=torch.float64), torch.Generator().manual_seed(4))
    eps = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z0 = base.mu[:, None] + eps @ base.L.transpose(1, 2)            # component k's draws in row k
    torch.testing.assert_close(run.log_w, tilt(z0.reshape(16, 12)).view(2, 8), rtol=0, atol=1e-12)
    assert run.evaluations == 0
    lz, _, _ = run.estimate()
    torch.testing.assert_close(torch.tensor(lz, dtype=torch.float64), torch.logsumexp(base.log_pi + log_mean_exp(run.log_w, 1), 0))


def test_slice_transitions_leave_the_tilted_component_invariant():
    """At β = 1 throughout, N(0, I) e^{-½(z - c)²/s²} is N(c/(1 + s²), s²/(1 + s²)) in each coordinate:
    4,000 chains after 30 transitions have its mean and variance (to 4 standard errors)."""
    base = GaussianMixtureBase(torch.zeros(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                               torch.eye(2, dtype=torch.float64)[None])
    c, s = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.5
    run = slice_ais(lambda z: -0.5 * ((z - c) ** 2).sum(1) / s ** 2, base, 4000,
                    torch.tensor([0.0] + [1.0] * 31, dtype=torch.float64), torch.Generator().manual_seed(5))
    z = run.u[0]
    mean, var = c / (1 + s ** 2), s ** 2 / (1 + s ** 2)
    assert ((z.mean(0) - mean).abs() < 4 * math.sqrt(var / 4000)).all(), (z.mean(0), mean)
    assert ((z.var(0) - var).abs() < 4 * var * math.sqrt(2 / 4000)).all(), (z.var(0), var)
    assert 1 < run.evaluations < 5


def test_slice_ais_weights_are_unbiased_at_small_k():
    """E[w] = ζ_k in each component whatever K, checked with 20,000 chains at K = 3 on a mild tilt."""
    base, tilt, exact = gaussian_tilt(n=4, m=2, s=2.0, seed=1)
    run = slice_ais(tilt, base, 20_000, torch.linspace(0, 1, 4, dtype=torch.float64), torch.Generator().manual_seed(6))
    w = torch.exp(base.log_pi[:, None] + run.log_w - exact)             # Σ_k mean_m w_km = 1 in expectation
    mean = w.mean(1).sum()
    se = (w.var(1) / 20_000).sum().sqrt()
    assert abs(float(mean) - 1) < 4 * float(se), (float(mean), float(se))


def test_slice_ais_names_a_non_finite_tilt_and_a_bad_chain_count():
    base, _, _ = gaussian_tilt()
    with pytest.raises(ValueError, match="not finite at 16 of 16"):
        slice_ais(lambda z: torch.full((len(z),), math.nan, dtype=torch.float64), base, 8, sigmoid_schedule(2))
    with pytest.raises(ValueError, match="chains=0"):
        slice_ais(lambda z: z.sum(1), base, 0, sigmoid_schedule(2))


def test_adaptive_schedule_places_steps_by_the_spread():
    grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    b = adaptive_schedule(4, grid, torch.tensor([3.0, 1.0]))     # 3/4 of the length in [0, 0.5]
    torch.testing.assert_close(b, torch.tensor([0.0, 1 / 6, 1 / 3, 0.5, 1.0], dtype=torch.float64))


def test_a_non_finite_energy_is_rejected_and_counted():
    energy, box, _ = product_path(8)
    base = UniformBox(8)

    def holed(x):                                  # nan on a slab of the box
        e = energy(x)
        return torch.where(x.flatten(1)[:, 0] > 0.5, torch.full_like(e, math.nan), e)

    path = Path(box_log_f(holed, box, (8,)), base)
    steps = tune(path, 32, 30, torch.Generator().manual_seed(12))
    run = ais(path, 64, steps.schedule(50), steps, torch.Generator().manual_seed(13))
    assert run.nonfinite_proposals > 0
    # the chains that start in the hole are counted, and weigh 0
    started = box.to_x(base.sample(64, torch.Generator().manual_seed(13)))[:, 0] > 0.5
    assert run.nonfinite_chains == int(started.sum()) > 0
    assert (run.log_w[started] == -math.inf).all() and torch.isfinite(run.log_w[~started]).all()
    assert math.isfinite(estimate(run.log_w)[0])


# ---- a trained 2D model: AIS against the quadrature

@pytest.fixture(scope="module")
def ring(tmp_path_factory, trained_ring):
    out = tmp_path_factory.mktemp("ais") / "ring"
    shutil.copytree(trained_ring, out)
    return out


def test_ais_on_a_trained_2d_model_matches_the_quadrature(ring):
    model = owf.load(ring)
    quad = quadrature_log_zeta(model)["log_zeta"]
    est = model.estimate_log_zeta(4096, "ais", steps=500, base="gaussian", generator=torch.Generator().manual_seed(0))
    assert abs(est.log_zeta - quad) < 0.02, (est, quad)
    assert est.proposal == "ais" and est.steps == 500 and not est.low_ess
    model.cache_log_zeta(est)                              # written into the checkpoint, and read back
    again = owf.load(ring)
    assert again.zeta.steps == 500 and again.zeta.log_zeta == est.log_zeta
    # RAISE of fresh data points: close to the model's own log-density, conservative on average
    x = model.data.sample(64, torch.Generator().manual_seed(1))
    inside = model.in_domain(x)
    r = model.raise_log_prob(x[inside].double(), steps=500, chains=4, base="gaussian", batch_size=8,
                             step_sizes=est.step_sizes, generator=torch.Generator().manual_seed(2))
    assert r.log_prob.shape == (int(inside.sum()),) and r.chains == 4     # two points per batch of 8 chains
    exact = model.energy(x[inside]).double() - quad
    assert (r.log_prob - exact).mean() < 0.05
    assert (r.log_prob - exact).abs().median() < 0.5


def test_bad_requests_are_refused(ring):
    model = owf.load(ring)
    for kw, needle in ((dict(steps=0), "steps"), (dict(leapfrog=0), "leapfrog"), (dict(base="histogram"), "histogram"),
                       (dict(schedule="linear"), "linear")):
        with pytest.raises(ValueError, match=needle):
            model.estimate_log_zeta(16, "ais", **kw)
    with pytest.raises(ValueError, match="num_samples"):
        model.estimate_log_zeta(0, "ais")
    with pytest.raises(ValueError, match="outside the domain"):
        model.raise_log_prob(torch.full((2, 2), 100.0), steps=5)


@pytest.mark.parametrize("args, needle", [(["--ais-steps", "0"], "--ais-steps"), (["--ais-chains", "-1"], "--ais-chains"),
                                          (["--raise-points", "-2"], "--raise-points"), (["--device", "tpu"], "tpu"),
                                          (["--leapfrog", "0"], "--leapfrog"), (["--threads", "-1"], "--threads"),
                                          (["--ais-replicates", "0"], "--ais-replicates"),
                                          (["--slice-steps", "-1"], "--slice-steps")])
def test_evaluate_names_a_bad_ais_option_in_one_line(ring, args, needle, capsys):
    from owf.evaluate import main
    assert main([str(ring), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err


def test_the_bracket_summary_reads_the_rows():
    from owf.image_eval import bracket_summary

    def row(base, K, lz, ais, raise_):
        return {"base": base, "steps": K, "log_zeta": lz, "se": 0.1, "ais_bits_per_dim": ais,
                "ais_bits_per_dim_subset": ais, "raise_bits_per_dim": raise_}
    rows = [row("a", 4, 10.0, 5.00, 5.30), row("a", 8, 12.0, 4.98, 5.01), row("b", 4, 0.0, 6.0, 4.0),
            row("b", 8, 1.0, 5.9, 4.2)]
    s = bracket_summary(rows, (4, 8), 64)
    assert s["ais_base"] == "a" and s["ais_log_zeta"] == 12.0 and s["test_bits_per_dim_raise"] == 5.01
    assert s["bracket_gap_bpd"] == pytest.approx(0.03) and s["ais_doubling_move_bpd"] == pytest.approx(0.02)
    assert s["raise_doubling_move_bpd"] == pytest.approx(0.29) and not s["converged"]    # RAISE still moved
    assert s["ais_bases_spread_bpd"] == pytest.approx(0.92) and not s["raise_below_ais"]
    rows[0]["raise_bits_per_dim"] = 5.04
    assert bracket_summary(rows, (4, 8), 64)["converged"]
    rows[1]["raise_bits_per_dim"] = 4.5                   # RAISE far below AIS: the annealing model is not P_D yet
    s = bracket_summary(rows, (4, 8), 64)
    assert s["raise_below_ais"] and not s["converged"]
    assert not bracket_summary(rows, (4, 8), 0)["converged"]                           # no RAISE, no bracket


# ---- the bases and the exact baselines

def test_the_bases_are_normalised_densities_of_u():
    """In 1D, ∫ exp(log_prob(u)) du = 1 by quadrature, and the samples follow it (first two moments)."""
    u = torch.linspace(-25, 25, 200_001, dtype=torch.float64)[:, None]
    du = 50 / 200_000
    imgs = torch.randint(0, 256, (400, 1, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:200] = 0                                     # half the images black: a histogram with a spike at a wall
    bases = {"uniform": UniformBox(1), "histogram": PixelHistogram(imgs), "gaussian": AtanhGaussian(imgs),
             "mixture": MixtureBase([AtanhGaussian(imgs), UniformBox(1)], [0.3, 0.7]),
             "gaussian mixture": GaussianMixtureBase.fit(dequantised_u(imgs, torch.Generator().manual_seed(2))[0], 2, 3),
             "copula mixture": CopulaMixture.fit_pixels(imgs, 2)}
    for name, b in bases.items():
        p = b.log_prob(u).exp()
        assert abs(float(p.sum() * du) - 1) < 1e-3, name
        s = b.sample(200_000, torch.Generator().manual_seed(1)).double()[:, 0]
        mean = float((p * u[:, 0]).sum() * du)
        assert abs(float(s.mean()) - mean) < 0.03, (name, float(s.mean()), mean)


def test_the_gaussian_mixture_is_em_on_a_known_mixture():
    """Two well-separated Gaussians in 3D: the EM fit finds their weights, means and covariances; its
    log_prob is Σ_k π_k N(u; μ_k, Σ_k) as torch.distributions writes it; each EM round raises the
    training log-likelihood; one component is the single Gaussian."""
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[1.0, 0, 0], [0.5, 0.7, 0], [0.1, -0.3, 0.4]], dtype=torch.float64)
    u = torch.cat([torch.randn(3000, 3, generator=g, dtype=torch.float64) @ A.T + 6,
                   torch.randn(1000, 3, generator=g, dtype=torch.float64) * 0.5 - 6])
    m = GaussianMixtureBase.fit(u, 2, 5, shrink=0.0)
    big = int(m.log_pi.argmax())
    torch.testing.assert_close(m.log_pi.exp()[big], torch.tensor(0.75, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.mu[big], torch.full((3,), 6.0, dtype=torch.float64), atol=0.1, rtol=0)
    torch.testing.assert_close(m.L[big] @ m.L[big].T, A @ A.T, atol=0.1, rtol=0)
    from torch.distributions import MultivariateNormal
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) * 5
    want = torch.logsumexp(torch.stack([lp + MultivariateNormal(mu, scale_tril=L).log_prob(x)
                                        for lp, mu, L in zip(m.log_pi, m.mu, m.L)]), 0)
    torch.testing.assert_close(m.log_prob(x), want)
    ll = [float(GaussianMixtureBase.fit(u, 2, it).log_prob(u).mean()) for it in range(3)]
    assert ll[0] <= ll[1] + 1e-9 <= ll[2] + 2e-9, ll
    one = GaussianMixtureBase.fit(u, 1, 2)                 # the maximum-likelihood Gaussian, shrunk as GaussianBase's
    cov = torch.cov(u.T, correction=0)
    cov = 0.999 * cov + 1e-3 * cov.diagonal().mean() * torch.eye(3, dtype=cov.dtype)
    torch.testing.assert_close(one.log_prob(x), MultivariateNormal(u.mean(0), cov).log_prob(x))
    torch.testing.assert_close(one.scale, cov.diagonal().sqrt().float())
    with pytest.raises(ValueError, match="components=5000"):
        GaussianMixtureBase.fit(u, 5000, 1)
    # k-means that starts all its centres in one of two modes: no component is left empty, for any seed
    imgs = torch.randint(0, 256, (300, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:150, :, :4] = 0
    for seed in range(8):
        fitted = GaussianMixtureBase.fit(dequantised_u(imgs, torch.Generator().manual_seed(seed))[0], 3, 1, seed=seed)
        assert torch.isfinite(fitted.log_pi).all() and len(fitted.log_pi) == 3


def test_histogram_log_prob_in_u_is_its_density_in_x_with_the_jacobian():
    imgs = torch.randint(0, 256, (300, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    h = PixelHistogram(imgs)
    test = imgs[:7]
    u, log_jac = dequantised_u(test, torch.Generator().manual_seed(1))
    torch.testing.assert_close(h.log_prob(u), h.log_prob_u8(test) + log_jac)
    # add-one smoothing by hand for one pixel of one image
    b = int(test[0, 0, 0, 0])
    count = int((imgs[:, 0, 0, 0] == b).sum())
    assert math.isclose(float(h.log_p_bin[0, b]), math.log((count + 1) / (300 + 256)), rel_tol=1e-12)


def test_the_copula_maps_each_pixel_by_its_histogram_to_a_standard_normal():
    """normal_scores: under the histogram each z_i is N(0, 1), its log dz/dy is autograd's; NormalScores
    inverts it, with log|dx/dz| autograd's; with one standard normal component the copula mixture is
    the histogram itself; a density in x that integrates to 1 (one pixel, by quadrature); a fitted
    mixture's draws have its moments in z (the dependence)."""
    from owf.baselines import NormalScores, normal_scores
    imgs = torch.randint(0, 256, (300, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:200, :, :2] = 0                                   # half the pixels mostly black: a spike in one bin
    h = PixelHistogram(imgs)
    coord = NormalScores(h.log_p_bin)
    u = h.sample(100_000, torch.Generator().manual_seed(1)).double()
    z, _ = coord.scores(256 * torch.sigmoid(2 * u))
    torch.testing.assert_close(z.mean(0), torch.zeros(16, dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(16, dtype=torch.float64), atol=0.02, rtol=0)
    y = torch.tensor([[0.3, 5.5, 128.9, 255.2]], dtype=torch.float64).requires_grad_()
    z1, log_dz = normal_scores(y, h.log_p_bin[:4], coord.cdf_lo[:4])
    grads = torch.stack([torch.autograd.grad(z1[0, i], y, retain_graph=True)[0][0, i] for i in range(4)])
    torch.testing.assert_close(log_dz, grads.log().sum()[None])
    # the inverse: x(z(x)) = x, and log|dx/dz| is the log of x(z)'s derivative
    x = torch.tanh(u[:3])
    torch.testing.assert_close(coord.to_x(coord.to_u(x)), x)
    zz = coord.to_u(x)[:1].requires_grad_()
    dx = torch.stack([torch.autograd.grad(coord.to_x(zz)[0, i], zz, retain_graph=True)[0][0, i] for i in range(16)])
    torch.testing.assert_close(coord.log_jac(zz.detach()), dx.log().sum()[None])
    # one standard normal component: the histogram's density in x
    identity = CopulaMixture(torch.zeros(1), torch.zeros(1, 16), torch.eye(16)[None], h.log_p_bin).margins_only()
    zx = coord.to_u(x)
    torch.testing.assert_close(identity.log_prob(zx) - coord.log_jac(zx), h.log_prob(u[:3]) - log1m_tanh2(u[:3]).sum(1))
    s = identity.sample(20_000, torch.Generator().manual_seed(3))       # inverting the margins: the histogram's bins
    share = torch.stack([((coord.to_x(s.double()) + 1) * 128).floor().eq(b).double().mean(0) for b in (0, 1, 255)])
    torch.testing.assert_close(share, h.log_p_bin.exp()[:, [0, 1, 255]].T, atol=0.01, rtol=0)
    # normalised in x: one pixel, K = 2, ∫ p_y dy = 1 on a grid of y (p_y jumps at the bin edges only)
    one = imgs[:, :, :1, :1].clone()
    m1 = CopulaMixture.fit_pixels(one, 2)
    grid = (torch.arange(256 * 64, dtype=torch.float64) + 0.5) / 64
    zg, lg = m1.coordinate.scores(grid[:, None])
    assert abs(float((m1.log_prob(zg) + lg).exp().sum() / 64) - 1) < 1e-3
    # the fitted mixture: log_prob_u8 is the density in x by hand, and its draws have its moments in z
    m = CopulaMixture.fit_pixels(imgs, 2)
    test = imgs[:7]
    uu, log_jac = dequantised_u(test, torch.Generator().manual_seed(2))
    zt, lz = normal_scores(128 * (torch.tanh(uu) + 1), h.log_p_bin, coord.cdf_lo)
    torch.testing.assert_close(m.log_prob_u8(test, torch.Generator().manual_seed(2)),
                               GaussianMixtureBase.log_prob(m, zt) + lz + 16 * math.log(128))
    s = m.sample(40_000, torch.Generator().manual_seed(4)).double()
    pi = m.log_pi.exp()
    mean = pi @ m.mu
    second = sum(p_k * (L @ L.T + mu[:, None] * mu[None]) for p_k, mu, L in zip(pi, m.mu, m.L))
    zs = m.coordinate.to_u(m.coordinate.to_x(s))                # through the images and back
    torch.testing.assert_close(zs.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(zs.T), second - mean[:, None] * mean[None], atol=0.05, rtol=0)


def test_chains_on_the_copula_move_in_its_normal_scores():
    """P_D = p_0 = a copula mixture (its density in x, jumps at every bin edge included): in the base's
    coordinate z the increments telescope (log ζ̂ = 0 to float32 rounding of x), and the pilot's MALA
    steps stay large (in u = atanh x the margins' jumps held them near 1e-3, docs/likelihood.md)."""
    from owf.ais import coordinate_of
    imgs = torch.randint(0, 256, (300, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:200, :, :2] = 0
    m = CopulaMixture.fit_pixels(imgs, 2)

    def log_p0_x(x):                                # as ConvEnergy.log_base reads it: y = 128 (x + 1)
        z, log_dz = m.coordinate.scores(128 * (x.double() + 1))
        return m.log_prob(z) + log_dz + 16 * math.log(128)
    coordinate = coordinate_of(m, Box(-1.0, 1.0))
    assert coordinate is m.coordinate
    path = Path(box_log_f(log_p0_x, coordinate, (16,)), m)
    steps = tune(path, 32, 30, torch.Generator().manual_seed(1))
    assert float(steps.eps.min()) > 0.1 and steps.accept > 0.4, (steps.eps, steps.accept)
    run = ais(path, 32, steps.schedule(30), steps, torch.Generator().manual_seed(2))
    assert run.log_w.abs().max() < 1e-3 and run.accept > 0.4
    with pytest.raises(ValueError, match="different coordinates"):
        MixtureBase([m, UniformBox(16)], [0.5, 0.5])


def test_the_dequantised_gaussian_keeps_an_always_black_pixel_cheap():
    """A pixel that is 0 in every image: fitted to bin centres its σ would be tiny, and a dequantised
    test pixel would cost tens of nats; fitted to dequantised pixels it costs about log(128) - log
    of its bin's density, a few nats at most on the [0, 256) scale."""
    imgs = torch.randint(0, 256, (2000, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs[:, 0, 0, 0] = 0
    g = AtanhGaussian(imgs)
    test = imgs[:500].clone()
    u, log_jac = dequantised_u(test, torch.Generator().manual_seed(1))
    # the black pixel's own marginal cost, [0, 256) scale: -log N(u_0; μ_0, σ_0) + log(1 - x_0²)... + log 128
    mu, sd = g.mu[0], g.L[0, 0]
    z = (u[:, 0] - mu) / sd
    log_px = -0.5 * z ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi) - log1m_tanh2(u[:, 0])
    assert float(-(log_px - math.log(128)).mean()) < 2.0


def test_baseline_table_on_toy_images():
    imgs = torch.randint(0, 256, (200, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    t = baseline_table(imgs, imgs[:50])
    assert 7.0 < t["histogram_bits_per_dim"] < 8.1          # uniform noise: about 8 bits a pixel
    assert t["lzma_bits_per_dim"] > 7.5 and t["png_bits_per_dim"] > 7.5
    m = GaussianMixtureBase.fit(dequantised_u(imgs)[0], 1, 0)
    with_m = baseline_table(imgs, imgs[:50], mixture=m)
    # one component: the Gaussian again, up to its covariance's 1/N against 1/(N - 1)
    assert with_m["base_measure_bits_per_dim"] == pytest.approx(with_m["atanh_gaussian_bits_per_dim"], abs=0.02)
    assert with_m["histogram_bits_per_dim"] == t["histogram_bits_per_dim"]
    flat = torch.zeros(100, 1, 6, 6, dtype=torch.uint8)
    c = code_lengths(flat)
    assert c["lzma_bits_per_dim"] < 0.5                     # a constant image compresses
