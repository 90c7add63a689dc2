"""The losses, one callable per equation, in the paper's symbols and in log space.

x: data [B, n]; y = G(z): generator samples [S, n]; d_x = D(x) [B]; d_y = D(y) [S];
log_q = log q(y) [S] (Eq. 10); logdet = log|det J| [S]; w: the entropy weight of Appendix C.1.
"""
from __future__ import annotations

import math

import torch

from owf_kernels import log_zeta


def log_zeta_hat(d_y: torch.Tensor, log_q: torch.Tensor, w: float) -> torch.Tensor:
    """log ζ̂ = logsumexp_i(D(y_i)/w - log q(y_i)) - log S   (Eq. 2, with Eq. 15's 1/w)."""
    return log_zeta(d_y, log_q, w)


def data_kernel_proposal(x: torch.Tensor, num: int, generator=None, bandwidth: float = 0.0):
    """Samples of a Gaussian kernel density of the data batch, with their exact log-density: the
    defensive part of log ζ̂'s importance samples (Config.defensive). x: data [B, n] -> (y [num, n],
    log k(y) [num]), where

        k(y) = (1/B) Σ_j N(y; x_j, h² I),   y = x_J + h ε,  J ~ U{1..B}, ε ~ N(0, I).

    Given the batch, k is a fixed density that puts mass at every mode the data has, so adding its
    samples to G's keeps log ζ̂ unbiased (each weight exp(D(y)/w - log k(y)) has mean ζ) and keeps
    it from missing a mode that G has lost: with G's samples alone, ζ̂ does not see such a mode,
    and Eq. 16 then pays D 1/K nats per nat (K modes) for lowering every other mode's energy
    against it, a drift that Adam follows at full speed (the runaway of the README's grid seed 4).
    h: `bandwidth`, or, when 0, the median distance from a data point to its nearest neighbour in
    the batch (detached; about σ/2 on the 2D mixtures). x may be [B, *shape] (images): the kernel
    is then on the flattened x, and y comes back as [num, *shape]."""
    shape = x.shape[1:]
    x = x.detach().flatten(1)
    if bandwidth > 0:
        h = torch.tensor(bandwidth, dtype=x.dtype, device=x.device)
    else:
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        h = d.min(1).values.median()
    gdev = generator.device if generator is not None else x.device
    j = torch.randint(x.shape[0], (num,), generator=generator, device=gdev).to(x.device)
    y = x[j] + h * torch.randn(num, x.shape[1], generator=generator, device=gdev).to(x.device)
    n = x.shape[1]
    log_n = -0.5 * torch.cdist(y, x).square() / h ** 2 - n * torch.log(h) - 0.5 * n * math.log(2 * math.pi)
    return y.view(num, *shape), torch.logsumexp(log_n, 1) - math.log(x.shape[0])


def uniform_box_proposal(like: torch.Tensor, num: int, generator=None):
    """Samples of the uniform density on the pixel box [-1, 1]^n, with their exact log-density
    -n log 2: the defensive part of log ζ̂'s importance samples for images (Config.defensive_proposal
    "uniform"). It holds mass wherever P_D can, so a region where exp(D/w) grows that neither the
    data nor G visit (noise, say) is seen by ζ̂, and Eq. 16 pushes D down there. like: a batch
    [B, *shape] giving the shape, dtype and device -> (y [num, *shape], log k(y) [num])."""
    shape = like.shape[1:]
    gdev = generator.device if generator is not None else like.device
    y = (2 * torch.rand(num, *shape, generator=generator, device=gdev, dtype=like.dtype) - 1).to(like.device)
    return y, torch.full((num,), -math.log(2.0) * like[0].numel(), dtype=like.dtype, device=like.device)


def discriminator_loss_eq16(d_x, d_y, log_q, w: float, log_zeta_fn=log_zeta_hat) -> torch.Tensor:
    """Eq. 16: -mean D(x)/w + log ζ̂, the negative log-likelihood of the data under P_D.
    log_zeta_fn(d_y, log_q, w): log ζ̂ (on many processes, over every rank's samples:
    owf.distributed.global_log_zeta)."""
    return -(d_x / w).mean() + log_zeta_fn(d_y, log_q, w)


def generator_loss_eq17(d_y, logdet, w: float) -> torch.Tensor:
    """Eq. 17: mean(-w log|det J| - D(y)) = w·KL(P_G ‖ P_D) + const: the generator's entropy
    (through log|det J|) is maximised alongside D."""
    return (-w * logdet - d_y).mean()


