"""log_zeta: the importance-weighted estimate of the log partition function (Eq. 2/16, log space).

    l_i      = d_i / w - log_q_i                          d, log_q: [S]
    log ζ̂    = log( (1/S) Σ_i exp(l_i) ) = m + log Σ_i exp(l_i - m) - log S,    m = max_i l_i

Backward: ∂ log ζ̂ / ∂ l_i = softmax(l)_i = exp(l_i - L), L = m + log Σ exp(l - m) (the saved lse),
so ∂/∂d_i = softmax_i / w and ∂/∂log_q_i = -softmax_i.

Edge cases: a term with l_i = -inf has zero weight; if every term is -inf the result is -inf
(not NaN) and every gradient is 0; S = 0 is a ValueError.

Partials: `log_zeta_partials` reduces any chunk to P = [m, Σ exp(l-m), Σ exp(2(l-m)), count]
(float64). `combine_partials` merges any number of them exactly, so ζ can be estimated over 10^8
samples in chunks, or across processes, and `partials_to_estimate` gives log ζ̂, its delta-method
standard error and the effective sample size from the same four numbers.
"""
from __future__ import annotations

import math

import torch

from .backend import use_triton


def check_inputs(d, log_q, w):
    for name, t in (("d", d), ("log_q", log_q)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if d.dim() != 1 or log_q.shape != d.shape:
        raise ValueError(f"d and log_q must both be [S]; got d {tuple(d.shape)}, log_q {tuple(log_q.shape)}")
    if d.device != log_q.device:
        raise ValueError(f"d is on {d.device} but log_q is on {log_q.device}")
    if d.numel() == 0:
        raise ValueError("log_zeta needs S >= 1 samples, got S = 0")
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
        raise ValueError(f"w must be a positive finite number, got {w!r}")


# ---------------------------------------------------------------------------------------------
# Reference (CPU path and oracle)
# ---------------------------------------------------------------------------------------------
def _log_weights(d, log_q, w):
    # l = d/w - log q, in the wider of the two dtypes and at least float32: one new [S] buffer,
    # the subtraction in place (read 2S, write S; a second temporary of S floats costs page faults
    # at large S)
    dt = torch.promote_types(torch.promote_types(d.dtype, log_q.dtype), torch.float32)
    return (d.to(dt) / w).sub_(log_q.to(dt))


def differentiable_grads(d, log_q, g, w):
    """(∂/∂d, ∂/∂log_q) = (g softmax(l) / w, -g softmax(l)) out of place, for a create_graph=True
    backward (both paths): autograd records these ops, so the gradient is differentiable in turn (a
    penalty on it, double backward). softmax is recomputed from l, not from the saved lse, since
    its normaliser depends on d too; all -inf gives zero weights, as the fast path does."""
    l = _log_weights(d, log_q, w)
    p = torch.softmax(l, 0) * g if torch.isfinite(l).any() else torch.zeros_like(l)
    return (p / w).to(d.dtype), (-p).to(log_q.dtype)


class _LogZetaTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d, log_q, w):
        l = _log_weights(d, log_q, w)
        lse = torch.logsumexp(l, 0)         # all -inf gives -inf; saved for backward, as in softmax
        ctx.save_for_backward(d, log_q, lse)
        ctx.w = w
        return (lse - math.log(l.numel())).to(d.dtype)

    @staticmethod
    def backward(ctx, g):
        d, log_q, lse = ctx.saved_tensors
        if torch.is_grad_enabled():                       # create_graph=True: a differentiable gradient
            return (*differentiable_grads(d, log_q, g, ctx.w), None)
        l = _log_weights(d, log_q, ctx.w)                 # recomputed: forward keeps only lse
        # gl = g softmax(l) = g exp(l - lse), in place in l's buffer (the same values as out of
        # place, without three more [S] temporaries); all -inf -> lse = -inf -> weights 0, not exp(nan)
        gl = l.sub_(lse).exp_().mul_(g) if torch.isfinite(lse) else l.zero_()
        gd = (gl / ctx.w).to(d.dtype)                     # ∂/∂d_i = g softmax_i / w
        return gd, gl.neg_().to(log_q.dtype), None        # ∂/∂log_q_i = -g softmax_i


def log_zeta_torch(d, log_q, w=1.0):
    """The pure-PyTorch reference; same contract as `log_zeta`."""
    check_inputs(d, log_q, w)
    return _LogZetaTorch.apply(d, log_q, float(w))


