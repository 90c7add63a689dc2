"""python -m owf.evaluate RUN_DIR [--zeta-samples N]: the trained model as a density.

For an image run, owf.image_eval does the work (its docstring lists eval.json and the figures:
log ζ̂ by the exact log-det and by jvp1, the test NLL in bits/dim, Figs. 2b-c, 3, 4-5, 7, 8, and
with --fid-weights the Inception FID). For 2D runs:

Estimates log ζ with the generator as proposal, caches it in the checkpoint, and writes eval.json:
log_zeta, log_zeta_se, ess, num_samples, modes, hq; for 2D data also log_zeta_quadrature (on the
domain box where P_D is defined, see density.py; log_zeta_quadrature_wide and
energy_mass_outside_domain over a 4x wider box),
test_nll (fresh data under log_prob), true_nll (the mixture's entropy), and the integral of
exp(log_prob) over the plane; for n <= 16 the shares of samples where det J < 0 and > 0 (both
clearly non-zero: the generator folds). For n <= 2 the generator's density at each sample is summed
over all its preimages (owf.preimages; `preimages`, and `multi_cover`: the share of samples with
more than one), and eval.json also holds log_zeta_eq10, the estimate with Eq. 10's one-preimage
density (signed weights), for comparison. Pictures:
- zeta_convergence.png (Fig. 2a): log ζ̂ against S for the proposals N(0, I), the generator and the
  data distribution itself, 10 repeats each (error bars: their standard deviation), quadrature line;
  in 2D the generator's repeats are disjoint slices of the main estimate's samples, and eval.json
  keeps the 10 estimates at S = 10^4 (log_zeta_S1e4) and the one farthest from the quadrature;
- energy_hist.png (Fig. 3): energies of the training stream's data against held-out data;
- density.png (Fig. 1): the normalised model density next to the truth.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

from owf_kernels import log_zeta as log_zeta_of  # noqa: E402

from .config import MIXTURE_BASES  # noqa: E402
from .density import AIS_BASES, OWFModel, load, quadrature_log_zeta, signed_estimate, signed_partials, slice_estimates  # noqa: E402,E501
from .image_eval import (AIS_CHAINS, AIS_REPLICATES, AIS_STEPS, DEFAULT_AIS_BASES, MIXTURE_AIS_BASES,  # noqa: E402
                         RAISE_POINTS, SLICE_CHAINS, SLICE_STEPS)
from .metrics import EVAL_POINTS, mode_coverage  # noqa: E402
from .model import FOLD_CHECK_MAX_N  # noqa: E402
from .plots import save_density, save_energy_hist, save_zeta_convergence  # noqa: E402
from .cli import user_errors_exit  # noqa: E402
from .distributed import RANK_SEED_STRIDE, process_group, rank_world  # noqa: E402

S_GRID = [1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000]
FOLD_CHECK_POINTS = 100_000
FOLD_TOLERANCE = 1e-3          # both signs of det J on more than this share of samples: a fold
SPREAD_REPEATS = 200           # estimates of log ζ̂(S = 100) per proposal for the spread target


@torch.no_grad()
def log_zeta_samples(model: OWFModel, proposal: str, S: int, g: torch.Generator) -> float:
    """One estimate log ζ̂(S) with S samples of `proposal` (generator | normal | data)."""
    if proposal == "generator":       # as estimate_log_zeta: all preimages for small n, else signed weights
        y, log_p, sign = model.sample_with_log_prob(S, g, signed=True, preimages=model.searches_preimages)
        return signed_estimate(*signed_partials(model.energy_on_domain(y).double() - log_p, sign))[0]
    elif proposal == "normal":
        y = torch.randn(S, model.G.n, generator=g)
        log_p = -0.5 * (y * y).sum(1) - 0.5 * y.shape[1] * math.log(2 * math.pi)
    else:   # the data distribution, with its exact density
        y = model.data.sample(S, g)
        log_p = model.data.log_prob(y).float()
    return float(log_zeta_of(model.energy_on_domain(y), log_p, 1.0))


def zeta_spread(model: OWFModel, S: int = 100, repeats: int = SPREAD_REPEATS, seed: int = 0, pool=None) -> dict:
    """{proposal: standard deviation of log ζ̂(S) over `repeats` independent estimates}: the spread
    target's statistic. With 10 repeats (Fig. 2a) a standard deviation is itself uncertain by about
    ±25%; 200 make it about ±5%. The generator's repeats are slices of `pool` when it holds enough
    weights, else of a fresh pool of repeats x S samples."""
    g = torch.Generator().manual_seed(seed)
    if pool is None or pool.log_weights is None or len(pool.log_weights) < S * repeats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pool = model.estimate_log_zeta(S * repeats, generator=g, keep_log_weights=True)
    out = {"generator": np.array(slice_estimates(pool, S, repeats))}
    for prop in ("normal", "data"):
        out[prop] = np.array([log_zeta_samples(model, prop, S, g) for _ in range(repeats)])
    return {p: float(v[np.isfinite(v)].std()) for p, v in out.items()}


def zeta_convergence(model, out: Path, quad: float | None, repeats: int = 10, s_max: int = 100_000, seed: int = 0,
                     pool=None):
    """Fig. 2a. Returns {proposal: {S: (mean, std, finite repeats)}}. pool: an estimate made with
    keep_log_weights=True; the generator's repeats at S are then its disjoint slices of S weights
    (for S up to len(pool) / repeats), which saves drawing (and searching preimages) again."""
    g = torch.Generator().manual_seed(seed)
    res = {}
    for prop in ("normal", "generator", "data"):
        res[prop] = {}
        for S in [s for s in S_GRID if s <= s_max]:
            if prop == "generator" and pool is not None:
                if S * repeats > len(pool.log_weights):
                    continue
                vals = np.array(slice_estimates(pool, S, repeats))
            else:
                vals = np.array([log_zeta_samples(model, prop, S, g) for _ in range(repeats)])
            finite = vals[np.isfinite(vals)]
            res[prop][S] = (float(finite.mean()) if len(finite) else -math.inf,
                            float(finite.std()) if len(finite) > 1 else 0.0, int(len(finite)))
    labels = {"normal": "N(0, I)", "generator": "generator", "data": "data distribution"}
    curves = {}
    for prop, color in (("normal", "tab:gray"), ("generator", "tab:blue"), ("data", "tab:green")):
        Ss = [S for S in res[prop] if math.isfinite(res[prop][S][0])]
        curves[labels[prop]] = (Ss, [res[prop][S][0] for S in Ss], [res[prop][S][1] for S in Ss], color)
    save_zeta_convergence(out, curves, f"{model.config.data}: log ζ̂ by proposal ({repeats} repeats, ±1 std)", quad)
    return res


def energy_hist(model, out: Path, n: int = 20_000):
    """Fig. 3: energies of data from the training stream's seed against held-out data."""
    train = model.data.sample(n, torch.Generator().manual_seed(model.config.seed))
    held = model.data.sample(n, torch.Generator().manual_seed(10 ** 6 + model.config.seed))
    e_tr, e_te = model.energy(train).numpy(), model.energy(held).numpy()
    save_energy_hist(out, e_tr, e_te, ("training stream", "held out"),
                     f"{model.config.data}: energies of training vs held-out data")
    return float(e_tr.mean()), float(e_te.mean())


