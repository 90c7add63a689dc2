"""Exact baselines for an image model's test bits/dim, and the normalised densities that AIS starts from.

Every number is on the scale the README uses: 8-bit pixels u8 dequantised uniformly,
y = u8 + U ∈ [0, 256)^n, bits/dim = -log2 p(y) / n. P_D and the bases below live on the pixel box
x = y / 128 - 1 ∈ [-1, 1)^n, where p_y(y) = p_x(x) / 128^n.

- `PixelHistogram`: each pixel independent, a 256-bin histogram of the training split with add-one
  smoothing, piecewise constant within a bin: p(y) = Π_i (c_i[u8_i] + 1) / (N + 256). Exact; the
  dequantisation noise does not change it.
- `AtanhGaussian` (a `GaussianBase`): a Gaussian N(μ, Σ) in the unconstrained coordinate u = atanh(x), fitted to
  *dequantised* training images (the bin centres would give a pixel that is always 0 a tiny σ, and
  a dequantised test pixel then tens of nats), Σ shrunk towards its mean variance by `shrink`.
  p_x(x) = N(u; μ, Σ) / |dx/du|, log|dx/du| = Σ_i log(1 - x_i²).
- `CopulaMixture`: a Gaussian mixture over the pixels' normal scores z_i = Φ⁻¹(F_i(y_i)), F_i the
  histogram's CDF (piecewise linear): the histogram's margins exactly, the pixels' dependence from
  the mixture (one Gaussian: the Gaussian copula). Exact; --d-base copula's p_0.
- `code_lengths`: the test split as bytes under LZMA (`lzma.compress(..., preset=9 | PRESET_EXTREME)`,
  one stream of the raw uint8 [N, C, H, W]), and each image as its own optimised PNG file, headers
  included (PIL, `optimize=True`). A code length is a likelihood of the discrete pixels, which
  bounds the dequantised density's (Theis et al. 2016): bits/dim comparable with the rest.

The densities double as AIS bases (owf.ais): a base is a normalised density of u, the coordinate
the chains move in, with `sample(n, generator) -> u [n, n_dim]`, `log_prob(u) -> [n]` and `scale`
[n_dim] (u's spread per coordinate, the chains' preconditioner). u is atanh(x) (owf.ais.Box) unless
the base names its own `coordinate` (CopulaMixture: the normal scores, NormalScores). Everything in u is computed from u
itself, never from x = tanh(u), which rounds to ±1 in float32 beyond |u| ≈ 9.
"""
from __future__ import annotations

import io
import lzma
import math
from functools import cached_property, partial

import torch

from .model import log1m_tanh2

LZMA_PRESET = 9 | lzma.PRESET_EXTREME
BINS = 256


def dequantised_y(u8: torch.Tensor, generator=None) -> torch.Tensor:
    """u8 [N, ...] -> t = u8 + U [N, n] in (0, 256), U ~ U(0, 1) (kept ≥ 1e-12), float64: one noise draw each."""
    U = torch.rand(u8.shape, generator=generator, dtype=torch.float64).clamp_min_(1e-12)
    return (u8.double() + U).flatten(1)


