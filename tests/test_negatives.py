"""owf.negatives: persistent MALA chains on P_D, and their use in training (--mcmc-chains)."""
import math

import pytest
import torch
import torch.nn as nn

from owf.baselines import GaussianBase, GaussianMixtureBase, MixtureBase, UniformBox
from owf.config import Config
from owf.negatives import RESTART_EVERY, PersistentChains, SliceChains
from owf.train import train

from test_images import TINY_IMAGES


class Quadratic(nn.Module):
    """D(x)/w = -k Σ x_i² on the box: P_D factorises, each pixel ∝ exp(-k x²) on [-1, 1]."""

    def __init__(self, k: float, w: float):
        super().__init__()
        self.k, self.w = k, w
        self.dummy = nn.Parameter(torch.zeros(()))         # the chains read D's device from its parameters

    def forward(self, x):
        return -self.w * self.k * x.flatten(1).square().sum(1) + 0 * self.dummy


def _moment(k: float) -> float:
    """E[x²] under ∝ exp(-k x²) on [-1, 1], by quadrature."""
    x = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    p = torch.exp(-k * x * x)
    return float((x * x * p).sum() / p.sum())


@pytest.mark.parametrize("k", [4.0, -2.0])      # a bump in the middle, and mass pushed to the walls
def test_the_chains_sample_p_d(k):
    """After a burn-in from a base that is not P_D, the chains' second moment matches quadrature:
    the transition leaves P_D invariant (a dropped Metropolis test or a wrong Jacobian breaks it)."""
    torch.manual_seed(0)
    n, M, w = 6, 2000, 0.01
    g = torch.Generator().manual_seed(1)
    base = MixtureBase([GaussianBase(torch.randn(5000, n, generator=g) * 0.3 + 1.0), UniformBox(n)], [0.5, 0.5])
    ch = PersistentChains(M, (1, 2, 3), base, seed=2)
    D = Quadratic(k, w)
    for _ in range(300):
        x = ch.step(D, w)
    assert x.shape == (M, 1, 2, 3) and 0.3 < ch.accept < 0.95
    # M·300/RESTART_EVERY restarts from the base: 37 of 2000 chains are younger than 300 steps
    got, want = float(x.square().mean()), _moment(k)
    se = float(x.square().flatten(1).mean(1).std()) / math.sqrt(M)
    assert abs(got - want) < 5 * se + 0.01, (got, want, se)
    assert ch.steps == 300 and ch.next == (300 // RESTART_EVERY) % M


def _full_and_resumed(tmp_path, fashion_root, steps: int, **extra):
    """A tiny image run of `steps` steps with chains, and the same run stopped half way and resumed: their
    G and D must be equal. -> (both checkpoints' chain states, the full run's metrics rows)."""
    import json
    kw = dict(TINY_IMAGES, data="fashion-mnist", data_root=str(fashion_root), steps=steps, mcmc_chains=8, **extra)
    train(Config(out=str(tmp_path / "full"), **kw), progress=False)
    train(Config(out=str(tmp_path / "half"), until=steps // 2, **kw), progress=False)
    train(resume=str(tmp_path / "half"), progress=False)
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("full", "half"))
    for k in ("G", "D"):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name}"
    return a["task"]["chains"], b["task"]["chains"], [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]


def test_a_run_with_chains_resumes_exactly_and_logs_them(tmp_path, fashion_root):
    a, b, rows = _full_and_resumed(tmp_path, fashion_root, 20)
    assert torch.equal(a["u"], b["u"]) and a["steps"] == 20
    assert all(0 <= r["mcmc_accept"] <= 1 and math.isfinite(r["mcmc_energy_gap"]) for r in rows)


def test_the_chains_enter_d_s_gradient_through_lambda_alone(tmp_path, fashion_root):
    """The chains draw from a stream of their own: with λ = 0 a run trains bitwise as one without
    chains, and with λ = 0.5 D differs."""
    kw = dict(TINY_IMAGES, data="fashion-mnist", data_root=str(fashion_root), steps=6, ckpt_every=6)
    train(Config(out=str(tmp_path / "plain"), mcmc_chains=0, **kw), progress=False)
    train(Config(out=str(tmp_path / "zero"), mcmc_chains=4, mcmc_weight=0.0, **kw), progress=False)
    train(Config(out=str(tmp_path / "half"), mcmc_chains=4, mcmc_weight=0.5, **kw), progress=False)
    p, z, h = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("plain", "zero", "half"))
    for k in ("G", "D"):
        for name in p[k]:
            assert torch.equal(p[k][name], z[k][name]), f"{k}.{name}"
    assert any(not torch.equal(p["D"][k], h["D"][k]) for k in p["D"])
    assert z["task"]["chains"]["steps"] == 6 and "chains" not in p["task"]