def _ais_2d(model: OWFModel, chains: int, steps: int, leapfrog: int, seed: int, quad: float) -> dict:
    """AIS's log ζ̂ (owf.ais, the fitted Gaussian base) beside importance sampling's and the quadrature."""
    est = model.estimate_log_zeta(chains, "ais", steps=steps, base="gaussian", leapfrog=leapfrog,
                                  generator=torch.Generator().manual_seed(seed + 3))
    return {"log_zeta_ais": est.log_zeta, "log_zeta_ais_se": est.se, "ais_chains": chains, "ais_steps": steps,
            "ais_accept": est.accept, "log_zeta_ais_minus_quadrature": est.log_zeta - quad}


def evaluate_run(run: str, zeta_samples: int | None = None, batch_size: int | None = None, figures: bool = True,
                 progress: bool = True, seed: int = 0, convergence_max_s: int = 100_000,
                 fid_weights: str | None = None, chunk: int = 112, ais_steps: int = AIS_STEPS,
                 ais_chains: int = AIS_CHAINS, raise_points: int = RAISE_POINTS, ais_bases=None, leapfrog: int = 1,
                 device: str = "cpu", ais_replicates: int = AIS_REPLICATES, slice_steps: int = SLICE_STEPS,
                 slice_chains: int = SLICE_CHAINS) -> dict:
    """Evaluate the run and write eval.json beside its checkpoint. zeta_samples and batch_size:
    None takes the data kind's defaults (2D: 10^6 in chunks of 65536; images: 200 exact-log-det
    samples in chunks of 16, `chunk` tangents per pass). Images: the AIS / RAISE bracket at
    ais_ladder(ais_steps), with ais_chains chains, raise_points test images, from ais_bases (None:
    owf.image_eval.DEFAULT_AIS_BASES), the best base's top rung run ais_replicates times for log ζ̂'s
    error bar, and with --d-base AIS with elliptical slice transitions (slice_steps K, slice_chains chains;
    slice_steps 0 skips it); 2D: AIS's log ζ̂ (ais_chains · 64 chains of ais_steps / 16 steps) beside
    importance sampling's and the quadrature."""
    if fid_weights and not Path(fid_weights).is_file():       # before minutes of work, not after
        raise FileNotFoundError(f"--fid-weights {fid_weights}: no such file")
    model = load(run, device)
    out = Path(model.checkpoint).parent
    rank, world = rank_world()
    if world > 1:                     # torchrun: one ζ estimate over every rank's samples; rank 0 writes it
        est = model.estimate_log_zeta(zeta_samples or (1_000_000 if model.kind == "2d" else 2000), "generator",
                                      batch_size or (65536 if model.kind == "2d" else 16),
                                      torch.Generator().manual_seed(seed + RANK_SEED_STRIDE * rank),
                                      progress=progress and rank == 0, chunk=chunk)
        res = dict(est.to_dict(), world_size=world, distributed=True)
        if rank == 0:
            model.cache_log_zeta(est)
            (out / "eval_distributed.json").write_text(json.dumps(res, indent=2) + "\n")
        return res
    if model.kind == "image":
        from .image_eval import PARTIAL, evaluate_image_run
        bad = [b for b in (ais_bases or ()) if b not in AIS_BASES["image"]]
        if bad:
            raise ValueError(f"AIS bases {bad}: choose from {list(AIS_BASES['image'])}")
        if "base" in (ais_bases or ()):
            model.ais_base("base")     # refused here, before the baselines, when the energy has no base measure
        components = model.D.base_components if model.config.d_base != "none" and slice_steps else None
        if components and (slice_chains <= 0 or slice_chains % components):
            raise ValueError(f"--slice-chains {slice_chains}: give a positive multiple of the base's {components} "
                             "components")
        defaults = MIXTURE_AIS_BASES if model.config.d_base in MIXTURE_BASES else DEFAULT_AIS_BASES
        res = evaluate_image_run(model, out, zeta_samples or 200, chunk=chunk, batch_size=batch_size or 16,
                                 seed=seed, figures=figures, progress=progress, fid_weights=fid_weights,
                                 ais_steps=ais_steps, ais_bases=tuple(ais_bases or defaults),
                                 ais_chains=ais_chains, raise_points=raise_points, leapfrog=leapfrog,
                                 ais_replicates=ais_replicates, slice_steps=slice_steps, slice_chains=slice_chains)
        (out / "eval.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / PARTIAL).unlink(missing_ok=True)         # its stages are all in eval.json now
        return res
    if fid_weights:
        raise ValueError("--fid-weights is for image runs; this run is 2D")
    zeta_samples, batch_size = zeta_samples or 1_000_000, batch_size or 65536
    g = torch.Generator().manual_seed(seed)
    est = model.estimate_log_zeta(zeta_samples, "generator", batch_size, g, progress=progress,
                                  keep_log_weights=figures and model.G.n == 2)
    model.cache_log_zeta(est)
    y = model.sample(EVAL_POINTS, torch.Generator().manual_seed(10_000 + model.config.seed))
    modes, hq = mode_coverage(y, model.data.means, model.data.std)
    res = dict(log_zeta=est.log_zeta, log_zeta_se=est.se, ess=est.ess, num_samples=est.num_samples,
               low_ess=est.low_ess, modes=modes, hq=hq, preimages=est.preimages, multi_cover=est.multi_cover)
    if est.preimages:    # the same estimate with Eq. 10's density (one preimage, signed weights): what it corrects
        eq10 = model.estimate_log_zeta(zeta_samples, "generator", batch_size, g, preimages=False)
        res.update(log_zeta_eq10=eq10.log_zeta, log_zeta_eq10_se=eq10.se, ess_eq10=eq10.ess)
    if model.G.n <= FOLD_CHECK_MAX_N:
        neg, pos = model.G.det_sign_fractions(model.G.noise(FOLD_CHECK_POINTS, torch.Generator().manual_seed(seed + 1)))
        res.update(det_negative_fraction=neg, det_positive_fraction=pos, folds=min(neg, pos) > FOLD_TOLERANCE)
        if res["folds"] and not est.preimages:
            warnings.warn(f"the generator folds: det J < 0 at {neg:.1%} and > 0 at {pos:.1%} of its samples, so "
                          "it is not injective, Eq. 10 undercounts q(y) where its sheets overlap, and log ζ̂ is "
                          "biased high (see det_sign_fractions)")
    if model.G.n == 2:
        quad = quadrature_log_zeta(model)
        x = model.data.sample(100_000, torch.Generator().manual_seed(2 * 10 ** 6))
        res.update(log_zeta_quadrature=quad["log_zeta"], domain=list(model.domain),
                   log_zeta_quadrature_wide=quad["log_zeta_wide"], energy_mass_outside_domain=quad["mass_outside_domain"],
                   log_zeta_minus_quadrature=est.log_zeta - quad["log_zeta"],
                   **({"log_zeta_eq10_minus_quadrature": res["log_zeta_eq10"] - quad["log_zeta"]}
                      if "log_zeta_eq10" in res else {}),
                   integral_of_density=math.exp(quad["log_zeta"] - est.log_zeta),
                   **_ais_2d(model, ais_chains * 64, max(ais_steps // 16, 1), leapfrog, seed, quad["log_zeta"]),
                   test_nll=float(-model.log_prob(x).double().mean()),
                   true_nll=float(-model.data.log_prob(x).mean()))
        res["nll_gap"] = res["test_nll"] - res["true_nll"]
        if quad["mass_outside_domain"] > 0.01:
            warnings.warn(f"{quad['mass_outside_domain']:.1%} of ∫ exp(energy) over a box 4x wider lies outside the "
                          f"domain {list(model.domain)}: the energy grows away from the data, and P_D is a density "
                          "only because it is restricted to the domain")
        if abs(res["log_zeta_minus_quadrature"]) > 0.05 + 3 * est.se:
            warnings.warn(f"log ζ̂ = {est.log_zeta:.4f} ± {est.se:.4f} differs from the quadrature value "
                          f"{quad['log_zeta']:.4f} by {res['log_zeta_minus_quadrature']:+.4f}: "
                          f"∫ exp(log_prob) = {res['integral_of_density']:.3f}")
        if figures:
            pool = est if est.log_weights is not None else None
            zeta_convergence(model, out / "zeta_convergence.png", quad["log_zeta"], s_max=convergence_max_s, pool=pool)
            res["zeta_std_at_S100"] = zeta_spread(model, 100, SPREAD_REPEATS, seed + 2, pool)
            res["zeta_spread_repeats"] = SPREAD_REPEATS
            if pool is not None and len(pool.log_weights) >= 10 * 10_000:    # the target's S = 10^4, 10 repeats
                at = np.array(slice_estimates(pool, 10_000, 10))
                res["log_zeta_S1e4"] = at.tolist()
                res["log_zeta_S1e4_worst_minus_quadrature"] = float(at[np.argmax(np.abs(at - quad["log_zeta"]))]
                                                                    - quad["log_zeta"])
            res["energy_mean_train_vs_heldout"] = energy_hist(model, out / "energy_hist.png")
            save_density(out / "density.png", model.energy_on_domain, model.data, log_zeta=est.log_zeta,
                         title=f"{model.config.data}: normalised with log ζ̂ = {est.log_zeta:.3f} ± {est.se:.1g} "
                               f"(S = {est.num_samples:,}, generator proposal)")
    (out / "eval.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder (or checkpoint.pt) written by python -m owf.train")
    p.add_argument("--zeta-samples", type=int, default=None,
                   help="importance samples for log ζ (default: 10^6 in 2D, 2000 for images, each with all n tangents)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per chunk (bounds memory; default 65536 in "
                   "2D, 16 for images)")
    p.add_argument("--chunk", type=int, default=112, help="images: tangents per pass of the exact log-det")
    p.add_argument("--no-figures", action="store_true", help="skip the pictures")
    p.add_argument("--convergence-max-s", type=int, default=100_000, help="2D: largest S in zeta_convergence.png")
    p.add_argument("--fid-weights", default=None, metavar="FILE",
                   help="images: the Inception-v3 weights (torch-fidelity's pt_inception-2015-12-05) for the standard FID")
    p.add_argument("--ais-steps", type=int, default=AIS_STEPS, help="AIS / RAISE: the largest K (images: the "
                   "bracket runs K and its halvings, six rungs; 2D: AIS alone at K / 16)")
    p.add_argument("--ais-chains", type=int, default=AIS_CHAINS, help="AIS chains M (2D: 64 times as many)")
    p.add_argument("--raise-points", type=int, default=RAISE_POINTS, help="images: test images given a RAISE chain "
                   "each (0: none)")
    p.add_argument("--ais-bases", default=None, help="images: comma-separated AIS bases, of defensive, gaussian, base, "
                   f"histogram, uniform (default: {','.join(DEFAULT_AIS_BASES)}; with --d-base mixture or copula "
                   f"{','.join(MIXTURE_AIS_BASES)})")
    p.add_argument("--ais-replicates", type=int, default=AIS_REPLICATES, help="images: independent runs of the "
                   "best base's top rung; their spread is log ζ̂'s error bar (1: the weights' own se, which at an "
                   "ESS of 1-2 is too small)")
    p.add_argument("--slice-steps", type=int, default=SLICE_STEPS, help="images with --d-base: K of AIS with "
                   "elliptical slice transitions from each of p_0's components (0: skip it)")
    p.add_argument("--slice-chains", type=int, default=SLICE_CHAINS, help="images with --d-base: its chains, shared "
                   "equally by p_0's components (a multiple of their number)")
    p.add_argument("--leapfrog", type=int, default=1, help="AIS / RAISE: leapfrog steps per HMC transition (1: MALA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default). Beside a "
                   "training run on the same cores, 1: the AIS chains' small ops ran 10-30x slower with two "
                   "threads competing for a busy core")
    return p


@user_errors_exit
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    with process_group("cpu"):        # torchrun: one process per rank, each its share of the samples
        return _run(a)


def _run(a: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in ("zeta_samples", "batch_size", "chunk", "ais_steps", "ais_chains", "ais_replicates", "leapfrog"):
            if getattr(a, k) is not None and getattr(a, k) <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {getattr(a, k)}")
        if a.slice_steps < 0:
            raise ValueError(f"--slice-steps must be >= 0 (0: skip it), got {a.slice_steps}")
        if a.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {a.threads}")
        if a.threads:
            torch.set_num_threads(a.threads)
        if a.raise_points < 0:
            raise ValueError(f"--raise-points must be >= 0, got {a.raise_points}")
        if a.device != "cpu" and not a.device.startswith("cuda"):
            raise ValueError(f"--device {a.device!r}: choose cpu, cuda or cuda:N")
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {a.device}: no CUDA device is available here")
        bases = [b.strip() for b in a.ais_bases.split(",")] if a.ais_bases else None
        if bases is not None and not all(b in AIS_BASES["image"] for b in bases):
            raise ValueError(f"--ais-bases {a.ais_bases!r}: choose from {','.join(AIS_BASES['image'])}")
        res = evaluate_run(a.run, a.zeta_samples, a.batch_size, not a.no_figures, seed=a.seed,
                           convergence_max_s=a.convergence_max_s, fid_weights=a.fid_weights, chunk=a.chunk,
                           ais_steps=a.ais_steps, ais_chains=a.ais_chains, raise_points=a.raise_points,
                           ais_bases=bases, leapfrog=a.leapfrog, device=a.device, ais_replicates=a.ais_replicates,
                           slice_steps=a.slice_steps, slice_chains=a.slice_chains)
    if rank_world()[0] != 0:
        return 0
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
