"""`python -m owf.evaluate RUN` for an image run: the paper's Figs. 2b-c, 3, 4-5, 7 and 8, log ζ̂ by
both estimators, and the test NLL in nats and bits per dimension.

The generator is evaluated in eval mode: its BatchNorms use their running statistics, so g_n is
one function of each u, and Eq. 10 is its density at its own samples when g_n is injective.

- log ζ̂ (Eq. 2, 16) from S generator samples, with log q by Eq. 10 and the exact log|det J| (all n
  tangents through owf_kernels.jvp, `chunk` at a time; slogdet in float64), and, on the same
  samples, with the paper's log‖Jv‖ (Eq. 9) in its place: its bias is measured, not assumed. A
  third estimate uses a Gaussian fitted to the training images as the proposal. P_D is a density
  on the pixel box [-1, 1]^n.
- test NLL: x' = 2 (u8 + U) / 256 - 1, U ~ U[0, 1)^n (uniform dequantisation), then
  -log P(x) ≈ -log P_D(x') - n log(2/256): the change of scale from [0, 256) to [-1, 1) is
  accounted for; bits/dim = that / (n log 2). It uses the larger of the two valid log ζ̂ (the
  exact generator's and the Gaussian's): log ζ̂ is biased low, so the NLL is a lower bound in
  expectation. (Eq. 10 counts one preimage per sample: where g_n is not injective the true q is
  larger, and the generator's ζ̂ is biased up by that, the other way.)
- energy_hist.png (Fig. 3) and the AUC of telling training from test images by D (0.5: no overfit).
- zeta_convergence.png (Fig. 2b-c): log ζ̂ against S, 10 repeats, generator and fitted Gaussian.
- samples_by_energy.png (Figs. 4-5), interpolation.png (Fig. 7), same_z.png (Fig. 8).
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .density import OWFModel, slice_estimates  # noqa: E402
from .images import generator_samples, load_images, to_uint8, to_unit  # noqa: E402
from .plots import save_energy_hist, save_image_grid, save_zeta_convergence  # noqa: E402

CONVERGENCE_S = [1, 3, 10, 30, 100, 300, 1000, 3000, 10_000]


def dequantise(u8: torch.Tensor, generator) -> torch.Tensor:
    """uint8 pixels -> x' = 2 (u8 + U) / 256 - 1 in [-1, 1), U uniform (one draw per pixel; in
    float64, so that it stays below 1 before the model's float32, which may round up to 1, still
    inside P_D's closed box)."""
    return (u8.double() + torch.rand(u8.shape, generator=generator, dtype=torch.float64)) / 128.0 - 1.0


