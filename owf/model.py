"""The one-way-flow generator (Sec. 2.4) and the energy discriminator (Sec. 2.1).

Generator:  G(z) = g_n(g_u(z)),  g_u(z) = [z; r],  z ~ N(0, I_d),  r ~ N(0, I_{n-d})      (Eq. 7)
            g_n: R^n -> R^n any network with no layer narrower than n (no bottleneck): an MLP for
            the 2D data (OneWayFlow).
Density at its own samples (Eq. 10):
            log q(y) = log N(z) + log N(r) - log|det J|,   J = ∂g_n/∂u at u = [z; r]   [n, n]
This is the change of variables for an injective g_n. An MLP is not guaranteed to be one (nor onto
R^n: a tanh network's image is bounded); where g_n folds, Eq. 10 counts one preimage only.

log|det J| estimators:
- "exact": push T = n tangent directions (the columns of I_n) through the network alongside the
  forward pass (`owf_kernels.jvp`; an MLP runs as one mlp_jvp node of linear_jvp layers), giving J
  column by column, then slogdet (closed form for n = 2). Used for the 2D experiments.
- "jvp1": the paper's one-sample estimate log|det J| ≈ log‖Jv‖, v uniform on the unit sphere
  (Eq. 9): a single tangent. This is a *training signal* (the paper's Appendix B argues that
  maximising it raises the true log-det; `python -m owf.experiments.logdet_success` measures
  how often), not an unbiased estimate of log|det J|, and log q built from it is not a
  normalised density.
- "jvp1-tanh": for g_n = tanh ∘ h (the DCGAN flow), log|det J| = log|det J_h| + Σ_i log(1 - tanh² a_i),
  a = h(u): the output tanh's term exactly (elementwise, so free: from the pre-activation a), and
  Eq. 9's log‖J_h v‖ for h alone. Eq. 9 sees a direction's stretch, which the largest singular
  values dominate; a saturated output pixel (tanh' ≈ 0) is a near-zero singular value it barely
  notices, and the exact term weighs each one. Any elementwise output map σ with a known
  log-derivative takes tanh's place (output_log_derivative: dcgan.MarginOutput).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from owf_kernels import jvp

LOGDET_METHODS = ("exact", "jvp1", "jvp1-tanh")
G_ACTIVATION_MODULES = {"tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "softplus": nn.Softplus, "silu": nn.SiLU,
                        "sigmoid": nn.Sigmoid}
G_ACTIVATIONS = tuple(G_ACTIVATION_MODULES)        # σ' ≠ 0 (a.e.), so J stays full rank
D_ACTIVATIONS = {"leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "softplus": nn.Softplus, "tanh": nn.Tanh,
                 "elu": nn.ELU, "gelu": nn.GELU}


def log1m_tanh2(a: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh² a) = 2 (log 2 - |a| - log(1 + e^{-2|a|})), elementwise, exact where tanh a rounds
    to ±1 (float32 beyond |a| ≈ 9, float64 beyond 19): tanh's log-derivative from its pre-activation."""
    a = a.abs()
    return 2 * (math.log(2.0) - a - F.softplus(-2 * a))


def output_log_derivative(net: nn.Module):
    """For g_n = σ ∘ h, σ elementwise with its log-derivative known (net a Sequential ending in σ): the
    map a [B, ...] -> Σ_i log|σ'(a_i)| [B] (nn.Tanh: log1m_tanh2; a layer with a `log_derivative`, e.g.
    dcgan.MarginOutput), else None."""
    if not isinstance(net, nn.Sequential):
        return None
    if isinstance(net[-1], nn.Tanh):
        return lambda a: log1m_tanh2(a.flatten(1)).sum(1)
    return getattr(net[-1], "log_derivative", None)


def log_normal(u: torch.Tensor) -> torch.Tensor:
    """log N(u; 0, I) summed over the last dimension: [..., n] -> [...]."""
    return -0.5 * (u * u).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi)


