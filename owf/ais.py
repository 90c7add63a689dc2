"""Annealed importance sampling (AIS) for log ζ of P_D on its domain box, and reverse annealing
(RAISE) for each test point's log-likelihood: the two sides of a test NLL's bracket.

Coordinates. P_D(x) = exp(E(x)) / ζ, E = D/w, lives on a box [lo, hi]^n. The chains move in an
unconstrained u ∈ R^n,

    x = c + h tanh(u),   c = (lo + hi)/2,  h = (hi - lo)/2,   log|dx/du| = Σ_i [log h + log(1 - tanh² u_i)],

so ζ = ∫_box exp(E(x)) dx = ∫ f(u) du with log f(u) = E(x(u)) + log|dx/du|: no chain ever leaves
the box, and nothing is reflected. The base p_0 is a normalised density of u (owf.baselines: a
Gaussian in u fitted to the data, or the per-pixel histogram); a base may bring its own coordinate
instead of atanh (coordinate_of: the copula's normal scores z, with x(z), z(x) and log|dx/dz|), and
the chains then move in that. The path is geometric:

    log f_β(u) = (1 - β) log p_0(u) + β log f(u),   0 = β_0 < β_1 < ... < β_K = 1,
    g(u) = log f(u) - log p_0(u)   (so that log f_β = log p_0 + β g).

AIS (Neal 2001). u_0 ~ p_0; for k = 1..K:

    log w += (β_k - β_{k-1}) g(u_{k-1});    u_k ~ T_k(· | u_{k-1}),   T_k leaving f_{β_k} invariant.

E[w] = ζ, so log ζ̂ = log mean_m w_m over M chains is a stochastic lower bound of log ζ (Jensen),
and a test NLL built on it is a lower bound in expectation. K = 1 is plain importance sampling
from the base: log w = g(u_0).

RAISE (Burda, Grosse & Salakhutdinov 2015). The annealing model draws u_0 ~ p_0, u_k ~ T_k(· | u_{k-1})
and keeps u_K: a normalised density p_ann(u_K) that tends to P_D as the annealing converges. For a
test point, u_K = u(x); for k = K..1, u_{k-1} ~ T_k(· | u_k) (T_k is reversible, so it is its own
reversal), and with f_k(u) = p_0(u)^{1-β_k} f(u)^{β_k}:

    ŵ = p_0(u_0) Π_{k=1}^{K} f_k(u_k) / f_k(u_{k-1})
    log ŵ = log f(u_K) - Σ_{k=1}^{K} (β_k - β_{k-1}) g(u_{k-1})       (summing by parts, β_0 = 0, β_K = 1)

E[ŵ] = p_ann(u_K), so log ŵ is a stochastic lower bound of log p_ann (a conservative
log-likelihood of a normalised model), and in x: log p̂(x) = log ŵ - log|dx/du| = E(x) - Σ_k
(β_k - β_{k-1}) g(u_{k-1}). With C chains per point, log mean_c ŵ_c. In expectation
NLL by AIS ≤ NLL of P_D, and NLL of p_ann ≤ NLL by RAISE: the bracket.

Transitions: HMC with `leapfrog` steps (1: MALA), mass matrix diag(1/s²) with s the base's scale
of u (leapfrog in ũ = u / s), and a Metropolis accept. A proposal whose f_β is not finite is
rejected and counted. The step size is one per β: a pilot run (its own chains, its own stream)
adapts it towards a target acceptance at each β of a coarser schedule, and then it is frozen:
step_sizes(β) looks it up, so the estimate's chains are a fixed Markov chain and AIS stays
unbiased. The pilot also measures the spread of g along the path, std_β(g), which gives the
adaptive schedule (steps placed with density ∝ std_β(g), which minimises Σ_k Δβ_k² Var_β(g), the
log-weight variance of a chain at equilibrium; that minimum, Λ²/K with Λ = ∫ std_β(g) dβ, predicts
the K a target variance needs). The schedules (`schedule`): "sigmoid" (Grosse et al. 2015,
sharpness `delta`) or "adaptive".

slice_ais: for a base that is a Gaussian mixture and an energy over it, log f = log p_0 + g, AIS
one component at a time with elliptical slice transitions (Murray, Adams & MacKay 2010), which
need no step size and move along each component's own covariance (see its docstring).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .baselines import log1m_tanh2

SCHEDULES = ("sigmoid", "adaptive")
TARGET_ACCEPT = 0.65


# ---- coordinates and the target
@dataclass
class Box:
    """The box [lo, hi]^n and the map x = c + h tanh(u)."""
    lo: float
    hi: float

    @property
    def c(self):
        return (self.lo + self.hi) / 2

    @property
    def h(self):
        return (self.hi - self.lo) / 2

    def to_x(self, u: torch.Tensor) -> torch.Tensor:
        return self.c + self.h * torch.tanh(u)

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        """atanh((x - c)/h) in float64, kept finite at the walls (|u| ≤ 19, where tanh is ±1 in float64)."""
        t = ((x.double() - self.c) / self.h).clamp(-1 + 2 ** -52, 1 - 2 ** -52)
        return torch.atanh(t)

    def log_jac(self, u: torch.Tensor) -> torch.Tensor:
        """log|dx/du| [B] for u [B, n]."""
        return log1m_tanh2(u).sum(1) + u.shape[1] * math.log(self.h)


def coordinate_of(base, box: Box):
    """The coordinate a base is a density of: its own (owf.baselines.NormalScores of a CopulaMixture),
    else the box's u = atanh (with to_x, to_u and log_jac, as Box)."""
    return getattr(base, "coordinate", None) or box