def log_zeta(d, log_q, w=1.0):
    """log((1/S) Σ_i exp(d_i/w - log_q_i)): Eq. 2/16 in log space, differentiable in d and log_q.

    d: [S] discriminator outputs D(y_i); log_q: [S] log-density of the proposal at y_i; w > 0.
    Returns a 0-dim tensor. Triton on CUDA, the torch reference on CPU (see backend.py).
    """
    if use_triton(d):
        from .log_zeta_triton import log_zeta_triton
        return log_zeta_triton(d, log_q, float(w))
    return log_zeta_torch(d, log_q, w)


# ---------------------------------------------------------------------------------------------
# Partial form: reduce chunks, combine exactly
# ---------------------------------------------------------------------------------------------
def log_zeta_partials_torch(d, log_q, w=1.0) -> torch.Tensor:
    """One chunk -> float64 [m, s1, s2, n]: m = max l, s1 = Σ exp(l-m), s2 = Σ exp(2(l-m)), n = count."""
    check_inputs(d, log_q, w)
    with torch.no_grad():
        l = _log_weights(d, log_q, float(w)).double()
        m = l.max()
        if torch.isneginf(m):
            return torch.tensor([-math.inf, 0.0, 0.0, float(l.numel())], dtype=torch.float64, device=l.device)
        e = torch.exp(l - m)
        return torch.stack([m, e.sum(), (e * e).sum(), torch.tensor(float(l.numel()), dtype=torch.float64,
                                                                     device=l.device)])


def log_zeta_partials(d, log_q, w=1.0) -> torch.Tensor:
    """Partials [m, s1, s2, n] (float64) of one chunk; Triton on CUDA, torch on CPU."""
    if use_triton(d):
        from .log_zeta_triton import log_zeta_partials_triton
        return log_zeta_partials_triton(d, log_q, float(w))
    return log_zeta_partials_torch(d, log_q, w)


def combine_partials(parts) -> torch.Tensor:
    """Merge partials [..., 4] (a list of them, or a stacked tensor) into one [4]:
    M = max m_k, s1 = Σ s1_k e^(m_k - M), s2 = Σ s2_k e^(2(m_k - M)), n = Σ n_k."""
    P = torch.stack(list(parts)) if not isinstance(parts, torch.Tensor) else parts.reshape(-1, 4)
    P = P.double()
    M = P[:, 0].max()
    n = P[:, 3].sum()
    if torch.isneginf(M):
        return torch.stack([M, P.new_zeros(()), P.new_zeros(()), n])
    scale = torch.exp(P[:, 0] - M)                  # -inf chunks scale by 0
    return torch.stack([M, (P[:, 1] * scale).sum(), (P[:, 2] * scale * scale).sum(), n])


def partials_to_estimate(p: torch.Tensor):
    """From [m, s1, s2, n] to (log ζ̂, standard error of log ζ̂, effective sample size).

    log ζ̂ = m + log s1 - log n.
    ESS = s1² / s2 (Kish). By the delta method, Var(log ζ̂) ≈ Var(ζ̂)/ζ̂² = (n s2/s1² - 1)/n,
    i.e. se = sqrt(1/ESS - 1/n).
    """
    m, s1, s2, n = (float(v) for v in p)
    if n <= 0:
        raise ValueError("partials hold no samples (count = 0)")
    if s1 == 0.0:
        return -math.inf, math.nan, 0.0
    ess = s1 * s1 / s2
    se = math.sqrt(max(1.0 / ess - 1.0 / n, 0.0))
    return m + math.log(s1) - math.log(n), se, ess


class LogZetaAccumulator:
    """Streams chunks of (d, log_q) into one exact estimate; `merge` combines accumulators
    (e.g. from several processes: all-gather their `.partials` and `combine_partials`)."""

    def __init__(self, w: float = 1.0):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise ValueError(f"w must be a positive finite number, got {w!r}")
        self.w = float(w)
        self.partials = torch.tensor([-math.inf, 0.0, 0.0, 0.0], dtype=torch.float64)

    def update(self, d, log_q):
        p = log_zeta_partials(d, log_q, self.w).cpu()
        self.partials = combine_partials([self.partials, p])
        return self

    def merge(self, other: "LogZetaAccumulator"):
        if other.w != self.w:
            raise ValueError(f"cannot merge accumulators with w={self.w} and w={other.w}")
        self.partials = combine_partials([self.partials, other.partials])
        return self

    @property
    def count(self) -> int:
        return int(self.partials[3])

    def estimate(self):
        """(log ζ̂, standard error, ESS)."""
        return partials_to_estimate(self.partials)