def slogdet(m: torch.Tensor):
    """torch.linalg.slogdet of [..., n, n], with its LU factorisation on one CPU thread: MKL's threaded
    getrf (oneMKL 2024.2, in torch 2.14's wheels) never returns on some CPUs (it prints "Parameter 6 was
    incorrect on entry to DLASWP" and spins) for n >= 256 with two threads or more. Its backward
    (solves with the saved factors) is unaffected. One thread costs little: 8 LUs of 784 x 784 in 0.07 s."""
    threads = torch.get_num_threads()
    if m.device.type != "cpu" or threads == 1:
        return torch.linalg.slogdet(m)
    torch.set_num_threads(1)
    try:
        return torch.linalg.slogdet(m)
    finally:
        torch.set_num_threads(threads)


def slogdet_cols(jac_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign of det J, log|det J|) from tangents y_dot [T=n, B, n], where J[b][:, t] = y_dot[t, b] -> [B], [B]."""
    if jac_cols.shape[0] == 2 and jac_cols.shape[2] == 2:
        det = _det2(jac_cols)
        return det.sign().to(jac_cols.dtype), torch.log(torch.abs(det)).to(jac_cols.dtype)
    out = slogdet(jac_cols.permute(1, 2, 0))
    return out.sign, out.logabsdet


def logabsdet(jac_cols: torch.Tensor) -> torch.Tensor:
    """log|det J| from tangents y_dot [T=n, B, n], where J[b][:, t] = y_dot[t, b] -> [B]."""
    if jac_cols.shape[0] == 2 and jac_cols.shape[2] == 2:
        return torch.log(torch.abs(_det2(jac_cols))).to(jac_cols.dtype)     # no sign: the training step's path
    return slogdet(jac_cols.permute(1, 2, 0)).logabsdet


def _det2(jac_cols):
    """det J for n = 2, J = [[a, b], [c, d]] with a, c = y_dot[0, :, :] and b, d = y_dot[1, :, :],
    formed in float64: in fp32 a saturated sample's det can underflow to 0 and make log|det J| = -inf.
    One conversion of all four entries (one op, and one node in backward), then views of it."""
    J = jac_cols.double()
    (a, c), (b, d) = J[0].unbind(-1), J[1].unbind(-1)
    return a * d - b * c


FOLD_CHECK_MAX_N = 16    # det J of every sample costs n tangents: the fold check is for small n only
LATENT_SHIFT = 8.0       # a mixture latent's component means m_k = c e_k: z_k ~ N(c, 1) against N(0, 1), so the
                         # log-odds of k against j given u, c (u_k - u_j), are 64 ± 11 (at c = 3: 26% of p(k|u) < 0.9)


def generator_activation(name: str, negative_slope: float = 0.2) -> nn.Module:
    """The module of a generator activation named in G_ACTIVATIONS."""
    if name not in G_ACTIVATIONS:
        raise ValueError(f"generator activation {name!r}: choose one of {G_ACTIVATIONS} "
                         "(their derivatives are non-zero, so J stays full rank)")
    return nn.LeakyReLU(negative_slope) if name == "leaky_relu" else G_ACTIVATION_MODULES[name]()


class OneWayFlowBase(nn.Module):
    """y = g_n(g_u(z)) with log q(y) on request (Eq. 10): latent z [d], noise r [n - d], u = [z; r],
    and g_n = `net`, any module of u [B, n] that keeps n dimensions (y [B, *event_shape]). Its
    tangents come from owf_kernels.jvp with per-sample BatchNorm: each sample's own Jacobian, which
    is what Eq. 10's log|det J| means. Subclasses build `net`."""

    def __init__(self, net: nn.Module, n: int, d: int | None = None, event_shape=None, components: int = 1,
                 base_latent: int = 0):
        super().__init__()
        d = n if d is None else d
        if not 1 <= d <= n:
            raise ValueError(f"latent size d={d} must be in [1, n={n}]")
        if not 1 <= components <= d:
            raise ValueError(f"latent components={components} must be in [1, d={d}] (component k shifts z_k)")
        self.net, self.n, self.d = net, n, d
        self.event_shape = tuple(event_shape) if event_shape is not None else (n,)
        self.components = components
        if components > 1:        # the latent mixture: log π_k (set to the base measure's, owf.tasks) and c
            self.register_buffer("latent_log_pi", torch.full((components,), -math.log(components)))
            self.register_buffer("latent_shift", torch.tensor(LATENT_SHIFT))
        self.base_latent = base_latent
        if base_latent:           # u ~ a Gaussian mixture of base_latent components over all n dimensions (fit_base_latent)
            if d != n or components != 1:
                raise ValueError(f"a base latent is all of u: it needs d = n = {n} and one component, got d={d}, "
                                 f"components={components}")
            self.register_buffer("base_log_pi", torch.full((base_latent,), -math.log(base_latent), dtype=torch.float64))
            self.register_buffer("base_mu", torch.zeros(base_latent, n, dtype=torch.float64))
            self.register_buffer("base_L", torch.eye(n, dtype=torch.float64).repeat(base_latent, 1, 1))

    @torch.no_grad()
    def fit_base_latent(self, base):
        """Take a fitted Gaussian mixture's log π [K], μ [K, n] and Cholesky factors L [K, n, n]
        (owf.baselines.GaussianMixtureBase, e.g. the copula base's mixture over the normal scores) as u's density."""
        if base.log_pi.shape != self.base_log_pi.shape or base.mu.shape != self.base_mu.shape:
            raise ValueError(f"a base of {tuple(base.mu.shape)} means for a latent of {tuple(self.base_mu.shape)}")
        for name in ("log_pi", "mu", "L"):
            getattr(self, "base_" + name).copy_(getattr(base, name))

    def _base_mixture(self):
        """The base latent's mixture (owf.baselines.GaussianMixtureBase) over this model's buffers."""
        from .baselines import GaussianMixtureBase
        return GaussianMixtureBase(self.base_log_pi, self.base_mu, self.base_L)

    def draw(self, batch: int, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(u [batch, n], k [batch] or None): u = g_u(z, r) = [z; r] (Eq. 7).
        One component: z ~ N(0, I_d) and r ~ N(0, I_{n-d}) independent, so one draw of n standard
        normals is both, and k is None.
        K components (a mixture latent): k ~ Cat(π), z ~ N(m_k, I_d), m_k = c e_k (c = latent_shift),
        so u has the density p(u) = Σ_k π_k N(u - m_k) (log_latent), and Eq. 10 with it is still the
        exact log q(y) = log p(u) - log|det J|.
        A base latent (base_latent = K): u ~ Σ_k π_k N(μ_k, L_k L_kᵀ) over all n dimensions (d = n, no r),
        the fitted mixture of fit_base_latent, and k is None (no component targets: Eq. 17 on q's marginal)."""
        w = next(self.parameters())
        device = device or w.device
        # drawn on the generator's own device (a CPU stream can seed a CUDA model), then moved
        on = generator.device if generator else device
        if self.base_latent:        # drawn in float64; k is not returned: Eq. 17 takes q's marginal
            return self._base_mixture().sample64(batch, generator, on).to(device, w.dtype), None
        u = torch.randn(batch, self.n, generator=generator, device=on, dtype=w.dtype)
        if self.components == 1:
            return u.to(device), None
        k = torch.multinomial(self.latent_log_pi.exp().to(on), batch, replacement=True, generator=generator)
        u[torch.arange(batch, device=on), k] += self.latent_shift.to(on, w.dtype)
        return u.to(device), k.to(device)

    def log_latent(self, u: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        """The latent's log-density [B] at u [B, n]: log N(u; 0, I) with one component; with K, the
        mixture's log p(u) = log Σ_j π_j N(u - c e_j), or with k [B] the joint log p(k, u) = log π_k +
        log N(u - c e_k). ‖u - c e_j‖² = ‖u‖² - 2c u_j + c², so log N(u - c e_j) = log N(u) + c u_j - c²/2."""
        if self.base_latent:        # log Σ_j π_j N(u; μ_j, L_j L_jᵀ), in float64
            return self._base_mixture().log_prob(u).to(u.dtype)
        if self.components == 1:
            return log_normal(u)
        c = self.latent_shift.to(u.dtype)
        log_j = self.latent_log_pi.to(u.dtype) + c * u[:, :self.components] - c * c / 2      # [B, K]
        pick = torch.logsumexp(log_j, 1) if k is None else log_j.gather(1, k.view(-1, 1)).squeeze(1)
        return log_normal(u) + pick

    def noise(self, batch: int, generator=None, device=None) -> torch.Tensor:
        """u [batch, n] of draw(), without the components."""
        return self.draw(batch, generator, device)[0]

    def g_u(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """[z; r]: z [B, d], r [B, n - d] -> u [B, n] (Eq. 7), e.g. to hold z and redraw r."""
        if z.shape[-1] != self.d or r.shape[-1] != self.n - self.d:
            raise ValueError(f"z must be [B, d={self.d}] and r [B, n - d={self.n - self.d}], got z "
                             f"{tuple(z.shape)} and r {tuple(r.shape)}")
        return torch.cat([z, r], -1)

    def g_n(self, u: torch.Tensor) -> torch.Tensor:
        """The network alone, no tangents: [B, n] -> [B, *event_shape]."""
        return self.net(u)

    def g_n_jvp(self, u: torch.Tensor, u_dot: torch.Tensor):
        """The network with tangents: u [B, n], u_dot [T, B, n] -> y [B, *event_shape], y_dot [T, B, *event_shape]."""
        return jvp(self.net, (u,), (u_dot,), batch_norm="per_sample")

    def jacobian_columns(self, u: torch.Tensor, chunk: int | None = None, net: nn.Module | None = None):
        """y and all n columns of J at u [B, n]: the identity tangents (batch-constant, so an MLP's
        first layer takes linear_jvp's broadcast path) pushed through g_n (or `net`) -> y_dot [n, B, n].
        chunk=T pushes them T at a time (the primal again with each chunk), so that the stacked
        activations of one pass, (1+T)·B samples' worth, bound the memory rather than (1+n)·B."""
        B, n = u.shape
        eye = torch.eye(n, dtype=u.dtype, device=u.device)
        push = self.g_n_jvp if net is None else (lambda x, v: jvp(net, (x,), (v,), batch_norm="per_sample"))
        if chunk is None or chunk >= n:
            y, y_dot = push(u, eye.unsqueeze(1).expand(n, B, n))
            return y, y_dot.reshape(n, B, n)
        cols, stats = [], None
        for i in range(0, n, chunk):
            e = eye[i:i + chunk]
            y, y_dot = push(u, e.unsqueeze(1).expand(len(e), B, n))
            cols.append(y_dot.reshape(len(e), B, n))
            if self.training:        # train-mode BatchNorm: running statistics updated by the first chunk only
                if stats is None:
                    stats = [b.clone() for b in self.buffers()]
                else:
                    with torch.no_grad():
                        for b, s in zip(self.buffers(), stats):
                            b.copy_(s)
        return y, torch.cat(cols)

    def logdet(self, u: torch.Tensor, method: str = "exact", generator=None, signed: bool = False,
               chunk: int | None = None):
        """(y, log|det J| estimate) at u [B, n]; with signed=True (exact only) also the sign of det J [B].
        chunk: the exact log-det's tangents per pass (jacobian_columns); above n = 2 its slogdet is
        taken in float64 (the 2D step keeps its closed form, _det2, float64 inside)."""
        B, n = u.shape
        out_ld = output_log_derivative(self.net)
        if method == "exact" and n > 2 and out_ld is not None:
            # g_n = σ(h(u)), σ elementwise: log|det J| = log|det J_h| + Σ_i log σ'(a_i), the second
            # term from the pre-activation a, in a form that saturation cannot round to log 0 (a
            # DCGAN's background pixels sit at tanh's ±1, where 1 - y² is exactly 0 in float32): log1m_tanh2
            a, a_dot = self.jacobian_columns(u, chunk, net=self.net[:-1])
            sign, ld = slogdet_cols(a_dot.double())
            ld = ld + out_ld(a.reshape(B, n).double())
            y = self.net[-1](a)
            return (y, ld.to(u.dtype), sign.to(u.dtype)) if signed else (y, ld.to(u.dtype))
        if method == "exact":
            y, y_dot = self.jacobian_columns(u, chunk)
            if n > 2 and y_dot.dtype != torch.float64:
                sign, ld = slogdet_cols(y_dot.double())
                sign, ld = sign.to(u.dtype), ld.to(u.dtype)
            else:
                sign, ld = slogdet_cols(y_dot)
            return (y, ld, sign) if signed else (y, ld)
        if signed:
            raise ValueError("signed=True needs method='exact': jvp1's ‖Jv‖ carries no sign of det J")
        if method == "jvp1-tanh":
            if out_ld is None:
                last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
                raise ValueError(f"logdet='jvp1-tanh' needs a generator g_n = σ ∘ h whose last layer σ is nn.Tanh or "
                                 f"has a log_derivative (dcgan.MarginOutput), got {type(last).__name__}")
            v = torch.randn(B, n, generator=generator, device=u.device, dtype=u.dtype)
            v = v / v.norm(dim=-1, keepdim=True)
            a, a_dot = jvp(self.net[:-1], (u,), (v.unsqueeze(0),), batch_norm="per_sample")
            ld = torch.log(a_dot.squeeze(0).reshape(B, -1).norm(dim=-1)) + out_ld(a.reshape(B, -1)).to(a.dtype)
            return self.net[-1](a), ld
        if method == "jvp1":
            v = torch.randn(B, n, generator=generator, device=u.device, dtype=u.dtype)
            v = v / v.norm(dim=-1, keepdim=True)              # uniform on S^{n-1}
            y, y_dot = self.g_n_jvp(u, v.unsqueeze(0))
            # Eq. 9: log|det J| ≈ log‖Jv‖. squeeze(0), not y_dot[0]: its backward is a view, where
            # select's backward writes the gradient into a zero-filled [1, B, n] copy
            return y, torch.log(y_dot.squeeze(0).reshape(B, n).norm(dim=-1))
        raise ValueError(f"logdet method {method!r}: choose one of {LOGDET_METHODS}")

    def exact_logdet_at_batch(self, u: torch.Tensor, batch_u: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """The exact log|det J| [k] at u [k, n] (all n tangents, differentiable in the parameters) of
        the g_n that a training batch batch_u [S, n] defines: its BatchNorms normalise by batch_u's
        statistics, which keep their graph (the S samples' estimates carry the same path). A sub-batch
        of k << S samples thus gets the log-det of the function the S samples were drawn from, not of
        one normalised by k samples, and each of the k values is, in value and gradient, that sample's
        own exact log-det in a train-mode pass over batch_u (what exact_entropy_control_variate needs
        for a term both carry to cancel). Running statistics are left as they were. In eval mode, and
        for a BatchNorm held in eval mode inside a training g_n, the running statistics are used, as a
        forward pass would.

        How: a train-mode pass over batch_u records each BatchNorm's batch mean μ and biased variance
        σ², with their graph; they are folded into its affine for an eval-mode pass over u,

            γ' = γ √(1 + ε) / √(σ² + ε),   β' = β − μ γ / √(σ² + ε),   running mean 0, variance 1,

        so that eval's (x − 0) / √(1 + ε) · γ' + β' = γ (x − μ) / √(σ² + ε) + β, with γ' and β'
        functions of the parameters (the running statistics take no gradient in eval-mode BatchNorm)."""
        bns = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if not self.training or not bns:
            return self.logdet(u, "exact", chunk=chunk)[1]
        stats, modes = {}, [(m, m.training) for m in self.modules()]
        saved = [(m.running_mean, m.running_var, m.num_batches_tracked, m._parameters["weight"], m._parameters["bias"])
                 for m in bns]

        def keep(m, args):              # batch mean and biased variance, as train-mode BatchNorm uses them
            h = args[0]
            dims = [0] + list(range(2, h.dim()))
            stats[m] = (h.mean(dims), h.var(dims, unbiased=False))

        hooks = [m.register_forward_pre_hook(keep) for m in bns]
        try:
            for m in bns:               # the pass's running-statistics update goes to copies
                if m.running_mean is not None:                    # (None: track_running_stats=False)
                    m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
                    m.num_batches_tracked = m.num_batches_tracked.clone()
            self.g_n(batch_u)
            for h in hooks:
                h.remove()
            for m in bns:
                mean, var = stats[m]
                scale = torch.rsqrt(var + m.eps)
                gamma = m.weight if m.weight is not None else torch.ones_like(mean)
                beta = m.bias if m.bias is not None else torch.zeros_like(mean)
                m._parameters["weight"] = gamma * scale * math.sqrt(1.0 + m.eps)
                m._parameters["bias"] = beta - mean * gamma * scale
                m.running_mean, m.running_var = torch.zeros_like(mean), torch.ones_like(var)
            self.eval()
            ld = self.logdet(u, "exact", chunk=chunk)[1]
        finally:
            for h in hooks:
                h.remove()              # (removing twice is harmless)
            for m, (mean, var, count, weight, bias) in zip(bns, saved):
                m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
                m._parameters["weight"], m._parameters["bias"] = weight, bias
            for m, mode in modes:
                m.training = mode
        return ld

    @torch.no_grad()
    def det_sign_fractions(self, u: torch.Tensor) -> tuple[float, float]:
        """Fractions of the points u [B, n] where det J < 0 and where det J > 0.

        Eq. 10 counts one preimage per sample. That is exact only if g_n is injective. A continuous
        g_n whose det J takes both signs has a fold curve (det J = 0) and covers the region past it
        more than once, so there the true q(y) is a sum over preimages and log q from Eq. 10 is
        too low, and log ζ̂ from Eq. 16 too high. Both fractions clearly above zero is that warning."""
        _, y_dot = self.jacobian_columns(u)
        sign, _ = slogdet_cols(y_dot.double())
        return float((sign < 0).double().mean()), float((sign > 0).double().mean())

    def sample_with_log_prob(self, batch: int, method: str = "exact", generator=None, signed: bool = False,
                             chunk: int | None = None, return_u: bool = False):
        """y [B, *event_shape], log q(y) [B] (Eq. 10, with the latent's own density: log_latent) and
        log|det J| [B]; with signed=True also sign(det J) [B]; with return_u=True also the input noise
        u [B, n] and the latent components k [B] (None with one) last (training re-uses both)."""
        u, k = self.draw(batch, generator)
        y, ld, *sign = self.logdet(u, method, generator, signed, chunk)
        return (y, self.log_latent(u) - ld, ld, *sign) + ((u, k) if return_u else ())

    @torch.no_grad()
    def sample(self, batch: int, generator=None) -> torch.Tensor:
        return self.g_n(self.noise(batch, generator))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.g_n(u)


class OneWayFlow(OneWayFlowBase):
    """The 2D experiments' generator: g_n an MLP n -> hidden... -> n, every hidden width >= n (no
    bottleneck), `activation` after every layer but the last. On owf_kernels.jvp its layers run as
    one mlp_jvp node; checkpoints saved when they were a ModuleList `layers` load (the keys map)."""

    def __init__(self, n: int = 2, d: int | None = None, hidden=(128, 128), activation: str = "tanh",
                 negative_slope: float = 0.2):
        if any(h < n for h in hidden):
            raise ValueError(f"hidden widths {tuple(hidden)} must all be >= n={n} (no bottleneck)")
        widths = [n, *hidden, n]
        mods = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                mods.append(generator_activation(activation, negative_slope))
        super().__init__(nn.Sequential(*mods), n, d)
        self.activation, self.negative_slope = activation, negative_slope
        self._register_load_state_dict_pre_hook(self._old_keys)

    @property
    def layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @staticmethod
    def _old_keys(state_dict, prefix, *args):
        """layers.{i}.weight (the ModuleList of before 2026-12-01) -> net.{2i}.weight."""
        for k in [k for k in state_dict if k.startswith(prefix + "layers.")]:
            i, rest = k[len(prefix) + len("layers."):].split(".", 1)
            state_dict[f"{prefix}net.{2 * int(i)}.{rest}"] = state_dict.pop(k)

    @classmethod
    def from_config(cls, cfg, n: int) -> "OneWayFlow":
        """The generator a training config (owf.config.Config) describes, for data of dimension n."""
        return cls(n, cfg.latent or None, hidden=cfg.widths("g_hidden"), activation=cfg.g_activation)


class Energy(nn.Module):
    """D(x): an MLP to a scalar; P_D(x) = exp(D(x)/w) / ζ (Eq. 15).

    quadratic=m > 0 replaces the scalar output layer by m outputs f(x) and D(x) = -½‖f(x)‖². A
    LeakyReLU f is piecewise affine, f(x) = A x + c on each linear region, so D is piecewise
    *quadratic*: each region's P_D is a Gaussian's shape, -½ (x - μ)ᵀ AᵀA (x - μ) + const, where a
    linear head gives piecewise-linear cones that fall too slowly near a mode's centre (README,
    "What we tried"). D ≤ 0 is bounded above, and falls quadratically away from the data.
    """

    def __init__(self, n: int = 2, hidden=(128, 128), negative_slope: float = 0.2, activation: str = "leaky_relu",
                 quadratic: int = 0):
        super().__init__()
        if activation not in D_ACTIVATIONS:
            raise ValueError(f"discriminator activation {activation!r}: choose one of {list(D_ACTIVATIONS)}")
        if quadratic < 0:
            raise ValueError(f"quadratic={quadratic} must be >= 0 (0: a linear output layer)")
        self.quadratic = quadratic
        widths = [n, *hidden, quadratic or 1]
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            # no bias on a linear output: D is defined up to a constant, which ζ absorbs (Eq. 16 and
            # 17 do not see it), so its gradient would be pure rounding noise that Adam amplifies.
            # The quadratic head's output bias is not a constant of D: it places the peaks.
            layers.append(nn.Linear(a, b, bias=i < len(widths) - 2 or quadratic > 0))
            if i < len(widths) - 2:
                layers.append(nn.LeakyReLU(negative_slope) if activation == "leaky_relu" else D_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, n: int) -> "Energy":
        """The discriminator a training config (owf.config.Config) describes, for data of dimension n."""
        return cls(n, hidden=cfg.widths("d_hidden"), activation=cfg.d_activation,
                   quadratic=cfg.d_quadratic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return energy_head(self.net(x), self.quadratic)


def energy_head(f: torch.Tensor, quadratic: int) -> torch.Tensor:
    """D from the network's output f [..., m] (quadratic = m: D = -½‖f‖²) or [..., 1] (quadratic = 0: D = f)."""
    return -0.5 * (f * f).sum(-1) if quadratic else f.squeeze(-1)
