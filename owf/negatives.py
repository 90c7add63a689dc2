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

Slice chains (Config.mcmc_kernel "slice", over a Gaussian-mixture base p_0 = Σ_k π_k N(μ_k, Σ_k) in its
own coordinate z). Why: MALA with one diagonal mass matrix for all the base's components (covariance
eigenvalues 2e-3 to 184 over the Fashion-MNIST copula) did not reach, in 4,000 AIS transitions, the region
of component 0 that holds 99% of the defaults' P_D (docs/likelihood.md, "log ζ pinned"). SliceChains move
on the joint of P_D and the base's component label,

    p(k, z) ∝ π_k N(z; μ_k, Σ_k) e^{g(z)},   g = f(x(z))/w (ConvEnergy.tilt),   Σ_k p(k, z) = P_D(z),

by two exact kernels a step: Gibbs for k | z ∝ π_k N(z; μ_k, Σ_k) (the tilt does not depend on k), then
one elliptical slice step (Murray, Adams & MacKay 2010; owf.ais.elliptical_slice_step, slice AIS's transition, at β = 1) for
z | k along the component's own covariance: no step size, no gradient, no rejection. So P_D is left
invariant exactly, component masses included; how often a chain changes component is logged
(mcmc_switches), as the label moves only where the components overlap. Restarts draw (k, z) from p_0.

Jumps between components (Config.mcmc_jump_every). In the Fashion-MNIST copula's 784 dimensions the
components never overlap where the chains are, so the Gibbs step never changes a label, the chains' occupancy
stays π, and their mean ∇f/w is that of P' = Σ_k π_k P_k (P_k ∝ N_k e^{f/w}, normalised), not of P_D, whose
part k has mass π_k ζ_k / ζ (docs/likelihood.md: 90-99% of it in one component). SliceChains.jump makes the
move the Gibbs step cannot: a tempered transition (Neal 1996) down from β = 1 to 0 in component k, the affine
map of N_k onto N_j at β = 0, and up to β = 1 in j, accepted by the ratio of the two paths' AIS weights.
"""
from __future__ import annotations

import math

import torch

from .ais import TARGET_ACCEPT, Box, Path, box_log_f, coordinate_of, elliptical_slice_step, sigmoid_schedule
from .baselines import component_rows

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
        return {"kernel": "mala", "u": self.u.cpu(), "eps": self.eps, "next": self.next, "steps": self.steps, "rng": self.gen.get_state(),
                "coordinate": self._coordinate_name()}

    def _coordinate_name(self) -> str:
        return type(coordinate_of(self.base, Box(-1.0, 1.0))).__name__

    def diagnostics(self) -> dict:
        """What metrics.jsonl logs of the chains: the last transition's mean acceptance."""
        return {"mcmc_accept": self.accept}

    def load_state_dict(self, state: dict):
        if state.get("kernel", "mala") != "mala":
            raise ValueError(f"the checkpoint's chains are {state['kernel']!r} chains, these MALA (--mcmc-kernel mala)")
        saved = state.get("coordinate", "Box")     # checkpoints before the copula's own coordinate: atanh
        if saved != self._coordinate_name():
            raise ValueError(f"the checkpoint's chains move in {saved}, this base's in {self._coordinate_name()}")
        self.u = state["u"].clone()            # a copy, as SliceChains keeps: the caller's state stays as it was
        self.eps, self.next, self.steps = state["eps"], state["next"], state["steps"]
        self.gen.set_state(state["rng"])


class SliceChains:
    """M persistent chains on P_D over a Gaussian-mixture base (owf.baselines.GaussianMixtureBase: log_pi,
    mu, L, and a coordinate such as the copula's normal scores), each a label k and a point z, moved by a
    Gibbs step for k and an elliptical slice step for z (module docstring). The same interface as
    PersistentChains: step(D, w) -> x, state_dict, load_state_dict, diagnostics."""

    def __init__(self, num: int, event_shape, base, seed: int = 0, jump_every: int = 0, jump_levels: int = 400):
        if num < 1:
            raise ValueError(f"mcmc chains={num} must be >= 1")
        if not all(hasattr(base, a) for a in ("log_pi", "mu", "L")):
            raise ValueError(f"slice chains need a Gaussian-mixture base (log_pi, mu, L), got {type(base).__name__}")
        self.event_shape, self.base = tuple(event_shape), base
        self.jump_every, self.jump_levels = jump_every, jump_levels     # a tempered transition every jump_every steps
        self.coordinate = coordinate_of(base, Box(-1.0, 1.0))
        self.gen = torch.Generator().manual_seed(seed)      # the chains' own stream: training's is untouched
        self.k, self.z = self._draw(num)                    # [M], [M, n] float64
        self.next, self.steps = 0, 0
        self.switches = self.moves = 0                      # label changes and Gibbs steps since the last log
        self.evaluations = self.transitions = 0             # energy evaluations and slice steps since the last log
        self.jumps = self.jumps_tried = 0                   # tempered transitions accepted and tried (jump)
        self.energy_gap = math.nan

    def _draw(self, num: int):
        """(k [num], z [num, n]) from p_0: k ~ Cat(π), z = μ_k + L_k ε."""
        k = torch.multinomial(self.base.log_pi.double().exp(), num, replacement=True, generator=self.gen)
        return k, self._mu(k) + self._prior(k)

    def _mu(self, k):
        return self.base.mu.double()[k.cpu()]

    def _prior(self, k) -> torch.Tensor:
        """ν ~ N(0, Σ_k) per chain [M, n] (float64, CPU): one matrix product per component present."""
        eps = torch.randn(len(k), self.base.n, generator=self.gen, dtype=torch.float64)
        return component_rows(k.cpu(), eps, self.base.L.double())

    @torch.no_grad()
    def step(self, D, w: float) -> torch.Tensor:
        """Gibbs for every chain's label, then one elliptical slice step of every z under the current D;
        every RESTART_EVERY calls one chain restarted from p_0. -> images x [M, *event_shape] (detached)."""
        device = next(D.parameters()).device
        z, g = self.z, self._tilt(D, w)
        # Gibbs: k | z ∝ π_k N(z; μ_k, Σ_k), by the Gumbel-max trick
        logits = self.base._log_joint(z)                                           # [M, K] float64
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=self.gen, dtype=torch.float64)))
        k = (logits + gumbel).argmax(1)
        self.switches, self.moves = self.switches + int((k != self.k).sum()), self.moves + len(k)
        self.k = k

        # elliptical slice (owf.ais.elliptical_slice_step) along component k's covariance, at β = 1
        z, _, used = elliptical_slice_step(z, g(z), self._mu(k), self._prior(k), g, 1.0, self._unif)
        self.evaluations += used
        self.transitions += len(z)
        self.z, self.steps = z, self.steps + 1
        if self.steps % RESTART_EVERY == 0:
            (kn,), (zn,) = self._draw(1)
            self.k[self.next], self.z[self.next] = kn, zn
            self.next = (self.next + 1) % len(self.z)
        if self.jump_every and self.steps % self.jump_every == 0:
            self.jump(D, w, self.jump_levels)
        return self.coordinate.to_x(self.z).float().view(len(self.z), *self.event_shape).to(device)

    @torch.no_grad()
    def jump(self, D, w: float, levels: int) -> torch.Tensor:
        """One tempered transition (Neal 1996) of every chain from its component k to another, j ~ U({0..C-1} \\ {k}),
        which the Gibbs step cannot make where the components do not overlap (in the Fashion-MNIST copula's 784
        dimensions it never does). With g = f/w and γ^k_β(z) = π_k N(z; μ_k, Σ_k) e^{β g(z)}, b = the sigmoid
        schedule of `levels` (b_0 = 0 < ... < b_T = 1, T = levels):

            down in k:  for t = T-1 ... 1: log r += (b_t - b_{t+1}) g(s),  s <- elliptical slice step at b_t;  log r -= b_1 g(s)
            jump:       u = μ_j + L_j L_k^{-1} (s - μ_k),                   log r += log π_j - log π_k
            up in j:    for t = 1 ... T-1: log r += (b_t - b_{t-1}) g(u),  u <- elliptical slice step at b_t;  log r += (1 - b_{T-1}) g(u)

        accepted (k, z) <- (j, u) with probability min(1, r). At β = 0 the affine map carries N_k to N_j, so
        γ^j_0(u) |det L_j L_k^{-1}| / γ^k_0(s) = π_j / π_k; the slice steps are reversible at each level and
        the levels a palindrome, so the move leaves p(k, z) ∝ γ^k_1(z) invariant, component masses
        included (Neal's tempered transitions with the affine map as the hottest move). log r is the ratio of
        two AIS weights, up in j over down in k: chains move towards the components whose part π_k ζ_k of
        P_D is large. -> the accepted mask [M]."""
        g = self._tilt(D, w)
        b = sigmoid_schedule(levels).double().tolist()
        T, C = levels, len(self.base.log_pi)
        k = self.k
        j = (k + torch.randint(1, C, k.shape, generator=self.gen)) % C
        mu_k, mu_j = self._mu(k), self._mu(j)
        log_pi = self.base.log_pi.double()
        s, gs = self.z, g(self.z)
        log_r = torch.zeros(len(s), dtype=torch.float64)
        for t in range(T - 1, 0, -1):
            log_r += (b[t] - b[t + 1]) * gs
            s, gs, used = elliptical_slice_step(s, gs, mu_k, self._prior(k), g, b[t], self._unif)
            self.evaluations += used
        log_r -= b[1] * gs
        u = self._carry(s, k, j)
        log_r += log_pi[j] - log_pi[k]
        gu = g(u)
        for t in range(1, T):
            log_r += (b[t] - b[t - 1]) * gu
            u, gu, used = elliptical_slice_step(u, gu, mu_j, self._prior(j), g, b[t], self._unif)
            self.evaluations += used
        log_r += (b[T] - b[T - 1]) * gu
        accept = torch.log(self._unif(len(u))) < log_r
        self.z, self.k = torch.where(accept[:, None], u, self.z), torch.where(accept, j, k)
        self.jumps, self.jumps_tried = self.jumps + int(accept.sum()), self.jumps_tried + len(accept)
        self.transitions += 2 * (T - 1) * len(u)
        return accept

    def _unif(self, m: int) -> torch.Tensor:
        """m uniform draws (float64, CPU) from the chains' stream."""
        return torch.rand(m, generator=self.gen, dtype=torch.float64)

    def _tilt(self, D, w: float):
        """z [B, n] -> the tilt f/w at the images x(z) [B] (float64, CPU); a value that is not finite is an error."""
        device = next(D.parameters()).device

        def g(zz):
            x = self.coordinate.to_x(zz).float().view(len(zz), *self.event_shape).to(device)
            out = (D.tilt(x) / w).double().cpu()
            if not torch.isfinite(out).all():
                raise ValueError(f"the tilt f/w is not finite at {int((~torch.isfinite(out)).sum())} of {len(zz)} chains")
            return out
        return g

    def _carry(self, z, k, j) -> torch.Tensor:
        """The affine map from component k to j, u = μ_j + L_j L_k^{-1} (z - μ_k), per row [M, n]: it carries
        N(μ_k, Σ_k) to N(μ_j, Σ_j), with |det| = |L_j| / |L_k|."""
        L = self.base.L.double()
        u = torch.empty_like(z)
        for c in k.unique().tolist():       # ε = L_k^{-1} (z - μ_k)
            pick = k == c
            u[pick] = torch.linalg.solve_triangular(L[c], (z[pick] - self._mu(k[pick])).T, upper=False).T
        return self._mu(j) + component_rows(j, u, L)      # u = μ_j + L_j ε

    def diagnostics(self) -> dict:
        """What metrics.jsonl logs of the chains since the last call: the share of Gibbs steps that changed a
        chain's component (mcmc_switches), the energy evaluations per slice step (mcmc_evaluations), and the
        largest share of the chains in one component now (mcmc_top_component; π's largest is its base weight); with
        jumps, the share of tempered transitions accepted (mcmc_jumps)."""
        out = {"mcmc_switches": self.switches / max(self.moves, 1),
               "mcmc_evaluations": self.evaluations / max(self.transitions, 1),
               "mcmc_top_component": float(torch.bincount(self.k, minlength=len(self.base.log_pi)).max()) / len(self.k)}
        if self.jumps_tried:
            out["mcmc_jumps"] = self.jumps / self.jumps_tried
        self.switches = self.moves = self.evaluations = self.transitions = self.jumps = self.jumps_tried = 0
        return out

    def state_dict(self) -> dict:
        return {"kernel": "slice", "z": self.z, "k": self.k, "next": self.next, "steps": self.steps,
                "rng": self.gen.get_state(),
                "counts": (self.switches, self.moves, self.evaluations, self.transitions, self.jumps, self.jumps_tried)}

    def load_state_dict(self, state: dict):
        if state.get("kernel", "mala") != "slice":
            raise ValueError(f"the checkpoint's chains are {state.get('kernel', 'mala')!r} chains, these slice "
                             "(--mcmc-kernel slice)")
        self.z, self.k = state["z"].clone(), state["k"].clone()       # copies: the caller's state stays as it was
        self.next, self.steps = state["next"], state["steps"]
        counts = tuple(state["counts"]) + (0, 0)[len(state["counts"]) - 4:]    # checkpoints before jumps kept 4
        self.switches, self.moves, self.evaluations, self.transitions, self.jumps, self.jumps_tried = counts
        self.gen.set_state(state["rng"])