def dequantised_u(u8: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """u8 [N, ...] -> (u, log|dx/du|): u = atanh(x) [N, n] of the dequantised x = (u8 + U)/128 - 1,
    U ~ U(0, 1), and log|dx/du| = Σ log(1 - x²) [N], both in float64 and both from t = u8 + U directly:
    1 + x = t/128, 1 - x = (256 - t)/128, so u = ½ log(t / (256 - t)) never meets atanh(±1)."""
    t = dequantised_y(u8, generator)
    u = 0.5 * (torch.log(t) - torch.log(256 - t))
    return u, (torch.log(t / 128) + torch.log((256 - t) / 128)).sum(1)


def _on(obj, name: str, device) -> torch.Tensor:
    """obj.<name> on `device`, copied there once and kept (a base's tables are read at every step)."""
    cache = obj.__dict__.setdefault("_device_copies", {})
    if (name, device) not in cache:
        cache[(name, device)] = getattr(obj, name).to(device)
    return cache[(name, device)]


def bits_per_dim(nll_nats, n: int) -> float:
    """NLL in nats on the [-1, 1] scale (a number, or a tensor to average) -> bits/dim on the [0, 256)
    scale, where p_y = p_x / 128^n. In float64."""
    return (float(torch.as_tensor(nll_nats, dtype=torch.float64).mean()) + n * math.log(128)) / (n * math.log(2))


class PixelHistogram:
    """Per-pixel 256-bin histograms (add-one smoothing) of training images u8 [N, C, H, W]."""

    def __init__(self, train_u8: torch.Tensor):
        self.shape = tuple(train_u8.shape[1:])
        self.n = math.prod(self.shape)
        flat = train_u8.reshape(len(train_u8), self.n).long()
        counts = torch.zeros(self.n, BINS, dtype=torch.float64)
        counts.scatter_add_(1, flat.T, torch.ones(self.n, len(flat), dtype=torch.float64))
        # log-probability of each bin [n, 256], and the log-density on [-1, 1] (a bin is 2/256 wide)
        self.log_p_bin = torch.log(counts + 1) - math.log(len(flat) + BINS)
        self.log_density = self.log_p_bin + math.log(BINS / 2)
        self.cdf = torch.cumsum(self.log_p_bin.exp(), 1)
        # u's spread per pixel: the std of atanh(x) under the histogram, by the bin centres
        centres = torch.atanh((torch.arange(BINS, dtype=torch.float64) + 0.5) / 128 - 1)
        p = self.log_p_bin.exp()
        mean = (p * centres).sum(1)
        self.scale = ((p * (centres - mean[:, None]) ** 2).sum(1)).sqrt().float()

    def log_prob_u8(self, u8: torch.Tensor) -> torch.Tensor:
        """log p_x of dequantised images (any noise within the bins) [N] on the [-1, 1] scale."""
        flat = u8.reshape(len(u8), self.n).long()
        return self.log_density.gather(1, flat.T).sum(0)

    def _bins(self, u: torch.Tensor) -> torch.Tensor:
        # x = tanh u, so (x + 1)/2 = σ(2u): the bin is floor(256 σ(2u)), exact where x rounds to ±1
        return (torch.sigmoid(2 * u.double()) * BINS).floor().clamp_(0, BINS - 1).long()

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u) = log p_x(tanh u) + log|dx/du| [B] for u [B, n] (float64)."""
        lp = _on(self, "log_density", u.device).gather(1, self._bins(u).T).sum(0)
        return lp + log1m_tanh2(u.double()).sum(1)

    def sample(self, num: int, generator=None) -> torch.Tensor:
        """u = atanh(x) [num, n] (float32), x uniform within a bin drawn from each pixel's histogram."""
        r = torch.rand(num, self.n, generator=generator, dtype=torch.float64)
        b = torch.searchsorted(self.cdf, r.T.contiguous()).T.clamp_(max=BINS - 1)
        t = b + torch.rand(num, self.n, generator=generator, dtype=torch.float64).clamp_min_(1e-12)
        return (0.5 * (torch.log(t) - torch.log(BINS - t))).float()