def box_log_f(energy, box: Box, event_shape):
    """log f(u) = E(x(u)) + log|dx/du| [B] for u [B, n] (float32 in, float64 out): the unnormalised
    log P_D in the chains' coordinate. energy: x [B, *event_shape] -> E(x) [B]."""
    def log_f(u):
        e = energy(box.to_x(u).view(len(u), *event_shape))
        return e.double() + box.log_jac(u.double())
    return log_f


# ---- schedules and step sizes
def sigmoid_schedule(K: int, delta: float = 4.0) -> torch.Tensor:
    """β_k = (σ(δ(2k/K - 1)) - σ(-δ)) / (σ(δ) - σ(-δ)), k = 0..K [K+1] (float64): dense at both ends."""
    t = torch.sigmoid(delta * (2 * torch.arange(K + 1, dtype=torch.float64) / K - 1))
    b = (t - t[0]) / (t[-1] - t[0])
    b[0], b[-1] = 0.0, 1.0
    return b


def adaptive_schedule(K: int, betas: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """K steps placed with density ∝ spread(β) = std_β(g) (piecewise constant on the grid betas [J+1],
    spread [J] per interval): β_k = Λ⁻¹(k Λ / K), Λ(β) = ∫_0^β spread. -> [K+1] (float64)."""
    s = spread.double().clamp_min(1e-12) * betas.diff()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)])
    q = torch.linspace(0, float(cum[-1]), K + 1, dtype=torch.float64)
    i = torch.searchsorted(cum, q, right=True).clamp(1, len(cum) - 1) - 1
    frac = ((q - cum[i]) / (cum[i + 1] - cum[i]).clamp_min(1e-300)).clamp(0, 1)
    b = betas[i] + frac * (betas[i + 1] - betas[i])
    b[0], b[-1] = 0.0, 1.0
    return torch.cummax(b, 0).values


