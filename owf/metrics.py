"""Mode coverage and sample quality on Gaussian mixtures, as defined by VEEGAN (Srivastava et al., 2017).

- A sample is high quality (HQ) when its L2 distance to the nearest mean is <= 3·std.
- A mode counts when it is the nearest mean of at least one HQ sample.
The paper (Sec. 3.1) evaluates 2,500 generated points.
"""
from __future__ import annotations

import torch

EVAL_POINTS = 2500


def nearest_mode(samples: torch.Tensor, means: torch.Tensor):
    """(index of the nearest mean [N], distance to it [N])."""
    dist = torch.cdist(samples.double(), means.to(samples.device).double())   # [N, K]
    d, k = dist.min(1)
    return k, d


def mode_coverage(samples: torch.Tensor, means: torch.Tensor, std: float):
    """(modes, hq): the number of modes hit by an HQ sample, and the fraction of HQ samples."""
    if samples.dim() != 2 or samples.shape[1] != means.shape[1]:
        raise ValueError(f"samples must be [N, {means.shape[1]}], got {tuple(samples.shape)}")
    if samples.shape[0] == 0:
        raise ValueError("mode_coverage needs at least one sample")
    k, d = nearest_mode(samples, means)
    good = d <= 3 * std
    return int(torch.unique(k[good]).numel()), float(good.double().mean())


def mode_histogram(samples: torch.Tensor, means: torch.Tensor, std: float) -> list[int]:
    """HQ samples per mode [K] (how balanced the modes are)."""
    k, d = nearest_mode(samples, means)
    return torch.bincount(k[d <= 3 * std], minlength=means.shape[0]).tolist()