def test_bad_chain_options_are_refused():
    with pytest.raises(ValueError, match="mcmc_chains=-1"):
        Config(data="fashion-mnist", mcmc_chains=-1)
    with pytest.raises(ValueError, match="mcmc_weight=1.5"):
        Config(data="fashion-mnist", mcmc_weight=1.5)
    with pytest.raises(ValueError, match="mcmc_chains=4.*wgan-gp"):
        Config(data="fashion-mnist", loss="wgan-gp", mcmc_chains=4)
    with pytest.raises(ValueError, match="mcmc_chains=4.*2D"):
        Config(data="ring", mcmc_chains=4)
    with pytest.raises(ValueError, match="mcmc_kernel='slice'.*d_base='gaussian'"):
        Config(data="fashion-mnist", mcmc_kernel="slice", d_base="gaussian")
    with pytest.raises(ValueError, match="mcmc_kernel='hmc'"):
        Config(data="fashion-mnist", mcmc_kernel="hmc")


class LinearTilt(nn.Module):
    """An energy over a base in u = atanh x whose tilt is linear in u: f(x)/w = b·atanh(x)."""

    def __init__(self, b: torch.Tensor, w: float):
        super().__init__()
        self.b, self.w = b, w
        self.dummy = nn.Parameter(torch.zeros(()))

    def tilt(self, x):
        u = torch.atanh(x.flatten(1).double().clamp(-1 + 1e-7, 1 - 1e-7))
        return (self.w * u @ self.b.double()).float() + 0 * self.dummy


def test_slice_chains_sample_p_d_with_its_component_masses():
    """Over p_0 = ½ N((-1, 0), I) + ½ N((1, 0), I) in u, the tilt e^{b·u}, b = (1.5, 0), makes
    P_D = Σ_k m_k N(μ_k + b, I) with m_k ∝ π_k e^{b·μ_k}: component masses 0.047 and 0.953 where p_0 has ½
    each. Started from p_0, the chains must move their labels (Gibbs) and their points (elliptical slice)
    to it: their mean of u_0 (2.405, against p_0's 0) and their share of label 1."""
    n, M, w = 2, 4000, 0.01
    b = torch.tensor([1.5, 0.0], dtype=torch.float64)
    mu = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    base = GaussianMixtureBase(torch.full((2,), 0.5).log(), mu, torch.eye(n, dtype=torch.float64).repeat(2, 1, 1))
    ch = SliceChains(M, (1, 1, 2), base, seed=3)
    D = LinearTilt(b, w)
    for _ in range(60):
        x = ch.step(D, w)
    assert x.shape == (M, 1, 1, 2)
    m1 = math.exp(1.5) / (math.exp(1.5) + math.exp(-1.5))
    u0 = torch.atanh(x.flatten(1)[:, 0].double())
    want = m1 * 2.5 + (1 - m1) * 0.5
    # M·60/RESTART_EVERY = 3 restarts from p_0: negligible
    assert abs(float(u0.mean()) - want) < 5 * float(u0.std()) / math.sqrt(M), (float(u0.mean()), want)
    assert abs(float(ch.k.double().mean()) - m1) < 0.02
    d = ch.diagnostics()
    assert 0.05 < d["mcmc_switches"] < 0.5 and d["mcmc_evaluations"] >= 1 and d["mcmc_top_component"] > 0.9
    assert ch.diagnostics()["mcmc_switches"] == 0          # counted since the last call
    assert ch.steps == 60 and ch.next == 60 // RESTART_EVERY