def heldout_nll(model: OWFModel, test_u8: torch.Tensor, seed: int = 0, batch: int = 1000) -> dict:
    """-log P(x) of the test images, dequantised, in nats and bits/dim, with its standard error
    (the images' spread and log ζ̂'s own)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(test_u8.shape[1:])
    lp = torch.cat([model.log_prob(dequantise(test_u8[i:i + batch], g).float()).double().cpu()
                    for i in range(0, len(test_u8), batch)])
    if not torch.isfinite(lp).all():
        raise ValueError(f"{int((~torch.isfinite(lp)).sum())} test images have a non-finite log P_D")
    nll = -lp - n * math.log(2 / 256)                   # the bin of an 8-bit pixel is 2/256 wide in [-1, 1]
    se = math.hypot(float(nll.std()) / math.sqrt(len(nll)), model.zeta.se)
    return {"test_nll_nats": float(nll.mean()), "test_nll_se": se, "test_bits_per_dim": float(nll.mean()) / (n * math.log(2)),
            "test_bits_per_dim_se": se / (n * math.log(2)), "test_images": len(nll)}


def energy_auc(model: OWFModel, train_u8, test_u8, out: Path, n: int = 10_000) -> dict:
    """Fig. 3: D/w of training against test images, and the AUC of separating them by it."""
    from torchmetrics.functional.classification import binary_auroc
    pick = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(0))[:min(n, len(test_u8))]
    e_tr = torch.cat([model.energy(to_unit(b)).cpu() for b in train_u8[pick].split(1000)])
    e_te = torch.cat([model.energy(to_unit(b)).cpu() for b in test_u8[:len(pick)].split(1000)])
    # the AUC depends on the ranks alone; torchmetrics reads scores outside [0, 1] as logits (a sigmoid of
    # energies near -220 is 0 for all of them, an AUC of 0.5), so the energies go in standardised first
    e = torch.cat([e_tr, e_te]).double()
    auc = float(binary_auroc(torch.sigmoid((e - e.mean()) / e.std()),
                             torch.cat([torch.ones(len(e_tr)), torch.zeros(len(e_te))]).long()))
    save_energy_hist(out, e_tr.numpy(), e_te.numpy(), ("training images", "test images"),
                     f"{model.config.data}: energies of training vs test images (AUC {auc:.3f}; 0.5 = no overfit)")
    return {"energy_auc_train_vs_test": auc, "energy_mean_train": float(e_tr.mean()), "energy_mean_test": float(e_te.mean())}


def zeta_convergence(pools: dict, out: Path, repeats: int = 10) -> dict:
    """Fig. 2b-c from pools of importance weights (estimates made with keep_log_weights=True): the
    repeats at S are disjoint slices of S weights. -> {proposal: {S: (mean, std)}}."""
    res, curves = {}, {}
    for (name, est), color in zip(pools.items(), ("tab:blue", "tab:orange", "tab:gray")):
        Ss = [S for S in CONVERGENCE_S if S * repeats <= len(est.log_weights)]
        vals = {S: np.array(slice_estimates(est, S, repeats)) for S in Ss}
        res[name] = {S: (float(v[np.isfinite(v)].mean()), float(v[np.isfinite(v)].std())) for S, v in vals.items()}
        curves[name] = (Ss, [res[name][S][0] for S in Ss], [res[name][S][1] for S in Ss], color)
    save_zeta_convergence(out, curves, f"log ζ̂ by proposal ({repeats} repeats, ±1 std)")
    return res


@torch.no_grad()
def samples_by_energy(model: OWFModel, out: Path, n: int = 40, seed: int = 1):
    """Figs. 4-5: random samples sorted by D/w, each one's score above it."""
    y = model.sample(n, torch.Generator().manual_seed(seed))
    e = model.energy(y).cpu()
    order = torch.argsort(e, descending=True)
    cols = 10
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(cols * 1.1, math.ceil(n / cols) * 1.3))
    imgs = to_uint8(y[order].cpu())
    for ax, img, score in zip(axes.flat, imgs, e[order]):
        ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255)
        ax.set_title(f"{float(score):.1f}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{model.config.data}: random samples sorted by D(y)/w", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


@torch.no_grad()
def interpolation(model: OWFModel, out: Path, rows: int = 8, steps: int = 10, seed: int = 2):
    """Fig. 7: each row a linear path between two latents z (the noise r held), u = [z; r] (Eq. 7)."""
    G, g = model.G, torch.Generator().manual_seed(seed)
    z0, z1 = (torch.randn(rows, G.d, generator=g) for _ in range(2))
    r = torch.randn(rows, G.n - G.d, generator=g)
    t = torch.linspace(0, 1, steps)
    u = torch.stack([G.g_u((1 - a) * z0 + a * z1, r) for a in t], 1).flatten(0, 1)
    save_image_grid(out, to_uint8(G.g_n(u.to(model.device)).cpu()), f"{model.config.data}: linear paths in z "
                    "(one row each, r held)", nrow=steps)


@torch.no_grad()
def same_z(model: OWFModel, out: Path, rows: int = 8, draws: int = 10, seed: int = 3):
    """Fig. 8: each row one latent z with `draws` draws of the noise r."""
    G, g = model.G, torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 1, G.d, generator=g).expand(rows, draws, G.d).flatten(0, 1)
    r = torch.randn(rows * draws, G.n - G.d, generator=g)
    save_image_grid(out, to_uint8(G.g_n(G.g_u(z, r).to(model.device)).cpu()),
                    f"{model.config.data}: one z per row, {draws} draws of r", nrow=draws)


