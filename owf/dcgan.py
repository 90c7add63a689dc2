"""The image networks (Appendix C.3.2): a DCGAN one-way-flow generator and a DCGAN energy.

Generator (Eq. 7, 10): u = [z; r] [B, n], n = C·H·W (z the latent of size d, r the noise), then

    Linear(n -> c_1 s²) -> Unflatten(c_1, s, s) -> BN -> act                       s = H / 2^k
    k times: ConvTranspose2d(c_i -> c_{i+1}, 4, stride 2, padding 1) -> BN -> act    (the last: -> C, σ)

σ, the output map, is elementwise with an exact log-derivative (Eq. 10's log|det J| = log|det J_h| +
Σ_i log σ'(a_i), model.output_log_derivative): tanh, or with --g-output margins MarginOutput, the
pre-activation a read as the copula base's normal scores (below).

With --g-base (base_latent = K) u [B, n] is drawn from the copula base's mixture over the normal scores
(d = n, no r) and g_n = σ(u + h(u)) (Residual), h the layers above with its last one zero at the start:
G starts as the base, q = p_0 exactly, and Eq. 17 moves it from there.

The first layer is DCGAN's 1x1 -> s x s transposed convolution written as the GEMM it is. No
activation anywhere is smaller than n (Sec. 2.4: a bottleneck would make J singular), which the
constructor checks, naming the layer that breaks it. The activations have non-zero derivatives
(LeakyReLU by default; ReLU, DCGAN's choice, is refused: where a unit is off, its row of J is zero,
and a sample with more than the layer's width minus n units off has det J = 0, log|det J| = -inf).
Its BatchNorms are per-sample for the tangents (OneWayFlowBase), so log|det J| is each sample's own.

Energy: D(x) of x [B, C, H, W] alone, so no batch-coupled normalisation:

    k times: Conv2d(c_i -> c_{i+1}, 4, stride 2, padding 1) -> LeakyReLU(0.2)
    -> Flatten -> Linear(c_k (H / 2^k)², 1)            (or, quadratic=m, m outputs f and D = -½‖f‖²)

With a base measure (base_w = w > 0): D(x) = f(x) + w log p_0(x), so P_D(x) = exp(D/w)/ζ =
p_0(x) exp(f(x)/w)/ζ: the network corrects a fixed, normalised density p_0 of u = atanh(x) fitted to
the dequantised training split: the Gaussian (--d-base gaussian, owf.baselines.AtanhGaussian) or a
mixture of K of them (--d-base mixture, owf.baselines.AtanhMixture). Its log π [K], μ and Cholesky
factors L are buffers, saved with the network (one Gaussian: μ [n], L [n, n]; a mixture: [K, n], [K, n, n]):
    log p_0(x) = log Σ_k π_k N(u; μ_k, L_k L_kᵀ) - Σ_i log(1 - x_i²),   u = atanh(x), x clamped to ±(1 - 2^-20)
(a generator pixel at tanh's ±1 in float32 would be u = ±∞: there the clamp gives log p_0 a finite,
very low value and a gradient that pulls the pixel back inside). With --d-base copula the mixture is
over the pixels' normal scores z = Φ⁻¹(F(y)) under their histograms (owf.baselines.CopulaMixture; the
histograms' bin log-probabilities [n, 256] are a buffer too):
    log p_0(x) = log Σ_k π_k N(z; μ_k, L_k L_kᵀ) + Σ_i (log p_i[b_i] - log φ(z_i)) + n log 128,   y = 128 (x + 1)
log p_i[b_i] is constant within a bin and jumps at its edges (the dequantised data are uniform within
one): D's gradient in x carries the mixture's dependence but not the margins (G's Eq. 17 does not see
them), and a MALA chain in u = atanh(x) would meet the jumps as rejections, so the chains (owf.negatives,
owf.ais) move in the base's normal scores z, where they cancel (owf.baselines.NormalScores; docs/likelihood.md).
G's output map can move there too (MarginOutput): then the margins cancel in Eq. 17 as well.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .model import OneWayFlowBase, energy_head, generator_activation, log1m_tanh2

BASE_CLAMP = 1 - 2 ** -20
G_OUTPUTS = ("tanh", "margins")


def base_components(d_base: str) -> int:
    """K of the base measure --d-base names (1: none or the Gaussian)."""
    from .baselines import AtanhMixture, CopulaMixture
    return {"mixture": AtanhMixture.COMPONENTS, "copula": CopulaMixture.COMPONENTS}.get(d_base, 1)


def _stages(size: int, n_stages: int) -> int:
    s = size // 2 ** n_stages
    if s < 2 or s * 2 ** n_stages != size:
        raise ValueError(f"image size {size} must be a multiple of 2^{n_stages} with at least 2 x 2 at the "
                         f"smallest scale (one stage per width: got {n_stages} widths)")
    return s


class MarginOutput(nn.Module):
    """G's output map σ onto a copula base's margins (--g-output margins): the pre-activation a [B, C, H, W]
    is read as the pixels' normal scores, x = x(a) of owf.baselines.NormalScores, each pixel through its
    own training histogram p_i (the base's, `fit`):

        x_i = y_i / 128 - 1,   y_i = b_i + (Φ(a_i) - C_i[b_i]) / p_i[b_i]
        Σ_i log σ'(a_i) = Σ_i (log φ(a_i) - log p_i[b_i]) - n log 128          (log_derivative)

    Why: over the copula base, log p_0(x) = log mix(z) + Σ_i (log p_i[b_i] - log φ(z_i)) + n log 128. At
    x = x(a), z = a, and Eq. 17's -D/w - log|det J| loses both sums: G's objective in a is the smooth
    mix(a) exp(f/w) against log|det J_h|. Through tanh the margins stay in it, and log p_i[b_i] is
    piecewise constant in x, so no gradient tells G which bins the data fill. Before `fit`: 256 equal
    bins, x = 2 Φ(a) - 1.

    z = a up to x's float32 rounding, except where x reaches D's clamp ±(1 - 2^-20) (y within Y_EPS of
    0 or 256: a below about -3.7 on a background pixel, whose bin 0 holds half the mass): there x stops
    moving (σ' = 0 in float32, a point mass: log q is not a density there) while log σ'(a) keeps φ(a);
    Eq. 17's -log φ(a) = a²/2 pulls such a back. The training probe logs the share of clamped pixels, as
    it logs tanh's saturated ones."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("log_p_bin", torch.full((n, 256), -math.log(256), dtype=torch.float64))

    def fit(self, base):
        """Take the margins of a fitted owf.baselines.CopulaMixture (the ones D's base reads)."""
        with torch.no_grad():
            self.log_p_bin.copy_(base.log_p_bin)

    def _scores(self):
        """NormalScores of the margins, built at each call (an exp and a cumsum of [n, 256]: a cache keyed on
        the buffer cannot be read while owf_kernels.jvp traces the network)."""
        from .baselines import NormalScores
        return NormalScores(self.log_p_bin)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self._scores().to_x(a.flatten(1)).contiguous().view_as(a)

    def log_derivative(self, a: torch.Tensor) -> torch.Tensor:
        """Σ_i log σ'(a_i) [B] of a [B, ...] (the bins read from x(a) in float32, as D reads them)."""
        return self._scores().log_jac(a.flatten(1))


class DCGANFlow(OneWayFlowBase):
    """A one-way flow for images of `shape` (C, H, W), with widths c_1 > ... (one per resolution) and the
    output map σ named by `output` (G_OUTPUTS)."""

    def __init__(self, shape, widths=(64, 32), latent: int = 100, activation: str = "leaky_relu",
                 negative_slope: float = 0.2, components: int = 1, output: str = "tanh", base_latent: int = 0):
        if output not in G_OUTPUTS:
            raise ValueError(f"generator output {output!r}: choose one of {G_OUTPUTS}")
        C, H, W = shape
        if H != W:
            raise ValueError(f"images must be square, got {H} x {W}")
        n = C * H * W
        k = len(widths)
        s = _stages(H, k)
        mods = [nn.Linear(n, widths[0] * s * s, bias=False), nn.Unflatten(1, (widths[0], s, s)),
                nn.BatchNorm2d(widths[0]), generator_activation(activation, negative_slope)]
        for i in range(k):
            cout = widths[i + 1] if i + 1 < k else C
            last = i + 1 == k
            mods.append(nn.ConvTranspose2d(widths[i], cout, 4, 2, 1, bias=last))
            if not last:
                mods += [nn.BatchNorm2d(cout), generator_activation(activation, negative_slope)]
        out = nn.Tanh() if output == "tanh" else MarginOutput(n)
        if base_latent:              # a = u + h(u), h = the layers above with its last one zero: a = u at the start
            h = nn.Sequential(*mods)
            _check_no_bottleneck(h, n)
            nn.init.zeros_(mods[-1].weight), nn.init.zeros_(mods[-1].bias)
            net, latent = nn.Sequential(Residual(h, shape), out), n
        else:
            net = nn.Sequential(*mods, out)
        _check_no_bottleneck(net, n)
        super().__init__(net, n, latent, event_shape=shape, components=components, base_latent=base_latent)
        self.widths = tuple(widths)

    @classmethod
    def from_config(cls, cfg, shape) -> "DCGANFlow":
        return cls(shape, cfg.widths("g_hidden"), cfg.latent or 100, cfg.g_activation,
                   components=base_components(cfg.d_base) if cfg.g_mixture else 1, output=cfg.g_output,
                   base_latent=base_components(cfg.d_base) if cfg.g_base else 0)


class Residual(nn.Module):
    """a = u + h(u) for u [B, n] and h(u) [B, *shape] (--g-base): with h's last layer zero, the identity, so
    that G starts as its latent, the base's mixture over the normal scores; J_a = I + J_h."""

    def __init__(self, h: nn.Module, shape):
        super().__init__()
        self.h, self.shape = h, tuple(shape)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u.view(u.shape[0], *self.shape) + self.h(u)


def _check_no_bottleneck(net: nn.Sequential, n: int):
    """Every layer's output has at least n numbers per sample, else the layer is named."""
    with torch.no_grad():
        h = torch.zeros(2, n)
        for i, m in enumerate(net):
            h = m.eval()(h) if isinstance(m, nn.BatchNorm2d) else m(h)
            if h[0].numel() < n:
                raise ValueError(f"layer {i} ({m}) outputs {tuple(h.shape[1:])} = {h[0].numel()} numbers per sample, "
                                 f"fewer than n = {n}: a bottleneck makes J singular (Sec. 2.4); widen it")
    net.train()


class ConvEnergy(nn.Module):
    """D(x) for images: a DCGAN discriminator to a scalar (P_D(x) = exp(D(x)/w) / ζ, Eq. 15)."""

    def __init__(self, shape, widths=(32, 64), negative_slope: float = 0.2, quadratic: int = 0, base_w: float = 0.0,
                 base_components: int = 1, base_margins: bool = False):
        super().__init__()
        C, H, W = shape
        self.base_w = base_w
        self.base_components = base_components
        self.base_margins = base_margins
        if base_w:                       # the base measure's log π, μ and L, filled by fit_base or a checkpoint
            n, k = C * H * W, base_components
            lead = (k,) if k > 1 else ()
            self.register_buffer("base_mu", torch.zeros(*lead, n, dtype=torch.float64))
            self.register_buffer("base_L", torch.eye(n, dtype=torch.float64).expand(*lead, n, n).clone())
            if k > 1:
                self.register_buffer("base_log_pi", torch.full((k,), -math.log(k), dtype=torch.float64))
            if base_margins:             # --d-base copula: each pixel's bin log-probabilities [n, 256]
                self.register_buffer("base_log_p_bin", torch.full((n, 256), -math.log(256), dtype=torch.float64))
        s = _stages(H, len(widths))
        mods, c = [], C
        for cout in widths:
            mods += [nn.Conv2d(c, cout, 4, 2, 1), nn.LeakyReLU(negative_slope)]
            c = cout
        # no bias on a linear output: D is defined up to a constant, which ζ absorbs (as Energy)
        mods += [nn.Flatten(), nn.Linear(c * s * s, quadratic or 1, bias=quadratic > 0)]
        self.net = nn.Sequential(*mods)
        self.quadratic = quadratic

    @classmethod
    def from_config(cls, cfg, shape) -> "ConvEnergy":
        return cls(shape, cfg.widths("d_hidden"), quadratic=cfg.d_quadratic,
                   base_w=cfg.w if cfg.d_base != "none" else 0.0, base_components=base_components(cfg.d_base),
                   base_margins=cfg.d_base == "copula")

    def fit_base(self, base):
        """Take the base measure from a fitted owf.baselines.GaussianBase or, with base_components > 1,
        a GaussianMixtureBase of as many components (of u = atanh x), or with base_margins a
        CopulaMixture (of the pixels' normal scores z)."""
        k = len(base.log_pi) if hasattr(base, "log_pi") else 1
        if k != self.base_components:
            raise ValueError(f"a base of {k} components for an energy built for {self.base_components}")
        if hasattr(base, "log_p_bin") != self.base_margins:
            raise ValueError(f"a {type(base).__name__} base for an energy built "
                             f"{'with' if self.base_margins else 'without'} histogram margins (--d-base copula)")
        with torch.no_grad():
            if self.base_margins:
                self.base_log_p_bin.copy_(base.log_p_bin)
            self.base_mu.copy_(base.mu.reshape_as(self.base_mu))
            self.base_L.copy_(base.L.reshape_as(self.base_L))
            if k > 1:
                self.base_log_pi.copy_(base.log_pi)

    def log_base(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """log p_0(x) [B] (float64) for x [B, C, H, W] (see the module docstring); with base components
        k [B] (a mixture base), the joint log π_k p_0,k(x) instead."""
        u, log_jac = self._coordinate(x)
        if k is not None:
            log_n = self._log_components(u).gather(0, k.view(1, -1)).squeeze(0)
        elif self.base_components > 1:
            log_n = torch.logsumexp(self._log_components(u), 0)
        else:
            eps = torch.linalg.solve_triangular(self.base_L, (u - self.base_mu).T, upper=False)
            log_n = (-0.5 * (eps * eps).sum(0) - self.base_L.diagonal().log().sum()
                     - 0.5 * len(self.base_mu) * math.log(2 * math.pi))
        return log_n + log_jac

    def log_base_components(self, x: torch.Tensor) -> torch.Tensor:
        """log π_k p_0,k(x) [B, K] (float64) for x [B, C, H, W] and every component k of a mixture base: the
        terms whose logsumexp over k is log_base(x), each with the coordinate's Jacobian."""
        u, log_jac = self._coordinate(x)
        return self._log_components(u).T + log_jac[:, None]

    def _coordinate(self, x: torch.Tensor):
        """(the base Gaussians' coordinate [B, n], log|d coordinate/dx| [B]), float64: u = atanh(x) and
        -Σ log(1 - x²), or with histogram margins the normal scores z of y = 128 (x + 1) and
        Σ log dz/dy + n log 128 (owf.baselines.normal_scores)."""
        x = x.flatten(1).double().clamp(-BASE_CLAMP, BASE_CLAMP)
        if self.base_margins:
            from .baselines import NormalScores
            z, log_dz = NormalScores(self.base_log_p_bin).scores(128 * (x + 1))
            return z, log_dz + x.shape[1] * math.log(128)
        u = torch.atanh(x)
        return u, -log1m_tanh2(u).sum(1)

    def _log_components(self, u: torch.Tensor) -> torch.Tensor:
        """log π_k N(u; μ_k, L_k L_kᵀ) [K, B] of u [B, n] (float64): eps_k = L_k⁻¹ (u - μ_k) [K, n, B],
        one batched triangular solve."""
        eps = torch.linalg.solve_triangular(self.base_L, (u[None] - self.base_mu[:, None]).transpose(1, 2),
                                            upper=False)
        return (-0.5 * (eps * eps).sum(1) - self.base_L.diagonal(dim1=1, dim2=2).log().sum(1)[:, None]
                - 0.5 * u.shape[1] * math.log(2 * math.pi) + self.base_log_pi[:, None])

    def component_energy(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """D(x) + w log r_k(x) [B] of x [B, C, H, W] and base components k [B], r_k(x) = π_k N_k(u) /
        Σ_j π_j N_j(u) the base mixture's posterior of k (u: the base's coordinate, atanh x or the normal
        scores z; its Jacobian cancels in it): the energy
        of P_D's share of component k, P_D,k = r_k P_D ∝ π_k p_0,k exp(f/w), which sums to P_D over k.
        A generator with a matching mixture latent (OneWayFlowBase.draw) targets it per component
        (owf.train). The logsumexp of log_base cancels, so it is f + w (log π_k N_k(u) + log|du/dx|),
        one batched solve as D's own."""
        if self.base_components == 1:
            raise ValueError("component_energy needs a base mixture (base_components > 1), this energy has one Gaussian")
        return self._energy(x, k)

    def base_density(self):
        """p_0 as a normalised density of u (owf.baselines.GaussianBase or GaussianMixtureBase's
        interface: sample, log_prob, scale, n), read from the buffers; None without a base."""
        if not self.base_w:
            return None
        from .baselines import CopulaMixture, GaussianMixtureBase
        k = self.base_components
        parts = (self.base_log_pi.cpu().clone() if k > 1 else torch.zeros(1, dtype=torch.float64),
                 self.base_mu.view(k, -1).cpu().clone(), self.base_L.view(k, *self.base_L.shape[-2:]).cpu().clone())
        if self.base_margins:
            return CopulaMixture(*parts, self.base_log_p_bin.cpu().clone())
        return GaussianMixtureBase(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._energy(x)

    def tilt(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) [B], the network's part of D = f + w log p_0 (D itself without a base): P_D ∝ p_0 e^{f/w},
        the tilt owf.ais.slice_ais anneals in."""
        return energy_head(self.net(x), self.quadratic)

    def _energy(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """f(x) + w log p_0(x), or with base components k, f(x) + w log π_k p_0,k(x) (component_energy)."""
        f = self.tilt(x)
        return f + (self.base_w * self.log_base(x, k)).to(f.dtype) if self.base_w else f
