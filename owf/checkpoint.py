"""Checkpoints: written atomically, read back with an error that names the file.

A checkpoint is a dict saved by torch.save with at least `config` (Config.to_dict()), `step`, and the
state dicts `G`, `D`, `opt_g`, `opt_d`; `rng` (the training stream), `task` (the data stream's
position, owf.tasks), `event_shape`, `seconds`, `world_size`; on many processes also every rank's
`rngs`, `tasks` and `rank_buffers` (BatchNorm statistics; G holds their average); and, once
estimated, `log_zeta` (owf.density.ZetaEstimate.to_dict()).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

REQUIRED = ("config", "step", "G", "D")


class CheckpointError(ValueError):
    """A file that is not a readable owf checkpoint."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file's path."""
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def share_equal_tensors(state: dict, like: dict) -> dict:
    """`state` (a state dict) with each tensor that equals one of `like`'s (same shape, dtype and device, the
    same values) replaced by that tensor itself. torch.save writes a storage once however many entries hold
    it, and torch.load gives them back sharing it, each module's load_state_dict copying from it. With
    --g-base, G's latent and D's base hold the same fitted mixture: its Cholesky factors [K, n, n] in float64
    (49 MB at K = 10, n = 784) are then saved once, not twice."""
    out = dict(state)
    for k, t in state.items():
        for u in like.values():
            if (torch.is_tensor(t) and torch.is_tensor(u) and t.shape == u.shape and t.dtype == u.dtype
                    and t.device == u.device and t.numel() > 1 and torch.equal(t, u)):
                out[k] = u
                break
    return out


def save_atomic(state: dict, path: str | os.PathLike):
    """torch.save to a temporary file beside `path`, then rename it over `path`: a crash leaves
    either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The state dict of a run folder's checkpoint.pt (or of a checkpoint file). FileNotFoundError
    when it is missing; CheckpointError (a ValueError) naming the file when it cannot be read or
    is not an owf checkpoint."""
    ckpt = checkpoint_path(path)
    if not ckpt.is_file():
        run = ckpt.parent if ckpt.name == "checkpoint.pt" else ckpt      # the run folder the user means
        raise FileNotFoundError(f"no checkpoint at {ckpt}: train first (python -m owf.train --out {run})")
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=False)
    except Exception as e:       # truncated files, other formats: torch raises several kinds
        raise CheckpointError(f"{ckpt} is not a readable owf checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(state, dict) or not all(k in state for k in REQUIRED):
        held = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{ckpt} is not an owf checkpoint: it needs the keys {list(REQUIRED)}, it holds {held}")
    return state
