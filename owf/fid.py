"""The standard (Inception) FID, from a weights file the user gives: none can be downloaded here.

torchmetrics' FrechetInceptionDistance with `feature_extractor_weights_path` (its Inception-v3 is
torch-fidelity's, so the file is torch-fidelity's pt_inception-2015-12-05 weights). Images go in
as uint8 RGB; one-channel images are repeated to three. `network` replaces the Inception-v3 by any
module whose state dict the file holds (the tests use a small stand-in); it must output [N, d].
Without weights, owf reports its classifier FID (owf.classifier) instead, under that name.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .images import to_uint8, to_unit


def _rgb(u8: torch.Tensor) -> torch.Tensor:
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


class _Loaded(torch.nn.Module):
    """A user network with its weights, as torchmetrics' custom FID feature module (uint8 in)."""

    def __init__(self, net: torch.nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net.eval(), num_features

    def forward(self, x):
        return self.net(to_unit(x))


def inception_fid(fake: torch.Tensor, real_u8: torch.Tensor, weights: str, network=None, batch: int = 200) -> float:
    """FID between generated images `fake` [N, C, H, W] in [-1, 1] and real uint8 images, with the
    Inception-v3 weights in `weights` (or `network`, a zero-argument constructor of a module whose
    state dict the file holds)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--fid-weights {path}: no such file (the Inception-v3 weights cannot be "
                                "downloaded here; give torch-fidelity's pt_inception-2015-12-05 file)")
    try:
        if network is None:
            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
        else:
            net = network()
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            with torch.no_grad():
                d = net(torch.zeros(1, 3, *real_u8.shape[2:])).shape[-1]
            metric = FrechetInceptionDistance(feature=_Loaded(net, d))
    except ModuleNotFoundError as e:
        raise ValueError(f"--fid-weights needs torch-fidelity (pip install torch-fidelity): {e}") from None
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"--fid-weights {path} is not a compatible weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None
    with torch.no_grad():
        for i in range(0, len(real_u8), batch):
            metric.update(_rgb(real_u8[i:i + batch]), real=True)
        for i in range(0, len(fake), batch):
            metric.update(_rgb(to_uint8(fake[i:i + batch].cpu())), real=False)
        return float(metric.compute())
