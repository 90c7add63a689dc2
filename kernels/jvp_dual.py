"""The values of owf_kernels.jvp's stacked runner: `Dual` (a primal and its T tangents, stacked or as a
pair) and `Ctx` (what the rules know of a call), with the small helpers every rule file shares.

Shapes: a primal x [*S] (rank r); its tangents ẋ [T, *S]; stacked H = [x; ẋ] [1+T, *S]. A dim d of
the primal is dim _nd(d, r) of H or ẋ (non-negative dims shift by one, negative ones do not).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .jvp_layers import unstack


class Dual:
    """A primal and its T tangents: stacked H [1+T, *S], or the pair p [*S], t [T, *S]."""
    __slots__ = ("H", "p", "t")

    def __init__(self, H=None, p=None, t=None):
        self.H, self.p, self.t = H, p, t

    def S(self) -> torch.Tensor:
        """The stacked form (one cat when the Dual is a pair)."""
        if self.H is None:
            # on the merged batch, so a channels_last pair stacks channels_last (see jvp_layers.unstack)
            p, t = self.p, self.t
            if p.dim() >= 1:
                self.H = torch.cat([p, t.flatten(0, 1)]).view(t.shape[0] + 1, *p.shape)
            else:
                self.H = torch.cat([p.unsqueeze(0), t])
        return self.H

    def P(self):
        """The pair form (views of one split when the Dual is stacked)."""
        if self.p is None:
            H = self.H
            if H.dim() >= 2:
                self.p, self.t = unstack(H)
            else:
                self.p, self.t = H[0], H[1:]
        return self.p, self.t

    @property
    def primal(self):
        return self.P()[0] if self.p is None else self.p

    @property
    def shape(self):
        return self.p.shape if self.p is not None else self.H.shape[1:]

    def dim(self):
        return len(self.shape)


class Ctx:
    """What the rules need to know of a call: T, the BatchNorm mode, whether to stack (tangent_grad),
    the context the tangent runs in (no_grad without tangent_grad), the layout choice, the
    lifted inputs (momentum=None BatchNorms read num_batches_tracked there) and the flash flag."""

    def __init__(self, T, batch_norm, tangent_grad, channels_last=False, lifted=(), cma=(), flash=None):
        self.T, self.batch_norm, self.stack = T, batch_norm, tangent_grad
        self.tan = nullcontext() if tangent_grad else torch.no_grad()
        self.channels_last, self.lifted, self.cma = channels_last, lifted, cma
        self.flash = flash                  # the flash SDPA backend on/off; None: read it (jvp_compiled fixes it)


def is_dual(a) -> bool:
    return type(a) is Dual


def primal(a):
    return a.primal if type(a) is Dual else a


def _pad(x: torch.Tensor, rank: int, R: int) -> torch.Tensor:
    """A stacked/tangent tensor [L, *S] (len(S) = rank) viewed as [L, 1, ..., 1, *S] of R + 1 dims:
    broadcasting against an operand of R dims then aligns S, not L, from the right."""
    return x if rank >= R else x.view(x.shape[0], *((1,) * (R - rank)), *x.shape[1:])


def _nd(d: int, rank: int) -> int:
    """A dim of the primal (negative allowed) -> the same dim of its stacked / tangent tensor."""
    return (d % max(rank, 1)) + 1 if d >= 0 or rank > 0 else d


def _full(t: torch.Tensor, shape) -> torch.Tensor:
    """A tangent [T, *s] broadcast (a view) to [T, *shape]."""
    return t if tuple(t.shape[1:]) == tuple(shape) else t.expand(t.shape[0], *shape)


def _zeros(ctx, x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(()).expand(ctx.T, *x.shape)