def evaluate_image_run(model: OWFModel, out: Path, zeta_samples: int = 2000, gaussian_samples: int = 100_000,
                       chunk: int = 112, batch_size: int = 16, seed: int = 0, figures: bool = True,
                       progress: bool = True, fid_weights: str | None = None) -> dict:
    """Everything in the module docstring into eval.json's dict (and the figures into `out`)."""
    cfg = model.config
    train_u8, _ = load_images(cfg.data, cfg.data_root, train=True)
    test_u8, _ = load_images(cfg.data, cfg.data_root, train=False)
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    both = model.estimate_log_zeta(zeta_samples, "generator", batch_size, g, progress, logdet="both", chunk=chunk,
                                   keep_log_weights=True)
    exact_s = (time.perf_counter() - t) / zeta_samples
    gauss = model.estimate_log_zeta(gaussian_samples, "gaussian", 1000, g, progress, keep_log_weights=True)
    est = both["exact"]
    # log ζ̂ of an unbiased ζ̂ is biased low (Jensen), the more the heavier its weights' tail: each
    # valid estimate (Eq. 10's exact log q, the fitted Gaussian; not jvp1, whose log q is no density)
    # is a lower bound of log ζ in expectation, and the larger the tighter. The NLL uses that one,
    # so it too is a lower bound in expectation: the model's bits/dim are at least about that.
    best = max((est, gauss), key=lambda e: e.log_zeta)
    model.cache_log_zeta(best)
    res = {"log_zeta": est.log_zeta, "log_zeta_se": est.se, "ess": est.ess, "num_samples": est.num_samples,
           "low_ess": est.low_ess, "logdet": "exact",
           "log_zeta_jvp1": both["jvp1"].log_zeta, "log_zeta_jvp1_se": both["jvp1"].se, "ess_jvp1": both["jvp1"].ess,
           "log_zeta_jvp1_minus_exact": both["jvp1"].log_zeta - est.log_zeta,
           "log_zeta_gaussian": gauss.log_zeta, "log_zeta_gaussian_se": gauss.se, "ess_gaussian": gauss.ess,
           "gaussian_samples": gauss.num_samples, "nll_log_zeta_from": best.proposal,
           # the time per generator sample of both log-dets (n tangents, and jvp1's one) and what fits in 30 min
           "seconds_per_exact_sample": exact_s, "exact_samples_in_30_min": int(1800 / exact_s)}
    res.update(heldout_nll(model, test_u8, seed))
    if best.low_ess:
        res["warning"] = (f"the ESS of the log ζ̂ behind the NLL ({best.proposal}) is {best.ess:.1f} of {best.num_samples} "
                          "samples (< 1%): ζ̂, and the NLL built on it, are dominated by a few samples")
    if figures:
        res.update(energy_auc(model, train_u8, test_u8, out / "energy_hist.png"))
        res["zeta_convergence"] = {k: {str(S): v for S, v in d.items()} for k, d in zeta_convergence(
            {"generator (Eq. 10, exact)": est, "generator (Eq. 9, jvp1)": both["jvp1"],
             "Gaussian fitted to the data": gauss}, out / "zeta_convergence.png").items()}
        samples_by_energy(model, out / "samples_by_energy.png")
        interpolation(model, out / "interpolation.png")
        same_z(model, out / "same_z.png")
    if fid_weights:
        from .fid import inception_fid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["inception_fid"] = inception_fid(generator_samples(model.G, 10_000, seed + 4), test_u8, fid_weights)
    return res