class GaussianBase:
    """N(μ, Σ) fitted to samples u [N, n] of the chains' coordinate, Σ ← (1 - shrink) Σ + shrink ·
    mean(diag Σ) I (full rank for coordinates that never change)."""

    def __init__(self, u: torch.Tensor, shrink: float = 1e-3):
        u = u.double()
        self.n = u.shape[1]
        self.mu = u.mean(0)
        cov = torch.cov(u.T).reshape(self.n, self.n)
        cov = (1 - shrink) * cov + shrink * cov.diagonal().mean() * torch.eye(self.n, dtype=cov.dtype)
        self.L = torch.linalg.cholesky(cov)
        self.scale = cov.diagonal().sqrt().float()
        self._log_norm = -self.L.diagonal().log().sum() - 0.5 * self.n * math.log(2 * math.pi)

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log N(u; μ, Σ) [B] for u [B, n] (float64)."""
        eps = torch.linalg.solve_triangular(_on(self, "L", u.device), (u.double() - _on(self, "mu", u.device)).T,
                                            upper=False)
        return -0.5 * (eps * eps).sum(0) + float(self._log_norm)

    def sample(self, num: int, generator=None) -> torch.Tensor:
        eps = torch.randn(num, self.n, generator=generator, dtype=torch.float64)
        return (self.mu + eps @ self.L.T).float()


class OnPixels:
    """A density of u = atanh(x) read as one of dequantised images (AtanhGaussian, AtanhMixture)."""

    def log_prob_u8(self, u8: torch.Tensor, generator=None) -> torch.Tensor:
        """log p_x of dequantised images [N] (one noise draw each) on the [-1, 1] scale."""
        u, log_jac = dequantised_u(u8, generator)
        return self.log_prob(u) - log_jac


class AtanhGaussian(OnPixels, GaussianBase):
    """The Gaussian in u = atanh(x) of dequantised training images u8 [N, C, H, W] (one noise draw
    each, from `seed`)."""

    def __init__(self, train_u8: torch.Tensor, shrink: float = 1e-3, seed: int = 0):
        self.shape = tuple(train_u8.shape[1:])
        super().__init__(dequantised_u(train_u8, torch.Generator().manual_seed(seed))[0], shrink)


class GaussianMixtureBase:
    """Σ_k π_k N(u; μ_k, Σ_k): log_pi [K], mu [K, n] and L [K, n, n] lower triangular (Σ_k = L_k L_kᵀ),
    the tensors ConvEnergy keeps. `fit` fits one to samples by EM."""

    PCA_DIMS = 50
    KMEANS_ITERATIONS = 20

    def __init__(self, log_pi: torch.Tensor, mu: torch.Tensor, L: torch.Tensor):
        self.log_pi, self.mu, self.L = log_pi.double(), mu.double(), L.double()
        self.n = self.mu.shape[1]

    @cached_property
    def scale(self) -> torch.Tensor:
        """u's spread per coordinate under the mixture [n]: the chains' preconditioner. Computed on first use
        (a pass over L, K x n x n), not at construction: OneWayFlowBase builds one per call of --g-base's latent."""
        pi = self.log_pi.exp()[:, None]
        second = (pi * (self.L.pow(2).sum(2) + self.mu ** 2)).sum(0)
        return (second - (pi * self.mu).sum(0) ** 2).clamp_min(0).sqrt().float()

    @classmethod
    def fit(cls, u: torch.Tensor, components: int, iterations: int, shrink: float = 1e-3, seed: int = 0):
        """K = `components` full-covariance Gaussians fitted by EM to samples u [N, n] (Dempster et al.
        1977), each Σ_k shrunk towards the samples' mean variance v̄: Σ_k ← (1 - shrink) Σ_k + shrink v̄ I.
        The start is k-means on the samples' top PCA_DIMS principal coordinates (KMEANS_ITERATIONS
        Lloyd steps from K samples drawn with `seed`): hard responsibilities r_ik, then `iterations`
        EM rounds of

            M: π_k = mean_i r_ik,  μ_k = Σ_i r_ik u_i / Σ_i r_ik,  Σ_k = Σ_i r_ik (u_i - μ_k)(u_i - μ_k)ᵀ / Σ_i r_ik
            E: r_ik = softmax_k(log π_k + log N(u_i; μ_k, Σ_k))

        and a last M step."""
        u = u.double()
        if not 1 <= components <= len(u):
            raise ValueError(f"components={components} must be in [1, {len(u)}] (the number of samples)")
        if iterations < 0:
            raise ValueError(f"iterations={iterations} must be >= 0")
        r = torch.nn.functional.one_hot(_kmeans(u, components, seed, cls.PCA_DIMS, cls.KMEANS_ITERATIONS),
                                        components).double()
        for _ in range(iterations):
            r = torch.softmax(cls(*_m_step(u, r, shrink))._log_joint(u), 1)
        return cls(*_m_step(u, r, shrink))

    def _log_joint(self, u: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(u_i; μ_k, Σ_k) [B, K], one component at a time (B may be the whole split)."""
        return torch.stack([lp + _log_normal_chol(u, mu, L) for lp, mu, L in
                            zip(_on(self, "log_pi", u.device), _on(self, "mu", u.device), _on(self, "L", u.device))], 1)

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log Σ_k π_k N(u; μ_k, Σ_k) [B] for u [B, n] (float64)."""
        return torch.logsumexp(self._log_joint(u.double()), 1)

    def sample(self, num: int, generator=None) -> torch.Tensor:
        return self.sample64(num, generator).float()

    def sample64(self, num: int, generator=None, device=None) -> torch.Tensor:
        """num draws [num, n] in float64, on the generator's device (without one, on `device`, default the
        CPU): k ~ Cat(π), u = μ_k + L_k ε."""
        device = generator.device if generator is not None else torch.device(device or "cpu")
        log_pi, mu, L = (_on(self, name, device) for name in ("log_pi", "mu", "L"))
        k = torch.multinomial(log_pi.exp(), num, replacement=True, generator=generator)
        eps = torch.randn(num, self.n, generator=generator, dtype=torch.float64, device=device)
        return mu[k] + component_rows(k, eps, L)


def component_rows(k: torch.Tensor, eps: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """The rows L_{k_i} ε_i [B, n] for labels k [B], ε [B, n] and factors L [K, n, n]: one matrix product per
    component present (ε ~ N(0, I) gives N(0, Σ_k))."""
    out = torch.empty_like(eps)
    for j in k.unique().tolist():
        pick = k == j
        out[pick] = eps[pick] @ L[j].T
    return out


def _kmeans(u: torch.Tensor, k: int, seed: int, dims: int, iterations: int) -> torch.Tensor:
    """Cluster labels [N] of u [N, n] by Lloyd's k-means on its top `dims` principal coordinates; no
    cluster is empty."""
    centred = u - u.mean(0)
    _, _, V = torch.linalg.svd(centred[:10_000], full_matrices=False)     # the axes of (at most) 10k samples
    p = centred @ V[:dims].T
    centres = p[torch.randperm(len(p), generator=torch.Generator().manual_seed(seed))[:k]]
    for _ in range(iterations + 1):
        dist = torch.cdist(p, centres)
        a = dist.argmin(1)
        for j in range(k):             # an empty cluster restarts at the point farthest from its own centre
            if not (a == j).any():
                far = int(dist.min(1).values.argmax())
                a[far], dist[far] = j, 0
        centres = torch.stack([p[a == j].mean(0) for j in range(k)])
    return a


def _m_step(u: torch.Tensor, r: torch.Tensor, shrink: float):
    """EM's M step: (log π [K], μ [K, n], L [K, n, n]) from responsibilities r [N, K]."""
    mass = r.sum(0)
    if (mass < 1).any():
        raise ValueError(f"mixture component {int(mass.argmin())} of K = {len(mass)} holds {float(mass.min()):.3g} of "
                         f"the N = {len(u)} samples' responsibility (< 1): fewer components, or more samples")
    mu = (r.T @ u) / mass[:, None]
    # shrunk towards the samples' mean variance: a component on one point stays full rank
    ridge = shrink * u.var(0, correction=0).mean() * torch.eye(u.shape[1], dtype=u.dtype)
    L = []
    for k in range(len(mass)):
        d = u - mu[k]
        cov = (d * r[:, k:k + 1]).T @ d / mass[k]
        L.append(torch.linalg.cholesky((1 - shrink) * cov + ridge))
    return (mass / len(u)).log(), mu, torch.stack(L)


def _log_normal_chol(u: torch.Tensor, mu: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """log N(u; μ, L Lᵀ) [B] for u [B, n], μ [n] and L [n, n] lower triangular (float64)."""
    eps = torch.linalg.solve_triangular(L, (u - mu).T, upper=False)
    return -0.5 * (eps * eps).sum(0) - L.diagonal().log().sum() - 0.5 * len(mu) * math.log(2 * math.pi)


class AtanhMixture(OnPixels, GaussianMixtureBase):
    """The Gaussian mixture in u = atanh(x) of dequantised training images u8 [N, C, H, W] (one noise
    draw each, from `seed`, as AtanhGaussian): COMPONENTS Gaussians after ITERATIONS EM rounds, with
    no labels (docs/likelihood.md: 3.95 bits/dim on Fashion-MNIST's test split, the Gaussian's 4.233)."""

    COMPONENTS = 10
    ITERATIONS = 6

    def __init__(self, train_u8: torch.Tensor, shrink: float = 1e-3, seed: int = 0):
        self.shape = tuple(train_u8.shape[1:])
        fitted = GaussianMixtureBase.fit(dequantised_u(train_u8, torch.Generator().manual_seed(seed))[0],
                                         self.COMPONENTS, self.ITERATIONS, shrink, seed)
        super().__init__(fitted.log_pi, fitted.mu, fitted.L)


Y_EPS = 128 * 2 ** -20     # y = 128 (x + 1) kept in [Y_EPS, 256 - Y_EPS]: x clamped to ±(1 - 2^-20) as dcgan.BASE_CLAMP


def normal_scores(y: torch.Tensor, log_p_bin: torch.Tensor, cdf_lo: torch.Tensor):
    """Each pixel's dequantised value y [B, n] in [0, 256) through its own histogram's CDF and the
    standard normal's quantile (a Gaussian copula's margins):

        z_i = Φ⁻¹(F_i(y_i)),   F_i(y) = C_i[b] + (y - b) p_i[b],   b = ⌊y⌋,   C_i[b] = Σ_{j<b} p_i[j]
        log dz_i/dy_i = log p_i[b] - log φ(z_i)

    with p_i = exp(log_p_bin) [n, 256] and C = cdf_lo [n, 256]. -> (z [B, n], Σ_i log dz_i/dy_i [B]),
    float64, differentiable in y (the bin b is not: F is continuous across bin edges, dz/dy is not)."""
    y = y.double().clamp(Y_EPS, BINS - Y_EPS)
    b = y.detach().floor().clamp_(0, BINS - 1).long()
    log_p = log_p_bin.T.gather(0, b)
    z = torch.special.ndtri(cdf_lo.T.gather(0, b) + (y - b) * log_p.exp())
    return z, (log_p + 0.5 * z * z).sum(1) + y.shape[1] * 0.5 * math.log(2 * math.pi)


class NormalScores:
    """The coordinate z of a CopulaMixture, as owf.ais.Box is atanh's: z_i = Φ⁻¹(F_i(y_i)) of y = 128 (x + 1)
    (normal_scores), with to_x, to_u and log_jac. In z the base is a Gaussian mixture, smooth, where in
    u = atanh(x) its margins jump at every bin edge (a MALA chain there stalls at steps of ~1e-3).

        x(z) = y/128 - 1,   y_i = b_i + (Φ(z_i) - C_i[b_i]) / p_i[b_i]   (b_i: C_i[b_i] ≤ Φ(z_i) < C_i[b_i + 1])
        log|dx/dz| = Σ_i (log φ(z_i) - log p_i[b_i]) - n log 128

    log_jac reads b from x(z) in float32, as the energy reads it (ConvEnergy.log_base), so that the
    margins' jumps cancel exactly in log f = D(x(z))/w + log|dx/dz| (owf.ais.box_log_f)."""

    def __init__(self, log_p_bin: torch.Tensor):
        self.log_p_bin = log_p_bin.double()
        p = self.log_p_bin.exp()
        self.cdf_lo = torch.cumsum(p, 1) - p          # C[b] = Σ_{j<b} p[j]

    def scores(self, y: torch.Tensor):
        """normal_scores with these margins: (z [B, n], Σ log dz/dy [B])."""
        return normal_scores(y, _on(self, "log_p_bin", y.device), _on(self, "cdf_lo", y.device))

    def to_y(self, z: torch.Tensor) -> torch.Tensor:
        """y [B, n] in [Y_EPS, 256 - Y_EPS] (float64, differentiable in z) of z [B, n]."""
        F_ = torch.special.ndtr(z.double()).T.contiguous()                                      # [n, B]
        cdf_lo, log_p = _on(self, "cdf_lo", z.device), _on(self, "log_p_bin", z.device)
        b = torch.searchsorted(cdf_lo, F_.detach(), right=True).sub_(1).clamp_(0, BINS - 1)
        y = b + (F_ - cdf_lo.gather(1, b)) / log_p.gather(1, b).exp()
        return torch.minimum(y.clamp(min=Y_EPS), (b + 1).double()).clamp(max=BINS - Y_EPS).T

    def to_x(self, z: torch.Tensor) -> torch.Tensor:
        return (self.to_y(z) / 128 - 1).to(z.dtype)

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(128 * (x.double() + 1))[0]

    def log_jac(self, z: torch.Tensor) -> torch.Tensor:
        """log|dx/dz| [B] for z [B, n] (the bins b of x(z) in float32, module docstring)."""
        with torch.no_grad():
            y = (128 * (self.to_x(z.float()).double() + 1)).clamp(Y_EPS, BINS - Y_EPS)
            b = y.floor().clamp_(0, BINS - 1).long()
        log_p = _on(self, "log_p_bin", z.device).T.gather(0, b)
        z = z.double()
        return (-0.5 * z * z - log_p).sum(1) - z.shape[1] * (0.5 * math.log(2 * math.pi) + math.log(128))


class CopulaMixture(OnPixels, GaussianMixtureBase):
    """A Gaussian mixture over the pixels' normal scores z (normal_scores: each pixel through its own
    256-bin histogram of the training split, add-one smoothed and uniform within a bin, PixelHistogram's):

        p_y(y) = Σ_k π_k N(z; μ_k, Σ_k) · Π_i p_i[b_i] / φ(z_i),   y = 128 (x + 1) ∈ [0, 256)^n

    With one standard normal component it is the histogram itself (`margins_only`); a full covariance
    adds the pixels' dependence (the Gaussian copula), K components (EM on the training split's z,
    GaussianMixtureBase.fit) a mixture of copulas. On Fashion-MNIST: the histogram 4.59 bits/dim, one
    Gaussian 3.88, K = 10 3.69, where the same Gaussians in u = atanh(x) score 4.23 and 3.95: a Gaussian
    in atanh space pays for every background pixel's uniform dequantisation noise, which it cannot
    shape (docs/likelihood.md).

    A base in its own coordinate z (`coordinate`, NormalScores; the others' is u = atanh x): log_prob,
    sample and scale are the mixture's of z. The mixture's log π, μ, L and the margins' log_p_bin
    [n, 256] are what ConvEnergy keeps."""

    COMPONENTS = 10
    ITERATIONS = 6

    def __init__(self, log_pi: torch.Tensor, mu: torch.Tensor, L: torch.Tensor, log_p_bin: torch.Tensor,
                 coordinate: NormalScores | None = None):
        super().__init__(log_pi, mu, L)
        if coordinate is not None and not torch.equal(coordinate.log_p_bin, log_p_bin.double()):
            raise ValueError("log_p_bin differs from the given coordinate's margins")
        self.coordinate = coordinate or NormalScores(log_p_bin)
        self.log_p_bin = self.coordinate.log_p_bin

    @classmethod
    def fit_pixels(cls, train_u8: torch.Tensor, components: int = COMPONENTS, shrink: float = 1e-3, seed: int = 0):
        """The margins of training images u8 [N, C, H, W] (PixelHistogram) and K = `components` Gaussians
        fitted by EM (ITERATIONS rounds) to their normal scores, one dequantisation draw each from `seed`
        (dequantised_u's)."""
        coordinate = NormalScores(PixelHistogram(train_u8).log_p_bin)
        y = dequantised_y(train_u8, torch.Generator().manual_seed(seed))
        z = torch.cat([coordinate.scores(part)[0] for part in y.split(5000)])
        fitted = GaussianMixtureBase.fit(z, components, cls.ITERATIONS, shrink, seed)
        out = cls(fitted.log_pi, fitted.mu, fitted.L, coordinate.log_p_bin, coordinate)
        out.shape = tuple(train_u8.shape[1:])
        return out

    def margins_only(self) -> "CopulaMixture":
        """The histogram in this coordinate: one standard normal component (the defensive base's broad half)."""
        n = self.n
        return CopulaMixture(torch.zeros(1), torch.zeros(1, n), torch.eye(n)[None], self.log_p_bin, self.coordinate)

    def log_prob_u8(self, u8: torch.Tensor, generator=None) -> torch.Tensor:
        """log p_x of dequantised images [N] (one noise draw each, dequantised_u's) on the [-1, 1] scale."""
        z, log_dz = self.coordinate.scores(dequantised_y(u8, generator))
        return self.log_prob(z) + log_dz + z.shape[1] * math.log(128)


class UniformBox:
    """The uniform density on a box [lo, hi]^n, as a density of u with x = c + h tanh(u):
    p(u) = Π_i ½(1 - tanh² u_i), whatever the box (its volume cancels the Jacobian's h). It holds
    mass wherever P_D can, the walls and noise included (AIS's defensive base)."""

    def __init__(self, n: int):
        self.n = n
        self.scale = torch.full((n,), 0.9)            # the std of atanh(U(-1, 1)) is π/(2√3) ≈ 0.91

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return (log1m_tanh2(u.double()) - math.log(2.0)).sum(1)

    def sample(self, num: int, generator=None) -> torch.Tensor:
        t = torch.rand(num, self.n, generator=generator, dtype=torch.float64).clamp_min_(1e-12)
        return (0.5 * (torch.log(t) - torch.log1p(-t))).float()    # atanh(2t - 1)


class MixtureBase:
    """Σ_j π_j p_j(u): a defensive mixture of bases (Hesterberg 1995), e.g. the uniform box with a
    fitted Gaussian, so that AIS's chains start both where the data are and everywhere else.
    `scale` is the first component's (the chains' preconditioner)."""

    def __init__(self, components, weights):
        if len(components) != len(weights) or min(weights) <= 0:
            raise ValueError(f"mixture weights {list(weights)} must be positive, one per component")
        self.components = list(components)
        self.log_weights = torch.tensor(weights, dtype=torch.float64).log() - math.log(sum(weights))
        self.n, self.scale = self.components[0].n, self.components[0].scale
        coordinates = [getattr(c, "coordinate", None) for c in self.components]
        if any(c is not coordinates[0] for c in coordinates):
            raise ValueError(f"a mixture of bases in different coordinates ({[type(c).__name__ for c in self.components]}): "
                             "each must be a density of the same u")
        if coordinates[0] is not None:
            self.coordinate = coordinates[0]

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(torch.stack([lw + c.log_prob(u) for lw, c in zip(self.log_weights, self.components)]), 0)

    def sample(self, num: int, generator=None) -> torch.Tensor:
        j = torch.multinomial(self.log_weights.exp(), num, replacement=True, generator=generator)
        out = torch.empty(num, self.n)
        for i, c in enumerate(self.components):
            pick = j == i
            if pick.any():
                out[pick] = c.sample(int(pick.sum()), generator)
        return out


def defensive_base(p0) -> MixtureBase:
    """½ p0 + ½ a broad density in p0's own coordinate (Hesterberg 1995), so that chains start both where the
    data are and everywhere else: the uniform box in u = atanh x, or over a CopulaMixture, a density of its
    normal scores, the histogram (margins_only: the uniform box has no smooth density there)."""
    broad = p0.margins_only() if isinstance(p0, CopulaMixture) else UniformBox(p0.n)
    return MixtureBase([p0, broad], [0.5, 0.5])


def code_lengths(test_u8: torch.Tensor) -> dict:
    """Bits/dim of the test split u8 [N, C, H, W] as one LZMA stream and as optimised PNG files."""
    from PIL import Image
    n_pix = test_u8[0].numel()
    raw = test_u8.contiguous().numpy().tobytes()
    lz = len(lzma.compress(raw, preset=LZMA_PRESET))
    png = 0
    for img in test_u8:
        a = img.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="PNG", optimize=True)
        png += buf.tell()
    return {"lzma_bits_per_dim": 8 * lz / (len(test_u8) * n_pix), "lzma_preset": "9 | PRESET_EXTREME",
            "png_bits_per_dim": 8 * png / (len(test_u8) * n_pix)}


def baseline_table(train_u8: torch.Tensor, test_u8: torch.Tensor, seed: int = 0, gaussian: AtanhGaussian | None = None,
                   histogram: PixelHistogram | None = None, mixture: GaussianMixtureBase | None = None) -> dict:
    """Every baseline's test bits/dim (the Gaussian's with one dequantisation draw from `seed`, and
    its standard error over images); a run's own base measure p_0's where one is given (--d-base
    mixture or copula: its EM fit takes minutes), as `base_measure`, with the same draws."""
    n = math.prod(test_u8.shape[1:])
    histogram = histogram or PixelHistogram(train_u8)
    gaussian = gaussian or AtanhGaussian(train_u8)
    per = n * math.log(2)
    h = -histogram.log_prob_u8(test_u8)
    out = {"histogram_bits_per_dim": bits_per_dim(h, n), "histogram_bits_per_dim_se": float(h.std()) / per / len(h) ** 0.5}
    for name, density in (("atanh_gaussian", gaussian), ("base_measure", mixture)):
        if density is not None:      # a fitted GaussianMixtureBase (D's atanh one) is OnPixels' in u = atanh x
            score = density.log_prob_u8 if isinstance(density, OnPixels) else partial(OnPixels.log_prob_u8, density)
            nll = torch.cat([-score(b, torch.Generator().manual_seed(seed + i))
                             for i, b in enumerate(test_u8.split(2000))])
            out.update({f"{name}_bits_per_dim": bits_per_dim(nll, n),
                        f"{name}_bits_per_dim_se": float(nll.std()) / per / len(nll) ** 0.5})
    return {**out, **code_lengths(test_u8)}
