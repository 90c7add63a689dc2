"""What the training loop needs from a kind of data, behind one small interface, so that the loop
has no `if image:` branches:

    task.networks(cfg, saved_d)        -> (G, D): the one-way flow and the energy (saved_d: D's saved state on a resume)
    task.batch(n, gen, device)         -> a training batch x
    task.evaluate(G, step, final)      -> the metrics of a log line (a dict; {} when none is due)
    task.pictures(run, G, D, cfg, m)   -> writes samples.png (and density.png in 2D)
    task.state_dict() / load_state_dict(): the data stream's position, for an exact resume
    task.summary_keys, task.progress_keys, task.curve_keys: what metrics.json, the bar and curves.png show
    task.curve_references()            -> {curve key: (value, label)}: dashed lines on curves.png

MixtureTask draws the 2D mixtures from the training random stream (as before this interface);
ImageTask reads an image data set's training split as a seeded stream (owf.images.ImageStream) and
scores samples with the classifier FID (owf.classifier) against the test split.
"""
from __future__ import annotations

import math
import sys

import torch

from .config import MIXTURE_BASES, data_kind
from .data import get_dataset
from .dcgan import BASE_CLAMP, ConvEnergy, DCGANFlow, MarginOutput, base_components
from .classifier import classifier_cached
from .images import SHAPES, ImageStream, generator_samples, load_images, saturated_share, to_uint8
from .metrics import EVAL_POINTS, mode_coverage, mode_histogram
from .model import FOLD_CHECK_MAX_N, Energy, OneWayFlow
from .plots import save_density, save_image_grid, save_samples


@torch.no_grad()
def mode_metrics(G, data, seed: int, device) -> tuple[dict, torch.Tensor]:
    """Modes and HQ on 2,500 points, always from the same latent draws (a stream of its own), and
    `fold`: the share of those points where det J has the minority sign (> 0: G is not injective,
    so Eq. 10's log q is too low there; see OneWayFlow.det_sign_fractions). Small n only."""
    g = torch.Generator(device=device).manual_seed(10_000 + seed)
    u = G.noise(EVAL_POINTS, g)
    y = G.g_n(u)
    modes, hq = mode_coverage(y, data.means, data.std)
    ev = {"modes": modes, "hq": hq, "per_mode": mode_histogram(y, data.means, data.std)}
    if G.n <= FOLD_CHECK_MAX_N:
        ev["fold"] = min(G.det_sign_fractions(u))
    return ev, y


def networks(cfg, event_shape):
    """(G, D) of a config for data of `event_shape`: an MLP flow and energy in 2D, DCGAN ones for images."""
    if data_kind(cfg.data) == "image":
        return DCGANFlow.from_config(cfg, event_shape), ConvEnergy.from_config(cfg, event_shape)
    return OneWayFlow.from_config(cfg, event_shape[0]), Energy.from_config(cfg, event_shape[0])


def event_shape_of(cfg, state: dict) -> tuple:
    """The data's shape as a checkpoint stored it (runs saved before it did: the data set's own)."""
    if "event_shape" in state:
        return tuple(state["event_shape"])
    if data_kind(cfg.data) == "image":
        if cfg.data not in SHAPES:
            raise ValueError(f"this {cfg.data} checkpoint does not record its image shape")
        return SHAPES[cfg.data]
    return (get_dataset(cfg.data).dim,)


