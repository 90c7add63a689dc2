"""The 2D mixtures: their parameters, their samples and their exact log-densities."""
import math

import pytest
import torch

from owf.data import get_dataset, grid, ring


def test_ring_parameters():
    d = ring()
    assert d.means.shape == (8, 2) and d.std == 0.01
    k = torch.arange(8, dtype=torch.float64)
    expected = torch.stack([torch.cos(2 * math.pi * k / 8), torch.sin(2 * math.pi * k / 8)], 1)
    torch.testing.assert_close(d.means.double(), expected, atol=1e-6, rtol=0)
    assert torch.cdist(d.means, d.means).add(torch.eye(8) * 9).min() > 0.7   # 8 distinct modes


def test_grid_parameters():
    d = grid()
    assert d.means.shape == (25, 2) and d.std == 0.05
    assert sorted(set(d.means[:, 0].tolist())) == [-4, -2, 0, 2, 4]
    assert len({tuple(m) for m in d.means.tolist()}) == 25


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_samples_match_parameters(name):
    d = get_dataset(name)
    x = d.sample(50_000, torch.Generator().manual_seed(1))
    dist, k = torch.cdist(x, d.means).min(1)
    counts = torch.bincount(k, minlength=len(d.means)).double()
    assert (counts / len(x) - 1 / len(d.means)).abs().max() < 0.01
    resid = x - d.means[k]
    assert abs(resid.std().item() - d.std) / d.std < 0.02


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_log_prob_integrates_to_one(name):
    d = get_dataset(name)
    # integrate around each mode (±8σ), where all the mass is: modes are ≥ 70σ apart
    h = d.std / 20
    c = torch.arange(-8 * d.std, 8 * d.std, h, dtype=torch.float64) + h / 2
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    local = torch.stack([gx.flatten(), gy.flatten()], 1)
    total = sum(d.log_prob(local + m.double()).exp().sum().item() * h * h for m in d.means)
    assert abs(total - 1) < 1e-3


def test_log_prob_matches_a_direct_mixture():
    d = ring()
    x = torch.randn(10, 2)
    comp = torch.distributions.MultivariateNormal(d.means.double(), torch.eye(2, dtype=torch.float64) * d.std ** 2)
    ref = torch.logsumexp(comp.log_prob(x.double().unsqueeze(1)), 1) - math.log(8)
    torch.testing.assert_close(d.log_prob(x), ref)


def test_unknown_data_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown data 'moons'; choose one of \['grid', 'ring'\]"):
        get_dataset("moons")
