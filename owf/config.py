"""The training configuration: one dataclass, the single source of defaults; the CLI is built from it."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from dataclasses import dataclass, field, fields

from .data import DATASETS
from .dcgan import G_OUTPUTS
from .images import IMAGE_DATASETS
from .model import D_ACTIVATIONS, G_ACTIVATIONS, LOGDET_METHODS

LOSSES = ("owf", "wgan", "wgan-gp")
DEFENSIVE_PROPOSALS = ("kernel", "uniform")
ZETA_PROPOSALS = ("generator", "base")
D_BASES = ("none", "gaussian", "mixture", "copula")
MIXTURE_BASES = ("mixture", "copula")      # the bases of K components (a mixture latent can match them)
ALL_DATA = tuple(DATASETS) + IMAGE_DATASETS
DEVICES = ("auto", "cpu", "cuda")
MCMC_KERNELS = ("mala", "slice")
# the fields with a fixed set of values: Config checks them, and --help lists them
CHOICES = {"loss": LOSSES, "logdet": LOGDET_METHODS, "defensive_proposal": DEFENSIVE_PROPOSALS, "d_base": D_BASES,
           "zeta_proposal": ZETA_PROPOSALS, "mcmc_kernel": MCMC_KERNELS, "g_activation": G_ACTIVATIONS,
           "d_activation": tuple(D_ACTIVATIONS), "g_output": G_OUTPUTS, "device": DEVICES}


def _f(default, help, kind=None):
    """A config field: its default, its help line, and the type the CLI parses (kind, when the
    default is None: then the value comes from LOSS_DEFAULTS, DATA_DEFAULTS or KIND_DEFAULTS)."""
    return field(default=default, metadata={"help": help, "type": kind or default.__class__})


# Defaults for the fields left at None, by precedence: the loss's, the loss's on this kind of data, the data
# set's, its kind's; then the generator's, which follow the base (COPULA_G, PLAIN_G, entropy_samples).
# WGAN-GP's are its published settings (Gulrajani et al., 2017): Adam 1e-4, betas (0, 0.9), 5 critic
# steps (and the field default gp = 10), on the same networks as owf.
LOSS_DEFAULTS = {
    "wgan-gp": dict(lr_d=1e-4, lr_g=1e-4, beta1=0.0, n_critic=5, d_base="none", mcmc_chains=0, mcmc_weight=0.0),
    "wgan": dict(d_base="none", mcmc_chains=0, mcmc_weight=0.0),   # a critic is no density: no base measure, no chains on it
}
# The 2D data sets (docs/results-2d.md has the runs). The grid's lr_G 5e-3: at 3e-3 one seed of
# five lost a corner mode (G lagged behind D). Its --defensive 0.25 --g-alpha 0.75: with Eq. 16/17
# alone G thinned or lost a mode in 2 of 10 seeds and D's energy then ran away there; with both,
# 10/10 seeds kept all 25 modes. The ring never needed them (10/10 without).
DATA_DEFAULTS = {
    "ring": dict(steps=18000, lr_g=3e-3, defensive=0.0, g_alpha=1.0),
    "grid": dict(steps=50000, lr_g=5e-3, defensive=0.25, g_alpha=0.75),
}
KIND_DEFAULTS = {
    "2d": dict(dequantise=False, defensive_proposal="kernel", d_base="none", mcmc_chains=0, mcmc_weight=0.0, w=0.1, logdet="exact", batch=256, samples=256, n_critic=1, lr_d=1e-3, beta1=0.5, g_hidden="128,128",
               g_activation="tanh", d_hidden="128,128", d_quadratic=16, log_every=500, sample_every=10000,
               ckpt_every=5000, fid_every=0),
    # images: DCGAN networks (owf.dcgan), the CPU recipe of docs/results-images.md (a fast generator:
    # lr_G 2e-3 against lr_D 2e-4 gave FID 136 at 2,000 steps, equal rates of 1e-4 gave 275; w = 0.01
    # and 0.1 did not differ; the quadratic head was worse), trained for likelihood (docs/likelihood.md,
    # 2,000-step pilots): dequantised images, Eq. 9 for J_h with the output tanh's log-det exact
    # (jvp1-tanh: saturated pixels 42% -> 0.05%), and a Gaussian base measure under D (test NLL by AIS
    # 7.95 -> 4.31 bits/dim; without it 7.63); 64 persistent chains on P_D with λ = 0.2 (at 12k steps,
    # the bracket closed at 4.28-4.31 bits/dim with them; without, AIS 6.44 and RAISE 6.50 at K = 64,000;
    # λ = 0.5: 4.30 but classifier FID 125 against 98); lr_G 4e-3 against 2e-3 (docs/likelihood.md, item 4):
    # the final classifier FID lower in all 3 seeds at w = 0.01 (84.7, 77.4, 97.4 against 97.9, 87.8, 107.0)
    # Since 2026-12-06 (docs/likelihood.md, "`--g-base` from step 0"): the copula base (3.69 bits/dim
    # alone), D = -½‖f‖² over it (d_quadratic 16) with λ = 0.6 for the chains, and G started at the
    # base (g_base, below) for 2,000 steps: AIS 3.645-3.651 bits/dim and FID 48.7-50.4 on 3 seeds,
    # against the Gaussian base's 12,000-step recipe above (4.24-4.26, FID 86-91). That recipe is
    # --d-base gaussian --d-quadratic 0 --mcmc-weight 0.2 --steps 12000 (docs/results-images.md).
    "image": dict(dequantise=True, defensive_proposal="uniform", d_base="copula", mcmc_chains=64, mcmc_weight=0.6,
                  steps=2000, w=0.01,
                  logdet="jvp1-tanh", batch=64, samples=64, n_critic=1, lr_d=2e-4, lr_g=4e-3,
                  beta1=0.5, defensive=0.0, g_alpha=1.0, g_hidden="64,32", g_activation="leaky_relu",
                  d_hidden="32,64", d_quadratic=16, log_every=100, sample_every=2000, ckpt_every=1000, fid_every=1000),
}
# The WGAN baselines on images keep the runs they were measured by (docs/likelihood.md: WGAN-GP FID 63.4 on
# the dequantised data): a linear critic head, 12,000 generator steps.
LOSS_KIND_DEFAULTS = {(loss, "image"): dict(steps=12000, d_quadratic=0) for loss in ("wgan", "wgan-gp")}
# The generator over the copula base, defaults only there (an owf run, no --g-mixture, Eq. 9's log-det):
# started at the base and read through its margins (g_base, g_output), then with the exact log|det J|
# of one of the S samples in Eq. 17 (entropy_samples 1). Elsewhere, and in 2D, G is the network with a
# tanh output.
COPULA_G = dict(g_output="margins", g_base=True)
# With g_base, the last phase (Config.catch_up): D held, G again at p_0 fits the final P_D. After the defaults'
# 2,000 steps, 400 such steps took the FID from 48.7, 50.4, 49.8 to 32.8, 34.5, 36.3 (seeds 0-2) in 173-249 s, and
# 800 (seed 0) to 32.1; the density is D's, unchanged (docs/likelihood.md, "The catch-up phase")
CATCH_UP = 400
PLAIN_G = dict(g_output="tanh", g_base=False)


def data_kind(data: str) -> str:
    return "image" if data in IMAGE_DATASETS else "2d"


@dataclass
class Config:
    # ---- data
    data: str = _f("ring", "data set: ring and grid (2D mixtures), or images (fashion-mnist, mnist, cifar10, "
                           "celeba, folder)")
    data_root: str = _f("", "where an image data set's files are (fashion-mnist: the Debian package "
                            "dataset-fashion-mnist when empty)")
    download: bool = _f(False, "let torchvision download mnist, cifar10 or celeba into --data-root")
    dequantise: bool = _f(None, "images: train on x = (u8 + U)/128 - 1, U ~ U[0, 1) per pixel, the evaluation's "
                                "dequantisation, instead of the bin values u8/127.5 - 1 (None: on for images)", bool)
    # ---- objective
    loss: str = _f("owf", "owf: Eq. 16/17; wgan: Eq. 4 with weight clipping; wgan-gp: Eq. 4 + gradient penalty")
    w: float = _f(None, "entropy weight of Appendix C.1: P_D = exp(D/w)/ζ (None: 0.1 in 2D, 0.01 for images)", float)
    logdet: str = _f(None, "log|det J| estimator: exact (T = n tangents), jvp1 (Eq. 9), or jvp1-tanh (Eq. 9 for "
                           "g_n = σ ∘ h's h, the output map σ's own log-det exact: tanh, or --g-output margins) "
                           "(None: exact in 2D, jvp1-tanh for images)", str)
    entropy_samples: int = _f(None, "G's entropy term (Eq. 17's w log|det J|) corrected by the exact log|det J| of "
                                 "the first K of the S samples (all n tangents, OneWayFlowBase.exact_logdet_at_batch): "
                                 "mean_S of --logdet's estimate + mean_K (exact - estimate), unbiased for the exact "
                                 "mean; Eq. 16's log q keeps --logdet's (0: --logdet's alone) (None: 1 with --g-base, else 0)", int)
    orient: bool = _f(None, "G's entropy term keeps one orientation of g_n (losses.oriented_logdet): "
                            "samples whose det J has the minority sign are pulled back through det J = 0 "
                            "instead of held there, so g_n does not fold (None: on with the exact log-det, "
                            "which it needs)", bool)
    samples: int = _f(None, "S: generator samples per step, the importance samples of log ζ̂ (None: per data kind)", int)
    defensive: float = _f(None, "adds ceil(F·S) samples of a normalised proposal (--defensive-proposal) to log ζ̂'s "
                               "importance samples (defensive importance sampling): ζ̂ stays unbiased and sees "
                               "where G does not go (0: off, the paper's Eq. 16; None: per data set)", float)
    defensive_proposal: str = _f(None, "kernel: a Gaussian kernel density of the data batch (losses.data_kernel_proposal), "
                                       "sees every mode of the data, also one G has lost; uniform: the uniform density "
                                       "on the pixel box, sees stray mass anywhere (None: kernel in 2D, uniform for "
                                       "images)", str)
    zeta_proposal: str = _f("generator", "where log ζ̂'s importance samples in D's loss come from: generator, G's S "
                                         "samples weighted by exp(D/w)/q (Eq. 16, the paper); base, S draws of D's "
                                         "base measure p_0 (--d-base), weighted by exp(D/w)/p_0 = exp(f/w): maximum "
                                         "likelihood of the energy by importance sampling from its base, which sees "
                                         "the stray mass of p_0 that G never visits (docs/likelihood.md)")
    g_alpha: float = _f(None, "α of the generator's Rényi divergence D_α(q ‖ P_D) (losses.generator_loss_renyi): 1 is "
                              "Eq. 17's KL; below 1 the samples where G is thin for P_D weigh more (None: per data set)",
                        float)
    mcmc_chains: int = _f(None, "images: M persistent chains on P_D (owf.negatives; --mcmc-kernel), moved one step per D step, "
                          "whose mean ∇D joins Eq. 16's log ζ̂ in D's gradient (0: Eq. 16 alone)", int)
    mcmc_kernel: str = _f("mala", "the chains' transition: mala, one MALA step (diagonal mass matrix); slice, over a "
                                  "mixture base (--d-base mixture or copula), a Gibbs step for the base component and "
                                  "an elliptical slice step along its covariance, exact for P_D (owf.negatives)",
                          str)
    mcmc_jump_every: int = _f(0, "slice chains: every N steps each chain tries a tempered transition to another base "
                                 "component (SliceChains.jump), which the Gibbs step cannot make where components do "
                                 "not overlap (0: never)", int)
    mcmc_jump_levels: int = _f(400, "the tempered transitions' levels of β each way (--mcmc-jump-every)", int)
    mcmc_weight: float = _f(None, "λ: D's gradient of log ζ is (1 - λ) Eq. 16's + λ the chains' (with --mcmc-chains)",
                            float)
    energy_l2: float = _f(3e-3, "α of the energy penalty α·mean((f/w)²) over the data and the chains, f = D - w log p_0 "
                                "(with --mcmc-chains and λ > 0; with --zeta-proposal base over the data alone; "
                                "docs/likelihood.md: 3e-3 against 1e-3, AIS NLL 4.243, 4.257, 4.261 against 4.261, 4.293, "
                                "4.301 bits/dim, FID within the seeds' spread)")
    gp: float = _f(10.0, "gradient-penalty weight (wgan-gp only)")
    clip: float = _f(0.01, "weight clipping of D (wgan only)")
    # ---- schedule
    steps: int = _f(None, "optimisation steps; learning rates decay linearly to 0 over them "
                          "(None: per data set)", int)
    until: int = _f(0, "stop after this step (0: at the end, --steps + --catch-up); a later --resume continues the same run")
    catch_up: int = _f(None, "after --steps, this many more steps with D held and G started again at the copula "
                             "base (q = p_0: its step-0 state, a fresh Adam) at a constant lr_G, so that G fits "
                             "Eq. 17 against the final P_D (with --g-base; 0: off) (None: 400 with --g-base, else 0)", int)
    batch: int = _f(None, "data points per discriminator step (None: per data kind)", int)
    n_critic: int = _f(None, "discriminator steps per generator step (None: 5 for wgan-gp, else 1)", int)
    lr_d: float = _f(None, "discriminator learning rate (Adam; None: per loss and data)", float)
    lr_g: float = _f(None, "generator learning rate (Adam; None: per loss and data)", float)
    beta1: float = _f(None, "Adam beta1 for both networks (None: 0 for wgan-gp, else 0.5)", float)
    beta2: float = _f(0.9, "Adam beta2 for both networks")
    # ---- networks
    g_hidden: str = _f(None, "generator widths: an MLP's hidden widths (each >= n), or a DCGAN's channels per "
                             "resolution, widest first (None: per data kind)", str)
    g_activation: str = _f(None, "generator activation (None: tanh in 2D, leaky_relu for images)", str)
    latent: int = _f(0, "d, the size of the latent z in u = [z; r] (0: n in 2D, 100 for images)")
    d_hidden: str = _f(None, "discriminator widths: an MLP's hidden widths, or a DCGAN's channels per resolution "
                             "(None: per data kind)", str)
    d_activation: str = _f("leaky_relu", "discriminator activation (2D; the DCGAN energy is LeakyReLU)")
    d_quadratic: int = _f(None, "0: D's output is a linear layer; m > 0: D = -½‖f(x)‖² with f's last layer m wide, "
                                "so a LeakyReLU D is piecewise quadratic (Gaussian-shaped modes) instead of "
                                "piecewise linear; over an image base (--d-base) the network's part f ≤ 0, so ζ ≤ 1 and importance "
                                "sampling from p_0 has weights ≤ 1 (docs/likelihood.md) (None: 16; 0 for WGAN's critics on images)", int)
    d_base: str = _f(None, "images: none, gaussian, mixture or copula: P_D(x) ∝ p_0(x) exp(D(x)/w) with p_0 a fixed "
                           "base measure that D corrects, fitted to the dequantised training split: in atanh space, "
                           "the Gaussian (owf.baselines.AtanhGaussian) or a mixture of Gaussians by EM (AtanhMixture; "
                           "docs/likelihood.md: the generator collapses into a few classes); or that mixture over "
                           "the pixels' normal scores under their histograms (CopulaMixture: 3.69 bits/dim alone on "
                           "Fashion-MNIST against the atanh mixture's 3.95) (None: copula for images)", str)
    g_mixture: bool = _f(False, "images with --d-base mixture or copula: G's latent is a mixture matched to the base's "
                                "components (z ~ N(8 e_k, I), k ~ the base's π), and component k targets P_D's share "
                                "of it, π_k p_0,k exp(f/w): Eq. 17 per component; Eq. 10's log q stays exact "
                                "(owf.train; docs/likelihood.md)")
    g_base: bool = _f(None, "images with --d-base copula and --g-output margins: G starts as the base, q = p_0: its latent "
                             "z is drawn from the base's mixture over the normal scores (all n dimensions, no noise r) and "
                             "its network is a = z + h(z), h's last layer zero at the start, so Eq. 17 moves q from p_0 "
                             "(KL(p_0 ‖ P_D) nats from P_D) rather than from a random network; Eq. 10's log q stays "
                             "exact (docs/likelihood.md) (None: on for an owf run over the copula base with margins)", bool)
    g_output: str = _f(None, "images: G's output map σ: tanh, or margins (with --d-base copula): the pre-activation "
                               "read as the base's normal scores, x = x(a) through each pixel's training histogram "
                               "(dcgan.MarginOutput), so that the margins cancel in Eq. 17 and G's objective is smooth "
                               "in a (docs/likelihood.md) (None: margins over the copula base, else tanh)", str)
    # ---- run
    seed: int = _f(0, "seed of every random stream")
    device: str = _f("auto", "auto: cuda if available, else cpu")
    threads: int = _f(0, "CPU threads for torch (0: torch's default)")
    out: str = _f("", "run folder (default runs/<data>-<loss>-s<seed>)")
    log_every: int = _f(None, "steps between metrics.jsonl lines (2D: with modes/HQ on 2,500 points)", int)
    sample_every: int = _f(None, "steps between pictures", int)
    ckpt_every: int = _f(None, "steps between checkpoints", int)
    fid_every: int = _f(None, "images: steps between classifier FIDs (owf.classifier) in metrics.jsonl, and one at "
                              "the end (0: none)", int)
    fid_samples: int = _f(10000, "images: generated samples per classifier FID (against the test split)")

    def __post_init__(self):
        if self.data not in ALL_DATA:
            raise ValueError(f"data={self.data!r} is not one of {list(ALL_DATA)}")
        kind = data_kind(self.data)
        for defaults in (LOSS_DEFAULTS.get(self.loss, {}), LOSS_KIND_DEFAULTS.get((self.loss, kind), {}),
                         DATA_DEFAULTS.get(self.data, {}), KIND_DEFAULTS[kind]):
            for k, v in defaults.items():
                if getattr(self, k) is None:
                    setattr(self, k, v)
        copula_g = (self.d_base == "copula" and self.loss == "owf" and not self.g_mixture and self.logdet != "exact"
                    and self.g_output in (None, "margins"))
        for k, v in (COPULA_G if copula_g else PLAIN_G).items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.entropy_samples is None:
            self.entropy_samples = 1 if self.g_base else 0
        if self.catch_up is None:
            self.catch_up = CATCH_UP if self.g_base else 0
        for k, allowed in CHOICES.items():
            if getattr(self, k) not in allowed:
                raise ValueError(f"{k}={getattr(self, k)!r} is not one of {list(allowed)}")
        if self.d_quadratic < 0:
            raise ValueError(f"d_quadratic={self.d_quadratic} must be >= 0")
        for k in ("steps", "batch", "samples", "n_critic", "log_every", "sample_every", "ckpt_every", "fid_samples"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k}={getattr(self, k)} must be positive")
        if self.catch_up < 0:
            raise ValueError(f"catch_up={self.catch_up} must be >= 0")
        if self.catch_up and not self.g_base:
            raise ValueError(f"catch_up={self.catch_up} starts G again at the copula base: it needs g_base=True "
                             f"(got g_base={self.g_base})")
        if not 0 <= self.until <= self.steps + self.catch_up:
            raise ValueError(f"until={self.until} must be in [0, steps + catch_up={self.steps + self.catch_up}]")
        if not 0 <= self.g_alpha <= 1:
            raise ValueError(f"g_alpha={self.g_alpha} must be in [0, 1]")
        if self.mcmc_chains < 0:
            raise ValueError(f"mcmc_chains={self.mcmc_chains} must be >= 0")
        if not 0 <= self.mcmc_weight <= 1:
            raise ValueError(f"mcmc_weight={self.mcmc_weight} must be in [0, 1]")
        if self.mcmc_chains and self.mcmc_kernel == "slice" and self.d_base not in MIXTURE_BASES:
            raise ValueError(f"mcmc_kernel='slice' moves along a mixture base's components: it needs d_base in "
                             f"{MIXTURE_BASES}, got d_base={self.d_base!r}")
        if self.mcmc_jump_every < 0 or self.mcmc_jump_levels < 1:
            raise ValueError(f"mcmc_jump_every={self.mcmc_jump_every} must be >= 0 and mcmc_jump_levels="
                             f"{self.mcmc_jump_levels} >= 1")
        if self.mcmc_jump_every and not (self.mcmc_chains and self.mcmc_kernel == "slice"):
            raise ValueError(f"mcmc_jump_every={self.mcmc_jump_every} moves slice chains between components: it needs "
                             f"mcmc_kernel='slice' and mcmc_chains > 0, got {self.mcmc_kernel!r} and {self.mcmc_chains}")
        if self.mcmc_chains and self.loss != "owf":
            raise ValueError(f"mcmc_chains={self.mcmc_chains} samples owf's P_D; loss={self.loss!r} takes 0")
        if self.entropy_samples:
            if not 0 < self.entropy_samples <= self.samples:
                raise ValueError(f"entropy_samples={self.entropy_samples} must be in [0, samples={self.samples}]")
            if self.loss != "owf" or self.logdet == "exact" or self.g_alpha != 1 or self.orient:
                raise ValueError(f"entropy_samples={self.entropy_samples} replaces an estimated log-det in Eq. 17 "
                                 f"(loss='owf', g_alpha=1, no orient); got loss={self.loss!r}, "
                                 f"logdet={self.logdet!r}, g_alpha={self.g_alpha}, orient={self.orient}")
        if self.defensive < 0:
            raise ValueError(f"defensive={self.defensive} must be >= 0")
        if self.g_mixture and (self.d_base not in MIXTURE_BASES or self.loss != "owf" or self.g_alpha != 1):
            raise ValueError(f"g_mixture=True matches G's latent to a base mixture: it needs loss='owf', "
                             f"d_base in {MIXTURE_BASES} and g_alpha=1, got loss={self.loss!r}, d_base={self.d_base!r}, "
                             f"g_alpha={self.g_alpha}")
        if self.g_base and (self.d_base != "copula" or self.g_output != "margins" or self.loss != "owf" or self.g_mixture):
            raise ValueError(f"g_base=True starts G at the copula base (its mixture as G's latent, read through the base's "
                             f"margins): it needs loss='owf', d_base='copula', g_output='margins' and no g_mixture, got "
                             f"loss={self.loss!r}, d_base={self.d_base!r}, g_output={self.g_output!r}, "
                             f"g_mixture={self.g_mixture}")
        if self.g_output == "margins" and (self.d_base != "copula" or self.logdet not in ("exact", "jvp1-tanh")):
            raise ValueError(f"g_output='margins' maps G onto the copula base's margins: it needs d_base='copula' and "
                             f"logdet 'exact' or 'jvp1-tanh' (the map's log-derivative exact), got d_base={self.d_base!r}, "
                             f"logdet={self.logdet!r}")
        if self.zeta_proposal == "base" and (self.loss != "owf" or self.d_base == "none"):
            raise ValueError(f"zeta_proposal='base' draws log ζ̂'s samples from D's base measure (images): it needs "
                             f"loss='owf' and a d_base, got data={self.data!r}, loss={self.loss!r}, d_base={self.d_base!r}")
        if self.loss != "owf" and self.d_base != "none":
            raise ValueError(f"d_base={self.d_base!r} is a base measure of owf's density; loss={self.loss!r} takes 'none'")
        if data_kind(self.data) == "2d":
            for k, off in (("dequantise", False), ("d_base", "none"), ("defensive_proposal", "kernel"), ("mcmc_chains", 0)):
                if getattr(self, k) != off:
                    raise ValueError(f"{k}={getattr(self, k)!r} is for images; 2D data takes {off!r}")
        if self.orient is None:
            self.orient = self.logdet == "exact"
        if self.orient and self.logdet != "exact":
            raise ValueError(f"orient=True needs logdet='exact' (got {self.logdet!r}): jvp1 carries no sign of det J")
        if self.w <= 0:
            raise ValueError(f"w={self.w} must be positive")
        for k in ("lr_d", "lr_g", "clip"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k}={getattr(self, k)} must be positive")
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} must be in [0, 1)")
        for k in ("gp", "threads", "latent", "fid_every"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}={getattr(self, k)} must be >= 0")
        for k in ("g_hidden", "d_hidden"):
            try:
                widths = self.widths(k)
            except ValueError:
                raise ValueError(f"{k}={getattr(self, k)!r} must be comma-separated integers, e.g. 128,128") from None
            if not widths or min(widths) <= 0:
                raise ValueError(f"{k}={getattr(self, k)!r} must list positive widths")
        if not self.out:
            self.out = f"runs/{self.data}-{self.loss}-s{self.seed}"

    @classmethod
    def from_saved(cls, saved: dict) -> "Config":
        """The config a checkpoint stored. Fields added after it was written take the value such runs
        used (LEGACY_VALUES), not today's default: an old linear-head run loads as one. Fields
        removed since (REMOVED) are dropped when they hold the value that left them off; a run
        that used one cannot be rebuilt by this code, and that is an error naming it."""
        saved = dict(saved)
        for k, off in REMOVED.items():
            value = saved.pop(k, off)
            if value != off:
                raise ValueError(f"this run was trained with {k}={value!r} (--{k.replace('_', '-')}), an option "
                                 "removed from owf; load it with the commit that trained it (git log)")
        unknown = sorted(set(saved) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"the saved config has fields this version of owf does not know: {unknown}")
        return cls(**{**LEGACY_VALUES, **saved})

    def widths(self, key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in str(getattr(self, key)).split(",") if v.strip())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields whose default changed after runs were saved without them: the value those runs used.
LEGACY_VALUES = {"catch_up": 0, "g_output": "tanh", "g_base": False, "entropy_samples": 0, "mcmc_chains": 0, "mcmc_weight": 0.0, "d_quadratic": 0, "defensive": 0.0, "g_alpha": 1.0, "dequantise": False, "d_base": "none",
                 "energy_l2": 1e-3}     # runs saved before the field had the constant at 1e-3

# Options removed on 2026-12-01, each measured not to help (docs/results-2d.md, "What we tried";
# docs/results-images.md) or never used, and the value that had them off: a checkpoint that holds
# that value loads as before.
REMOVED = {"ess_gate": 0.0, "d_freeze": 0.0, "g_skip": False, "spectral_norm": False,
           # the EMA of G: at 12k Fashion-MNIST steps, classifier FID 52.2 with it (0.999), 51.3 without
           "ema": 0.0,
           # never set otherwise by a default, a baseline or a documented result: the learning rates
           # always decay linearly to 0, the discriminator's LeakyReLU slope is always 0.2
           "lr_decay": True, "d_slope": 0.2}

# Fields that may change when a run is resumed; the rest define the run and come from its checkpoint.
RESUMABLE = ("until", "device", "threads", "log_every", "sample_every", "ckpt_every", "fid_every", "fid_samples",
             "data_root")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        if "unrecognized arguments" in message:
            bad = message.split(":", 1)[1].split()
            flags = sorted(o for a in self._actions for o in a.option_strings if o.startswith("--"))
            hints = []
            for b in bad:
                close = difflib.get_close_matches(b.split("=")[0], flags, n=3)
                hints.append(f"{b} (did you mean {', '.join(close)}?)" if close else b)
            message = (f"unrecognized arguments: {' '.join(hints)}\nvalid flags: {' '.join(flags)}")
        super().error(message)


# --help's groups, each named with its first field; the fields follow in the dataclass's order.
HELP_GROUPS = (("data", "data"), ("objective", "loss"), ("schedule", "steps"), ("networks", "g_hidden"),
               ("run", "seed"))


def build_parser(prog="python -m owf.train") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Train a One-way Flow (or a WGAN baseline) on 2D data or images.")
    choices = {"data": ALL_DATA, **CHOICES}
    starts = dict((first, name) for name, first in HELP_GROUPS)
    group = p
    for f in fields(Config):
        if f.name in starts:
            group = p.add_argument_group(starts[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.name != "out" else ""
        shown = "see above" if default is None else repr(default)
        kw = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {shown})")
        if f.metadata["type"] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(flag, type=f.metadata["type"], choices=choices.get(f.name), **kw)
    group.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR exactly")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    group.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p


def parse_args(argv=None):
    """(given, options): the config fields given on the command line, and the other options."""
    ns = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    opts = {k: ns.pop(k) for k in ("resume", "overwrite", "dry_run")}
    return ns, opts