class MixtureTask:
    """The 2D Gaussian mixtures (owf.data)."""
    summary_keys = ("modes", "max_modes", "hq", "per_mode", "fold")
    summary_only = ("max_modes", "per_mode")          # in metrics.json, not in every metrics.jsonl line
    progress_keys = ("modes", "hq")
    curve_keys = ("hq", "ess", "log_zeta", "fold")

    def curve_references(self) -> dict:
        return {}

    def __init__(self, cfg):
        self.cfg = cfg
        self.data = get_dataset(cfg.data)
        self.dim = self.data.dim

    def networks(self, cfg, saved_d: dict | None = None):
        return networks(cfg, (self.dim,))                 # nothing fitted in 2D: saved_d is not needed

    def batch(self, n, gen, device):
        return self.data.sample(n, gen, device)

    def evaluate(self, G, step: int, final: bool) -> dict:
        ev, _ = mode_metrics(G, self.data, self.cfg.seed, next(G.parameters()).device)
        return dict(ev, max_modes=len(self.data.means))

    def pictures(self, run, G, D, cfg, metrics):
        device = next(G.parameters()).device
        with torch.no_grad():
            y = G.sample(EVAL_POINTS, torch.Generator(device=device).manual_seed(10_000 + cfg.seed))
            title = f"{cfg.data} {cfg.loss}: {metrics['modes']}/{len(self.data.means)} modes, HQ {100 * metrics['hq']:.1f}%"
            save_samples(run / "samples.png", y, self.data, title)
            save_density(run / "density.png", lambda x: D(x) / cfg.w, self.data, device,
                         title=f"{cfg.data} {cfg.loss}, step {metrics['step']}")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ImageTask:
    """An image data set (owf.images): DCGAN networks, the training split as a seeded stream, the
    classifier FID of cfg.fid_samples samples against the test split every cfg.fid_every steps."""
    summary_keys = ("fid", "min_class_share", "class_kl", "class_shares", "fid_floor", "classifier_accuracy",
                    "probe_log_q", "probe_logdet", "saturated", "clamped")
    summary_only = ("fid_floor", "classifier_accuracy")
    progress_keys = ("fid",)
    curve_keys = ("fid", "min_class_share", "ess", "log_zeta", "loss_d", "loss_g", "probe_log_q", "saturated",
                  "clamped", "mcmc_energy_gap", "mcmc_accept", "mcmc_switches", "mcmc_jumps", "mcmc_top_component")
    GRID = 64                                         # samples in samples.png
    PROBE = 4                                         # latents of the probe batch (exact log q: n tangents each)
    SATURATION_SAMPLES = 256
    chains = None                                     # owf.negatives.PersistentChains with cfg.mcmc_chains
    base = None                                       # D's base measure p_0, a normalised density of u (--d-base)

    def __init__(self, cfg, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        train, _ = load_images(cfg.data, cfg.data_root, cfg.download, train=True)
        self.test, self.test_labels = load_images(cfg.data, cfg.data_root, cfg.download, train=False)
        self.shape = tuple(train.shape[1:])
        if cfg.data in SHAPES and self.shape != SHAPES[cfg.data]:
            raise ValueError(f"{cfg.data} images are {self.shape}, expected {SHAPES[cfg.data]}")
        from .distributed import rank_world
        rank, world = rank_world()
        self.rank = rank
        self.stream = ImageStream(train, cfg.seed, rank, world)
        self.dim = math.prod(self.shape)
        self._fid = None
        self.fid_every = cfg.fid_every
        if self.test_labels is None and self.fid_every:
            if rank == 0:
                print(f"note: --data {cfg.data} has no labels, so no classifier FID (owf.classifier needs them); "
                      "--fid-every 0 says so", file=sys.stderr)
            self.fid_every = 0
        if world > 1 and self.fid_every and not classifier_cached(cfg.data):
            # rank 0 would train it while the others wait in a collective past the timeout
            raise ValueError(f"on many processes the classifier FID needs a trained classifier: run "
                             f"python -m owf.classifier --data {cfg.data} first (or pass --fid-every 0)")

    def networks(self, cfg, saved_d: dict | None = None):
        """saved_d: a checkpoint's D state (a resume): a mixture base is read from its buffers, not
        fitted again by EM (the same tensors, so the chains' base and the run continue exactly)."""
        G, D = networks(cfg, self.shape)
        if cfg.d_base != "none" or cfg.mcmc_chains:
            from .baselines import AtanhGaussian, AtanhMixture, CopulaMixture, defensive_base
            if cfg.d_base in MIXTURE_BASES and saved_d is not None:
                D.load_state_dict(saved_d)                 # restore() loads it again, with the optimisers
                fitted = D.base_density()
            elif cfg.d_base in MIXTURE_BASES:
                copula = cfg.d_base == "copula"
                if self.rank == 0:
                    print(f"fitting the base measure: {base_components(cfg.d_base)} Gaussians by EM on the training "
                          "split" + ("'s normal scores" if copula else ""), file=sys.stderr)
                fitted = CopulaMixture.fit_pixels(self.stream.images) if copula else AtanhMixture(self.stream.images)
            else:
                fitted = AtanhGaussian(self.stream.images)
            if cfg.d_base != "none":
                D.fit_base(fitted)
                self.base = fitted
            if cfg.g_output == "margins":  # G's output map reads the base's margins
                G.net[-1].fit(fitted)
            if cfg.g_base:                 # G's latent is the base's mixture over the normal scores
                G.fit_base_latent(fitted)
            if cfg.g_mixture:              # G's latent components take the base's weights π
                with torch.no_grad():
                    G.latent_log_pi.copy_(fitted.log_pi)
            if cfg.mcmc_chains:            # persistent chains on P_D: MALA from AIS's defensive base, or slice chains from p_0
                from .negatives import PersistentChains, SliceChains
                seed = 40_000 + cfg.seed + 1009 * self.rank
                self.chains = (SliceChains(cfg.mcmc_chains, self.shape, fitted, seed, cfg.mcmc_jump_every, cfg.mcmc_jump_levels)
                               if cfg.mcmc_kernel == "slice" else
                               PersistentChains(cfg.mcmc_chains, self.shape, defensive_base(fitted), seed))
        return G, D

    def batch(self, n, gen, device):
        return self.stream.next(n, device, gen if self.cfg.dequantise else None)

    def base_samples(self, n, gen, like):
        """n images x = x(u), u ~ p_0 (D's base measure, --zeta-proposal base; the base's float32 draws, x = tanh u
        or the base's own coordinate's x(u), in float64), drawn on the CPU from a generator seeded by one
        draw of gen (training's stream) -> [n, *shape], with the dtype and device of `like` (a data batch)."""
        from .ais import Box, coordinate_of
        g = torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen, device=gen.device)))
        x = coordinate_of(self.base, Box(-1.0, 1.0)).to_x(self.base.sample(n, g).double())
        return x.view(n, *self.shape).to(like.device, like.dtype)

    @torch.no_grad()
    def probe(self, G) -> dict:
        """The generator's concentration, on a fixed probe batch (PROBE latents of a stream of its
        own, G in eval mode): the exact log|det J| (all n tangents, owf_kernels.jvp) and log q (Eq. 10)
        of each, their means; and the share of output pixels whose tanh pre-activation has |a| > 3
        (saturated: tanh' < 0.01), or with --g-output margins the share whose x(a) reached D's clamp
        ±(1 - 2^-20) (clamped: dx/da = 0 in float32, dcgan.MarginOutput), over SATURATION_SAMPLES samples.
        A dequantised image's density is at most n log 128 nats (each pixel's bin is 2/256 wide): a mean
        log q above that is a G more concentrated than any fit to the data can be."""
        device = next(G.parameters()).device
        was = G.training
        G.eval()
        g = torch.Generator(device=device).manual_seed(30_000 + self.cfg.seed)
        u = G.noise(self.PROBE, g)
        _, ld = G.logdet(u, "exact", chunk=112)
        out = {"probe_logdet": float(ld.mean()), "probe_log_q": float((G.log_latent(u) - ld).mean())}
        if isinstance(G.net[-1], torch.nn.Tanh):
            a = G.net[:-1](G.noise(self.SATURATION_SAMPLES, g))
            out["saturated"] = float((a.abs() > 3).float().mean())
        elif isinstance(G.net[-1], MarginOutput):
            x = G.net(G.noise(self.SATURATION_SAMPLES, g))
            out["clamped"] = float((x.abs() >= BASE_CLAMP).float().mean())
        G.train(was)
        return out

    def curve_references(self) -> dict:
        """What the probe's curves are measured against, from the data: log q against n log 128, the
        most that any density of dequantised images reaches (each pixel's bin is 2/256 wide); the
        saturated share against the test split's own, dequantised as in the evaluation (one draw, seed
        0): a generator that matched the data would saturate as often (Fashion-MNIST: 32%)."""
        return {"probe_log_q": (self.dim * math.log(128), "n log 128"),
                "saturated": (saturated_share(self.test), "test split")}

    def _scorer(self):
        if self._fid is None:
            from .classifier import ClassifierFID, load_classifier
            clf = load_classifier(self.cfg.data, self.cfg.data_root, self.progress)
            self._fid = ClassifierFID(clf, self.test)
            self._fid.accuracy, self._fid.floor = clf.test_accuracy, clf.fid_floor
        return self._fid

    def evaluate(self, G, step: int, final: bool) -> dict:
        ev = self.probe(G) if self.cfg.loss == "owf" else {}
        every = self.fid_every
        if not every or not (final or step % every == 0):
            return ev
        scorer = self._scorer()
        ev.update(scorer(generator_samples(G, self.cfg.fid_samples, 20_000 + self.cfg.seed)))
        ev.update(classifier_accuracy=scorer.accuracy, fid_floor=scorer.floor)
        return ev

    def pictures(self, run, G, D, cfg, metrics):
        y = generator_samples(G, self.GRID, 10_000 + cfg.seed)
        title = f"{cfg.data} {cfg.loss}, step {metrics['step']}" + (
            f", classifier FID {metrics['fid']:.2f}" if "fid" in metrics else "")
        save_image_grid(run / "samples.png", to_uint8(y), title)

    def state_dict(self):
        return {"stream": self.stream.state_dict(), **({"chains": self.chains.state_dict()} if self.chains else {})}

    def load_state_dict(self, state):
        self.stream.load_state_dict(state["stream"])
        if self.chains:
            self.chains.load_state_dict(state["chains"])


def make_task(cfg, progress: bool = True):
    return ImageTask(cfg, progress) if data_kind(cfg.data) == "image" else MixtureTask(cfg)