@dataclass
class StepSizes:
    """ε per β, frozen after the pilot: ε(β) = eps[j] for grid[j] ≤ β < grid[j+1] (in ũ = u/s units).
    spread[j]: the pilot chains' std of g at grid[j] (the adaptive schedule's density)."""
    grid: torch.Tensor        # [J] float64, increasing, grid[0] = 0
    eps: torch.Tensor         # [J]
    spread: torch.Tensor      # [J]
    accept: float             # the pilot's mean acceptance

    def __call__(self, beta: float) -> float:
        j = int(torch.searchsorted(self.grid, torch.tensor([beta], dtype=torch.float64), right=True)) - 1
        return float(self.eps[max(j, 0)])

    def schedule(self, K: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
        if kind == "sigmoid":
            return sigmoid_schedule(K, delta)
        if kind == "adaptive":
            return adaptive_schedule(K, torch.cat([self.grid, torch.ones(1, dtype=torch.float64)]), self.spread)
        raise ValueError(f"schedule={kind!r}: choose one of {SCHEDULES}")

    def thermodynamic_length(self) -> float:
        """Λ = ∫ std_β(g) dβ: a chain at equilibrium has log-weight variance ≥ Λ²/K at K steps."""
        widths = torch.cat([self.grid, torch.ones(1, dtype=torch.float64)]).diff()
        return float((self.spread.double() * widths).sum())


# ---- the chains
@dataclass
class _State:
    u: torch.Tensor           # [M, n]
    lf: torch.Tensor          # log f(u) [M] float64
    lp0: torch.Tensor         # log p_0(u) [M] float64
    gf: torch.Tensor          # ∇ log f [M, n]
    gp0: torch.Tensor         # ∇ log p_0 [M, n]
    bad: torch.Tensor         # [M] bool: f or p_0 not finite here (then lf = -inf)

    def log_target(self, beta: float) -> torch.Tensor:
        return self.lp0 if beta == 0 else self.lp0 + beta * (self.lf - self.lp0)

    def grad(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.gp0 + beta * self.gf

    def where(self, keep: torch.Tensor, other: "_State") -> "_State":
        k1 = keep[:, None]
        return _State(torch.where(k1, self.u, other.u), torch.where(keep, self.lf, other.lf),
                      torch.where(keep, self.lp0, other.lp0), torch.where(k1, self.gf, other.gf),
                      torch.where(k1, self.gp0, other.gp0), torch.where(keep, self.bad, other.bad))


class Path:
    """The geometric path from a base p_0 to f, and HMC transitions along it. log_f: u [B, n] -> [B]
    (differentiable); base: log_prob(u) -> [B], sample(num, generator) -> u, scale [n]."""

    def __init__(self, log_f, base, leapfrog: int = 1, device="cpu"):
        if leapfrog < 1:
            raise ValueError(f"leapfrog={leapfrog} must be >= 1 (1: MALA)")
        self.log_f, self.base, self.leapfrog, self.device = log_f, base, leapfrog, torch.device(device)
        self.nonfinite = 0                       # proposals rejected for a non-finite f or p_0

    def evaluate(self, u: torch.Tensor) -> _State:
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            lf = self.log_f(u)
            (gf,) = torch.autograd.grad(lf.sum(), u)
            lp0 = self.base.log_prob(u)
            (gp0,) = torch.autograd.grad(lp0.sum(), u)
        bad = ~(torch.isfinite(lf) & torch.isfinite(lp0))
        lf = lf.detach().masked_fill(bad, -math.inf)        # -inf: never accepted, weight 0
        gf, gp0 = gf.masked_fill(bad[:, None], 0.0), gp0.to(gf.dtype).masked_fill(bad[:, None], 0.0)
        return _State(u.detach(), lf, lp0.detach().double(), gf, gp0, bad)

    def integrate(self, st: _State, p: torch.Tensor, beta: float, eps: float) -> tuple[_State, torch.Tensor]:
        """`leapfrog` steps of the leapfrog integrator for H = -log f_β(u) + ½|p|² in ũ = u/s (s: the
        base's scale, a unit mass there): p ← p + ½ε s∇, ũ ← ũ + εp, p ← p + ½ε s∇, the inner half
        steps merged. Volume-preserving, and reversible: from (end, -p_end) it returns to (st, -p)."""
        s = self.base.scale.to(st.u.device)
        new = st
        p = p + 0.5 * eps * s * new.grad(beta)
        for i in range(self.leapfrog):
            new = self.evaluate(new.u + eps * s * p)
            p = p + (0.5 if i == self.leapfrog - 1 else 1.0) * eps * s * new.grad(beta)
        return new, p

    def hmc(self, st: _State, beta: float, eps: float, generator=None) -> tuple[_State, torch.Tensor]:
        """One HMC transition of every chain, invariant for f_β: p ~ N(0, I), the leapfrog trajectory,
        then accept with probability min(1, e^{H_0 - H_1}) (a non-finite H_1 is rejected and counted).
        -> (the new state, accepted [M] bool)."""
        gdev = generator.device if generator is not None else st.u.device
        p = torch.randn(st.u.shape, generator=generator, device=gdev).to(st.u.device)
        h0 = -st.log_target(beta) + 0.5 * (p.double() ** 2).sum(1)
        new, p = self.integrate(st, p, beta, eps)
        h1 = -new.log_target(beta) + 0.5 * (p.double() ** 2).sum(1)
        finite = torch.isfinite(h1)
        self.nonfinite += int((~finite).sum())
        log_u = torch.log(torch.rand(len(h0), generator=generator, device=gdev, dtype=torch.float64)).to(h0.device)
        accept = finite & (log_u < h0 - h1)
        return new.where(accept, st), accept


@dataclass
class AISRun:
    """The chains' results. log_w [M] float64; accept: mean acceptance (nan with no transition);
    increment_var [K]: the variance over chains of each step's log-weight increment;
    nonfinite_proposals: proposals rejected for a non-finite f or p_0; nonfinite_chains: AIS, chains
    that started where f or p_0 is not finite (weight 0); RAISE, points whose weight is not finite;
    u: the final states (AIS: approximate samples of P_D in u)."""
    log_w: torch.Tensor
    accept: float
    increment_var: torch.Tensor
    nonfinite_proposals: int
    nonfinite_chains: int
    u: torch.Tensor = field(repr=False)      # the final states [M, n]


def tune(path: Path, chains: int, steps: int, generator=None, eps0: float = 0.05, target: float = TARGET_ACCEPT,
         repeats: int = 3, progress: bool = False) -> StepSizes:
    """The pilot: `chains` chains along a sigmoid schedule of `steps` steps, `repeats` HMC transitions
    per β; after each, log ε ← log ε + (mean acceptance - target). Records ε and std(g) at each β."""
    betas = sigmoid_schedule(steps)
    st = path.evaluate(path.base.sample(chains, _cpu(generator)).to(path.device))
    eps, E, S, acc = eps0, [], [], []
    for k in tqdm(range(steps), disable=not progress, desc="AIS pilot", unit="β", leave=False):
        beta = float(betas[k])
        g = (st.lf - st.lp0)
        g = g[torch.isfinite(g)]
        S.append(float(g.std()) if len(g) > 1 else 0.0)
        for _ in range(repeats):
            st, a = path.hmc(st, beta, eps, generator)
            rate = float(a.double().mean())
            acc.append(rate)
            eps = float(min(max(eps * math.exp(rate - target), 1e-6), 10.0))
        E.append(eps)
    return StepSizes(betas[:-1].clone(), torch.tensor(E, dtype=torch.float64), torch.tensor(S, dtype=torch.float64),
                     sum(acc) / len(acc))


def ais(path: Path, chains: int, betas: torch.Tensor, step_sizes: StepSizes, generator=None,
        progress: bool = False) -> AISRun:
    """The forward chains (see the module docstring): u_0 ~ p_0, log w += Δβ_k g(u_{k-1}), u_k ~ T_k."""
    K = len(betas) - 1
    st = path.evaluate(path.base.sample(chains, _cpu(generator)).to(path.device))
    bad0 = st.bad.clone()
    log_w = torch.zeros(chains, dtype=torch.float64, device=st.u.device)
    inc_var = torch.zeros(K, dtype=torch.float64)
    start, accepted = path.nonfinite, 0.0
    for k in tqdm(range(1, K + 1), disable=not progress, desc="AIS", unit="β"):
        inc = (betas[k] - betas[k - 1]) * (st.lf - st.lp0)
        log_w += inc
        inc_var[k - 1] = _var(inc)
        if k < K:                                 # u_K is not needed for the weight
            st, a = path.hmc(st, float(betas[k]), step_sizes(float(betas[k])), generator)
            accepted += float(a.double().mean())
    # a chain that starts where f or p_0 is not finite has weight 0 (log w = -inf): counted here
    return AISRun(log_w, accepted / (K - 1) if K > 1 else math.nan, inc_var, path.nonfinite - start,
                  int(bad0.sum()), st.u)


def raise_chains(path: Path, u: torch.Tensor, betas: torch.Tensor, step_sizes: StepSizes, generator=None,
                 progress: bool = False) -> AISRun:
    """Reverse chains from the points u [N, n] (u_K): for k = K..1, u_{k-1} ~ T_k(· | u_k), and
    log ŵ = log f(u_K) - Σ_k Δβ_k g(u_{k-1}) [N] (the u-space density; see the module docstring)."""
    K = len(betas) - 1
    st = path.evaluate(u.float())
    log_w = st.lf.clone()
    inc_var = torch.zeros(K, dtype=torch.float64)
    start, accepted = path.nonfinite, 0.0
    for k in tqdm(range(K, 0, -1), disable=not progress, desc="RAISE", unit="β"):
        st, a = path.hmc(st, float(betas[k]), step_sizes(float(betas[k])), generator)
        accepted += float(a.double().mean())
        inc = (betas[k] - betas[k - 1]) * (st.lf - st.lp0)
        log_w -= inc
        inc_var[k - 1] = _var(inc)
    return AISRun(log_w, accepted / K, inc_var, path.nonfinite - start, int((~torch.isfinite(log_w)).sum()), st.u)


# ---- AIS with elliptical slice transitions, one Gaussian component of the base at a time
@dataclass
class SliceAISRun:
    """slice_ais's chains. log_w [C, M] float64, component k's chains in row k; log_pi [C]; evaluations:
    the tilt's evaluations per transition of a chain (1 + the bracket's shrinks); u: the last states
    [C, M, n], those of β_{K-1} (component k's approximate samples of P_D's part π_k N_k e^g / ζ_k)."""
    log_w: torch.Tensor
    log_pi: torch.Tensor
    evaluations: float
    u: torch.Tensor = field(repr=False)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log ζ̂_k [C], the Kish ESS of each component's weights [C])."""
        w = torch.exp(self.log_w - self.log_w.max(1, keepdim=True).values)
        return log_mean_exp(self.log_w, 1), w.sum(1) ** 2 / (w * w).sum(1)

    def estimate(self) -> tuple[float, float, float]:
        """(log ζ̂ = log Σ_k π_k ζ̂_k, its delta-method standard error, the Kish ESS of the pooled weights
        π_k w_km / M). Var ζ̂ = Σ_k π_k² Var ζ̂_k, and Var ζ̂_k / ζ̂_k² ≈ 1/ESS_k - 1/M (estimate's)."""
        lz_k, ess_k = self.components()
        M = self.log_w.shape[1]
        part = self.log_pi + lz_k                                   # log π_k ζ̂_k
        lz = float(torch.logsumexp(part, 0))
        rel = (torch.exp(part - lz) ** 2 * (1 / ess_k - 1 / M).clamp_min(0)).sum()
        pooled = (self.log_pi[:, None] + self.log_w).flatten()
        w = torch.exp(pooled - pooled.max())
        return lz, float(rel.sqrt()), float(w.sum() ** 2 / (w * w).sum())


def slice_ais(tilt, base, chains: int, betas: torch.Tensor, generator=None, progress: bool = False) -> SliceAISRun:
    """AIS from a Gaussian-mixture base p_0 = Σ_k π_k N(μ_k, Σ_k) (a density of its own coordinate z:
    GaussianMixtureBase, CopulaMixture) to f = p_0 e^g, g = `tilt`, one component at a time, with
    elliptical slice sampling as the transitions (Murray, Adams & MacKay 2010):

        ζ = ∫ p_0 e^g dz = Σ_k π_k ζ_k,   ζ_k = E_{N(μ_k, Σ_k)}[e^g],   path k: f_k,β ∝ N(z; μ_k, Σ_k) e^{β g(z)}

    For an energy over its base, D/w = f/w + log p_0, the tilt is the network's part, g = f/w. Every
    component has `chains` chains of its own, z_0 ~ N(μ_k, Σ_k), log w += (β_j - β_{j-1}) g(z_{j-1}) as
    in `ais`, and the transition at β_j: ν ~ N(0, Σ_k), log y = β g(z) + log U, then

        z' = μ_k + (z - μ_k) cos θ + ν sin θ,   θ ~ U(bracket), the bracket shrunk towards 0 until β g(z') > log y

    from [θ_0 - 2π, θ_0], θ_0 ~ U(0, 2π). It leaves f_k,β invariant exactly, needs neither a step size nor
    a gradient, and always moves: on the ellipse through z it moves as the component's covariance does,
    where `ais`'s MALA, with one diagonal mass matrix for the whole mixture, creeps along a component
    whose variances span five decades (the Fashion-MNIST copula's: 2e-3 to 184).

    E[ζ̂_k] = ζ_k, so ζ̂ = Σ_k π_k ζ̂_k is unbiased and log ζ̂ a stochastic lower bound of log ζ; the
    components' estimates are independent (SliceAISRun.estimate). K = len(betas) - 1 = 1 is importance
    sampling from each component: log w = g(z_0). tilt: z [B, n] float64 -> g [B] float64 (finite: a
    point where it is not is an error, named); chains and tilt run on the base's device, the draws on
    `generator`'s (the CPU's without one)."""
    if chains < 1:
        raise ValueError(f"chains={chains} per component must be >= 1")
    log_pi, mu, L = base.log_pi.double(), base.mu.double(), base.L.double()
    C, n = mu.shape
    K = len(betas) - 1
    gdev = generator.device if generator is not None else torch.device("cpu")
    draw = lambda *shape: torch.randn(*shape, generator=generator, device=gdev, dtype=torch.float64).to(mu.device)  # noqa: E731
    unif = lambda m: torch.rand(m, generator=generator, device=gdev, dtype=torch.float64).to(mu.device)  # noqa: E731

    def g(z):
        out = tilt(z).double()
        if not torch.isfinite(out).all():
            raise ValueError(f"the tilt is not finite at {int((~torch.isfinite(out)).sum())} of {len(z)} points")
        return out

    centre = mu[:, None].expand(C, chains, n).reshape(-1, n)            # each chain's μ_k [C·M, n]
    prior = lambda: torch.bmm(draw(C, chains, n), L.transpose(1, 2)).reshape(-1, n)   # noqa: E731  ~ N(0, Σ_k)
    z = centre + prior()
    gz = g(z)
    log_w = torch.zeros(C * chains, dtype=torch.float64, device=mu.device)
    evaluations = 0
    for j in tqdm(range(1, K + 1), disable=not progress, desc="AIS (slice)", unit="β"):
        log_w += (betas[j] - betas[j - 1]) * gz
        if j == K:                                   # z_K is not needed for the weight
            break
        z, gz, used = elliptical_slice_step(z, gz, centre, prior(), g, float(betas[j]), unif)
        evaluations += used
    return SliceAISRun(log_w.view(C, chains).cpu(), log_pi.cpu(), evaluations / max(C * chains * (K - 1), 1),
                       z.view(C, chains, n))


def elliptical_slice_step(z, gz, centre, nu, g, beta: float, unif):
    """One elliptical slice step (Murray, Adams & MacKay 2010) of every row of z [B, n] for the density
    ∝ N(z; centre, Σ) e^{β g(z)}, with ν [B, n] ~ N(0, Σ) drawn by the caller and gz = g(z) [B]:
    log y = β g(z) + log U, θ ~ U(0, 2π), then

        z' = centre + (z - centre) cos θ + ν sin θ,   θ's bracket [θ_0 - 2π, θ_0] shrunk towards 0 until β g(z') > log y

    Exact for that density, no step size, no gradient, and it always moves (a bracket shrunk to nothing,
    θ = 0 up to rounding where z' is z, keeps z). unif(m): m uniform draws (float64, on z's device).
    -> (z' [B, n], g(z') [B], the number of evaluations of g)."""
    z, gz = z.clone(), gz.clone()
    d = z - centre
    log_y = beta * gz + torch.log(unif(len(z)))
    theta = 2 * math.pi * unif(len(z))
    lo, hi = theta - 2 * math.pi, theta.clone()
    active, evaluations = torch.arange(len(z), device=z.device), 0
    while len(active):
        t = theta[active, None]
        zp = centre[active] + d[active] * torch.cos(t) + nu[active] * torch.sin(t)
        gp = g(zp)
        evaluations += len(active)
        ok = beta * gp > log_y[active]
        z[active[ok]], gz[active[ok]] = zp[ok], gp[ok]
        active = active[~ok & (hi[active] - lo[active] > 1e-12)]       # shrink the bracket towards θ = 0
        below = theta[active] < 0
        lo[active] = torch.where(below, theta[active], lo[active])
        hi[active] = torch.where(below, hi[active], theta[active])
        theta[active] = lo[active] + (hi[active] - lo[active]) * unif(len(active))
    return z, gz, evaluations


def _var(inc: torch.Tensor) -> float:
    """The variance over chains of the finite increments (0 with fewer than two)."""
    inc = inc[torch.isfinite(inc)]
    return float(inc.var()) if len(inc) > 1 else 0.0


def _cpu(generator):
    """A CPU generator for the bases' draws: `generator` itself, or one seeded from it (a CUDA generator)."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device)))


def log_mean_exp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


def estimate(log_w: torch.Tensor) -> tuple[float, float, float]:
    """(log mean w, its delta-method standard error sqrt(1/ESS - 1/M), the Kish ESS) of log-weights [M]."""
    lw = log_w[torch.isfinite(log_w) | (log_w == -math.inf)].double()
    M = len(lw)
    lz = float(log_mean_exp(lw))
    w = torch.exp(lw - lw.max())
    ess = float(w.sum() ** 2 / (w * w).sum())
    return lz, math.sqrt(max(1 / ess - 1 / M, 0.0)), ess
