"""Persistent MALA chains on P_D: negative samples that find the energy's mass where neither the
data nor the generator go (Config.mcmc_chains).

Why. Eq. 16's log ζ̂ sees P_D only through G's samples, weighted by exp(D/w) / q. On images its
ESS is one sample of 64, and D is never pushed down where G does not go. There exp(D/w) grows:
on the 12k-step run of the defaults of 12-03, AIS from the defensive base ends in images that hold a frame and a
noise texture, where D's network part is f/w ≈ 2,200 nats against ≈ 9 on test images, and the
AIS log ζ̂ climbs past 1,100 nats (docs/likelihood.md). Those are the regions this module visits.

The chains. M persistent chains (Tieleman 2008) in u ∈ R^n, x = tanh(u) on the box [-1, 1]^n (or
the base's own coordinate: the normal scores of --d-base copula), the coordinate of owf.ais: the target is log f(u) = D(x(u))/w + log|dx/du| (P_D at β = 1), and each
training step moves every chain by one MALA transition (owf.ais.Path.hmc, one leapfrog step with the
base's per-coordinate scale as the mass matrix, a Metropolis test). The step size adapts to an
acceptance of 0.65 (log ε += acceptance - 0.65); this is training, not estimation, so no fixed
kernel is needed. Every RESTART_EVERY steps one chain, round robin, restarts from the base
(owf.baselines: ½ the atanh Gaussian of the training images, ½ the uniform box, AIS's defensive
base), so a chain lives M·RESTART_EVERY steps (1,024 with 64 chains: AIS from that base needs
about 1,000 transitions to reach the mass it finds) and new ones keep arriving from everywhere.

Their use (owf.train.train_step): log ζ's gradient is E_{P_D}[∇D]/w. Eq. 16
estimates it by self-normalised importance sampling over G's samples; the chains give a second
estimate, mean_c ∇D(x_c)/w. D's loss uses their mixture, (1 - λ) Eq. 16's + λ the chains', with
λ = Config.mcmc_weight, plus energy_penalty, which keeps the network's part of D/w near 0 on
the data and the chains, so that D cannot sink without bound under chains that have stopped moving.
"""
from __future__ import annotations

import math

import torch

from .ais import TARGET_ACCEPT, Box, Path, box_log_f, coordinate_of

RESTART_EVERY = 16


def energy_penalty(D, w: float, parts, alpha: float) -> torch.Tensor:
    """alpha · Σ_parts mean((f/w)²), f = D(x) - w log p_0(x) (D(x) itself without a base measure), the
    network's part (Du & Mordatch 2019; Config.energy_l2): without it the first run (λ = 0.5) ran away
    at step 3,600: the chains' step size fell to 6e-4 as D sharpened, they froze, and D sank under them
    relative to the data without bound (mean D/w on the chains minus on the data: -400 at step 3,000,
    -10^6 by 6,000; docs/likelihood.md). parts: pairs (D(x) [B], x [B, ...])."""
    out = 0.0
    for d, x in parts:
        f = d - D.base_w * D.log_base(x).to(d.dtype) if getattr(D, "base_w", 0) else d
        out = out + (f / w).square().mean()
    return alpha * out


class PersistentChains:
    """M persistent MALA chains on P_D ∝ exp(D/w) on [-1, 1]^n (see the module docstring).
    base: a normalised density of u (owf.baselines) with sample, log_prob and scale [n], u = atanh x or
    the base's own coordinate (owf.ais.coordinate_of)."""

    def __init__(self, num: int, event_shape, base, seed: int = 0, eps: float = 0.05):
        if num < 1:
            raise ValueError(f"mcmc chains={num} must be >= 1")
        self.event_shape, self.base = tuple(event_shape), base
        self.gen = torch.Generator().manual_seed(seed)      # the chains' own stream: training's is untouched
        self.u = base.sample(num, self.gen)                               # [M, n], on D's device once stepped
        self.eps = eps
        self.accept = math.nan                                            # the last transition's mean acceptance
        self.next = 0                                                     # the chain restarted next
        self.steps = 0
        self.energy_gap = math.nan          # set by owf.train (a 0-d tensor): mean D/w on the chains minus on the data

    def step(self, D, w: float) -> torch.Tensor:
        """One MALA transition of every chain under the current D, and every RESTART_EVERY calls one
        chain restarted from the base. -> the chains' states as images x [M, *event_shape] (detached)."""
        device = next(D.parameters()).device
        coordinate = coordinate_of(self.base, Box(-1.0, 1.0))
        path = Path(box_log_f(lambda x: D(x) / w, coordinate, self.event_shape), self.base, 1, device)
        self.u = self.u.to(device)
        st, acc = path.hmc(path.evaluate(self.u), 1.0, self.eps, self.gen)
        self.accept = float(acc.double().mean())
        self.eps = float(min(max(self.eps * math.exp(self.accept - TARGET_ACCEPT), 1e-6), 10.0))
        self.u, self.steps = st.u, self.steps + 1
        if self.steps % RESTART_EVERY == 0:
            self.u = self.u.clone()
            self.u[self.next] = self.base.sample(1, self.gen)[0].to(device)
            self.next = (self.next + 1) % len(self.u)
        return coordinate.to_x(self.u).view(len(self.u), *self.event_shape).detach()

    def state_dict(self) -> dict:
        return {"u": self.u.cpu(), "eps": self.eps, "next": self.next, "steps": self.steps, "rng": self.gen.get_state(),
                "coordinate": self._coordinate_name()}

    def _coordinate_name(self) -> str:
        return type(coordinate_of(self.base, Box(-1.0, 1.0))).__name__

    def load_state_dict(self, state: dict):
        saved = state.get("coordinate", "Box")     # checkpoints before the copula's own coordinate: atanh
        if saved != self._coordinate_name():
            raise ValueError(f"the checkpoint's chains move in {saved}, this base's in {self._coordinate_name()}")
        self.u, self.eps, self.next, self.steps = state["u"], state["eps"], state["next"], state["steps"]
        self.gen.set_state(state["rng"])
