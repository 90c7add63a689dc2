"""2D synthetic data: the VEEGAN ring and grid Gaussian mixtures, with exact log-densities.

- ring: 8 Gaussians, means (cos 2πk/8, sin 2πk/8), k = 0..7, std 0.01 per dimension.
- grid: 25 Gaussians, means {-4, -2, 0, 2, 4}², std 0.05 per dimension.
Both have equal weights: p(x) = (1/K) Σ_k N(x; μ_k, σ² I).
"""
from __future__ import annotations

import math

import torch


class GaussianMixture:
    """An equal-weight isotropic Gaussian mixture: `sample`, `log_prob`, `means` [K, n], `std`."""

    def __init__(self, name: str, means: torch.Tensor, std: float):
        self.name = name
        self.means = means.to(torch.float32)
        self.std = float(std)
        self.dim = self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        """n points [n, dim]; all randomness from `generator` (its device decides where they are drawn)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        gdev = generator.device if generator is not None else torch.device(device)
        k = torch.randint(len(self.means), (n,), generator=generator, device=gdev)
        eps = torch.randn(n, self.dim, generator=generator, device=gdev)
        return (self.means.to(gdev)[k] + self.std * eps).to(device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) for x [..., dim] -> [...], computed in float64."""
        mu = self.means.to(device=x.device, dtype=torch.float64)
        x64 = x.to(torch.float64)
        sq = ((x64.unsqueeze(-2) - mu) ** 2).sum(-1)                 # [..., K]
        log_n = -0.5 * sq / self.std ** 2 - self.dim * math.log(self.std) - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(log_n, -1) - math.log(len(mu))

    def extent(self, margin: float = 0.5) -> tuple[float, float]:
        """A square box [lo, hi]² holding every mode with `margin` to spare (for plots and quadrature)."""
        r = float(self.means.abs().max()) + margin
        return -r, r

    def __repr__(self):
        return f"GaussianMixture({self.name!r}, K={len(self.means)}, std={self.std})"


def ring(radius: float = 1.0, modes: int = 8, std: float = 0.01) -> GaussianMixture:
    # k = 0..modes-1 (not linspace(0, 2π, modes), which repeats the first mode)
    ang = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    return GaussianMixture("ring", radius * torch.stack([ang.cos(), ang.sin()], 1), std)


def grid(spacing: float = 2.0, side: int = 5, std: float = 0.05) -> GaussianMixture:
    c = spacing * (torch.arange(side, dtype=torch.float64) - (side - 1) / 2)   # {-4, -2, 0, 2, 4}
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    return GaussianMixture("grid", torch.stack([gx.flatten(), gy.flatten()], 1), std)


DATASETS = {"ring": ring, "grid": grid}


def get_dataset(name: str) -> GaussianMixture:
    if name not in DATASETS:
        raise ValueError(f"unknown data {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]()