def exact_entropy_control_variate(logdet: torch.Tensor, logdet_exact: torch.Tensor) -> torch.Tensor:
    """Eq. 17's entropy term mean_S log|det J| from S estimates logdet [S] (Eq. 9's, or its exact-σ
    form jvp1-tanh) and the exact log|det J| of the first K of the same samples, logdet_exact [K]:

        mean_S(logdet) + mean_K(logdet_exact - logdet[:K])

    unbiased for the exact mean whatever the estimate (the S draws are exchangeable, so the first K
    are a uniform subset), in value and gradient. With g_n = σ ∘ h, both carry the same exact
    Σ_i log σ'(a_i) on the K samples, whose value cancels in the difference, so that term enters for
    all S samples rather than K: through --g-output margins it is what cancels D's margins, and through
    tanh it is -2,000 to -3,500 nats that would otherwise vary with the K samples drawn. Its gradient
    cancels too, per sample: OneWayFlowBase.exact_logdet_at_batch keeps the path through train-mode
    BatchNorm's batch statistics that the S estimates' a carries."""
    k = len(logdet_exact)
    if not 0 < k <= len(logdet):
        raise ValueError(f"logdet_exact holds {k} samples; it must hold 1 to len(logdet) = {len(logdet)}")
    return logdet.mean() + (logdet_exact - logdet[:k]).mean()


def generator_loss_renyi(d_y, logdet, log_q, w: float, alpha: float, softmax=None) -> torch.Tensor:
    """Eq. 17 with each sample weighted by its self-normalised importance weight to the power 1 - α:
    the reparameterised gradient of the Rényi divergence D_α(q ‖ P_D) (Li & Turner, 2016, the VR
    bound), Σ_i w̄_i (-w log|det J_i| - D(y_i)) with w̄ = softmax((1 - α)(D(y)/w - log q)) (detached).
    α = 1 is Eq. 17 (w̄ = 1/S). α < 1 leans on the samples where P_D/q is large, i.e. where G's mass
    is thin for P_D (a mode G is losing), which Eq. 17's mode-seeking KL(q ‖ P_D) pulls back only
    in proportion to the few samples that still land there. softmax(v): w̄ from v [S] (default
    torch.softmax; on many processes the softmax over every rank's samples, times the world size,
    because the ranks' gradients are averaged)."""
    if alpha == 1.0:
        return generator_loss_eq17(d_y, logdet, w)
    v = (1.0 - alpha) * (d_y.detach() / w - log_q.detach())
    wbar = torch.softmax(v, 0) if softmax is None else softmax(v)
    return (wbar * (-w * logdet - d_y)).sum()


def oriented_logdet(logdet: torch.Tensor, sign: torch.Tensor, margin: float = 3.0) -> torch.Tensor:
    """An orientation-keeping stand-in for log|det J| in the generator's loss (Eq. 17), for exact
    log-dets. logdet, sign: log|det J| and sign(det J) [S] -> [S].

    Why: Eq. 10 is the change of variables of an injective g_n. Once g_n folds, det J takes both
    signs, and -w log|det J| is a barrier at det J = 0 from *both* sides: it holds the fold in
    place. Here, with s the batch's majority sign and x = s·det J (x > 0 on the majority side),

        f(x) = log x                       for x >= ε      (the paper's term, unchanged)
        f(x) = log ε - 1 + x/ε             for |x| < ε     (the tangent line of log at ε)
        f(x) = 2 log ε - 2 - log(-x)       for x <= -ε     (log reflected)

    f is C¹ and increasing everywhere, so a minority sample (x < 0) is pulled towards det J = 0
    and through it, with the force the entropy term would push it away; on the majority side
    above ε it is log|det J| exactly. ε = e^-margin · median|det J| of the batch (detached), so it
    follows the scale of J."""
    s = torch.where(sign.sum() >= 0, 1.0, -1.0).to(logdet.dtype)
    minority = s * sign < 0
    log_eps = logdet.detach().median() - margin
    near = logdet < log_eps
    x_over_eps = s * sign * torch.exp(torch.clamp(logdet - log_eps, max=0.0))   # in (-1, 1) where used
    far = torch.where(minority, 2 * log_eps - 2 - logdet, logdet)
    return torch.where(near, log_eps - 1 + x_over_eps, far)


def wgan_discriminator_loss_eq4(d_x, d_y) -> torch.Tensor:
    """Eq. 4: the one-sample approximation of ζ, i.e. the WGAN critic loss -mean D(x) + mean D(y)."""
    return -d_x.mean() + d_y.mean()


def wgan_generator_loss(d_y) -> torch.Tensor:
    """The WGAN generator loss -mean D(y): Eq. 17 without the entropy term."""
    return -d_y.mean()


def gradient_penalty(D, x, y, generator=None) -> torch.Tensor:
    """WGAN-GP: mean (‖∇D(x̂)‖ - 1)² at x̂ = εx + (1-ε)y, ε ~ U[0, 1] per sample (Gulrajani et al.,
    2017); x, y [B, *shape], the norm over each sample's *shape."""
    eps = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), generator=generator, device=x.device)
    xh = (eps * x + (1 - eps) * y).requires_grad_(True)
    (g,) = torch.autograd.grad(D(xh).sum(), xh, create_graph=True)
    return ((g.flatten(1).norm(dim=-1) - 1) ** 2).mean()


def effective_sample_size(d_y, log_q, w: float) -> float:
    """ESS of the importance weights exp(D(y)/w - log q(y)), as a fraction of S (1 = perfect).
    A low value (below about 0.1) goes with D running ahead of G and modes being dropped."""
    l = (d_y.detach().double() / w - log_q.detach().double())
    l = l - l.max()
    e = l.exp()
    return float(e.sum() ** 2 / (e * e).sum() / l.numel())

