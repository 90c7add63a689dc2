"""The trained model as a normalised density: P_D(x) = exp(D(x)/w) / ζ  (Eq. 15) on the data's domain.

ζ is a constant of D, estimated once by importance sampling (Eq. 2) with many samples and cached
(Sec. 3.2):   log ζ̂ = log (1/S) Σ_i exp(D(y_i)/w - log p(y_i)),   y_i ~ p,
with p the generator (its exact density at its own samples, Eq. 10) or N(0, I). The samples are
streamed in chunks and combined exactly through owf_kernels' partial log-sum-exp, so memory is
bounded by `batch_size` whatever `num_samples` is.

The domain. exp(D/w) need not be integrable over all of R^n: a LeakyReLU energy is piecewise linear
and nothing in training constrains it away from the data and the generator's samples. On the grid,
3 of 5 trained energies grew without bound away from the data (ζ over the plane = ∞, so that
"density" does not exist). P_D is therefore defined on the data's domain, a box (for the 2D
mixtures the modes' square plus DOMAIN_MARGIN): ζ = ∫_box exp(D/w), and log_prob = -inf outside it.
An importance sample outside the box has weight 0, which keeps the estimate unbiased for this ζ.

Signed weights. Eq. 10 counts one preimage per sample, so where g_n covers a region k times the
plain estimator counts ∫ exp(D/w) there k times. If g_n folds (det J takes both signs), the sheets
over a folded region alternate in orientation, and the signed count Σ_preimages sign(det J) is the
degree of g_n, which is the same (±1) everywhere for a proper g_n. So
weighting each generator sample by sign(det J) makes the estimator unbiased despite folds:
|(1/S) Σ sign_i exp(D(y_i)/w - log q(y_i))| = |∫ deg·exp(D/w)| = ζ. That is
the default (`signed=True`) when the preimages below are not searched; with no minority samples it is
the plain estimator. It cannot undo a region covered twice with one orientation (the tails of a
bounded g_n wrapping around the extreme points of its image, or the ring generators that cover two
modes twice).

All preimages. For n <= PREIMAGES_MAX_N (the 2D data sets) the generator's density at each sample
is summed over every preimage that owf.preimages finds, q(y) = Σ_{g_n(u') = y} N(u')/|det J(u')|:
the true density of the generator's samples, folded or not, so the plain estimator with it is
unbiased and no signs are needed (`preimages=None`, the default, turns this on for small n). On
the README's 5 ring runs Eq. 10 gave log ζ̂ +0.13 to +0.16 above the quadrature in 3 (+0.046 in a
fourth); with the preimages all 10 ring and grid runs are within 0.01 at S = 10^6.

    model = owf.load("runs/ring-owf-s0")
    est = model.estimate_log_zeta(10**6)          # log ζ̂, its standard error, the ESS
    model.cache_log_zeta(est)
    model.log_prob(x)                             # energy - log ζ̂
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass, field, fields, replace

import torch
from tqdm import tqdm

from owf_kernels import combine_partials, log_zeta_partials, partials_to_estimate

from .checkpoint import checkpoint_path, load_checkpoint, save_atomic
from .config import MIXTURE_BASES, Config, data_kind
from .data import get_dataset
from .model import Energy, OneWayFlow, log_normal
from .preimages import all_preimages

# gaussian: fitted to the training data; base (images): the energy's own base measure p_0 (--d-base); ais: owf.ais;
# ais-slice: owf.ais.slice_ais from p_0's Gaussian components (images with --d-base)
PROPOSALS = ("generator", "normal", "gaussian", "base", "ais", "ais-slice")
AIS_BASES = {"2d": ("defensive", "gaussian", "uniform"),
             "image": ("defensive", "gaussian", "histogram", "uniform", "base")}
AIS_LOW_ESS_FRACTION = 0.1   # AIS runs ~100 chains: flag an estimate carried by fewer than a tenth of them
LOGDETS = ("exact", "jvp1", "both")
PREIMAGES_MAX_N = 2          # search every preimage of the generator's samples by default up to this n
LOW_ESS_FRACTION = 0.01
DOMAIN_MARGIN = 0.5          # the 2D domain: [-(max |mean| + margin), max |mean| + margin]²


@dataclass
class ZetaEstimate:
    log_zeta: float        # log ζ̂
    se: float              # delta-method standard error of log ζ̂: sqrt(1/ESS - 1/S)
    ess: float             # Kish effective sample size of the importance weights
    num_samples: int
    proposal: str
    low_ess: bool          # ESS below 1% of the samples: the estimate is not to be trusted
    preimages: bool = False            # generator densities summed over every preimage (owf.preimages)
    multi_cover: float | None = None   # with preimages: share of samples with more than one preimage
    logdet: str | None = None          # the generator's log|det J| in log q: exact (Eq. 10) or jvp1 (Eq. 9's estimate)
    # kept only on request (keep_log_weights=True), never saved: log |w_i| and the sign of w_i [S]
    log_weights: torch.Tensor | None = field(default=None, repr=False)
    signs: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("log_weights", "signs")}


@dataclass
class AISEstimate(ZetaEstimate):
    """log ζ̂ by annealed importance sampling (owf.ais): M = num_samples chains of `steps` (K)
    transitions from `base`. accept: the chains' mean acceptance; log_weight_var: the variance of
    the M final log-weights; increment_var_sum / _max: the variance over chains of each step's
    log-weight increment, summed over the path and its largest; nonfinite_proposals: proposals
    rejected for a non-finite energy; nonfinite_chains: chains whose weight is not finite (left out
    of the estimate, counted here); thermodynamic_length: the pilot's Λ = ∫ std_β(g) dβ (a chain at
    equilibrium has log-weight variance ≥ Λ²/K). low_ess: ESS below a tenth of the chains."""
    steps: int = 0
    base: str = ""
    schedule: str = ""
    leapfrog: int = 1
    accept: float = math.nan
    log_weight_var: float = math.nan
    increment_var_sum: float = math.nan
    increment_var_max: float = math.nan
    nonfinite_proposals: int = 0
    nonfinite_chains: int = 0
    pilot_accept: float = math.nan
    thermodynamic_length: float = math.nan
    seconds: float = math.nan
    step_sizes: object = field(default=None, repr=False)      # owf.ais.StepSizes, reused by raise_log_prob

    def to_dict(self):
        return {k: v for k, v in super().to_dict().items() if k != "step_sizes"}


@dataclass
class SliceAISEstimate(AISEstimate):
    """log ζ̂ by AIS with elliptical slice transitions from each Gaussian component of the energy's base
    p_0 (owf.ais.slice_ais): num_samples chains in all, chains_per_component each; component_log_zetas
    and component_ess: each component's log ζ̂_k and the Kish ESS of its weights; evaluations: the
    energy's evaluations per transition of a chain. base is "base", leapfrog 0 (no gradient). Never
    saved: samples [num_samples, *event_shape], the chains' final images, component by component, and
    log_weights [num_samples], log(π_k w_km / M_k) of each, which sum to ζ̂: self-normalised, the weights
    of those images as draws of P_D."""
    chains_per_component: int = 0
    component_log_zetas: list = field(default_factory=list)
    component_ess: list = field(default_factory=list)
    evaluations: float = math.nan
    samples: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self):
        return {k: v for k, v in super().to_dict().items() if k != "samples"}


@dataclass
class RaiseEstimate:
    """RAISE (owf.ais): log_prob [N], each point's conservative log-likelihood estimate (a stochastic
    lower bound of the annealing model's log-density, on P_D's domain), from `chains` reverse chains
    of `steps` transitions each; accept and the non-finite counts as AISEstimate's."""
    log_prob: torch.Tensor
    steps: int
    chains: int
    base: str
    accept: float
    nonfinite_proposals: int
    nonfinite_points: int
    seconds: float