def test_a_run_with_slice_chains_resumes_exactly_and_logs_them(tmp_path, fashion_root):
    """With a tempered transition every third step (one across the half-way stop)."""
    a, b, rows = _full_and_resumed(tmp_path, fashion_root, 10, mcmc_kernel="slice", mcmc_jump_every=3, mcmc_jump_levels=2)
    assert torch.equal(a["z"], b["z"]) and torch.equal(a["k"], b["k"]) and a["steps"] == 10
    assert a["counts"] == b["counts"]
    assert all(0 <= r["mcmc_switches"] <= 1 and r["mcmc_evaluations"] >= 1 and math.isfinite(r["mcmc_energy_gap"])
               for r in rows)
    assert [r["step"] for r in rows if 0 <= r.get("mcmc_jumps", -1) <= 1] == [5, 10]     # jumps at steps 3, 6 and 9
    mala = PersistentChains(8, (1, 28, 28), UniformBox(784))
    with pytest.raises(ValueError, match="'slice' chains, these MALA"):
        mala.load_state_dict(a)


def test_tempered_jumps_move_slice_chains_between_separated_components():
    """Two components of p_0 15-30 standard deviations apart along u_0, with different full covariances, and the linear
    tilt b·u: P_D = Σ_k m_k N(μ_k + Σ_k b, Σ_k), m_k ∝ π_k exp(b·μ_k + ½ bᵀΣ_k b), here about 1/3 and 2/3 where
    p_0 has 0.7 / 0.3. The Gibbs step never changes a label there, so slice chains alone keep π; with a
    tempered transition every other step (SliceChains.jump, 5 levels), or the affine jump alone every step
    (1 level: a Metropolis test of u = μ_j + L_j L_k⁻¹(z - μ_k)), they must reach m and P_D's mean."""
    n, M, w = 2, 4000, 0.01
    b = torch.tensor([0.5, 0.3], dtype=torch.float64)
    mu = torch.tensor([[-1.5, 0.0], [1.5, 0.3]], dtype=torch.float64)
    L = torch.tensor([[[0.2, 0.0], [0.1, 0.15]], [[0.1, 0.0], [-0.05, 0.15]]], dtype=torch.float64)
    pi = torch.tensor([0.7, 0.3], dtype=torch.float64)
    S = L @ L.transpose(1, 2)
    m = torch.softmax(pi.log() + mu @ b + 0.5 * torch.einsum("i,kij,j->k", b, S, b), 0)
    mean = (m[:, None] * (mu + S @ b)).sum(0)
    D = LinearTilt(b, w)
    base = GaussianMixtureBase(pi.log(), mu, L)
    alone = SliceChains(M, (1, 1, 2), base, seed=3)
    tempered = SliceChains(M, (1, 1, 2), base, seed=3, jump_every=2, jump_levels=5)
    affine = SliceChains(M, (1, 1, 2), base, seed=4, jump_every=1, jump_levels=1)
    for _ in range(20):
        for ch in (alone, tempered, affine):
            ch.step(D, w)
    assert alone.diagnostics()["mcmc_switches"] == 0 and abs(float(alone.k.double().mean()) - 0.3) < 0.03
    se = math.sqrt(float(m[1] * m[0]) / M)
    for ch in (tempered, affine):
        d = ch.diagnostics()
        assert d["mcmc_switches"] == 0 and 0.2 < d["mcmc_jumps"] < 0.95, d
        assert abs(float(ch.k.double().mean()) - float(m[1])) < 4 * se, (float(ch.k.double().mean()), float(m[1]))
        assert ((ch.z.mean(0) - mean).abs() < 4 * ch.z.std(0) / math.sqrt(M)).all(), (ch.z.mean(0), mean)
    # the jump's map carries N(μ_0, Σ_0) to N(μ_1, Σ_1)
    k = torch.zeros(M, dtype=torch.long)
    u = alone._carry(mu[0] + torch.randn(M, n, dtype=torch.float64) @ L[0].T, k, k + 1)
    assert ((u.mean(0) - mu[1]).abs() < 4 * S[1].diagonal().sqrt() / math.sqrt(M)).all()
    assert torch.allclose(torch.cov(u.T), S[1], rtol=0.1, atol=1e-4), (torch.cov(u.T), S[1])
    with pytest.raises(ValueError, match="mcmc_jump_every=5.*'mala'"):
        Config(data="fashion-mnist", mcmc_jump_every=5)
