"""`python -m owf.evaluate RUN` for an image run: the test NLL bracketed by AIS and RAISE against
exact baselines, importance sampling as the paper does it, and the paper's Figs. 2b-c, 3, 4-5, 7, 8.

The generator is evaluated in eval mode: its BatchNorms use their running statistics, so g_n is
one function of each u, and Eq. 10 is its density at its own samples when g_n is injective.
Every NLL is of the test split, dequantised (x' = 2 (u8 + U) / 256 - 1, U ~ U[0, 1)^n, one draw
per pixel from the seed), on the [0, 256) scale: -log P(y) = -log P_D(x') - n log(2/256), and
bits/dim = that / (n log 2). P_D is a density on the pixel box [-1, 1]^n.

- baselines (owf.baselines): the per-pixel histogram, a Gaussian in atanh space fitted to the
  dequantised training split, LZMA and PNG code lengths; with --d-base mixture or copula, the run's
  own base measure p_0 (a Gaussian mixture in atanh space or over the pixels' normal scores), the
  density that the energy corrects.
- the bracket (likelihood_bracket): at each K of a ladder, for each AIS base, AIS's log ζ̂ (M
  chains) and its test NLL, a lower bound in expectation, and RAISE's NLL of a subset of test
  images, an upper bound in expectation of the annealing model's, which tends to P_D's as K grows;
  `converged` when doubling K moves AIS by less than 0.05 bits/dim and the two agree within it.
  ais_convergence.png draws both against K. The AIS log ζ̂ is cached for log_prob, and test_nll_*
  is the whole split's NLL with it. Its error bar is the spread of independent replicates of the
  top rung (`replicates`), not the weights' own standard error: at an ESS of 1-2 the weights cannot
  measure their spread (two 64-chain replicates differed by 10.7 nats where each reported 0.7-1.0,
  docs/likelihood.md).
- importance sampling (Eq. 2, 16), the paper's estimator: S generator samples with log q by Eq. 10
  and the exact log|det J| (all n tangents through owf_kernels.jvp, `chunk` at a time; slogdet in
  float64), the same samples with Eq. 9's log‖Jv‖ in its place (its bias measured, not assumed),
  a Gaussian fitted to the training images as the proposal, and with --d-base the energy's base
  measure p_0 (log w = f/w; in (-inf, 0] under --d-quadratic); each with its ESS.
- with --d-base, AIS with elliptical slice transitions from each Gaussian component of p_0 (owf.ais.slice_ais:
  exact moves along each component's covariance, where the bracket's MALA has one diagonal mass matrix for
  the whole mixture), `replicates` runs: on the defaults it converges where the bracket's AIS does not. Over
  a mixture base, P_D's mass in each component's part, and the test NLL of the same energy with each part
  given back its base weight (OWFModel.rebalance_base; the checkpoint's D is left as trained).
- the largest of these lower bounds of log ζ (largest_log_zeta), the NLL with it beside AIS's, and by how
  many nats importance sampling lies above AIS (where it does, AIS has not converged in log ζ by that much).
  That largest is what the checkpoint keeps for log_prob (OWFModel.cache_log_zeta); test_bits_per_dim
  stays AIS's, the bracket's.
- energy_hist.png (Fig. 3) and the AUC of telling training from test images by D (0.5: no overfit).
- zeta_convergence.png (Fig. 2b-c): importance sampling's log ζ̂ against S, 10 repeats.
- samples_by_energy.png (Figs. 4-5), interpolation.png (Fig. 7), same_z.png (Fig. 8).

On the CPU an evaluation takes an hour or more: eval.partial.json holds what is measured so far, rewritten after
each stage (the baselines, importance sampling, slice AIS, the bracket), so that a run stopped midway keeps its
finished stages; owf.evaluate removes it once eval.json is written.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .config import MIXTURE_BASES  # noqa: E402
from .density import OWFModel, slice_estimates  # noqa: E402
from .images import generator_samples, load_images, to_uint8, to_unit  # noqa: E402
from .baselines import bits_per_dim  # noqa: E402
from .plots import save_ais_convergence, save_energy_hist, save_image_grid, save_zeta_convergence  # noqa: E402

CONVERGENCE_S = [1, 3, 10, 30, 100, 300, 1000, 3000, 10_000]
GAUSSIAN_SAMPLES = 100_000     # importance samples of the fitted Gaussian, and of p_0 where D has a base
AIS_STEPS = 8000              # the bracket's largest K; its rungs are K and its halvings (ais_ladder)
AIS_RUNGS = 6
AIS_CHAINS = 64
RAISE_POINTS = 64             # test images given a RAISE chain each
# two bases that anneal (on the default model: AIS 4.276 / 4.314 bits/dim, K = 8000); the per-pixel histogram
# never did (log ζ̂ -2,000 and below, docs/likelihood.md) and is kept as an option
DEFAULT_AIS_BASES = ("defensive", "gaussian")
MIXTURE_AIS_BASES = ("defensive", "base")   # --d-base mixture or copula: chains start from p_0 itself, not one Gaussian
AIS_REPLICATES = 2            # runs of the best base's top rung: their spread is log ζ̂'s error bar
CONVERGED_BPD = 0.05          # the bracket's width, and the move of a doubled K, that count as converged
IS_ABOVE_AIS_NATS = 3.0       # IS above AIS by more than this warns: by chance with probability <= e^-3 = 5% each
PARTIAL = "eval.partial.json"     # the finished stages of an evaluation still running (module docstring)
SLICE_STEPS = 1600            # AIS with elliptical slice transitions from p_0's components (--d-base): K
SLICE_CHAINS = 640            # its chains in all, shared by the components (64 each for the 10 of a mixture base)


def ais_ladder(steps: int = AIS_STEPS, rungs: int = AIS_RUNGS) -> tuple:
    """The bracket's K: `steps` and its halvings, `rungs` in all (at least 1 each): 8000 -> 250 ... 8000."""
    return tuple(sorted({max(steps // 2 ** i, 1) for i in range(rungs)}))


def dequantise(u8: torch.Tensor, generator) -> torch.Tensor:
    """uint8 pixels -> x' = 2 (u8 + U) / 256 - 1 in [-1, 1), U uniform (one draw per pixel; in
    float64, so that it stays below 1 before the model's float32, which may round up to 1, still
    inside P_D's closed box)."""
    return (u8.double() + torch.rand(u8.shape, generator=generator, dtype=torch.float64)) / 128.0 - 1.0


def heldout_nll(model: OWFModel, test_u8: torch.Tensor, seed: int = 0, batch: int = 1000,
                zeta_sd: float | None = None) -> dict:
    """-log P(x) of the test images, dequantised, in nats and bits/dim, with its standard error: the
    images' spread and log ζ̂'s, `zeta_sd` (the bracket's replicate spread) or, if None, the
    estimate's own se."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(test_u8.shape[1:])
    lp = torch.cat([model.energy_on_domain(dequantise(test_u8[i:i + batch], g).float()).double().cpu()
                    for i in range(0, len(test_u8), batch)]) - model.zeta.log_zeta      # log P_D, in float64
    if not torch.isfinite(lp).all():
        raise ValueError(f"{int((~torch.isfinite(lp)).sum())} test images have a non-finite log P_D")
    nll = -lp - n * math.log(2 / 256)                   # the bin of an 8-bit pixel is 2/256 wide in [-1, 1]
    se = math.hypot(float(nll.std()) / math.sqrt(len(nll)), model.zeta.se if zeta_sd is None else zeta_sd)
    return {"test_nll_nats": float(nll.mean()), "test_nll_se": se, "test_bits_per_dim": float(nll.mean()) / (n * math.log(2)),
            "test_bits_per_dim_se": se / (n * math.log(2)), "test_images": len(nll)}


def likelihood_bracket(model: OWFModel, test_u8: torch.Tensor, ladder=ais_ladder(), bases=DEFAULT_AIS_BASES,
                       chains: int = AIS_CHAINS, raise_points: int = RAISE_POINTS, leapfrog: int = 1, seed: int = 0,
                       progress: bool = True, replicates: int = AIS_REPLICATES) -> dict:
    """The test NLL bracketed by AIS and RAISE (owf.ais), at each K of `ladder`, for each base.

    AIS: log ζ̂ from `chains` chains; its NLL on the whole test split, -mean(D(x)/w) + log ζ̂ (a lower
    bound in expectation), and on the first `raise_points` test images. RAISE: one reverse chain per
    image for those images (an upper bound in expectation of the annealing model's NLL, which tends
    to P_D's). Both dequantised as heldout_nll (one draw per pixel, from `seed`), bits/dim on the
    [0, 256) scale. Step sizes: one pilot per base, frozen for all rungs. Each rung draws fresh
    chains, so successive K are independent estimates. -> the rows, and the summary: the largest
    AIS log ζ̂ at the largest K (each is a lower bound in expectation) and its base, that base's
    RAISE NLL, the gap between them on the same images, the spread of AIS over the bases, and whether doubling K moved AIS by less than
    CONVERGED_BPD and the gap is below it. Then `replicates` - 1 more runs of that base's top rung
    (fresh chains, the same step sizes): ais_replicate_log_zetas (the rung's own first) and their
    standard deviation, ais_log_zeta_replicate_sd, log ζ̂'s error bar (None with one replicate). The
    reported log ζ̂ stays the first run's, so the estimator is the ladder's at every K; the replicates'
    chains are not pooled into it. With several bases the first run is the largest of the bases' top
    rungs, a selected draw, so the spread also carries that selection."""
    for base in bases:
        model.ais_base(base)                              # a bad name fails here, before any chain runs
    n = math.prod(test_u8.shape[1:])
    per_bpd = n * math.log(2)
    to_bpd = lambda nll_x: bits_per_dim(nll_x, n)      # noqa: E731 ([-1, 1]-scale nats -> bits/dim)
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([dequantise(b, g) for b in test_u8.split(1000)])       # float64, as heldout_nll draws them
    e = torch.cat([model.energy(b.float()).double().cpu() for b in x.split(1000)])
    sub = slice(0, min(raise_points, len(x)))
    rows, ladders, step_sizes = [], {}, {}

    def ais(base, K, seed_offset):         # one AIS run of `chains` chains, the base's frozen step sizes
        return model.estimate_log_zeta(chains, "ais", steps=K, base=base, leapfrog=leapfrog,
                                       step_sizes=step_sizes[base], progress=progress,
                                       generator=torch.Generator().manual_seed(seed + seed_offset))
    for base in bases:
        ss = step_sizes[base] = model.tune_ais(base, leapfrog, generator=torch.Generator().manual_seed(seed + 1),
                                               progress=progress)
        ladders[base] = {"K": [], "ais": [], "raise": [], "ais_all": []}
        for i, K in enumerate(ladder):
            est = ais(base, K, 100 + i)
            row = dict({k: v for k, v in est.to_dict().items() if k not in ("preimages", "multi_cover", "logdet")},
                       ais_bits_per_dim=to_bpd(float(-(e - est.log_zeta).mean())),
                       ais_bits_per_dim_subset=to_bpd(float(-(e[sub] - est.log_zeta).mean())))
            if raise_points:
                r = model.raise_log_prob(x[sub], K, 1, base, leapfrog, step_sizes=ss, batch_size=max(chains, 1),
                                         generator=torch.Generator().manual_seed(seed + 200 + i), progress=progress)
                row.update(raise_bits_per_dim=to_bpd(float(-r.log_prob.mean())),
                           raise_bits_per_dim_se=float(r.log_prob.std()) / per_bpd / math.sqrt(len(r.log_prob)),
                           raise_accept=r.accept, raise_nonfinite_proposals=r.nonfinite_proposals,
                           raise_nonfinite_points=r.nonfinite_points, raise_seconds=r.seconds)
                ladders[base]["raise"].append(row["raise_bits_per_dim"])
            rows.append(row)
            ladders[base]["K"].append(K)
            ladders[base]["ais"].append(row["ais_bits_per_dim_subset" if raise_points else "ais_bits_per_dim"])
            if raise_points:               # the whole split too: the baselines' lines are over all test images
                ladders[base]["ais_all"].append(row["ais_bits_per_dim"])
    summary = bracket_summary(rows, ladder, raise_points)
    lz = [summary["ais_log_zeta"]] + [ais(summary["ais_base"], ladder[-1], 400 + j).log_zeta
                                      for j in range(1, replicates)]
    finite = [v for v in lz if math.isfinite(v)]          # a run whose every chain failed has log ζ̂ = -inf
    if len(finite) < len(lz):
        warnings.warn(f"AIS replicates: {len(lz) - len(finite)} of {len(lz)} runs gave a non-finite log ζ̂ {lz}; "
                      "the error bar is the others' spread", RuntimeWarning, stacklevel=2)
    sd = statistics.stdev(finite) if len(finite) > 1 else None
    return dict(summary, ais_rows=rows, ais_chains=chains, raise_points=raise_points, _ladders=ladders,
                ais_replicate_log_zetas=lz, ais_log_zeta_replicate_sd=sd,
                test_bits_per_dim_replicate_sd=None if sd is None else sd / per_bpd)


def bracket_summary(rows: list, ladder, raise_points: int) -> dict:
    """The bracket from likelihood_bracket's rows: the base whose AIS log ζ̂ is largest at the largest
    K (each is a lower bound in expectation: the largest is the tightest) and its test NLL; that
    base's RAISE NLL on the subset and the gap to AIS's there; how far doubling K moved each; the
    spread of AIS over the bases. `converged`: both moves and the gap below CONVERGED_BPD.
    `raise_below_ais`: a RAISE NLL below AIS's by more than that, the sign that the annealing model
    is still more the base's than P_D's (RAISE bounds the annealing model's NLL, not P_D's)."""
    top = [r for r in rows if r["steps"] == ladder[-1]]
    best = max(top, key=lambda r: r["log_zeta"])
    prev = [r for r in rows if len(ladder) > 1 and r["steps"] == ladder[-2] and r["base"] == best["base"]]
    out = {"ais_log_zeta": best["log_zeta"], "ais_log_zeta_se": best["se"], "ais_base": best["base"],
           "ais_steps": ladder[-1], "test_bits_per_dim_ais": best["ais_bits_per_dim"],
           "ais_doubling_move_bpd": abs(best["ais_bits_per_dim"] - prev[0]["ais_bits_per_dim"]) if prev else None,
           "ais_bases_spread_bpd": max(r["ais_bits_per_dim"] for r in top) - min(r["ais_bits_per_dim"] for r in top)}
    converged = out["ais_doubling_move_bpd"] is not None and out["ais_doubling_move_bpd"] < CONVERGED_BPD
    if raise_points:
        gap = best["raise_bits_per_dim"] - best["ais_bits_per_dim_subset"]
        move = abs(best["raise_bits_per_dim"] - prev[0]["raise_bits_per_dim"]) if prev else None
        out.update(test_bits_per_dim_raise=best["raise_bits_per_dim"], bracket_gap_bpd=gap,
                   raise_doubling_move_bpd=move, raise_below_ais=gap < -CONVERGED_BPD)
        converged = converged and move is not None and move < CONVERGED_BPD and abs(gap) < CONVERGED_BPD
    out["converged"] = bool(converged and raise_points)
    # where the ladder is heading (convergence_trend): the K at which doubling would move AIS (and
    # RAISE) by less than CONVERGED_BPD, by the trend of the last rungs' moves
    mine = sorted((r for r in rows if r["base"] == best["base"]), key=lambda r: r["steps"])
    ks = [r["steps"] for r in mine]
    out["ais_trend"] = convergence_trend(ks, [r["ais_bits_per_dim"] for r in mine])
    needed = [out["ais_trend"]["k_needed"]]
    if raise_points:
        out["raise_trend"] = convergence_trend(ks, [r["raise_bits_per_dim"] for r in mine])
        needed.append(out["raise_trend"]["k_needed"])
    out["k_to_converge"] = None if None in needed else max(needed)
    return out


def largest_log_zeta(res: dict, n: int) -> dict:
    """The tightest of eval.json's estimates of log ζ, and the test NLL with it beside AIS's. AIS's and
    importance sampling's (from G with the exact log q, from p_0) are each a lower bound in expectation
    (Jensen: E log ζ̂ ≤ log ζ) and exceed log ζ by t nats with probability at most e^-t (Markov), so
    the largest of the m = 2-4 is the tightest, above log ζ by t with probability at most m e^-t. The
    NLL moves by Δ log ζ / (n ln 2) bits/dim; with --d-base, slice AIS's (owf.ais.slice_ais) is among them.
    is_above_ais_nats: the largest estimate other than the bracket's AIS minus AIS's; positive, AIS has
    not converged in log ζ by that much (the issue's IS-vs-AIS gap), and
    above IS_ABOVE_AIS_NATS a `warning_log_zeta` says so (the bracket's `converged` allows 0.05 bits/dim,
    27 nats of log ζ at n = 784)."""
    found = {"ais": res["ais_log_zeta"], "is_generator": res["log_zeta_is"],
             **({"is_base": res["log_zeta_base"]} if "log_zeta_base" in res else {}),
             **({"ais_slice": res["log_zeta_ais_slice"]} if "log_zeta_ais_slice" in res else {})}
    src = max(found, key=found.get)
    out = {"log_zeta_largest": found[src], "log_zeta_largest_from": src,
           "is_above_ais_nats": max(v for k, v in found.items() if k != "ais") - found["ais"],
           "test_bits_per_dim_largest_zeta": res["test_bits_per_dim"] + (found[src] - found["ais"]) / (n * math.log(2))}
    if out["is_above_ais_nats"] > IS_ABOVE_AIS_NATS:
        out["warning_log_zeta"] = (f"{src} puts log ζ {out['is_above_ais_nats']:.1f} nats above AIS's "
                                   f"{found['ais']:.2f}: AIS has not converged in log ζ by at least that much; with the "
                                   f"largest lower bound the test NLL is {out['test_bits_per_dim_largest_zeta']:.3f} "
                                   f"bits/dim (AIS's: {res['test_bits_per_dim']:.3f})")
    return out


def convergence_trend(ks, values, tol: float = CONVERGED_BPD, fit: int = 3) -> dict:
    """Where a ladder of doubling K is heading: the moves m_j = |v_j - v_{j-1}| between rungs, the
    ratio r of successive moves fitted on the last `fit` of them (log m_j linear in j, least
    squares), and, when r < 1, the K at which the move falls below `tol` by that trend,
    K_last · 2^ceil(log(tol / m_last) / log r), and the limit it extrapolates to, v_last + s·m_last·r/(1 - r)
    (s the sign of the last move). An extrapolation, not a measurement: r is fitted on a few noisy
    moves. -> {moves, ratio, k_needed (None: the moves do not shrink), limit}."""
    ks, values = list(ks), list(values)
    moves = [abs(b - a) for a, b in zip(values, values[1:])]
    out = {"moves": moves, "ratio": None, "k_needed": None, "limit": None}
    if not moves:
        return out
    if moves[-1] < tol:
        return dict(out, k_needed=ks[-1], limit=values[-1])
    last = moves[-fit:]
    if len(last) < 2 or min(last) <= 0:
        return out
    j = np.arange(len(last), dtype=float)
    ratio = float(np.exp(np.polyfit(j, np.log(last), 1)[0]))
    out["ratio"] = ratio
    if ratio < 1:
        sign = 1.0 if values[-1] >= values[-2] else -1.0
        out["k_needed"] = int(ks[-1] * 2 ** math.ceil(math.log(tol / moves[-1]) / math.log(ratio)))
        out["limit"] = values[-1] + sign * moves[-1] * ratio / (1 - ratio)
    return out


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
    for (name, est), color in zip(pools.items(), ("tab:blue", "tab:orange", "tab:gray", "tab:green")):
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


def _latents(G, rows: int, g) -> torch.Tensor:
    """z [rows, d] from G's latent: N(0, I_d), or with latent components (--g-mixture) or the base's mixture
    (--g-base) z of G.draw."""
    if G.components == 1 and not G.base_latent:
        return torch.randn(rows, G.d, generator=g)
    return G.draw(rows, g, "cpu")[0][:, :G.d]


@torch.no_grad()
def interpolation(model: OWFModel, out: Path, rows: int = 8, steps: int = 10, seed: int = 2):
    """Fig. 7: each row a linear path between two latents z (the noise r held), u = [z; r] (Eq. 7)."""
    G, g = model.G, torch.Generator().manual_seed(seed)
    z0, z1 = (_latents(G, rows, g) for _ in range(2))
    r = torch.randn(rows, G.n - G.d, generator=g)
    t = torch.linspace(0, 1, steps)
    u = torch.stack([G.g_u((1 - a) * z0 + a * z1, r) for a in t], 1).flatten(0, 1)
    save_image_grid(out, to_uint8(G.g_n(u.to(model.device)).cpu()), f"{model.config.data}: linear paths in z "
                    "(one row each, r held)", nrow=steps)


@torch.no_grad()
def same_z(model: OWFModel, out: Path, rows: int = 8, draws: int = 10, seed: int = 3):
    """Fig. 8: each row one latent z with `draws` draws of the noise r."""
    G, g = model.G, torch.Generator().manual_seed(seed)
    z = _latents(G, rows, g)[:, None].expand(rows, draws, G.d).flatten(0, 1)
    r = torch.randn(rows * draws, G.n - G.d, generator=g)
    save_image_grid(out, to_uint8(G.g_n(G.g_u(z, r).to(model.device)).cpu()),
                    f"{model.config.data}: one z per row, {draws} draws of r", nrow=draws)


def evaluate_image_run(model: OWFModel, out: Path, zeta_samples: int = 200, gaussian_samples: int | None = None,
                       chunk: int = 112, batch_size: int = 16, seed: int = 0, figures: bool = True,
                       progress: bool = True, fid_weights: str | None = None, ais_steps: int = AIS_STEPS,
                       ais_bases=DEFAULT_AIS_BASES, ais_chains: int = AIS_CHAINS, raise_points: int = RAISE_POINTS,
                       leapfrog: int = 1, ais_replicates: int = AIS_REPLICATES, slice_steps: int = SLICE_STEPS,
                       slice_chains: int = SLICE_CHAINS) -> dict:
    """Everything in the module docstring into eval.json's dict (and the figures into `out`)."""
    from .baselines import baseline_table
    cfg = model.config
    if gaussian_samples is None:
        gaussian_samples = GAUSSIAN_SAMPLES
    train_u8, _ = load_images(cfg.data, cfg.data_root, train=True)
    test_u8, _ = load_images(cfg.data, cfg.data_root, train=False)
    # ---- exact baselines: what the bits/dim are read against
    res = {"baselines": baseline_table(train_u8, test_u8, seed, gaussian=model.fit_gaussian(),
                                       histogram=model.ais_base("histogram"),
                                       mixture=model.ais_base("base") if cfg.d_base in MIXTURE_BASES else None)}

    def keep():
        """Write what is measured so far to eval.partial.json (PARTIAL)."""
        (out / PARTIAL).write_text(json.dumps(res, indent=2) + "\n")
    keep()
    # ---- importance sampling (the paper's estimator, Eq. 2): the generator with the exact Eq. 10
    # log q and with Eq. 9's jvp1 on the same samples, the fitted Gaussian, and p_0 where D has a base;
    # their ESS says how far each is from a usable estimate
    g = torch.Generator(device=model.device).manual_seed(seed)
    t = time.perf_counter()
    both = model.estimate_log_zeta(zeta_samples, "generator", batch_size, g, progress, logdet="both", chunk=chunk,
                                   keep_log_weights=True)
    exact_s = (time.perf_counter() - t) / zeta_samples
    gauss = model.estimate_log_zeta(gaussian_samples, "gaussian", 1000, torch.Generator().manual_seed(seed), progress,
                                    keep_log_weights=True)
    # with a base measure, p_0 itself: weights exp(f/w), each in (0, 1] under the bounded head (--d-quadratic), so
    # an estimate beside AIS that does not anneal (with --d-base gaussian the same fit as "gaussian", drawn anew)
    p0 = (model.estimate_log_zeta(gaussian_samples, "base", 1000, torch.Generator().manual_seed(seed + 1), progress,
                                  keep_log_weights=True) if cfg.d_base != "none" else None)
    est = both["exact"]
    if p0 is not None:
        res.update(log_zeta_base=p0.log_zeta, log_zeta_base_se=p0.se, ess_base=p0.ess, base_samples=p0.num_samples)
    res.update({"log_zeta_is": est.log_zeta, "log_zeta_is_se": est.se, "ess_is": est.ess,
                "num_samples_is": est.num_samples, "low_ess_is": est.low_ess,
                "log_zeta_jvp1": both["jvp1"].log_zeta, "log_zeta_jvp1_se": both["jvp1"].se, "ess_jvp1": both["jvp1"].ess,
                "log_zeta_jvp1_minus_exact": both["jvp1"].log_zeta - est.log_zeta,
                "log_zeta_gaussian": gauss.log_zeta, "log_zeta_gaussian_se": gauss.se, "ess_gaussian": gauss.ess,
                "gaussian_samples": gauss.num_samples,
                # the time per generator sample of both log-dets (n tangents, and jvp1's one) and what fits in 30 min
                "seconds_per_exact_sample": exact_s, "exact_samples_in_30_min": int(1800 / exact_s)})
    keep()
    # ---- with a base measure: AIS with elliptical slice transitions from each of its Gaussian components
    sliced = []
    if cfg.d_base != "none" and slice_steps:
        for r in range(ais_replicates):
            sliced.append(model.estimate_log_zeta(slice_chains, "ais-slice", steps=slice_steps, progress=progress,
                                                  generator=torch.Generator().manual_seed(seed + 500 + r)))
        lz = [e.log_zeta for e in sliced]
        res.update(log_zeta_ais_slice=lz[0], log_zeta_ais_slice_se=sliced[0].se, ess_ais_slice=sliced[0].ess,
                   ais_slice_steps=slice_steps, ais_slice_chains=slice_chains, ais_slice_replicate_log_zetas=lz,
                   ais_slice_replicate_sd=statistics.stdev(lz) if len(lz) > 1 else None,
                   ais_slice_component_log_zetas=sliced[0].component_log_zetas,
                   ais_slice_component_ess=sliced[0].component_ess, ais_slice_seconds=sum(e.seconds for e in sliced))
        if len(sliced[0].component_log_zetas) > 1:
            # over a mixture base, P_D's mass in each component's part, π_k ζ̂_k / ζ̂, and the test NLL of the same
            # energy with each part given back its base weight (OWFModel.rebalance_base, on a copy)
            lz_k = torch.tensor(sliced[0].component_log_zetas, dtype=torch.float64)
            res["ais_slice_component_masses"] = torch.softmax(model.D.base_log_pi.detach().double().cpu() + lz_k, 0).tolist()
            res["test_bits_per_dim_rebalanced"] = heldout_nll(copy.deepcopy(model).rebalance_base(sliced[0]), test_u8,
                                                              seed)["test_bits_per_dim"]
        keep()
    # ---- the bracket: AIS (log ζ̂, a lower bound of the NLL) and RAISE (an upper bound), against K
    t = time.perf_counter()
    bracket = likelihood_bracket(model, test_u8, ais_ladder(ais_steps), ais_bases, ais_chains, raise_points, leapfrog,
                                 seed, progress, ais_replicates)
    ladders = bracket.pop("_ladders")
    res.update(bracket, log_zeta=bracket["ais_log_zeta"], bracket_seconds=time.perf_counter() - t)
    best = next(r for r in bracket["ais_rows"] if r["base"] == bracket["ais_base"] and r["steps"] == bracket["ais_steps"])
    from .density import AISEstimate
    ais_est = AISEstimate(**{k: v for k, v in best.items() if k in AISEstimate.__dataclass_fields__})
    model.cache_log_zeta(ais_est, save=False)
    # the bracket's NLL with AIS's log ζ̂, its error bar from the replicates where there are two
    res.update(heldout_nll(model, test_u8, seed, zeta_sd=bracket["ais_log_zeta_replicate_sd"]))
    res.update(largest_log_zeta(res, test_u8[0].numel()))
    keep()
    # log_prob keeps the tightest of the lower bounds (its NLL is test_bits_per_dim_largest_zeta), in the checkpoint
    model.cache_log_zeta({"ais": ais_est, "is_generator": est, "is_base": p0,
                          "ais_slice": sliced[0] if sliced else None}[res["log_zeta_largest_from"]])
    if "warning_log_zeta" in res:
        warnings.warn(res["warning_log_zeta"])
    if not res["converged"]:
        res["warning"] = ("the bracket has not converged: AIS's NLL is a lower bound in expectation of P_D's, RAISE's "
                          "an upper bound of the annealing model's, which is P_D only once the annealing converges" +
                          ("; RAISE is below AIS: that model is still more the base's than P_D's"
                           if res.get("raise_below_ais") else "") +
                          (f"; by the trend of its last moves, K = {res['k_to_converge']} would converge it "
                           f"(--ais-steps {res['k_to_converge']}; --device cuda where a GPU is lent)"
                           if res.get("k_to_converge") else "; its moves do not shrink yet: no K to extrapolate to"))
    if figures:
        b = res["baselines"]
        save_ais_convergence(out / "ais_convergence.png", ladders,
                             {"per-pixel histogram": b["histogram_bits_per_dim"],
                              "atanh Gaussian": b["atanh_gaussian_bits_per_dim"], "LZMA": b["lzma_bits_per_dim"],
                              **({"its base measure p_0": b["base_measure_bits_per_dim"]}
                                 if "base_measure_bits_per_dim" in b else {})},
                             f"{cfg.data}: test NLL by AIS ({ais_chains} chains) and RAISE ({raise_points} images)")
        res.update(energy_auc(model, train_u8, test_u8, out / "energy_hist.png"))
        res["zeta_convergence"] = {k: {str(S): v for S, v in d.items()} for k, d in zeta_convergence(
            {"generator (Eq. 10, exact)": est, "generator (Eq. 9, jvp1)": both["jvp1"],
             "Gaussian fitted to the data": gauss, **({"the base measure p_0": p0} if p0 is not None else {})},
            out / "zeta_convergence.png").items()}
        samples_by_energy(model, out / "samples_by_energy.png")
        interpolation(model, out / "interpolation.png")
        same_z(model, out / "same_z.png")
    if fid_weights:
        from .fid import inception_fid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["inception_fid"] = inception_fid(generator_samples(model.G, 10_000, seed + 4), test_u8, fid_weights)
    return res
