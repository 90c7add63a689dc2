"""Every preimage of a generator sample: the density of a g_n that is not injective (small n).

Eq. 10 is the change of variables of an injective g_n: log q(y) = log N(u) - log|det J(u)| counts
the one preimage u that the sample came from. Where g_n covers y more than once, the density of its
samples is the sum over all preimages (the area formula):

    q(y) = Σ_{u': g_n(u') = y} N(u') / |det J(u')|                                           (*)

and an importance estimate of ζ with Eq. 10's q counts ∫ exp(D/w) over such a region once per
sheet. The signed weights of owf.density cancel the sheets of a fold in pairs, but not sheets of
one orientation: trained ring generators cover two of the 8 modes 2.1-2.2 times, and their log ζ̂
came out 0.11-0.15 high (README, "Normalised density").

The other preimages, found for small n (each Newton step needs all n columns of J):
1. Candidates. R reference latents u_r ~ N(0, I) and their images g_n(u_r); for each sample y,
   the k references whose images lie nearest to y. A sheet over y that carries a fair share of the
   generator's mass near y has references among them (one with a share f is missed with
   probability about (1 - f)^k).
2. Screen. One Newton step from each candidate, x1 = u_r - J(u_r)⁻¹ (g_n(u_r) - y), lands within
   O(|g_n(u_r) - y|²) of the root on the candidate's own sheet. A candidate whose x1 is within
   `screen` of u leads back to u, and one whose x1 shares a cell of side `screen` with an earlier
   candidate's leads to the same root: both are dropped (ring, seed 0: 16,371 starts remain of
   10^4 samples x 32 candidates).
3. Newton from each remaining x1, in float64: x ← x - J(x)⁻¹ (g_n(x) - y), the step capped at
   length 1, until |g_n(x) - y| ≤ tol; starts that have not converged after `iters` steps are dropped.
4. Distinct roots, the sample's own u first, each further root counted unless it lies within
   `merge`·(1 + |x|) of an earlier one; summed by (*) in log space.

What is found is a lower bound on q(y): a missed sheet leaves q(y) low by its share f, with
probability about (1 - f)^k, so by at most 1/(k e) per sheet on average (log ζ̂ high, as with Eq.
10, by far less; tests/test_preimages.py: the cubic fold, 0.0095 short against Eq. 10's 0.63).
`roots` reports how many preimages each sample has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model import log_normal, slogdet_cols


@dataclass
class Preimages:
    y: torch.Tensor            # [S, n] float64: g_n(u)
    log_q: torch.Tensor        # [S] float64: log q(y) by (*), over every preimage found
    log_q_eq10: torch.Tensor   # [S] float64: log N(u) - log|det J(u)|, the sample's own preimage only
    roots: torch.Tensor        # [S] int64: preimages found (1: none besides u)


def _jacobian(jac_fn, u, chunk):
    """jac_fn over chunks of u [P, n] -> y [P, n], J [P, n, n] (J[p][:, t] = column t)."""
    ys, Js = [], []
    for c in u.split(chunk):
        y, cols = jac_fn(c)                       # cols [T = n, B, n]
        ys.append(y)
        Js.append(cols.permute(1, 2, 0))
    return torch.cat(ys), torch.cat(Js)


@torch.no_grad()
def all_preimages(jac_fn, u: torch.Tensor, refs: int = 20_000, k: int = 32, screen: float = 0.05,
                  tol: float = 1e-9, merge: float = 1e-3, iters: int = 50, generator=None,
                  chunk: int = 32_768) -> Preimages:
    """log q(y) by (*) at y = g_n(u), for latents u [S, n] drawn from N(0, I).

    jac_fn(u [B, n]) -> (g_n(u) [B, n], the columns of J [n, B, n]), evaluated in float64 (pass a
    float64 copy of the network, e.g. OneWayFlow.jacobian_columns of G.double()); generator: the
    stream of the R reference latents."""
    if u.dim() != 2:
        raise ValueError(f"u must be [S, n], got shape {tuple(u.shape)}")
    if refs < 1 or k < 1:
        raise ValueError(f"refs={refs} and k={k} must be positive")
    S, n = u.shape
    u = u.double()
    y, J = _jacobian(jac_fn, u, chunk)
    _, ld = slogdet_cols(J.permute(2, 0, 1))
    log_q_eq10 = log_normal(u) - ld

    # 1. candidates: the k references nearest to each y  [S, k, n]
    ur = torch.randn(refs, n, generator=generator, dtype=torch.float64,
                     device=generator.device if generator is not None else u.device).to(u.device)
    yr, Jr = _jacobian(jac_fn, ur, chunk)
    k = min(k, refs)
    yr32 = yr.float()                                         # ranking only: fp32 halves the search
    near = torch.cat([torch.cdist(c.float(), yr32).topk(k, largest=False).indices for c in y.split(max(1, 2 ** 24 // refs))])

    # 2. screen: one Newton step from each candidate, x1 = u_r - J(u_r)⁻¹ (g_n(u_r) - y), lands within
    #    O(|g_n(u_r) - y|²) of the root on the candidate's sheet. Drop candidates whose x1 is within
    #    `screen` of u (they lead back to it) or in the same cell of side `screen` as an earlier
    #    candidate of the sample (they lead to the same root)
    x1 = ur[near] - torch.linalg.solve_ex(Jr[near], yr[near] - y.unsqueeze(1))[0]
    keep = torch.isfinite(x1).all(-1) & ((x1 - u.unsqueeze(1)).norm(dim=-1) > screen)
    si, ci = keep.nonzero(as_tuple=True)                      # sample and candidate of each start
    cell = torch.cat([si.unsqueeze(1).double(), torch.floor(x1[si, ci] / screen)], 1)
    first = torch.unique(cell, dim=0, return_inverse=True)[1]
    lead = torch.full((int(first.max()) + 1 if len(first) else 0,), len(first), dtype=torch.long, device=u.device)
    lead = lead.scatter_reduce(0, first, torch.arange(len(first), device=u.device), "amin")
    si, ci = si[lead], ci[lead]

    # 3. Newton, x ← x - J(x)⁻¹ (g_n(x) - y) on the starts not yet converged, steps capped at length 1
    x, target = x1[si, ci].clone(), y[si]
    active = torch.ones(len(x), dtype=torch.bool, device=u.device)
    for _ in range(iters):
        idx = active.nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            break
        yx, Jx = _jacobian(jac_fn, x[idx], chunk)
        r = yx - target[idx]
        done = r.norm(dim=-1) <= tol
        active[idx[done]] = False
        idx, r, Jx = idx[~done], r[~done], Jx[~done]
        step = torch.linalg.solve_ex(Jx, r)[0]           # a singular J gives inf/nan: never converges
        step = step * torch.clamp(1.0 / step.norm(dim=-1, keepdim=True), max=1.0)
        x[idx] = x[idx] - step
    yx, Jx = _jacobian(jac_fn, x, chunk) if len(x) else (x, x.new_zeros(0, n, n))
    ok = (yx - target).norm(dim=-1) <= tol
    si, x, Jx = si[ok], x[ok], Jx[ok]

    # 4. distinct roots: u first, then each converged start unless within `merge` of an earlier root
    #    of its sample (starts padded per sample to [samples with starts, C, n], compared pairwise)
    roots = torch.ones(S, dtype=torch.long, device=u.device)
    log_q = log_q_eq10.clone()
    if len(x):
        _, ldx = slogdet_cols(Jx.permute(2, 0, 1))
        term = log_normal(x) - ldx
        order = torch.argsort(si, stable=True)
        si, x, term = si[order], x[order], term[order]
        owners, counts = torch.unique_consecutive(si, return_counts=True)
        slot = torch.arange(len(si), device=u.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        row = torch.repeat_interleave(torch.arange(len(owners), device=u.device), counts)
        C = int(counts.max()) + 1
        pts = torch.full((len(owners), C, n), math.inf, dtype=torch.float64, device=u.device)
        terms = torch.full((len(owners), C), -math.inf, dtype=torch.float64, device=u.device)
        pts[:, 0], terms[:, 0] = u[owners], log_q_eq10[owners]
        pts[row, slot + 1], terms[row, slot + 1] = x, term
        dist = torch.cdist(pts.nan_to_num(posinf=1e300), pts.nan_to_num(posinf=1e300))    # [O, C, C]
        close = dist <= merge * (1 + pts.nan_to_num(posinf=0.0).norm(dim=-1)).unsqueeze(-1)
        earlier = torch.ones(C, C, dtype=torch.bool, device=u.device).tril(-1)         # [j, j'] for j' < j
        dup = (close & earlier).any(-1)
        terms = terms.masked_fill(dup, -math.inf)
        log_q[owners] = torch.logsumexp(terms, 1)
        roots[owners] = torch.isfinite(terms).sum(1)
    return Preimages(y, log_q, log_q_eq10, roots)