def zeta_from_dict(d: dict) -> ZetaEstimate:
    """The estimate a checkpoint stored (an AIS one has `steps`, a slice AIS one `component_ess`)."""
    return (SliceAISEstimate if "component_ess" in d else AISEstimate if "steps" in d else ZetaEstimate)(**d)


def signed_partials(log_w: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Partials [2, 4] (owf_kernels.log_zeta_partials) of the log weights log_w [S] of the samples with
    sign > 0 (row 0) and sign < 0 (row 1); every other sample counts as weight 0 on that side."""
    sign = sign.to(log_w.device)
    return torch.stack([log_zeta_partials(log_w.masked_fill(sign * k <= 0, -math.inf), torch.zeros_like(log_w))
                        for k in (1, -1)])


def signed_estimate(pos: torch.Tensor, neg: torch.Tensor):
    """(log ζ̂, se, ESS) of signed importance weights: +w_i where det J > 0, -w_i where det J < 0,
    from the two sides' partials [m, s1, s2, n] (owf_kernels.log_zeta_partials; each side's n counts
    all samples, the other side's as weight 0). g_n's orientation (its degree, ±1) is the side with
    the larger total: the estimate is |Σ± w| (a count of samples would not do: y = u³ - 3u has
    det < 0 on 68% of a normal u, yet degree +1). With M = max(m), S_± = s1_± e^(m_± - M):

        ζ̂ = e^M |S_+ - S_-| / n = e^M μ,      E[w²] = e^2M (s2_+ e^(2(m_+ - M)) + s2_- e^(2(m_- - M))) / n
        se(log ζ̂) = sqrt((E[w²] - μ²)/n) / μ,       ESS = (Σ s_i w_i)² / Σ w_i²

    which is owf_kernels.partials_to_estimate when one side is empty; nan when the sides cancel."""
    if float(neg[1]) == 0.0 or float(pos[1]) == 0.0:
        return partials_to_estimate(pos if float(neg[1]) == 0.0 else neg)
    mp, s1p, s2p, n = (float(v) for v in pos)
    mn, s1n, s2n, _ = (float(v) for v in neg)
    M = max(mp, mn)
    S = abs(s1p * math.exp(mp - M) - s1n * math.exp(mn - M))
    if S == 0.0:
        return math.nan, math.nan, 0.0
    S2 = s2p * math.exp(2 * (mp - M)) + s2n * math.exp(2 * (mn - M))
    mu = S / n
    se = math.sqrt(max(S2 / n - mu * mu, 0.0) / n) / mu
    return M + math.log(mu), se, S * S / S2


def slice_estimates(est, S: int, repeats: int) -> list[float]:
    """log ζ̂ of `repeats` disjoint slices of S weights of an estimate kept with keep_log_weights=True
    (Fig. 2's repeats at S without drawing again)."""
    return [signed_estimate(*signed_partials(est.log_weights[i * S:(i + 1) * S], est.signs[i * S:(i + 1) * S]))[0]
            for i in range(repeats)]


class OWFModel:
    """A trained One-way Flow: the generator (a sampler with a known density) and the energy."""

    def __init__(self, G: OneWayFlow, D: Energy, config: Config, log_zeta: dict | None = None,
                 checkpoint: str | None = None, device="cpu"):
        self.G, self.D, self.config = G.eval(), D.eval(), config
        self._G64 = None                                  # float64 copy of G, for the preimage search
        self.w = config.w
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.zeta = zeta_from_dict(log_zeta) if log_zeta else None
        self.kind = data_kind(config.data)
        self.event_shape = tuple(G.event_shape)
        self._gaussian = None
        self._ais_bases = {}
        if self.kind == "2d":
            self.data = get_dataset(config.data)
            self.domain = self.data.extent(DOMAIN_MARGIN)     # (lo, hi): the box [lo, hi]^n
        else:
            self.data = None
            self.domain = (-1.0, 1.0)                         # pixels: P_D lives on [-1, 1]^n

    # ---- the generator
    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self.G.sample(n, generator)

    @torch.no_grad()
    def sample_with_log_prob(self, n: int, generator=None, method: str = "exact", signed: bool = False,
                             preimages: bool = False):
        """Samples y and log q(y) (Eq. 10), and with signed=True sign(det J) [n]. `exact` pushes n
        tangents; `jvp1` is a training signal only (Eq. 9), not a density, and is refused here.
        preimages=True: log q(y) summed over every preimage (sample_with_all_preimages); the signs
        are then all +1, as the density needs none."""
        if method != "exact":
            raise ValueError(f"method={method!r}: only the exact log-det gives a density for importance sampling")
        y, log_q, sign, _ = self._generator_batch(n, generator, preimages)
        return (y, log_q, sign) if signed else (y, log_q)

    def _generator_batch(self, n: int, generator, preimages: bool):
        """y [n, *event_shape] (float32), log q(y), sign(det J) (all +1 with preimages) and the
        preimage counts (None without the search)."""
        if not preimages:
            y, log_q, _, sign = self.G.sample_with_log_prob(n, "exact", generator, signed=True)
            return y, log_q, sign, None
        pre = self.sample_with_all_preimages(n, generator)
        return pre.y.float(), pre.log_q, torch.ones(n, device=pre.y.device), pre.roots

    @property
    def searches_preimages(self) -> bool:
        """Whether log ζ̂ sums the generator's density over all preimages by default (n <= PREIMAGES_MAX_N)."""
        return self.G.n <= PREIMAGES_MAX_N

    @torch.no_grad()
    def sample_with_all_preimages(self, n: int, generator=None, **search):
        """n generator samples with log q(y) over every preimage (owf.preimages.all_preimages, in
        float64; `search` goes to it): a Preimages with y, log_q, log_q_eq10 and roots [n]. The
        reference latents are drawn from `generator` too, so a seeded stream repeats exactly."""
        if self.G.components > 1:
            raise ValueError(f"the preimage search sums N(0, I) over preimages: a generator of "
                             f"{self.G.components} latent components (--g-mixture) is not supported")
        if self._G64 is None:
            self._G64 = copy.deepcopy(self.G).double()
        u = self.G.noise(n, generator).double()
        refs = None
        if generator is not None:
            refs = torch.Generator(generator.device).manual_seed(
                int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device)))
        return all_preimages(self._G64.jacobian_columns, u, generator=refs, **search)

    # ---- the energy and the density
    @torch.no_grad()
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """D(x)/w: the unnormalised log-density."""
        return self.D(x.to(self.device, torch.float32)) / self.w

    def in_domain(self, x: torch.Tensor) -> torch.Tensor:
        """[..., *event_shape] -> [...] bool: x lies in the domain box [lo, hi]^n."""
        lo, hi = self.domain
        inside = (x >= lo) & (x <= hi)
        return inside.flatten(inside.dim() - len(self.event_shape)).all(-1)

    def _on_domain(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The energies e = energy(x), set to -inf outside the domain."""
        return e.masked_fill(~self.in_domain(x).to(e.device), -math.inf)

    @torch.no_grad()
    def energy_on_domain(self, x: torch.Tensor) -> torch.Tensor:
        """D(x)/w inside the domain box, -inf outside it: the unnormalised log P_D."""
        return self._on_domain(x, self.energy(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P_D(x) = D(x)/w - log ζ̂ inside the domain (-inf outside), with the cached log ζ̂."""
        if self.zeta is None:
            raise RuntimeError("log ζ has not been estimated yet: call model.cache_log_zeta("
                               "model.estimate_log_zeta(num_samples)), or run `python -m owf.evaluate RUN_DIR`")
        return self.energy_on_domain(x) - self.zeta.log_zeta

    def fit_gaussian(self, samples: int = 100_000, shrink: float = 1e-3):
        """A Gaussian fitted to the training data, the "gaussian" proposal of estimate_log_zeta and
        AIS's default base. In 2D: N(μ, Σ) of `samples` draws of the mixture, in the plane -> (μ, L),
        Σ = L Lᵀ. For images: owf.baselines.AtanhGaussian, N(μ, Σ) in u = atanh(x) of the
        *dequantised* training split, so that its samples x = tanh(u) stay inside P_D's box and a
        pixel that is always 0 keeps the spread of its bin. Σ is shrunk towards its mean variance
        by `shrink` (full rank for pixels that never change)."""
        if self._gaussian is None:
            if self.kind == "2d":
                x = self.data.sample(samples, torch.Generator().manual_seed(3 * 10 ** 6)).double()
                mu = x.mean(0)
                cov = torch.cov(x.T).reshape(len(mu), len(mu))
                cov = (1 - shrink) * cov + shrink * cov.diagonal().mean() * torch.eye(len(mu), dtype=cov.dtype)
                self._gaussian = (mu, torch.linalg.cholesky(cov))
            else:
                from .baselines import AtanhGaussian
                from .images import load_images
                self._gaussian = AtanhGaussian(load_images(self.config.data, self.config.data_root, train=True)[0],
                                               shrink)
        return self._gaussian

    def _gaussian_batch(self, n: int, generator, density=None):
        """n samples of the fitted Gaussian (images: or of `density`, a normalised density of u such as
        p_0) and their log-density; for images y = x(u), tanh(u) or the base's own coordinate's, with
        log p(y) = log p(u) - log|dy/du| (the change of variables; tanh's: Σ_i log(1 - tanh² u_i))."""
        if self.kind == "image":
            from .ais import Box, coordinate_of
            base = density if density is not None else self.fit_gaussian()
            coordinate = coordinate_of(base, Box(-1.0, 1.0))
            u = base.sample(n, generator).double()
            y = coordinate.to_x(u)
            return y.float().view(n, *self.event_shape).to(self.device), base.log_prob(u) - coordinate.log_jac(u)
        mu, L = self.fit_gaussian()
        eps = torch.randn(n, len(mu), generator=generator, dtype=torch.float64)
        log_p = -0.5 * (eps * eps).sum(1) - L.diagonal().log().sum() - 0.5 * len(mu) * math.log(2 * math.pi)
        return (mu + eps @ L.T).float().view(n, *self.event_shape).to(self.device), log_p

    # ---- annealed importance sampling (owf.ais)
    def ais_base(self, base: str = "gaussian"):
        """AIS's base, a normalised density of u (x = c + h tanh u on the domain box, or the base's own
        coordinate: owf.ais.coordinate_of), by name:
        "gaussian": fitted to the data (images: the AtanhGaussian of fit_gaussian; 2D: a Gaussian in
        u of 10^5 draws of the mixture); "histogram" (images): owf.baselines.PixelHistogram, the
        per-pixel histograms of the training split; "uniform": the uniform density on the box;
        "base" (images): the energy's own base measure p_0 (--d-base), which D corrects;
        "defensive": ½ gaussian + ½ uniform (owf.baselines.MixtureBase), chains that start both
        where the data are and everywhere else, for an energy whose mass may lie in either; with
        --d-base mixture, ½ base + ½ uniform; with --d-base copula, whose coordinate is its normal
        scores, ½ base + ½ the histogram (CopulaMixture.margins_only)."""
        allowed = AIS_BASES[self.kind]
        if base not in allowed:
            raise ValueError(f"AIS base {base!r}: choose one of {allowed} for {self.kind} data")
        if base not in self._ais_bases:
            from . import baselines
            if base == "uniform":
                self._ais_bases[base] = baselines.UniformBox(self.G.n)
            elif base == "base":
                p0 = self.base_density()
                if p0 is None:
                    raise ValueError(f"AIS base 'base': this energy has no base measure (d_base={self.config.d_base!r})")
                self._ais_bases[base] = p0
            elif base == "defensive":
                data = "base" if self.config.d_base in MIXTURE_BASES else "gaussian"
                self._ais_bases[base] = baselines.defensive_base(self.ais_base(data))
            elif self.kind == "2d":
                from .ais import Box
                x = self.data.sample(100_000, torch.Generator().manual_seed(3 * 10 ** 6)).double()
                lo, hi = self.domain
                inside = ((x > lo) & (x < hi)).all(1)
                self._ais_bases[base] = baselines.GaussianBase(Box(lo, hi).to_u(x[inside]))
            elif base == "gaussian":
                self._ais_bases[base] = self.fit_gaussian()
            else:
                from .images import load_images
                self._ais_bases[base] = baselines.PixelHistogram(
                    load_images(self.config.data, self.config.data_root, train=True)[0])
        return self._ais_bases[base]

    def base_density(self):
        """The energy's base measure p_0 as a normalised density of u = atanh(x), or of its own coordinate
        (owf.ais.coordinate_of: the copula's normal scores) (None without one)."""
        density = getattr(self.D, "base_density", None)
        return density() if density is not None else None

    def ais_path(self, base: str = "defensive", leapfrog: int = 1):
        """owf.ais.Path from the base to f(u) = exp(D(x(u))/w) |dx/du| on the domain box (its
        gradients are taken in u alone, so D's parameters get none)."""
        from .ais import Box, Path, box_log_f, coordinate_of
        w, b = self.w, self.ais_base(base)
        return Path(box_log_f(lambda x: self.D(x) / w, coordinate_of(b, Box(*self.domain)), self.event_shape),
                    b, leapfrog, device=self.device)

    def _ais_args(self, chains: int, steps: int, leapfrog: int, pilot_steps: int):
        for k, v in (("chains", chains), ("steps", steps), ("leapfrog", leapfrog), ("pilot_steps", pilot_steps)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"AIS {k} must be a positive integer, got {v!r}")

    def tune_ais(self, base: str = "defensive", leapfrog: int = 1, pilot_steps: int = 200, chains: int = 64,
                 generator: torch.Generator | None = None, progress: bool = False):
        """The pilot of owf.ais.tune: step sizes per β (frozen) and std_β(g) along the path, on a
        stream of its own (seeded from `generator` when one is given)."""
        from .ais import tune
        self._ais_args(chains, 1, leapfrog, pilot_steps)
        seed = 10 ** 7 if generator is None else int(torch.randint(2 ** 62, (1,), generator=generator,
                                                                      device=generator.device))
        return tune(self.ais_path(base, leapfrog), chains, pilot_steps, torch.Generator(self.device).manual_seed(seed),
                    progress=progress)

    def _estimate_log_zeta_ais(self, chains: int, steps: int, base: str, leapfrog: int, schedule: str,
                               step_sizes, pilot_steps: int, generator, progress: bool, batch_size: int) -> AISEstimate:
        import time
        from .ais import SCHEDULES, ais, estimate
        self._ais_args(chains, steps, leapfrog, pilot_steps)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}: choose one of {SCHEDULES}")
        t = time.perf_counter()
        if step_sizes is None:
            step_sizes = self.tune_ais(base, leapfrog, pilot_steps, generator=generator, progress=progress)
        path = self.ais_path(base, leapfrog)
        betas = step_sizes.schedule(steps, schedule)
        runs = [ais(path, min(batch_size, chains - i), betas, step_sizes, generator, progress)
                for i in range(0, chains, batch_size)]           # batch_size chains at a time bound the memory
        log_w = torch.cat([r.log_w for r in runs])
        lz, se, ess = estimate(log_w)
        bad = sum(r.nonfinite_chains for r in runs)
        if bad:
            warnings.warn(f"AIS: {bad} of {chains} chains started where the energy or the base density is not finite; "
                          "their weight is 0 (right where P_D is 0, a bias where the energy is nan)", RuntimeWarning,
                          stacklevel=3)
        finite = log_w[torch.isfinite(log_w)]
        acc = [r.accept for r in runs if not math.isnan(r.accept)]
        est = AISEstimate(lz, se, ess, chains, "ais", not ess >= AIS_LOW_ESS_FRACTION * chains, steps=steps, base=base,
                          schedule=schedule, leapfrog=leapfrog, accept=sum(acc) / len(acc) if acc else math.nan,
                          log_weight_var=float(finite.var()) if len(finite) > 1 else 0.0,
                          increment_var_sum=float(sum(r.increment_var.sum() for r in runs) / len(runs)),
                          increment_var_max=float(max(r.increment_var.max() for r in runs)),
                          nonfinite_proposals=sum(r.nonfinite_proposals for r in runs), nonfinite_chains=bad,
                          pilot_accept=step_sizes.accept, thermodynamic_length=step_sizes.thermodynamic_length(),
                          seconds=time.perf_counter() - t, step_sizes=step_sizes)
        est.log_weights = log_w.cpu()
        return est

    def _estimate_log_zeta_slice(self, chains: int, steps: int, generator, progress: bool) -> SliceAISEstimate:
        import time
        from .ais import Box, coordinate_of, sigmoid_schedule, slice_ais
        p0 = self.base_density()
        if p0 is None or not hasattr(self.D, "tilt"):
            raise ValueError(f"proposal 'ais-slice': this energy has no Gaussian base measure (d_base={self.config.d_base!r})")
        C = len(p0.log_pi)
        if chains % C or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"proposal 'ais-slice': num_samples={chains} must be a multiple of the base's {C} components "
                             f"and steps={steps!r} a positive integer")
        coordinate, t = coordinate_of(p0, Box(*self.domain)), time.perf_counter()
        p0.log_pi, p0.mu, p0.L = (v.to(self.device) for v in (p0.log_pi, p0.mu, p0.L))

        @torch.no_grad()
        def tilt(z):                     # g = f(x(z))/w: D/w less log p_0, which cancels with the coordinate's Jacobian
            x = coordinate.to_x(z).float().view(len(z), *self.event_shape)
            return self.D.tilt(x).double() / self.w
        run = slice_ais(tilt, p0, chains // C, sigmoid_schedule(steps), generator, progress)
        lz, se, ess = run.estimate()
        lz_k, ess_k = run.components()
        return SliceAISEstimate(lz, se, ess, chains, "ais-slice", not ess >= AIS_LOW_ESS_FRACTION * chains, steps=steps,
                                base="base", schedule="sigmoid", leapfrog=0, log_weight_var=float(run.log_w.var()),
                                seconds=time.perf_counter() - t, chains_per_component=chains // C,
                                component_log_zetas=lz_k.tolist(), component_ess=ess_k.tolist(),
                                evaluations=run.evaluations,
                                log_weights=(run.log_pi[:, None] + run.log_w - math.log(chains // C)).flatten(),
                                samples=coordinate.to_x(run.u.flatten(0, 1)).float().view(chains, *self.event_shape).cpu())

    def raise_log_prob(self, x: torch.Tensor, steps: int, chains: int = 1, base: str = "defensive", leapfrog: int = 1,
                       schedule: str = "sigmoid", step_sizes=None, pilot_steps: int = 200, batch_size: int = 256,
                       generator: torch.Generator | None = None, progress: bool = False) -> RaiseEstimate:
        """RAISE (owf.ais): each point's conservative log-likelihood, log p̂(x) [N], for points x [N,
        *event_shape] inside the domain box (float64 is kept for the coordinate u = atanh, so pass
        dequantised pixels in float64), from `chains` reverse chains of `steps` transitions each,
        with the schedule and kernel of estimate_log_zeta(proposal="ais") (pass its step_sizes to
        reuse its pilot). mean(-log p̂) is an upper bound in expectation of the annealing model's NLL."""
        import time
        from .ais import SCHEDULES, Box, coordinate_of, log_mean_exp, raise_chains
        self._ais_args(chains, steps, leapfrog, pilot_steps)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}: choose one of {SCHEDULES}")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"points of shape {tuple(x.shape[1:])}, expected [N, {', '.join(map(str, self.event_shape))}]")
        if not bool(self.in_domain(x).all()):
            raise ValueError(f"{int((~self.in_domain(x)).sum())} points lie outside the domain box {list(self.domain)}, "
                             "where P_D is 0")
        t = time.perf_counter()
        if step_sizes is None:
            step_sizes = self.tune_ais(base, leapfrog, pilot_steps, generator=generator, progress=progress)
        path = self.ais_path(base, leapfrog)
        box = coordinate_of(self.ais_base(base), Box(*self.domain))
        betas = step_sizes.schedule(steps, schedule)
        u = box.to_u(x.flatten(1)).repeat_interleave(chains, 0)
        out, acc, bad = [], 0.0, 0
        start = path.nonfinite
        per = max(batch_size // chains, 1) * chains
        for i in range(0, len(u), per):
            run = raise_chains(path, u[i:i + per].to(self.device), betas, step_sizes, generator, progress)
            out.append(run.log_w.cpu())
            acc += run.accept * len(run.log_w)
        log_w = torch.cat(out).view(len(x), chains)
        bad = int((~torch.isfinite(log_w)).any(1).sum())
        # in x: log p̂(x) = log mean_c ŵ_c - log|dx/du|, the Jacobian at the float32 u the chains started from
        log_p = log_mean_exp(log_w, 1) - box.log_jac(u[::chains].float().double()).cpu()
        return RaiseEstimate(log_p, steps, chains, base, acc / len(u), path.nonfinite - start, bad,
                             time.perf_counter() - t)

    @torch.no_grad()
    def estimate_log_zeta(self, num_samples: int, proposal: str = "generator", batch_size: int = 65536,
                          generator: torch.Generator | None = None, progress: bool = False,
                          signed: bool = True, preimages: bool | None = None,
                          keep_log_weights: bool = False, logdet: str = "exact", chunk: int | None = None,
                          steps: int = 1000, base: str = "defensive", leapfrog: int = 1, schedule: str = "sigmoid",
                          step_sizes=None, pilot_steps: int = 200):
        """log ζ̂ = log (1/S) Σ s_i exp(energy_on_domain(y_i) - log p(y_i)) from `num_samples` samples of
        `proposal`, in chunks of `batch_size`.

        For the generator, log p(y) is summed over every preimage with preimages=True (None: when
        n <= PREIMAGES_MAX_N; see the module's "All preimages"), and s_i = 1. Otherwise log p is
        Eq. 10's and, with signed=True, s_i = sign(det J) (see "Signed weights"; then the absolute
        value of the sum). keep_log_weights=True keeps log |w_i| and s_i on the estimate (memory
        grows with num_samples), e.g. to draw convergence curves from the same samples.

        On many processes (torchrun; owf.distributed) each rank draws num_samples from its own
        `generator` and the estimate is over all of them: the partials are combined exactly, so it
        equals one process's estimate from the same samples (num_samples counts every rank's; the
        log weights kept with keep_log_weights are this rank's).

        logdet (generator, no preimages): "exact" (Eq. 10, n tangents, `chunk` at a time), "jvp1"
        (Eq. 9's log‖Jv‖ in place of log|det J|: the paper's ζ̂, biased, since its log q is not a
        density), or "both": {"exact": ..., "jvp1": ...}, the two estimators on the same samples.

        proposal="base" (images with --d-base): p_0 itself, so log w = f/w, the network's part of D; with
        the bounded head (--d-quadratic, f <= 0) every weight is in (0, 1] (up to float32 rounding, and
        beyond D's clamp of |x| at BASE_CLAMP, where D reads p_0 at the clamped point).

        proposal="ais": annealed importance sampling (owf.ais) with num_samples chains (M) of `steps`
        (K) HMC transitions of `leapfrog` steps each, from `base` (ais_base) along the `schedule`
        ("sigmoid" or "adaptive"), with step sizes per β from a pilot of `pilot_steps` (or the
        `step_sizes` of an earlier estimate), `batch_size` chains at a time -> AISEstimate. K = 1
        is importance sampling from the base.

        proposal="ais-slice" (images with --d-base): AIS from each Gaussian component of p_0 along a
        sigmoid schedule of `steps` elliptical slice transitions (owf.ais.slice_ais; the tilt is f/w,
        D's network part), num_samples chains shared equally by the components -> SliceAISEstimate."""
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if proposal == "ais-slice":
            return self._estimate_log_zeta_slice(num_samples, steps, generator, progress)
        if proposal == "ais":
            with torch.enable_grad():
                return self._estimate_log_zeta_ais(num_samples, steps, base, leapfrog, schedule, step_sizes,
                                                   pilot_steps, generator, progress, batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal={proposal!r}: choose one of {PROPOSALS}")
        if logdet not in LOGDETS:
            raise ValueError(f"logdet={logdet!r}: choose one of {LOGDETS}")
        p0 = None
        if proposal == "base":    # weights exp(f/w): with a bounded head (f <= 0) all in (0, 1]
            p0 = self.base_density()
            if p0 is None:
                raise ValueError(f"proposal 'base': this energy has no base measure (d_base={self.config.d_base!r})")
        if preimages is None:
            preimages = self.searches_preimages
        preimages = preimages and proposal == "generator"
        if preimages and logdet != "exact":
            raise ValueError(f"logdet={logdet!r} with the preimage search: it sums exact densities")
        signed = signed and proposal == "generator" and not preimages
        names = ("exact", "jvp1") if logdet == "both" and proposal == "generator" else (logdet,)
        # on the energy D/w directly; generator samples by the sign of det J (see "Signed weights")
        parts = {k: torch.tensor([[-math.inf, 0.0, 0.0, 0.0]] * 2, dtype=torch.float64) for k in names}
        kept = {k: [] for k in names}
        bad = done = multi = 0
        with tqdm(total=num_samples, disable=not progress, desc=f"log ζ ({proposal})", unit="sample") as bar:
            while done < num_samples:
                n = min(batch_size, num_samples - done)
                if proposal == "generator":
                    y, dens = self._generator_densities(n, generator, preimages, names, chunk)
                    multi += dens.pop("roots", 0)
                else:
                    if proposal == "normal":
                        y = torch.randn(n, self.G.n, generator=generator, device=self.device)
                        log_p = log_normal(y)
                        y = y.view(n, *self.event_shape)
                    else:
                        y, log_p = self._gaussian_batch(n, generator, p0)
                    dens = {names[0]: (log_p, torch.ones(n, device=self.device))}
                e = self.energy(y)
                finite = torch.isfinite(e)
                for lp, _ in dens.values():
                    finite &= torch.isfinite(lp).to(finite.device)
                bad += int((~finite).sum())                          # samples, each counted once
                e = self._on_domain(y, e)                           # outside the domain: weight 0
                for k, (log_p, sign) in dens.items():
                    sign = sign if signed else torch.ones_like(e)
                    log_w = e.double() - log_p.to(e.device, torch.float64)
                    new = signed_partials(log_w, sign).cpu()
                    parts[k] = torch.stack([combine_partials([parts[k][i], new[i]]) for i in range(2)])
                    if keep_log_weights:
                        kept[k].append((log_w.cpu(), sign.cpu()))
                done += n
                bar.update(n)
        from .distributed import gather_objects, rank_world
        world = rank_world()[1]
        if world > 1:                # many processes: every rank's samples in one estimate (exact partials)
            everyone = gather_objects((parts, bad, multi))
            parts = {k: torch.stack([combine_partials([p[k][i] for p, _, _ in everyone]) for i in range(2)])
                     for k in names}
            bad, multi = sum(b for _, b, _ in everyone), sum(m for _, _, m in everyone)
            num_samples *= world
        if bad:
            raise ValueError(f"{bad} of {num_samples} importance samples had a non-finite energy or proposal "
                             "density; the model is not usable as a density as it stands")
        out = {}
        for k in names:
            log_zeta, se, ess = signed_estimate(*parts[k])
            est = ZetaEstimate(log_zeta, se, ess, num_samples, proposal, ess < LOW_ESS_FRACTION * num_samples,
                               preimages, multi / num_samples if preimages else None,
                               k if proposal == "generator" else None)
            if keep_log_weights:
                est.log_weights, est.signs = (torch.cat(t) for t in zip(*kept[k]))
            if est.low_ess:
                warnings.warn(f"log ζ estimate ({proposal}{', ' + k if proposal == 'generator' else ''}) with ESS "
                              f"{ess:.1f} = {100 * ess / num_samples:.3f}% of {num_samples} samples "
                              f"(< {100 * LOW_ESS_FRACTION:g}%): the estimate is unreliable", RuntimeWarning,
                              stacklevel=2)
            out[k] = est
        return out if logdet == "both" and proposal == "generator" else out[names[0]]

    def _generator_densities(self, n, generator, preimages, names, chunk):
        """y and {logdet name: (log q(y), sign)} for n generator samples (all names on the same y)."""
        if preimages:
            y, log_q, sign, roots = self._generator_batch(n, generator, True)
            return y, {"exact": (log_q, sign), "roots": int((roots > 1).sum())}
        u = self.G.noise(n, generator)
        dens = {}
        if "exact" in names:
            y, ld, sign = self.G.logdet(u, "exact", signed=True, chunk=chunk)
            dens["exact"] = (self.G.log_latent(u) - ld, sign)
        if "jvp1" in names:
            y, ld = self.G.logdet(u, "jvp1", generator)
            dens["jvp1"] = (self.G.log_latent(u) - ld, torch.ones(n, device=u.device))
        return y, dens

    def rebalance_base(self, est: SliceAISEstimate):
        """P_D with each base component's part given back its base weight (docs/likelihood.md, "Where P_D
        puts its mass"). Over a mixture base P_D = e^{f/w} Σ_k π_k N_k / ζ, and part k has mass π_k ζ_k / ζ
        (on the Fashion-MNIST defaults 99% in one component). With slice AIS's ζ̂_k of this D (`est`), D's
        base weights become π'_k = (π_k / ζ̂_k) / Σ_j π_j / ζ̂_j, so that

            P' = e^{f/w} Σ_k π'_k N_k / ζ' = e^{f/w} Σ_k π_k N_k / ζ̂_k,   log ζ' = -log Σ_j π_j / ζ̂_j,

        and log ζ' is cached for log_prob. In memory only: the checkpoint keeps the trained D. Its se is
        the components' delta-method errors (sqrt(1/ESS_k - 1/M_k)) weighted by ∂ log ζ'/∂ log ζ_k = π'_k.
        Once per model: a second call would read π' as π."""
        if getattr(self, "_rebalanced", False):
            raise ValueError("rebalance_base: this model's base weights are already rebalanced")
        log_pi = getattr(self.D, "base_log_pi", None)
        if log_pi is None or not isinstance(est, SliceAISEstimate) or len(est.component_log_zetas) != len(log_pi):
            raise ValueError(f"rebalance_base: needs a mixture base (d_base={self.config.d_base!r}) and a slice AIS "
                             f"estimate of its {0 if log_pi is None else len(log_pi)} components, got {type(est).__name__}")
        lz_k = torch.tensor(est.component_log_zetas, dtype=torch.float64)
        a = log_pi.detach().double().cpu() - lz_k                       # log π_k / ζ̂_k
        log_zeta = -float(torch.logsumexp(a, 0))
        share = torch.softmax(a, 0)                                      # π'_k
        M = est.chains_per_component
        se_k = (1 / torch.tensor(est.component_ess, dtype=torch.float64) - 1 / M).clamp_min(0).sqrt()
        with torch.no_grad():
            log_pi.copy_(torch.log_softmax(a, 0).to(log_pi))
        self._rebalanced = True
        return self.cache_log_zeta(replace(est, log_zeta=log_zeta, se=float((share * se_k).norm()), samples=None,
                                           log_weights=None), save=False)

    def cache_log_zeta(self, est: ZetaEstimate, save: bool = True):
        """Keep `est` for log_prob, and (save=True) write it into the checkpoint atomically."""
        self.zeta = est
        if save and self.checkpoint:
            state = load_checkpoint(self.checkpoint)
            state["log_zeta"] = est.to_dict()
            save_atomic(state, self.checkpoint)
        return self


def load(path: str | os.PathLike, device: str = "cpu") -> OWFModel:
    """A run folder or a checkpoint file -> OWFModel."""
    from .tasks import event_shape_of, networks
    ckpt = checkpoint_path(path)
    state = load_checkpoint(ckpt, map_location=device)
    cfg = Config.from_saved(state["config"])
    G, D = networks(cfg, event_shape_of(cfg, state))
    G, D = G.to(device), D.to(device)
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    return OWFModel(G, D, cfg, state.get("log_zeta"), str(ckpt), device)


def quadrature_log_zeta(model: OWFModel, res: int = 1500, far: float = 4.0, far_res: int = 400) -> dict:
    """log ζ = log ∫_domain exp(energy) by a Riemann sum on a fine grid of the domain box (cells of σ/4
    or finer). Also, as a diagnostic, log ∫ exp(energy) over a box `far` times wider (a coarse grid
    outside the domain) and the share of that mass outside the domain: near 1 means the energy
    grows away from the data and is not normalisable over the plane."""
    from .plots import plane_grid
    lo, hi = model.domain
    h = (hi - lo) / res
    if h > model.data.std / 4:
        res = int(math.ceil((hi - lo) / (model.data.std / 4)))
    pts, area = plane_grid(lo, hi, res)
    inner = _lse_energy(model, pts) + math.log(area)
    big_lo, big_hi = far * lo, far * hi
    pts, area_far = plane_grid(big_lo, big_hi, far_res)
    outside = ~model.in_domain(pts)
    outer = _lse_energy(model, pts[outside]) + math.log(area_far) if outside.any() else -math.inf
    total = float(torch.logaddexp(torch.tensor(inner), torch.tensor(outer)))
    return {"log_zeta": inner, "log_zeta_wide": total, "mass_outside_domain": math.exp(outer - total),
            "cells": res * res}


def _lse_energy(model, pts, chunk=262144) -> float:
    vals = torch.cat([model.energy(p.float()).double().cpu() for p in pts.split(chunk)])
    return float(torch.logsumexp(vals, 0))
