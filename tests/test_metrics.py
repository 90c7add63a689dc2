"""VEEGAN's mode / high-quality-sample metric on constructed cases."""
import pytest
import torch

from owf.data import grid, ring
from owf.metrics import mode_coverage, mode_histogram


def test_all_high_quality():
    d = ring()
    x = d.sample(2500, torch.Generator().manual_seed(0))
    modes, hq = mode_coverage(x, d.means, d.std)
    assert modes == 8 and hq > 0.97          # 1 - exp(-9/2) = 98.9% of a 2D Gaussian is within 3σ


def test_none_high_quality():
    d = grid()
    x = d.means[:10] + 1.0                  # 1.0 = 20σ from every mean
    assert mode_coverage(x, d.means, d.std) == (0, 0.0)


def test_one_mode_missing():
    d = ring()
    x = d.sample(4000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, d.means).argmin(1)
    modes, hq = mode_coverage(x[nearest != 3], d.means, d.std)
    assert modes == 7 and hq > 0.97


def test_boundary_is_three_sigma():
    d = ring()
    m = d.means[0]
    inside, outside = m + torch.tensor([2.99 * d.std, 0.0]), m + torch.tensor([3.01 * d.std, 0.0])
    assert mode_coverage(torch.stack([inside, outside]), d.means, d.std) == (1, 0.5)
    assert mode_histogram(torch.stack([inside, outside]), d.means, d.std) == [1] + [0] * 7


def test_bad_shape():
    with pytest.raises(ValueError, match=r"samples must be \[N, 2\]"):
        mode_coverage(torch.randn(5, 3), ring().means, 0.01)
